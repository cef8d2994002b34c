"""Writes seeded 3-band ResNet50 weight files in the layouts the loader accepts (tests only)."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np

from anyband.pretrained import resnet50_backbone


def random_resnet50_weights(seed: int = 0, channels: int = 3) -> dict[str, list[np.ndarray]]:
    """Seeded weights for every ResNet50 layer; BatchNorm statistics are random too, so a
    copy that skipped them would show."""
    rng = np.random.default_rng(seed)
    reference = resnet50_backbone(channels)
    weights = {}
    for layer in reference.layers:
        if not layer.weights:
            continue
        values = []
        for variable in layer.weights:
            shape = tuple(variable.shape)
            if "variance" in variable.path or "gamma" in variable.path:
                values.append(rng.uniform(0.5, 1.5, shape).astype("float32"))
            elif len(shape) == 4:
                fan_in = shape[0] * shape[1] * shape[2]
                values.append(rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype("float32"))
            else:
                values.append(rng.normal(0, 0.1, shape).astype("float32"))
        weights[layer.name] = values
    return weights


def write_keras_notop_h5(path: Path, weights: dict[str, list[np.ndarray]]) -> Path:
    """Keras' legacy notop layout, as in resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5:
    one group per layer, `weight_names` attributes, `layer_names` at the root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = {
        "conv": ["kernel", "bias"],
        "bn": ["gamma", "beta", "moving_mean", "moving_variance"],
    }
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in weights]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for name, values in weights.items():
            kind = "bn" if name.endswith("_bn") else "conv"
            group = f.create_group(name)
            names = [f"{name}/{suffix}:0" for suffix in suffixes[kind]]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for weight_name, value in zip(names, values, strict=True):
                group.create_dataset(weight_name, data=value)
    return path


def write_keras3_weights(
    path: Path, weights: dict[str, list[np.ndarray]], channels: int = 3
) -> Path:
    """The same weights saved the Keras 3 way (`model.save_weights` to .weights.h5)."""
    model = resnet50_backbone(channels)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(weights[layer.name])
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    return path


def reference_backbone(weights: dict[str, list[np.ndarray]]) -> keras.Model:
    """A plain 3-band Keras ResNet50 carrying `weights`: the pretrained model to compare against."""
    model = resnet50_backbone(3)
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(weights[layer.name])
    return model
