"""prepare: raw pixels -> the model's float32 input, invalid values as the training cache holds
them, for every pixel type, nodata value, band selection and memory layout."""

from __future__ import annotations

import numpy as np
import pytest

from anyband.inference import ModelInput, invalid_pixels, prepare, valid_pixels
from anyband.rasters import nodata_as


def reference(pixels: np.ndarray, model: ModelInput, nodata) -> np.ndarray:
    """The documented rule, the slow way: the model's bands as float32; a value that is nodata
    (in the raster's own type; the dataset's if the raster has none), NaN or infinite as float32
    becomes its band's mean."""
    nodata = model.nodata if nodata is None else nodata
    selected = np.stack([pixels[..., b - 1] for b in model.bands], axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        as_float = selected.astype(np.float32)
    invalid = ~np.isfinite(as_float)
    marker = nodata_as(nodata, selected.dtype)
    if marker is not None:
        invalid |= selected == marker
    means = np.broadcast_to(np.asarray(model.band_mean, dtype=np.float32), as_float.shape)
    return np.where(invalid, means, as_float)


def pixels_of(dtype: str, shape: tuple[int, ...], rng) -> np.ndarray:
    if dtype.startswith("float"):
        pixels = (rng.normal(size=shape) * 100).astype(dtype)
        pixels.flat[::7], pixels.flat[::11], pixels.flat[::13] = np.nan, -np.inf, 3
        if dtype == "float64":
            pixels.flat[::17] = 1e300  # infinite as float32
        return pixels
    info = np.iinfo(dtype)
    pixels = rng.integers(max(info.min, -50), min(info.max, 50), size=shape).astype(dtype)
    pixels.flat[::5], pixels.flat[::9] = 0, 3
    return pixels


DTYPES = ["uint8", "uint16", "int16", "uint32", "int32", "float32", "float64"]
BANDS = [(1, 2, 3, 4, 5), (4, 3, 1), (5,), (2, 2, 1), (2, 3, 4, 5, 1)]
NODATA = [None, 0, 3, -9999, 1.5, float("nan"), 1e40]  # None: the dataset's (3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_prepare_follows_the_rule_for_every_type_nodata_and_band_selection(dtype):
    rng = np.random.default_rng(DTYPES.index(dtype))
    for bands in BANDS:
        model = ModelInput(
            dataset_bands=5, bands=bands, band_mean=tuple(10.5 * b for b in bands), nodata=3
        )
        for nodata in NODATA:
            for shape in [(6, 7, 5), (4, 6, 7, 5)]:
                pixels = pixels_of(dtype, shape, rng)
                # As read_tile returns them: band-first in memory, (..., H, W, bands) in shape.
                band_first = np.moveaxis(np.ascontiguousarray(np.moveaxis(pixels, -1, 0)), 0, -1)
                for layout in (pixels, band_first):
                    out = prepare(layout, model, nodata)
                    assert out.dtype == np.float32 and out.flags.c_contiguous
                    assert out.shape == (*shape[:-1], len(bands))
                    np.testing.assert_array_equal(out, reference(layout, model, nodata))


def test_prepare_falls_back_to_the_dataset_nodata():
    model = ModelInput(dataset_bands=2, bands=(1, 2), band_mean=(5.0, 6.0), nodata=7)
    pixels = np.array([[[7, 1], [2, 7]]], dtype="uint16")
    np.testing.assert_array_equal(prepare(pixels, model), [[[5.0, 1.0], [2.0, 6.0]]])
    np.testing.assert_array_equal(prepare(pixels, model, 1), [[[7.0, 6.0], [2.0, 7.0]]])


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_invalid_and_valid_pixels(dtype):
    pixels = np.array([[[0, 1], [2, 3]]], dtype=dtype)
    if dtype == "float32":
        pixels[0, 1, 0] = np.nan
    expected = [[[True, False], [dtype == "float32", False]]]
    np.testing.assert_array_equal(invalid_pixels(pixels, 0), expected)
    np.testing.assert_array_equal(valid_pixels(pixels, 0), [[False, dtype != "float32"]])
    no_marker = invalid_pixels(pixels, None)
    assert no_marker.shape == pixels.shape and no_marker.sum() == (dtype == "float32")
