"""prepare: raw pixels -> the model's float32 input, invalid values as the training cache holds
them, for every pixel type, nodata value, band selection and memory layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anyband.inference import (
    ModelInput,
    input_warnings,
    invalid_pixels,
    prepare,
    prepare_tile,
    valid_pixels,
)
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


# ---------------------------------------------------------------- input_warnings

LANDSAT_CHIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "landsat8-cloud-chips"


def trained_on(mean=(1000.0, 2000.0), std=(100.0, 400.0), dtype="uint16") -> ModelInput:
    bands = tuple(range(1, len(mean) + 1))
    return ModelInput(len(mean), bands, tuple(mean), nodata=0, dtype=dtype, band_std=tuple(std))


def like_training(model: ModelInput, rng, shape=(32, 32)) -> np.ndarray:
    values = rng.normal(model.band_mean, model.band_std, size=(*shape, len(model.bands)))
    return np.clip(values, 1, None).astype(model.dtype)


def warnings_for(pixels: np.ndarray, model: ModelInput) -> list[str]:
    prepared, valid = prepare_tile(pixels, model)
    return input_warnings(prepared, valid, str(pixels.dtype), model)


def test_a_tile_like_the_training_data_gets_no_warning():
    model = trained_on()

    assert warnings_for(like_training(model, np.random.default_rng(0)), model) == []


def test_a_tile_in_other_units_and_another_pixel_type_is_flagged_with_its_bands():
    model = trained_on()
    reflectance = np.full((32, 32, 2), [1000.0, 2000.0], dtype="float32") * 1e-4

    found = warnings_for(reflectance, model)

    assert len(found) == 2, found
    assert "pixel type is float32 and the training data's uint16" in found[0]
    # The means beside the training data's tell other units from the right ones in floats.
    assert "band means (the training data's): band 1 0.1 (1,000), band 2 0.2 (2,000)." in found[0]
    assert "band 1 averages 0.1 against 1,000 ± 100 (10.0 std away)" in found[1]
    assert "other units" in found[1]
    assert "band 2" not in found[1]  # 0.2 against 2000 ± 400: 5 std, within the 6 allowed


def test_the_same_units_in_another_pixel_type_only_name_the_type():
    model = trained_on()

    found = warnings_for(like_training(model, np.random.default_rng(2)).astype("float32"), model)

    assert len(found) == 1 and "pixel type is float32" in found[0]


def test_only_valid_pixels_count_towards_a_band_mean():
    model = trained_on()
    far = np.full((32, 32, 2), [1000 + 8 * 100, 2000], dtype="uint16")  # band 1: 8 std away
    far[:, :16] = 0  # half nodata: set to the band means, they must not dilute the 8
    near = far.copy()
    near[:, 16:, 0] = 1000 + 4 * 100

    found = warnings_for(far, model)

    assert (
        len(found) == 1 and "band 1 averages 1,800 against 1,000 ± 100 (8.0 std away)" in found[0]
    )
    assert "band 2" not in found[0]
    assert warnings_for(near, model) == []
    (nothing,) = warnings_for(np.zeros((32, 32, 2), "uint16"), model)
    assert "no pixel of the tile is valid" in nothing and "band means alone" in nothing


@pytest.mark.skipif(not LANDSAT_CHIPS.is_dir(), reason=f"{LANDSAT_CHIPS} is not on this machine")
def test_no_real_landsat_chip_is_flagged_against_the_statistics_of_all_of_them():
    import rasterio

    chips = []
    for path in sorted(LANDSAT_CHIPS.glob("*/*.tif")):
        with rasterio.open(path) as dataset:
            chips.append(np.moveaxis(dataset.read(), 0, -1))
    stack = np.stack(chips).astype(np.float64)
    model = ModelInput(4, (1, 2, 3, 4), tuple(stack.mean(axis=(0, 1, 2))), dtype="uint16",
                       band_std=tuple(stack.std(axis=(0, 1, 2))))  # fmt: skip

    assert len(chips) == 230
    assert [warnings_for(chip, model) for chip in chips] == [[]] * 230
    # The same chips as reflectance (Landsat Collection 2's scale and offset) average within 3
    # std of these digital numbers (whose std is large): their pixel type is what tells.
    reflectance = [(chip * 2.75e-5 - 0.2).astype("float32") for chip in chips[:5]]
    found = [warnings_for(chip, model) for chip in reflectance]
    assert all(len(w) == 1 and "pixel type is float32" in w[0] for w in found), found
