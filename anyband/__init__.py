"""anyband: fine-tune ImageNet ResNet50 on satellite imagery with any number of bands.

The names below load on first use (PEP 562): `import anyband`, the `anyband --help` command and
the worker's parent process do not pay for TensorFlow until something needs it.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "INIT_STRATEGIES": "anyband.adapt",
    "adapt_conv1_kernel": "anyband.adapt",
    "per_band_kernel": "anyband.adapt",
    "AnybandError": "anyband.errors",
    "InvalidWeightsError": "anyband.errors",
    "WeightsNotFoundError": "anyband.errors",
    "BandsToBatch": "anyband.layers",
    "BatchToBands": "anyband.layers",
    "backbone_of": "anyband.model",
    "build_classifier": "anyband.model",
    "feature_extractor": "anyband.model",
    "IMAGENET_WEIGHTS_FILE": "anyband.pretrained",
    "check_resnet50_weights": "anyband.pretrained",
    "load_resnet50_weights": "anyband.pretrained",
    "resolve_imagenet_weights": "anyband.pretrained",
    "load_model": "anyband.saving",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'anyband' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
