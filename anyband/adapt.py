"""The conv1 math: turn a pretrained 3-channel first-conv kernel into one for any band count."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from anyband.strategies import INIT_STRATEGIES as INIT_STRATEGIES  # re-exported

CHANNEL_ORDERS = ("bgr", "rgb")
DEFAULT_INITIALIZERS = {"random": "glorot_uniform", "rgb": "zeros"}


def validate_bands(bands: object) -> int:
    if isinstance(bands, bool) or not isinstance(bands, (int, np.integer)) or bands < 1:
        raise ValueError(f"bands must be an integer >= 1. Received: bands={bands!r}")
    return int(bands)


def validate_strategy(strategy: object) -> str:
    if strategy not in INIT_STRATEGIES:
        raise ValueError(
            f"strategy must be one of {', '.join(INIT_STRATEGIES)}. Received: strategy={strategy!r}"
        )
    return strategy


def validate_rgb_bands(rgb_bands: Sequence[int], bands: int) -> tuple[int, int, int]:
    """Check 1-based red, green, blue positions within `bands` input bands."""
    if bands < 3:
        raise ValueError(
            f"strategy 'rgb' needs at least 3 bands to place red, green and blue. Received: bands={bands}"
        )
    positions = list(rgb_bands) if isinstance(rgb_bands, Sequence) else None
    if (
        positions is None
        or len(positions) != 3
        or any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) for p in positions)
        or len(set(positions)) != 3
        or not all(1 <= p <= bands for p in positions)
    ):
        raise ValueError(
            f"rgb_bands must be 3 distinct positions within 1..{bands} (red, green, blue). "
            f"Received: rgb_bands={rgb_bands!r}"
        )
    return tuple(int(p) for p in positions)


def resolve_initializer(
    initializer: str | keras.initializers.Initializer | None, strategy: str, seed: int | None
) -> keras.initializers.Initializer:
    """A Keras initializer by name (or instance), seeded when it takes a seed."""
    if initializer is None:
        initializer = DEFAULT_INITIALIZERS.get(strategy, "glorot_uniform")
    try:
        resolved = keras.initializers.get(initializer)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            "initializer must be a Keras initializer name such as 'glorot_uniform', 'he_normal' "
            f"or 'zeros'. Received: initializer={initializer!r}"
        ) from exc
    if resolved is None:
        raise ValueError(f"initializer must not be empty. Received: initializer={initializer!r}")
    config = resolved.get_config()
    if seed is not None and "seed" in config:
        config["seed"] = int(seed)
        resolved = type(resolved).from_config(config)
    return resolved


def to_rgb_order(kernel: np.ndarray, channel_order: str = "bgr") -> np.ndarray:
    """The source kernel with its input channels in R, G, B order."""
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(
            f"channel_order must be 'bgr' or 'rgb'. Received: channel_order={channel_order!r}"
        )
    return kernel[:, :, ::-1, :] if channel_order == "bgr" else kernel


def per_band_kernel(kernel: np.ndarray, channel_order: str = "bgr") -> np.ndarray:
    """The 1-channel kernel a band sees in `per_band`: the sum over R, G, B.

    Convolving one band with it equals convolving that band replicated 3 times with the
    pretrained kernel, so the shared backbone sees each band as a grey RGB image.
    """
    source = _check_source_kernel(kernel)
    return to_rgb_order(source, channel_order).sum(axis=2, keepdims=True)


def adapt_conv1_kernel(
    kernel: np.ndarray,
    bands: int,
    strategy: str,
    *,
    rgb_bands: Sequence[int] = (1, 2, 3),
    initializer: str | keras.initializers.Initializer | None = None,
    channel_order: str = "bgr",
    seed: int | None = None,
) -> np.ndarray:
    """A conv1 kernel of shape (kh, kw, bands, filters) built from a 3-channel one.

    `kernel` is the pretrained (kh, kw, 3, filters) kernel, its channels in `channel_order`
    (Keras ImageNet weights are BGR). `strategy` is one of INIT_STRATEGIES; for `per_band`
    the result is the shared 1-channel kernel (see `per_band_kernel`), whatever `bands` is.
    """
    bands = validate_bands(bands)
    strategy = validate_strategy(strategy)
    source = to_rgb_order(_check_source_kernel(kernel), channel_order)
    kh, kw, _, filters = source.shape
    if strategy == "per_band":
        return source.sum(axis=2, keepdims=True)
    if strategy == "repeat":
        if bands == 1:
            return source.sum(axis=2, keepdims=True)
        return source[:, :, [c % 3 for c in range(bands)], :] * (3.0 / bands)
    if strategy == "mean":
        mean = source.mean(axis=2, keepdims=True)
        return np.repeat(mean, bands, axis=2) * (3.0 / bands)

    positions = validate_rgb_bands(rgb_bands, bands) if strategy == "rgb" else ()
    init = resolve_initializer(initializer, strategy, seed)
    adapted = keras.ops.convert_to_numpy(init((kh, kw, bands, filters), dtype="float32"))
    adapted = np.array(adapted, dtype=source.dtype)
    for rgb_channel, position in enumerate(positions):
        adapted[:, :, position - 1, :] = source[:, :, rgb_channel, :]
    return adapted


def _check_source_kernel(kernel: np.ndarray) -> np.ndarray:
    source = np.asarray(kernel)
    if source.ndim != 4 or source.shape[2] != 3:
        raise ValueError(
            "kernel must be a pretrained 3-channel conv kernel of shape (kh, kw, 3, filters). "
            f"Received: shape={source.shape}"
        )
    if not np.issubdtype(source.dtype, np.floating):
        source = source.astype("float32")
    return source
