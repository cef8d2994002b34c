"""Where pretrained weights come from, and refusing files that are not a 3-band ResNet50."""

from __future__ import annotations

import numpy as np
import pytest

import anyband.pretrained as pretrained
from anyband import (
    IMAGENET_WEIGHTS_FILE,
    InvalidWeightsError,
    WeightsNotFoundError,
    backbone_of,
    build_classifier,
    check_resnet50_weights,
    resolve_imagenet_weights,
)
from anyband.settings import get_settings
from tests.resnet_weights import random_resnet50_weights, write_keras3_weights, write_keras_notop_h5


def assert_backbone_carries(model, weights, skip=("conv1_conv",)):
    for layer in backbone_of(model).layers:
        if layer.weights and layer.name not in skip:
            for got, expected in zip(layer.get_weights(), weights[layer.name], strict=True):
                np.testing.assert_array_equal(got, expected, err_msg=layer.name)


def test_imagenet_is_found_in_keras_home_and_loaded(imagenet_weights, pretrained_weights):
    assert resolve_imagenet_weights() == imagenet_weights
    model = build_classifier(3, 2, strategy="repeat", weights="imagenet")
    assert_backbone_carries(model, pretrained_weights)
    # repeat at N=3 is the pretrained kernel in R, G, B order: the BGR source reversed.
    kernel = backbone_of(model).get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_array_equal(kernel, pretrained_weights["conv1_conv"][0][:, :, ::-1])


def test_imagenet_is_found_in_home_keras_cache(tmp_path, pretrained_weights, keras_home_dir):
    home_models = tmp_path / "home" / ".keras" / "models"
    home_models.mkdir(parents=True)
    (home_models / IMAGENET_WEIGHTS_FILE).symlink_to(
        keras_home_dir / "models" / IMAGENET_WEIGHTS_FILE
    )
    assert resolve_imagenet_weights() == home_models / IMAGENET_WEIGHTS_FILE


def test_anyband_imagenet_weights_setting_wins(monkeypatch, tmp_path, imagenet_weights):
    elsewhere = tmp_path / "elsewhere.h5"
    elsewhere.symlink_to(imagenet_weights)
    monkeypatch.setenv("ANYBAND_IMAGENET_WEIGHTS", str(elsewhere))
    get_settings.cache_clear()
    assert resolve_imagenet_weights() == elsewhere


def test_missing_imagenet_weights_error_names_the_path_and_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty_keras"))
    with pytest.raises(WeightsNotFoundError) as error:
        build_classifier(6, 2, weights="imagenet")
    message = str(error.value)
    assert f"put {IMAGENET_WEIGHTS_FILE} in {tmp_path / 'empty_keras' / 'models'}" in message
    assert pretrained.IMAGENET_WEIGHTS_URL in message
    assert "ANYBAND_ALLOW_DOWNLOADS" in message
    assert isinstance(error.value, FileNotFoundError)


def test_download_happens_only_when_allowed_and_checks_the_hash(monkeypatch, tmp_path):
    """The internet is the one thing mocked: keras.utils.get_file records its call."""
    calls = []

    def fake_get_file(fname, origin, cache_subdir, file_hash):
        calls.append((fname, origin, cache_subdir, file_hash))
        return str(tmp_path / "downloaded.h5")

    monkeypatch.setattr(pretrained.keras.utils, "get_file", fake_get_file)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    with pytest.raises(WeightsNotFoundError):
        resolve_imagenet_weights()
    assert calls == []

    monkeypatch.setenv("ANYBAND_ALLOW_DOWNLOADS", "true")
    get_settings.cache_clear()
    assert resolve_imagenet_weights() == tmp_path / "downloaded.h5"
    assert calls == [
        (
            IMAGENET_WEIGHTS_FILE,
            pretrained.IMAGENET_WEIGHTS_URL,
            "models",
            pretrained.IMAGENET_WEIGHTS_MD5,
        )
    ]


def test_user_weights_file_in_keras3_format_loads(tmp_path):
    weights = random_resnet50_weights(seed=11)
    path = write_keras3_weights(tmp_path / "mine.weights.h5", weights)
    model = build_classifier(5, 2, strategy="mean", weights=str(path))
    assert_backbone_carries(model, weights)


def test_user_weights_file_in_notop_layout_loads(tmp_path, pretrained_weights):
    path = write_keras_notop_h5(tmp_path / "mine.h5", pretrained_weights)
    model = build_classifier(2, 2, strategy="repeat", weights=path)
    assert_backbone_carries(model, pretrained_weights)


@pytest.fixture(scope="module")
def six_band_weights():
    return random_resnet50_weights(seed=3, channels=6)


def test_notop_file_of_a_six_band_resnet_is_refused(tmp_path, six_band_weights):
    path = write_keras_notop_h5(tmp_path / "six.h5", six_band_weights)
    with pytest.raises(InvalidWeightsError) as error:
        check_resnet50_weights(path)
    assert "not a 3-band ResNet50" in str(error.value)
    assert "conv1_conv" in str(error.value) and "(7, 7, 6, 64)" in str(error.value)


def test_keras3_file_of_a_six_band_resnet_is_refused(tmp_path, six_band_weights):
    path = write_keras3_weights(tmp_path / "six.weights.h5", six_band_weights, channels=6)
    with pytest.raises(InvalidWeightsError, match="not a 3-band ResNet50"):
        build_classifier(4, 2, weights=str(path))


def test_keras3_file_of_a_six_band_resnet_says_which_shape_in_one_line(tmp_path, six_band_weights):
    path = write_keras3_weights(tmp_path / "six.weights.h5", six_band_weights, channels=6)
    with pytest.raises(InvalidWeightsError) as error:
        check_resnet50_weights(path, "six.weights.h5")
    message = str(error.value)
    assert message == (
        "weights file 'six.weights.h5' is not a 3-band ResNet50 weights file: conv1_conv/kernel "
        "has shape (7, 7, 6, 64) in the file, expected (7, 7, 3, 64)"
    )  # before: 10 KB, with every value of the kernel


def test_another_models_keras3_file_is_refused_briefly_and_quietly(tmp_path):
    import warnings

    import keras

    path = tmp_path / "mobilenet.weights.h5"
    keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(96, 96, 3)
    ).save_weights(path)
    with (
        warnings.catch_warnings(record=True) as caught,
        pytest.raises(InvalidWeightsError) as error,
    ):
        warnings.simplefilter("always")
        check_resnet50_weights(path, path.name)
    assert "'mobilenet.weights.h5' is not a 3-band ResNet50" in str(error.value)
    assert "could not be loaded" in str(error.value) and len(str(error.value)) < 500
    # Before: about 100 UserWarnings in the API's log, one per layer Keras skipped.
    assert [w for w in caught if issubclass(w.category, UserWarning)] == []


def test_notop_file_missing_layers_is_refused(tmp_path, pretrained_weights):
    partial = dict(list(pretrained_weights.items())[:10])
    path = write_keras_notop_h5(tmp_path / "partial.h5", partial)
    with pytest.raises(InvalidWeightsError, match=r"layer '.*' is missing"):
        check_resnet50_weights(path)


def test_non_hdf5_file_is_refused(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("these are not weights")
    with pytest.raises(InvalidWeightsError, match="not an HDF5 file"):
        check_resnet50_weights(path)


def test_wrong_suffix_is_refused(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(InvalidWeightsError, match=r"must end in \.weights\.h5"):
        check_resnet50_weights(path)


def test_weights_that_are_not_a_file_say_what_is_accepted(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="'imagenet', 'none' or the path"):
        build_classifier(4, 2, weights=str(tmp_path / "nope.h5"))
