"""What a trained model expects of a raster, and raw pixels made ready for it (tiles and scenes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anyband.errors import InvalidRasterError
from anyband.rasters import MIN_TILE_SIZE, RasterInfo, nodata_as


@dataclass(frozen=True)
class ModelInput:
    """A model's contract with the rasters it reads: the dataset's band count, the bands it uses
    (1-based, in model order), their means (raw units: what invalid pixels become, as in the
    training cache) and the dataset's nodata value."""

    dataset_bands: int
    bands: tuple[int, ...]
    band_mean: tuple[float, ...]
    nodata: float | None = None
    dtype: str = "float32"  # the training dataset's pixel type, for messages

    @property
    def band_index(self) -> np.ndarray:
        return np.asarray(self.bands, dtype=np.intp) - 1

    @classmethod
    def from_card(cls, card: dict) -> ModelInput:
        """From a model's card.json (what every finished job writes)."""
        return cls(
            dataset_bands=int(card["dataset"]["num_bands"]),
            bands=tuple(card["bands"]),
            band_mean=tuple(float(m) for m in card["band_stats"]["mean"]),
            nodata=card["dataset"].get("nodata"),
            dtype=card["dataset"].get("dtype", "float32"),
        )


def check_raster(
    info: RasterInfo,
    model: ModelInput,
    name: str,
    *,
    min_size: int = MIN_TILE_SIZE,
    what: str = "tile",
):
    """InvalidRasterError unless the raster carries the model's bands in a castable pixel type;
    `what` the raster is, in the message ("tile", "scene")."""
    if info.count != model.dataset_bands:
        raise InvalidRasterError(
            f"{name!r}: model expects {model.dataset_bands} bands, {what} has {info.count} "
            f"(the model reads bands {list(model.bands)} of {model.dataset_bands}-band rasters)"
        )
    if not np.can_cast(np.dtype(info.dtype), np.float64, casting="same_kind"):
        raise InvalidRasterError(
            f"{name!r}: pixel type {info.dtype} cannot be read as band values; expected a real "
            f"type such as the training data's {model.dtype}"
        )
    if min(info.height, info.width) < min_size:
        raise InvalidRasterError(
            f"{name!r} is {info.height} x {info.width} px; the model needs at least "
            f"{min_size} x {min_size}"
        )


def invalid_pixels(pixels: np.ndarray, nodata: float | None) -> np.ndarray:
    """(..., bands) True where a value is nodata, NaN or infinite as float32: the rule the
    training cache was built with."""
    return _invalid(pixels, nodata, None)


def _invalid(pixels: np.ndarray, nodata: float | None, as_float32: np.ndarray | None):
    """`invalid_pixels`, reusing `pixels` already cast to float32 when the caller has them."""
    marker = nodata_as(nodata, pixels.dtype)
    if pixels.dtype.kind in "iu":  # every integer is finite in float32
        if marker is None:
            return np.zeros(pixels.shape, dtype=bool)
        return pixels == marker
    if as_float32 is None:
        with np.errstate(over="ignore", invalid="ignore"):
            as_float32 = pixels.astype(np.float32, copy=False)
    invalid = ~np.isfinite(as_float32)
    if marker is not None:
        invalid |= pixels == marker
    return invalid


def prepare(pixels: np.ndarray, model: ModelInput, nodata: float | None = None) -> np.ndarray:
    """Raw (..., H, W, dataset_bands) pixels -> float32 (..., H, W, channels) in model band order,
    invalid values set to the band mean exactly as the training cache holds them. `nodata` is
    the raster's own (default: the dataset's)."""
    return prepare_tile(pixels, model, nodata)[0]


def prepare_tile(
    pixels: np.ndarray, model: ModelInput, nodata: float | None = None
) -> tuple[np.ndarray, float]:
    """`prepare`, and the share of pixels valid in every band the model reads: an answer on a
    tile that is mostly nodata rests on band means, and its caller should be told."""
    nodata = model.nodata if nodata is None else nodata
    if model.bands == tuple(range(1, pixels.shape[-1] + 1)):
        selected = pixels  # every band, in order: no copy before the cast
    else:
        selected = np.take(pixels, model.band_index, axis=-1)
    with np.errstate(over="ignore"):
        out = selected.astype(np.float32, order="C")
    invalid = _invalid(selected, nodata, out)
    if not invalid.any():
        return out, 1.0
    means = np.asarray(model.band_mean, dtype=np.float32)
    np.copyto(out, np.broadcast_to(means, out.shape), where=invalid)
    return out, 1.0 - float(invalid.any(axis=-1).mean())


def valid_pixels(pixels: np.ndarray, nodata: float | None) -> np.ndarray:
    """(..., H, W) True where every band of the raster holds a valid value."""
    return ~invalid_pixels(pixels, nodata).any(axis=-1)
