"""Build the classifier: band normalization, the adapted ResNet50 backbone, dropout, softmax head."""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import numpy as np

from anyband.adapt import (
    adapt_conv1_kernel,
    resolve_initializer,
    validate_bands,
    validate_rgb_bands,
    validate_strategy,
)
from anyband.layers import BandsToBatch, BatchToBands
from anyband.pretrained import load_resnet50_weights, resnet50_backbone, resolve_weights_path
from anyband.rasters import MIN_TILE_SIZE  # noqa: F401  re-exported: the backbone's minimum

# Keras' ImageNet ResNet50 saw caffe-preprocessed input: BGR minus the ImageNet mean, unscaled,
# so each channel has mean 0 and a std of about 57.4 on the 0..255 scale (58.4, 57.1, 57.4).
PRETRAINED_INPUT_STD = 57.4

BACKBONE_NAME = "resnet50"
NORMALIZATION_NAME = "band_normalization"
FEATURES_DROPOUT_NAME = "head_dropout"
HEAD_NAME = "predictions"


def build_classifier(
    bands: int,
    classes: int,
    *,
    strategy: str = "repeat",
    weights: str | os.PathLike = "imagenet",
    rgb_bands: Sequence[int] = (1, 2, 3),
    initializer: str | keras.initializers.Initializer | None = None,
    band_mean: Sequence[float] | None = None,
    band_std: Sequence[float] | None = None,
    seed: int | None = None,
    dropout: float = 0.2,
) -> keras.Model:
    """A ResNet50 classifier for `bands`-band tiles of any size >= 32 px.

    `weights` is `imagenet`, `none` or the path of a 3-band ResNet50 weights file; conv1 is
    adapted by `strategy` and every other backbone layer keeps the pretrained weights.
    `band_mean` and `band_std` (raw band units) become the first layer, scaled to the input
    statistics the pretrained weights expect; without them the layer passes values through.
    """
    bands = validate_bands(bands)
    strategy = validate_strategy(strategy)
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 2:
        raise ValueError(f"classes must be an integer >= 2. Received: classes={classes!r}")
    if strategy == "rgb":
        rgb_bands = validate_rgb_bands(rgb_bands, bands)
    if initializer is not None or strategy in ("random", "rgb"):
        resolve_initializer(initializer, strategy, seed)  # fail before the slow part
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    normalization = band_normalization(bands, band_mean, band_std)

    weights_path = resolve_weights_path(weights)
    per_band = strategy == "per_band"
    backbone = resnet50_backbone(1 if per_band else bands, name=BACKBONE_NAME)
    if weights_path is not None:
        _load_adapted_weights(
            backbone,
            load_resnet50_weights(weights_path),
            bands=bands,
            strategy=strategy,
            rgb_bands=rgb_bands,
            initializer=initializer,
            seed=seed,
        )
    elif initializer is not None or strategy == "random":
        conv1 = backbone.get_layer("conv1_conv")
        kernel, bias = conv1.get_weights()
        init = resolve_initializer(initializer, strategy, seed)
        conv1.set_weights([keras.ops.convert_to_numpy(init(kernel.shape, dtype="float32")), bias])

    inputs = keras.Input(shape=(None, None, bands), name="bands")
    x = normalization(inputs)
    if per_band:
        x = BandsToBatch(name="bands_to_batch")(x)
    # Keras 3's fit() overrides a call-time training=False, so BatchNorm is kept in inference
    # mode while fine-tuning by freezing those layers (trainable=False), in anyband.training.
    features = backbone(x)
    if per_band:
        features = BatchToBands(bands, name="band_features")(features)
    x = keras.layers.Dropout(dropout, seed=seed, name=FEATURES_DROPOUT_NAME)(features)
    outputs = keras.layers.Dense(
        classes,
        activation="softmax",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        dtype="float32",  # softmax stays float32 under mixed precision
        name=HEAD_NAME,
    )(x)
    return keras.Model(inputs, outputs, name=f"anyband_resnet50_{strategy}")


def band_normalization(
    bands: int, band_mean: Sequence[float] | None, band_std: Sequence[float] | None
) -> keras.layers.Normalization:
    """(x - mean) / std * PRETRAINED_INPUT_STD per band, as a Keras Normalization layer."""
    if (band_mean is None) != (band_std is None):
        raise ValueError("band_mean and band_std must be given together (or neither)")
    if band_mean is None:
        mean, variance = np.zeros(bands), np.ones(bands)
    else:
        mean = np.asarray(band_mean, dtype="float64").reshape(-1)
        std = np.asarray(band_std, dtype="float64").reshape(-1)
        if mean.shape != (bands,) or std.shape != (bands,):
            raise ValueError(
                f"band_mean and band_std must have one value per band ({bands}). "
                f"Received: {mean.size} means, {std.size} stds"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError(
                f"band_mean must be finite and band_std finite and > 0. Received: "
                f"band_mean={mean.tolist()}, band_std={std.tolist()}"
            )
        variance = (std / PRETRAINED_INPUT_STD) ** 2
    return keras.layers.Normalization(
        axis=-1,
        mean=mean.tolist(),
        variance=variance.tolist(),
        name=NORMALIZATION_NAME,
        dtype="float32",  # raw band values (up to 65535) lose their precision in float16
    )


def backbone_of(model: keras.Model) -> keras.Model:
    """The (shared) ResNet50 backbone inside a classifier built here."""
    return model.get_layer(BACKBONE_NAME)


def feature_extractor(model: keras.Model) -> keras.Model:
    """A model from the classifier's input to its pooled features (concatenated for per_band)."""
    return keras.Model(model.inputs, model.get_layer(FEATURES_DROPOUT_NAME).input)


def _load_adapted_weights(
    backbone: keras.Model,
    source: dict[str, list[np.ndarray]],
    *,
    bands: int,
    strategy: str,
    rgb_bands: Sequence[int],
    initializer,
    seed: int | None,
) -> None:
    for layer in backbone.layers:
        if not layer.weights:
            continue
        if layer.name == "conv1_conv":
            kernel, bias = source["conv1_conv"]
            adapted = adapt_conv1_kernel(
                kernel,
                bands,
                strategy,
                rgb_bands=rgb_bands,
                initializer=initializer,
                channel_order="bgr",
                seed=seed,
            )
            layer.set_weights([adapted, bias])
        else:
            layer.set_weights(source[layer.name])


def describe(model: keras.Model) -> dict:
    """What a saved classifier takes and gives: bands, classes, strategy, band statistics."""
    normalization = model.get_layer(NORMALIZATION_NAME)
    mean = np.asarray(keras.ops.convert_to_numpy(normalization.mean)).reshape(-1)
    variance = np.asarray(keras.ops.convert_to_numpy(normalization.variance)).reshape(-1)
    conv1 = backbone_of(model).get_layer("conv1_conv")
    return {
        "name": model.name,
        "strategy": model.name.removeprefix("anyband_resnet50_"),
        "bands": int(model.input_shape[-1]),
        "classes": int(model.output_shape[-1]),
        "per_band": any(isinstance(layer, BandsToBatch) for layer in model.layers),
        "band_mean": mean.tolist(),
        "band_std": (np.sqrt(variance) * PRETRAINED_INPUT_STD).tolist(),
        "conv1_kernel_shape": list(conv1.kernel.shape),
        "parameters": int(model.count_params()),
    }
