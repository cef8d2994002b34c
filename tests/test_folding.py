"""BatchNormalization folded into the convolution before it: the same answers, fewer layers; and
served models are folded unless told not to be."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from anyband.artifacts import sha256_file
from anyband.folding import PassThrough, fold_batch_norms
from anyband.model import backbone_of, build_classifier, feature_extractor
from anyband.serving import load_served_model

RESNET50_BATCH_NORMS = 53


def randomize_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """Moving statistics far from a fresh layer's (mean 0, variance 1), so folding shows."""
    rng = np.random.default_rng(seed)
    for layer in backbone_of(model).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, size).astype("float32"),
                    rng.normal(0, 0.2, size).astype("float32"),
                    rng.normal(0, 0.2, size).astype("float32"),
                    rng.uniform(0.3, 3.0, size).astype("float32"),
                ]
            )


def batch_norms(model: keras.Model) -> int:
    count = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            count += 1
        elif isinstance(layer, keras.Model):
            count += batch_norms(layer)
    return count


@pytest.fixture(scope="module")
def tiles():
    return np.random.default_rng(1).normal(0, 1, (3, 40, 48, 5)).astype("float32")


@pytest.mark.parametrize("strategy", ["random", "per_band"])
def test_every_resnet50_batch_norm_folds_and_the_answers_stay_the_same(strategy, tiles):
    model = build_classifier(5, 3, strategy=strategy, weights="none", seed=3)
    randomize_batch_norms(model)
    before = [w.copy() for w in model.get_weights()]

    folded, count = fold_batch_norms(model)

    assert count == RESNET50_BATCH_NORMS
    assert batch_norms(folded) == 0 and batch_norms(model) == RESNET50_BATCH_NORMS
    assert isinstance(backbone_of(folded).get_layer("conv1_bn"), PassThrough)
    # Features before the softmax: a wrong fold moves them far more than float32 rounding.
    want = feature_extractor(model)(tiles, training=False).numpy()
    got = feature_extractor(folded)(tiles, training=False).numpy()
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(
        folded.predict(tiles, verbose=0), model.predict(tiles, verbose=0), atol=1e-5
    )
    # The model it was given is left as it was.
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_the_folded_kernel_and_bias_are_the_batch_norm_math():
    inputs = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(3, 3, name="conv")
    norm = keras.layers.BatchNormalization(epsilon=0.01, name="norm")
    model = keras.Model(inputs, norm(conv(inputs)))
    kernel = np.arange(54, dtype="float32").reshape(3, 3, 2, 3) / 50
    bias = np.array([0.5, -1.0, 2.0], "float32")
    conv.set_weights([kernel, bias])
    gamma, beta = np.array([2.0, 0.5, -1.0], "f"), np.array([0.1, 0.2, 0.3], "f")
    mean, variance = np.array([1.0, -2.0, 0.5], "f"), np.array([3.99, 0.24, 0.99], "f")
    norm.set_weights([gamma, beta, mean, variance])

    folded, count = fold_batch_norms(model)

    assert count == 1
    scale = gamma / np.sqrt(variance + 0.01)  # 1.0, 1.0, -1.0
    new_kernel, new_bias = folded.get_layer("conv").get_weights()
    np.testing.assert_allclose(new_kernel, kernel * scale, rtol=1e-6)
    np.testing.assert_allclose(new_kernel[..., 2], -kernel[..., 2], rtol=1e-6)
    np.testing.assert_allclose(
        new_bias, [-0.4, 1.2, -1.2], rtol=1e-6
    )  # (bias - mean) * scale + beta
    x = np.random.default_rng(0).normal(0, 1, (2, 6, 6, 2)).astype("float32")
    np.testing.assert_allclose(folded(x), model(x, training=False), rtol=1e-5, atol=1e-5)


def test_a_batch_norm_that_cannot_be_folded_is_kept():
    inputs = keras.Input((8, 8, 2))
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")(inputs)  # read twice
    first = keras.layers.BatchNormalization(name="after_shared")(shared)
    plain = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="no_bias")(inputs)
    second = keras.layers.BatchNormalization(name="after_no_bias")(plain)
    dense = keras.layers.Dense(4, name="dense")(inputs)
    third = keras.layers.BatchNormalization(name="after_dense")(dense)
    outputs = keras.layers.Concatenate()([first, shared, second, third])
    model = keras.Model(inputs, outputs)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([np.full(4, 2.0, "f"), *np.ones((2, 4), "f"), np.full(4, 4.0, "f")])

    same, count = fold_batch_norms(model)

    assert count == 0 and same is model and batch_norms(model) == 3


def test_served_models_are_folded_unless_told_not_to_be(tmp_path, tiles):
    model = build_classifier(5, 2, strategy="random", weights="none", seed=4)
    randomize_batch_norms(model)
    model.save(tmp_path / "model.keras")
    card = {
        "classes": ["a", "b"],
        "tile_size": [40, 48],
        "bands": [1, 2, 3, 4, 5],
        "band_stats": {"mean": [0.0] * 5},
        "dataset": {"num_bands": 5, "nodata": None, "dtype": "float32"},
    }
    (tmp_path / "card.json").write_text(json.dumps(card))
    sha256 = sha256_file(tmp_path / "model.keras")

    folded = load_served_model("m", tmp_path, sha256)
    as_saved = load_served_model("m", tmp_path, sha256, fold_batch_norm=False)

    assert folded.folded_batch_norms == RESNET50_BATCH_NORMS and as_saved.folded_batch_norms == 0
    assert batch_norms(folded.keras_model) == 0
    assert batch_norms(as_saved.keras_model) == RESNET50_BATCH_NORMS
    want = model.predict(tiles, verbose=0)
    np.testing.assert_allclose(folded.predict(tiles), want, atol=1e-5)
    np.testing.assert_allclose(as_saved.predict(tiles), want, atol=1e-6)
