"""anyband: fine-tune ImageNet ResNet50 on satellite imagery with any number of bands."""

from anyband.adapt import INIT_STRATEGIES, adapt_conv1_kernel, per_band_kernel
from anyband.errors import AnybandError, InvalidWeightsError, WeightsNotFoundError
from anyband.layers import BandsToBatch, BatchToBands
from anyband.model import backbone_of, build_classifier, feature_extractor
from anyband.pretrained import (
    IMAGENET_WEIGHTS_FILE,
    check_resnet50_weights,
    load_resnet50_weights,
    resolve_imagenet_weights,
)
from anyband.saving import load_model

__all__ = [
    "INIT_STRATEGIES",
    "IMAGENET_WEIGHTS_FILE",
    "AnybandError",
    "BandsToBatch",
    "BatchToBands",
    "InvalidWeightsError",
    "WeightsNotFoundError",
    "adapt_conv1_kernel",
    "backbone_of",
    "build_classifier",
    "check_resnet50_weights",
    "feature_extractor",
    "load_model",
    "load_resnet50_weights",
    "per_band_kernel",
    "resolve_imagenet_weights",
]
