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
    dtype: str = "float32"  # the training dataset's pixel type
    band_std: tuple[float, ...] | None = None  # of the bands it uses, raw units

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
            band_std=tuple(float(v) for v in card["band_stats"]["std"])
            if "std" in card["band_stats"]
            else None,
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


# A tile whose band mean lies this many training standard deviations from the training mean is
# not like anything the model was trained on. Real tiles stay well inside it: each of the 230
# Landsat 8 cloud chips in ../shared/data, against the statistics of all of them, within 3.
UNUSUAL_DEVIATIONS = 6.0


def input_warnings(
    prepared: np.ndarray, valid_fraction: float, dtype: str, model: ModelInput
) -> list[str]:
    """What about a tile (`prepare`d, with its valid fraction and its own pixel type) suggests
    its answer may mean little: no valid pixel at all, a pixel type other than the training
    data's, or band means far from the training data's (`type_warning`, `units_warning`). The
    values still reach the model as they are."""
    if valid_fraction <= 0:
        return [
            "no pixel of the tile is valid in the bands the model reads (nodata, NaN or "
            "infinite): the answer rests on the training data's band means alone"
        ]
    # Invalid pixels hold the band mean, so they add nothing to the sum of deviations.
    means = np.asarray(model.band_mean, dtype=np.float64)
    band_means = means + (prepared.mean(axis=(0, 1), dtype=np.float64) - means) / valid_fraction
    return pixel_warnings(dtype, band_means, model, "tile")


def pixel_warnings(dtype: str, band_means, model: ModelInput, what: str) -> list[str]:
    """`type_warning` and `units_warning` for a raster (`what`: "tile", "scene") of this pixel
    type and these band means over its valid pixels (None: not known yet), those that apply."""
    found = [type_warning(dtype, model, what, band_means), units_warning(band_means, model)]
    return [warning for warning in found if warning]


def type_warning(dtype: str, model: ModelInput, what: str, band_means=None) -> str | None:
    """A pixel type other than the training data's (float32 reflectance sent to a model trained
    on uint16 digital numbers, say), with the band means beside the training data's when they
    are known, so that values in the right units can be told from values in others; or None."""
    if np.dtype(dtype) == np.dtype(model.dtype):
        return None
    compared = ""
    if band_means is not None:
        pairs = list(zip(model.bands, band_means, model.band_mean, strict=True))
        shown = ", ".join(
            f"band {b} {_number(got)} ({_number(want)})" for b, got, want in pairs[:4]
        )
        more = f" and {len(pairs) - 4} more" if len(pairs) > 4 else ""
        compared = f" Its band means (the training data's): {shown}{more}."
    return (
        f"the {what}'s pixel type is {dtype} and the training data's {model.dtype}: values "
        f"reach the model as they are, so they must be in the training data's units.{compared}"
    )


def units_warning(band_means, model: ModelInput) -> str | None:
    """The model's bands (in model order) whose mean over the valid pixels lies more than
    UNUSUAL_DEVIATIONS training standard deviations from the training mean, or None."""
    if model.band_std is None or band_means is None:
        return None
    got = np.asarray(band_means, dtype=np.float64)
    means = np.asarray(model.band_mean, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.abs(got - means) / np.asarray(model.band_std, dtype=np.float64)
    far = np.flatnonzero(distance > UNUSUAL_DEVIATIONS)
    if not far.size:
        return None
    bands = ", ".join(
        f"band {model.bands[i]} averages {_number(got[i])} against {_number(means[i])} ± "
        f"{_number(model.band_std[i])} ({distance[i]:.1f} std away)"
        for i in far
    )
    return (
        f"unlike the training data: {bands}. Are the values in other units (reflectance "
        f"against digital numbers, another scale factor or offset), or saturated?"
    )


def _number(value: float) -> str:
    """16274.3 -> '16,274'; 0.05123 -> '0.05123': plain digits, never an exponent a reader
    must decode, except for what is tiny or huge."""
    if abs(value) >= 1e12 or (value and abs(value) < 1e-4):
        return f"{value:.3g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def valid_pixels(pixels: np.ndarray, nodata: float | None) -> np.ndarray:
    """(..., H, W) True where every band of the raster holds a valid value."""
    return ~invalid_pixels(pixels, nodata).any(axis=-1)
