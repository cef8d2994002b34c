"""Opening untrusted GeoTIFFs: TIFF bytes only, GTiff driver only, size checked before pixels."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from anyband.errors import InvalidRasterError
from anyband.rasters import TIFF_MAGICS, RasterInfo, format_bytes, open_geotiff, read_tile
from tests.tiles import (
    DEFAULT_TRANSFORM,
    huge_tiff_header,
    random_tiles,
    tile_bytes,
    truncated,
    vrt_text,
    write_tile,
)

BUDGET = 256 * 2**20


def test_read_tile_returns_height_width_bands_and_the_header(tmp_path):
    array = random_tiles(1, shape=(40, 48, 5), dtype="uint16")[0]
    path = write_tile(tmp_path / "t.tif", array, nodata=0)

    pixels, info = read_tile(path, max_bytes=BUDGET)

    np.testing.assert_array_equal(pixels, array)
    assert info == RasterInfo(
        width=48,
        height=40,
        count=5,
        dtype="uint16",
        nodata=0.0,
        crs="EPSG:32633",
        transform=tuple(DEFAULT_TRANSFORM[:6]),
    )
    assert info.nbytes == 40 * 48 * 5 * 2


def test_unreferenced_tile_has_no_crs_or_transform_and_no_warning(tmp_path):
    array = random_tiles(1, shape=(32, 32, 2), dtype="uint8")[0]
    path = write_tile(tmp_path / "chip.tif", array, crs=None)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels, info = read_tile(path, max_bytes=BUDGET)

    assert (info.crs, info.transform) == (None, None)
    np.testing.assert_array_equal(pixels, array)


@pytest.mark.parametrize("endianness", ["LITTLE", "BIG"])
@pytest.mark.parametrize("bigtiff", ["NO", "YES"])
def test_every_tiff_signature_is_accepted(tmp_path, endianness, bigtiff):
    array = random_tiles(1, shape=(32, 32, 2), dtype="int16")[0]
    path = write_tile(tmp_path / "t.tif", array, ENDIANNESS=endianness, BIGTIFF=bigtiff)
    magic = {"LITTLE": {"NO": b"II*\0", "YES": b"II+\0"}, "BIG": {"NO": b"MM\0*", "YES": b"MM\0+"}}
    assert path.read_bytes()[:4] == magic[endianness][bigtiff]
    assert magic[endianness][bigtiff] in TIFF_MAGICS

    pixels, _ = read_tile(path, max_bytes=BUDGET)

    np.testing.assert_array_equal(pixels, array)


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (b"class,tile\nwater,1\n", "class,tile"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "\\x89PNG"),
        (b"<VRTDataset rasterXSize='32'>", "<VRTDataset"),
    ],
)
def test_anything_without_a_tiff_signature_is_refused(tmp_path, content, shown):
    path = tmp_path / "scratch.tif"
    path.write_bytes(content)

    with pytest.raises(InvalidRasterError, match="is not a GeoTIFF") as error:
        read_tile(path, max_bytes=BUDGET, name="water/1.tif")

    assert "'water/1.tif'" in str(error.value)
    assert shown in str(error.value)


def test_vrt_renamed_tif_is_refused_before_gdal_would_follow_it(tmp_path):
    secret = write_tile(tmp_path / "secret.tif", random_tiles(1, dtype="uint16")[0])
    vrt = tmp_path / "innocent.tif"
    vrt.write_bytes(vrt_text(secret))
    with warnings.catch_warnings():  # the threat is real: GDAL, left alone, follows it
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(vrt) as dataset:
            assert dataset.driver == "VRT"
            np.testing.assert_array_equal(
                dataset.read(1), read_tile(secret, max_bytes=BUDGET)[0][..., 0]
            )

    with pytest.raises(InvalidRasterError, match=r"is not a GeoTIFF: it starts with '<VRTDataset"):
        read_tile(vrt, max_bytes=BUDGET)


def test_gtiff_driver_alone_also_refuses_a_vrt(tmp_path):
    """The second wall, should the signature check ever be bypassed."""
    secret = write_tile(tmp_path / "secret.tif", random_tiles(1, dtype="uint16")[0])
    vrt = tmp_path / "innocent.tif"
    vrt.write_bytes(vrt_text(secret))

    with pytest.raises(RasterioIOError, match="not recognized"):
        rasterio.open(vrt, driver="GTiff")


def test_huge_declared_size_is_refused_before_any_pixel_is_read(tmp_path):
    path = tmp_path / "huge.tif"
    path.write_bytes(huge_tiff_header(100_000, 100_000))
    assert path.stat().st_size < 200

    with pytest.raises(InvalidRasterError) as error:
        read_tile(path, max_bytes=BUDGET, name="a/x.tif")

    assert str(error.value) == (
        "'a/x.tif' declares 100000 x 100000 x 1 uint8 = 9.3 GiB, "
        "over the 256 MiB budget for one raster "
        "(ANYBAND_MAX_TILE_BYTES for a tile, ANYBAND_MAX_SCENE_BYTES for a scene)"
    )


def test_budget_counts_bands_and_itemsize(tmp_path):
    array = random_tiles(1, shape=(32, 32, 4), dtype="float32")[0]
    path = write_tile(tmp_path / "t.tif", array)

    read_tile(path, max_bytes=32 * 32 * 4 * 4)
    with pytest.raises(InvalidRasterError, match=r"32 x 32 x 4 float32 = 16 KiB"):
        read_tile(path, max_bytes=32 * 32 * 4 * 4 - 1)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.9])
def test_truncated_tiff_is_refused_with_gdal_reason_and_no_scratch_path(tmp_path, keep):
    data = tile_bytes(random_tiles(1, shape=(64, 64, 3), dtype="uint16")[0])
    path = tmp_path / "scratch.tif"
    path.write_bytes(truncated(data, keep))

    with pytest.raises(InvalidRasterError, match="is a truncated or corrupt TIFF") as error:
        read_tile(path, max_bytes=BUDGET, name="water/7.tif")

    assert "'water/7.tif'" in str(error.value)
    assert str(tmp_path) not in str(error.value)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")

    with pytest.raises(InvalidRasterError, match="is not a GeoTIFF: the file is empty"):
        read_tile(path, max_bytes=BUDGET)


def test_complex_pixels_are_refused(tmp_path):
    path = write_tile(tmp_path / "complex.tif", np.ones((32, 32, 1), dtype="complex64"))

    with pytest.raises(InvalidRasterError, match="has pixel type complex64; expected one of"):
        read_tile(path, max_bytes=BUDGET)


def test_missing_file_is_an_invalid_raster(tmp_path):
    with (
        pytest.raises(InvalidRasterError, match=r"cannot read 'gone\.tif'"),
        open_geotiff(tmp_path / "gone.tif", max_bytes=BUDGET),
    ):
        pass


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (2**20, "1 MiB"),
        (256 * 2**20, "256 MiB"),
        (10**10, "9.3 GiB"),
        (3 * 2**40, "3 TiB"),
    ],
)
def test_format_bytes_uses_binary_units(size, text):
    assert format_bytes(size) == text


def test_bytes_are_read_like_the_file_they_came_from(tmp_path):
    array = random_tiles(1, shape=(40, 48, 5), dtype="uint16")[0]
    path = write_tile(tmp_path / "t.tif", array, nodata=0)

    from_bytes = read_tile(path.read_bytes(), max_bytes=BUDGET, name="upload.tif")
    from_file = read_tile(path, max_bytes=BUDGET)

    np.testing.assert_array_equal(from_bytes[0], from_file[0])
    assert from_bytes[1] == from_file[1]


def test_a_binary_file_is_shown_with_one_escape_per_byte():
    with pytest.raises(InvalidRasterError) as error:
        read_tile(b"\xbcc\xbdy\x04PK\x00\x00rest", max_bytes=BUDGET, name="r.tif")
    # Before: '\\xbcc\\xbdy\x04...': non-ASCII bytes escaped twice, control bytes once.
    assert "it starts with '\\xbcc\\xbdy\\x04PK\\x00\\x00rest', not a TIFF" in str(error.value)


def test_bytes_get_every_check_a_file_gets(tmp_path):
    secret = write_tile(tmp_path / "secret.tif", random_tiles(1, dtype="uint16")[0])
    with pytest.raises(
        InvalidRasterError, match=r"'a\.tif' is not a GeoTIFF: it starts with '<VRT"
    ):
        read_tile(vrt_text(secret), max_bytes=BUDGET, name="a.tif")
    with pytest.raises(InvalidRasterError, match="the file is empty"):
        read_tile(b"", max_bytes=BUDGET, name="a.tif")
    with pytest.raises(InvalidRasterError, match=r"'h\.tif' declares 100000 x 100000"):
        read_tile(huge_tiff_header(100_000, 100_000), max_bytes=BUDGET, name="h.tif")
    data = tile_bytes(random_tiles(1, shape=(64, 64, 3), dtype="uint16")[0])
    with pytest.raises(
        InvalidRasterError, match=r"'w\.tif' is a truncated or corrupt TIFF"
    ) as error:
        read_tile(truncated(data, 0.5), max_bytes=BUDGET, name="w.tif")
    assert "/vsimem/" not in str(error.value)  # GDAL's in-memory path is replaced by the name


def test_without_georeferencing_the_pixels_and_nodata_are_the_same_and_no_crs_is_read(tmp_path):
    array = random_tiles(1, shape=(40, 48, 5), dtype="uint16")[0]
    path = write_tile(tmp_path / "t.tif", array, nodata=0)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels, info = read_tile(path.read_bytes(), max_bytes=BUDGET, georeferencing=False)
    georeferenced = read_tile(path, max_bytes=BUDGET)[1]

    np.testing.assert_array_equal(pixels, array)
    assert georeferenced.crs == "EPSG:32633"
    assert (info.crs, info.transform) == (None, None)
    assert info == RasterInfo(48, 40, 5, "uint16", 0.0, None, None)


def test_before_read_sees_the_checked_header_and_can_refuse_before_any_pixel(tmp_path):
    array = np.arange(40 * 48 * 3, dtype="uint16").reshape(40, 48, 3)
    data = tile_bytes(array, nodata=7)
    seen = []
    pixels, info = read_tile(data, max_bytes=2**20, before_read=seen.append)
    assert seen == [info] and (info.width, info.height, info.count) == (48, 40, 3)
    np.testing.assert_array_equal(pixels, array)

    class Refused(Exception):
        pass

    def refuse(info):
        raise Refused(info.nbytes)

    with pytest.raises(Refused, match=str(40 * 48 * 3 * 2)):
        read_tile(data, max_bytes=2**20, before_read=refuse)
    # The header budget comes first: an oversized tile never reaches before_read.
    with pytest.raises(InvalidRasterError, match="budget"):
        read_tile(data, max_bytes=1024, before_read=refuse)


def test_concurrent_reads_of_unreferenced_tiles_warn_nothing():
    # The API reads tiles in many threads. A per-read warnings.catch_warnings let, in one run,
    # about one NotGeoreferencedWarning in a thousand reads through: the threads restored each
    # other's warning filters.
    data = tile_bytes(random_tiles(1, shape=(32, 32, 3), dtype="uint16")[0], crs=None)
    failures = []

    def reads():
        try:
            for i in range(300):
                pixels, info = read_tile(data, max_bytes=BUDGET, georeferencing=bool(i % 2))
                assert pixels.shape == (32, 32, 3) and info.transform is None
        except BaseException as error:  # reported by the test thread below
            failures.append(error)

    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", append=True)  # each one anyband's filters let through
        threads = [threading.Thread(target=reads) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures
    assert [str(warning.message) for warning in caught] == []
