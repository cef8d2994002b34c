"""build_classifier: the identities DESIGN.md promises, on a real (stand-in) pretrained ResNet50."""

from __future__ import annotations

import numpy as np
import pytest

from anyband import (
    INIT_STRATEGIES,
    adapt_conv1_kernel,
    backbone_of,
    build_classifier,
    feature_extractor,
    load_model,
)
from anyband.model import PRETRAINED_INPUT_STD, describe


def assert_features_close(got, expected):
    """Float32 sums in another order: equal to 1e-5 of the features' own scale."""
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def tiles(bands, count=2, size=32, seed=0):
    return (
        np.random.default_rng(seed).uniform(-60, 60, (count, size, size, bands)).astype("float32")
    )


def test_rgb_with_zeros_equals_pretrained_backbone_on_the_chosen_bands(
    imagenet_weights, pretrained_backbone
):
    model = build_classifier(5, 3, strategy="rgb", rgb_bands=(4, 2, 1))
    x = tiles(5)

    # The pretrained model reads B, G, R: blue is band 1, green band 2, red band 4.
    expected = pretrained_backbone.predict(x[..., [0, 1, 3]], verbose=0)
    features = feature_extractor(model).predict(x, verbose=0)

    assert features.shape == (2, 2048)
    assert_features_close(features, expected)


def test_per_band_features_equal_pretrained_on_each_band_replicated(
    imagenet_weights, pretrained_backbone
):
    bands = 4
    model = build_classifier(bands, 3, strategy="per_band")
    x = tiles(bands, count=3, seed=1)

    features = feature_extractor(model).predict(x, verbose=0)

    assert features.shape == (3, bands * 2048)
    for band in range(bands):
        grey = np.repeat(x[..., band : band + 1], 3, axis=-1)
        expected = pretrained_backbone.predict(grey, verbose=0)
        assert_features_close(features[:, band * 2048 : (band + 1) * 2048], expected)


@pytest.mark.parametrize("strategy", INIT_STRATEGIES)
def test_every_layer_but_conv1_keeps_pretrained_weights_and_keras_names(
    imagenet_weights, pretrained_weights, strategy
):
    bands = 7
    model = build_classifier(bands, 4, strategy=strategy, rgb_bands=(3, 2, 1), seed=5)
    backbone = backbone_of(model)

    weighted = [layer for layer in backbone.layers if layer.weights]
    assert {layer.name for layer in weighted} == set(pretrained_weights)
    for layer in weighted:
        if layer.name == "conv1_conv":
            continue
        for got, expected in zip(layer.get_weights(), pretrained_weights[layer.name], strict=True):
            np.testing.assert_array_equal(got, expected, err_msg=layer.name)

    kernel, bias = backbone.get_layer("conv1_conv").get_weights()
    source_kernel, source_bias = pretrained_weights["conv1_conv"]
    expected_kernel = adapt_conv1_kernel(
        source_kernel, bands, strategy, rgb_bands=(3, 2, 1), seed=5
    )
    np.testing.assert_array_equal(kernel, expected_kernel)
    np.testing.assert_array_equal(bias, source_bias)
    assert backbone.get_layer("conv2_block1_1_conv") is not None


def test_random_strategy_is_reproducible_with_a_seed(imagenet_weights):
    def conv1(seed):
        model = build_classifier(6, 2, strategy="random", initializer="glorot_uniform", seed=seed)
        return backbone_of(model).get_layer("conv1_conv").get_weights()[0]

    first, again, other = conv1(3), conv1(3), conv1(4)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.var() == pytest.approx(2 / (7 * 7 * 6 + 7 * 7 * 64), rel=0.05)


def test_normalization_brings_band_stats_to_the_pretrained_input_scale():
    rng = np.random.default_rng(2)
    mean = np.array([300.0, 1200.0, 4000.0, 50.0, 9000.0, 700.0])
    std = np.array([30.0, 200.0, 800.0, 5.0, 1500.0, 70.0])
    x = (rng.normal(size=(8, 32, 32, 6)) * std + mean).astype("float32")
    model = build_classifier(6, 2, weights="none", band_mean=mean, band_std=std)

    normalized = model.get_layer("band_normalization")(x).numpy()

    np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), 0, atol=1.0)
    np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), PRETRAINED_INPUT_STD, rtol=0.02)


def test_model_takes_any_tile_size_from_32_px():
    model = build_classifier(3, 5, weights="none")
    for size in (32, 45, 64):
        assert model.predict(tiles(3, count=1, size=size), verbose=0).shape == (1, 5)


def test_weights_none_with_initializer_sets_conv1_from_it():
    model = build_classifier(4, 2, strategy="repeat", weights="none", initializer="zeros")
    assert not backbone_of(model).get_layer("conv1_conv").get_weights()[0].any()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", INIT_STRATEGIES)
def test_save_and_reload_in_safe_mode_gives_identical_predictions(
    imagenet_weights, tmp_path, strategy
):
    model = build_classifier(
        6, 3, strategy=strategy, band_mean=[100.0] * 6, band_std=[20.0] * 6, seed=1
    )
    x = tiles(6, count=3) + 100
    path = tmp_path / f"{strategy}.keras"

    model.save(path)
    reloaded = load_model(path)

    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert describe(reloaded)["strategy"] == strategy
    assert describe(reloaded)["per_band"] is (strategy == "per_band")
    np.testing.assert_allclose(describe(reloaded)["band_std"], [20.0] * 6, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bands": 0, "classes": 2}, "Received: bands=0"),
        ({"bands": 4, "classes": 1}, "classes must be an integer >= 2. Received: classes=1"),
        ({"bands": 4, "classes": 2, "strategy": "clone"}, "Received: strategy='clone'"),
        ({"bands": 4, "classes": 2, "strategy": "rgb", "rgb_bands": (2, 5, 1)}, "within 1..4"),
        ({"bands": 4, "classes": 2, "strategy": "rgb", "rgb_bands": (1, 1, 2)}, "distinct"),
        ({"bands": 4, "classes": 2, "strategy": "random", "initializer": "glorot"}, "'glorot'"),
        (
            {"bands": 3, "classes": 2, "band_mean": [1, 2], "band_std": [1, 1]},
            "one value per band (3)",
        ),
        (
            {"bands": 2, "classes": 2, "band_mean": [1, 2], "band_std": [1, 0]},
            "band_std finite and > 0",
        ),
        ({"bands": 2, "classes": 2, "band_mean": [1, 2]}, "given together"),
    ],
)
def test_bad_arguments_fail_before_building(kwargs, message):
    with pytest.raises(ValueError) as error:
        build_classifier(weights="none", **kwargs)
    assert message in str(error.value)
