"""Where pretrained 3-band ResNet50 weights come from, and the check that a file really holds them."""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import h5py
import keras
import numpy as np

from anyband.errors import InvalidWeightsError, WeightsNotFoundError
from anyband.settings import Settings, get_settings

IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_WEIGHTS_FILE
)
# The hash Keras' own ResNet50 checks the notop file against (md5).
IMAGENET_WEIGHTS_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".hdf5")

LayerWeights = dict[str, list[np.ndarray]]

_CACHE_SIZE = 2
_cache: OrderedDict[tuple, LayerWeights] = OrderedDict()
_cache_lock = threading.Lock()


def resnet50_backbone(channels: int, name: str = "resnet50") -> keras.Model:
    """Keras' ResNet50 without its top, average-pooled, for `channels` input bands, random weights."""
    with warnings.catch_warnings():
        # Keras warns for band counts other than 1 or 3: that is the point here.
        warnings.filterwarnings("ignore", message="This model usually expects")
        return keras.applications.ResNet50(
            include_top=False,
            weights=None,
            input_shape=(None, None, channels),
            pooling="avg",
            name=name,
        )


def imagenet_weights_candidates(settings: Settings | None = None) -> list[Path]:
    """Every place the ImageNet file is looked for, in order."""
    settings = settings or get_settings()
    candidates = []
    if settings.imagenet_weights is not None:
        candidates.append(Path(settings.imagenet_weights).expanduser())
    candidates.append(keras_models_dir() / IMAGENET_WEIGHTS_FILE)
    home_cache = Path("~/.keras/models").expanduser() / IMAGENET_WEIGHTS_FILE
    if home_cache not in candidates:
        candidates.append(home_cache)
    return candidates


def keras_models_dir() -> Path:
    """Where Keras caches model files: $KERAS_HOME/models, else ~/.keras/models."""
    return Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser() / "models"


def resolve_imagenet_weights(settings: Settings | None = None) -> Path:
    """The local ImageNet notop weights file; downloaded only when settings allow it."""
    settings = settings or get_settings()
    candidates = imagenet_weights_candidates(settings)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if settings.allow_downloads:
        return Path(
            keras.utils.get_file(
                IMAGENET_WEIGHTS_FILE,
                IMAGENET_WEIGHTS_URL,
                cache_subdir="models",
                file_hash=IMAGENET_WEIGHTS_MD5,
            )
        )
    looked = ", ".join(str(c) for c in candidates)
    raise WeightsNotFoundError(
        f"ImageNet weights not found: put {IMAGENET_WEIGHTS_FILE} in {keras_models_dir()} "
        f"(looked in: {looked}). Get it from {IMAGENET_WEIGHTS_URL} on a machine with internet "
        "access, point ANYBAND_IMAGENET_WEIGHTS at it, upload it with POST /v1/weights, "
        "or set ANYBAND_ALLOW_DOWNLOADS=true to let anyband download it."
    )


def resolve_weights_path(
    weights: str | os.PathLike, settings: Settings | None = None
) -> Path | None:
    """`imagenet` -> the ImageNet file, `none` -> None, anything else -> an existing file path."""
    if isinstance(weights, str) and weights == "imagenet":
        return resolve_imagenet_weights(settings)
    if isinstance(weights, str) and weights == "none":
        return None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            "weights must be 'imagenet', 'none' or the path of a 3-band ResNet50 weights file "
            f"(.weights.h5 or Keras' notop .h5). Received: weights={str(weights)!r}, which is not a file"
        )
    return path


def load_resnet50_weights(path: str | os.PathLike, name: str | None = None) -> LayerWeights:
    """The per-layer weights of a 3-band ResNet50 file, keyed by Keras layer name.

    Raises InvalidWeightsError when the file is not one (wrong format, band count or layers),
    calling it `name` (default: the file's name). Results are cached by path, size and
    modification time.
    """
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    weights = _read_resnet50_weights(path, name or path.name)
    with _cache_lock:
        _cache[key] = weights
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return weights


def check_resnet50_weights(path: str | os.PathLike, name: str | None = None) -> None:
    """Raise InvalidWeightsError unless `path` holds 3-band ResNet50 (notop) weights."""
    load_resnet50_weights(path, name)


def _read_resnet50_weights(path: Path, name: str) -> LayerWeights:
    if not path.name.endswith(WEIGHTS_SUFFIXES):
        raise InvalidWeightsError(
            f"weights file {name!r} must end in .weights.h5 (Keras 3) or .h5 (Keras' notop layout)"
        )
    if not h5py.is_hdf5(path):
        raise InvalidWeightsError(f"weights file {name!r} is not an HDF5 file")
    reference = resnet50_backbone(3)
    if not path.name.endswith(".weights.h5"):
        try:
            _check_legacy_layout(path, reference, name)
        except InvalidWeightsError:
            raise
        except (OSError, KeyError, ValueError) as exc:  # h5py on a truncated or damaged file
            raise InvalidWeightsError(
                f"weights file {name!r} could not be read: {exc}. A truncated download looks "
                "like this; download it again"
            ) from exc
    try:
        # Keras warns once per layer it skips in a file of another model (a hundred lines in
        # the API's log for one upload); what matters is whether it loads, said just below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            reference.load_weights(path)
    except Exception as exc:  # Keras raises several types for a file of another model
        raise InvalidWeightsError(
            f"weights file {name!r} is not a 3-band ResNet50 weights file: {_why_not(exc)}"
        ) from exc
    return {layer.name: layer.get_weights() for layer in reference.layers if layer.weights}


def _why_not(exc: Exception, limit: int = 300) -> str:
    """Keras' reason, short: its shape mismatch names the variable and prints all its values."""
    text = str(exc)
    shapes = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))", text)
    if shapes:
        where = re.search(r"path=([\w/.-]+)", text)
        variable = where.group(1) if where else "a variable"
        return f"{variable} has shape {shapes.group(2)} in the file, expected {shapes.group(1)}"
    return text if len(text) <= limit else text[:limit] + " ..."


def _check_legacy_layout(path: Path, reference: keras.Model, name: str) -> None:
    """Match every layer of Keras' notop layout by name and shape, for an error that says which."""
    with h5py.File(path, "r") as f:
        root = f.get("model_weights", f)
        for layer in reference.layers:
            if not layer.weights:
                continue
            if layer.name not in root:
                raise InvalidWeightsError(
                    f"weights file {name!r} is not a Keras ResNet50 notop file: layer "
                    f"{layer.name!r} is missing"
                )
            group = root[layer.name]
            names = [
                n.decode() if isinstance(n, bytes) else n
                for n in group.attrs.get("weight_names", [])
            ]
            shapes = [tuple(group[n].shape) for n in names]
            expected = [tuple(w.shape) for w in layer.weights]
            if shapes != expected:
                raise InvalidWeightsError(
                    f"weights file {name!r} is not a 3-band ResNet50: layer {layer.name!r} has "
                    f"weights of shapes {shapes}, expected {expected}"
                )
