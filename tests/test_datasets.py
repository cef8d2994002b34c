"""Dataset zips in, float32 training cache out; every hostile or malformed upload refused cleanly."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from anyband import datasets
from anyband.datasets import (
    STAGING_DIR,
    DatasetLimits,
    DatasetSummary,
    _RunningStats,
    ingest_dataset_zip,
    load_training_cache,
)
from anyband.errors import DatasetNotFoundError, InvalidDatasetError, InvalidRasterError
from tests.tiles import (
    huge_tiff_header,
    mark_encrypted,
    random_tiles,
    read_tile_pixels,
    symlink_entry,
    tile_bytes,
    truncated,
    vrt_text,
    write_dataset_zip,
    write_tile,
    write_zip_bomb,
    zip_with,
)

LANDSAT_CHIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "landsat8-cloud-chips"
OUTPUTS = ["dataset.json", "labels.npy", "tiles.npy"]


class Sandbox:
    """Uploads in `uploads/`, the dataset folder at `data/datasets/d1`, the system temp folder
    moved inside, and a record of every path there before the ingest."""

    def __init__(self, root: Path):
        self.root = root
        self.uploads = root / "uploads"
        self.uploads.mkdir()
        self.dataset_dir = root / "data" / "datasets" / "d1"
        self.dataset_dir.parent.mkdir(parents=True)
        self.before: set[Path] = set()

    def snapshot(self) -> None:
        self.before = set(self.root.rglob("*"))

    def written_outside_dataset_dir(self) -> list[Path]:
        return sorted(
            path
            for path in set(self.root.rglob("*")) - self.before
            if not path.is_relative_to(self.dataset_dir)
        )

    def ingest(self, zip_path: Path, limits: DatasetLimits | None = None) -> DatasetSummary:
        self.snapshot()
        try:
            return ingest_dataset_zip(zip_path, self.dataset_dir, limits or DatasetLimits())
        finally:
            assert self.written_outside_dataset_dir() == []
            assert not (self.dataset_dir / STAGING_DIR).exists()

    def refuses(self, zip_path: Path, error=InvalidDatasetError, match=None, **limits) -> str:
        with pytest.raises(error, match=match) as raised:
            self.ingest(zip_path, DatasetLimits(**limits))
        assert sorted(self.dataset_dir.iterdir()) == []
        return str(raised.value)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    return Sandbox(tmp_path)


def with_holes(tiles: list[np.ndarray], value: float, seed: int = 1) -> list[np.ndarray]:
    """Copies with about 10% of pixels (each band on its own) set to `value`."""
    rng = np.random.default_rng(seed)
    holed = []
    for tile in tiles:
        tile = tile.copy()
        tile[rng.random(tile.shape) < 0.1] = value
        holed.append(tile)
    return holed


def expected_stats(tiles: list[np.ndarray], invalid) -> tuple[np.ndarray, np.ndarray]:
    stack = np.stack(tiles).astype(np.float32).astype(np.float64)
    stack[invalid(np.stack(tiles))] = np.nan
    return np.nanmean(stack, axis=(0, 1, 2)), np.nanstd(stack, axis=(0, 1, 2))


def check_cache(dataset_dir: Path, tiles: list[np.ndarray], invalid, means) -> None:
    cache, labels, summary = load_training_cache(dataset_dir)
    original = np.stack(tiles)
    mask = invalid(original)
    assert isinstance(cache, np.memmap)
    assert cache.dtype == np.float32
    assert cache.shape == original.shape
    assert not np.isnan(cache).any()
    np.testing.assert_array_equal(cache[~mask], original.astype(np.float32)[~mask])
    band_of_each_invalid = np.nonzero(mask)[-1]
    np.testing.assert_array_equal(cache[mask], means.astype(np.float32)[band_of_each_invalid])
    assert labels.dtype == np.int32
    assert summary == json.loads((dataset_dir / "dataset.json").read_text())


# Honest datasets


def test_float32_tiles_with_nan_give_nan_free_cache_and_stats_over_valid_pixels(sandbox):
    cloud = with_holes(random_tiles(3, shape=(32, 40, 5), dtype="float32", seed=1), np.nan)
    water = with_holes(random_tiles(2, shape=(32, 40, 5), dtype="float32", seed=2), np.nan)
    zip_path = write_dataset_zip(sandbox.uploads / "d.zip", {"water": water, "cloud": cloud})

    summary = sandbox.ingest(zip_path)

    def invalid(stack):
        return np.isnan(stack)

    tiles = cloud + water  # classes sorted, tiles sorted within each class
    mean, std = expected_stats(tiles, invalid)
    np.testing.assert_allclose(summary.band_stats["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(summary.band_stats["std"], std, rtol=1e-12)
    assert summary.num_tiles == 5
    assert (summary.num_bands, summary.dtype, summary.tile_size) == (5, "float32", (32, 40))
    assert summary.classes == ["cloud", "water"]
    assert summary.class_counts == {"cloud": 3, "water": 2}
    assert summary.nodata is None
    assert summary.files == [
        "cloud/cloud_0.tif",
        "cloud/cloud_1.tif",
        "cloud/cloud_2.tif",
        "water/water_0.tif",
        "water/water_1.tif",
    ]
    assert sorted(path.name for path in sandbox.dataset_dir.iterdir()) == OUTPUTS
    check_cache(sandbox.dataset_dir, tiles, invalid, mean)
    _, labels, saved = load_training_cache(sandbox.dataset_dir)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1])
    assert saved == summary.to_dict()
    assert saved["tile_size"] == [32, 40]


def test_uint16_thirteen_bands_with_nodata_under_a_top_folder(sandbox):
    nodata = 0
    forest = with_holes(random_tiles(2, shape=(48, 48, 13), seed=3), nodata)
    river = with_holes(random_tiles(3, shape=(48, 48, 13), seed=4), nodata)
    zip_path = write_dataset_zip(
        sandbox.uploads / "eurosat.zip",
        {"forest": forest, "river": river},
        top_folder="EuroSAT_MS",
        nodata=nodata,
    )

    summary = sandbox.ingest(zip_path)

    def invalid(stack):
        return stack == nodata

    tiles = forest + river
    mean, std = expected_stats(tiles, invalid)
    np.testing.assert_allclose(summary.band_stats["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(summary.band_stats["std"], std, rtol=1e-12)
    assert summary.classes == ["forest", "river"]
    assert summary.class_counts == {"forest": 2, "river": 3}
    assert (summary.num_bands, summary.dtype, summary.nodata) == (13, "uint16", 0.0)
    assert summary.files[0] == "forest/forest_0.tif"
    check_cache(sandbox.dataset_dir, tiles, invalid, mean)


def test_nodata_is_compared_in_the_tiles_own_type(sandbox):
    """GDAL stores nodata as text: 0.1 in a float32 tile must match float32(0.1) pixels."""
    nodata = 0.1
    tiles = with_holes(random_tiles(4, shape=(32, 32, 2), dtype="float32", seed=5), nodata)
    zip_path = write_dataset_zip(
        sandbox.uploads / "d.zip", {"a": tiles[:2], "b": tiles[2:]}, nodata=nodata
    )

    summary = sandbox.ingest(zip_path)

    def invalid(stack):
        return stack == np.float32(nodata)

    mean, _ = expected_stats(tiles, invalid)
    np.testing.assert_allclose(summary.band_stats["mean"], mean, rtol=1e-12)
    check_cache(sandbox.dataset_dir, tiles, invalid, mean)


def test_chunked_reads_and_fill_give_the_same_cache_as_whole_tiles(sandbox, monkeypatch):
    tiles = with_holes(random_tiles(6, shape=(40, 36, 3), dtype="float32", seed=6), np.nan)
    zip_path = write_dataset_zip(sandbox.uploads / "d.zip", {"a": tiles[:3], "b": tiles[3:]})
    whole = sandbox.ingest(zip_path)
    whole_cache = np.array(load_training_cache(sandbox.dataset_dir)[0])
    # 7 rows of a tile per read, and one tile per step of the fill pass
    monkeypatch.setattr(datasets, "_CHUNK_PIXELS", 36 * 3 * 7)

    chunked = sandbox.ingest(zip_path)

    np.testing.assert_allclose(chunked.band_stats["mean"], whole.band_stats["mean"], rtol=1e-12)
    np.testing.assert_allclose(chunked.band_stats["std"], whole.band_stats["std"], rtol=1e-12)
    np.testing.assert_array_equal(load_training_cache(sandbox.dataset_dir)[0], whole_cache)
    assert not np.isnan(whole_cache).any()


def test_macosx_folders_and_dotfiles_are_ignored_and_tiff_suffixes_accepted(sandbox):
    tiles = random_tiles(4)
    zip_path = zip_with(
        sandbox.uploads / "d.zip",
        {
            "a/one.tif": tile_bytes(tiles[0]),
            "a/two.TIFF": tile_bytes(tiles[1]),
            "b/three.tiff": tile_bytes(tiles[2]),
            "b/four.Tif": tile_bytes(tiles[3]),
            "__MACOSX/a/._one.tif": b"\0\5\26\7 resource fork",
            "a/.DS_Store": b"Bud1",
            ".hidden/notes.txt": b"private",
        },
    )

    summary = sandbox.ingest(zip_path)

    assert summary.files == ["a/one.tif", "a/two.TIFF", "b/four.Tif", "b/three.tiff"]


def test_single_top_folder_without_folder_entries_is_stripped(sandbox):
    zip_path = write_dataset_zip(
        sandbox.uploads / "d.zip",
        {"a": random_tiles(2), "b": random_tiles(2)},
        top_folder="upload",
        folder_entries=False,
    )

    assert sandbox.ingest(zip_path).classes == ["a", "b"]


def test_ingesting_again_replaces_the_cache(sandbox):
    first = write_dataset_zip(
        sandbox.uploads / "1.zip", {"a": random_tiles(2), "b": random_tiles(2)}
    )
    second = write_dataset_zip(
        sandbox.uploads / "2.zip",
        {"x": random_tiles(3), "y": random_tiles(2), "z": random_tiles(2)},
    )
    sandbox.ingest(first)

    sandbox.ingest(second)

    tiles, labels, summary = load_training_cache(sandbox.dataset_dir)
    assert (tiles.shape[0], len(labels), summary["classes"]) == (7, 7, ["x", "y", "z"])


def test_running_stats_stay_exact_far_from_zero():
    """Sum-of-squares would lose every digit of this variance; Chan's merge keeps them."""
    rng = np.random.default_rng(0)
    values = 1e9 + rng.normal(size=10_000)
    stats = _RunningStats(bands=1)
    for chunk in np.array_split(values, 37):
        stats.add(chunk[:, None], np.ones((chunk.size, 1), dtype=bool))

    assert stats.count[0] == values.size
    np.testing.assert_allclose(stats.mean[0], values.mean(), rtol=1e-15)
    np.testing.assert_allclose(stats.std[0], values.std(), rtol=1e-9)


@pytest.mark.skipif(not LANDSAT_CHIPS.is_dir(), reason=f"{LANDSAT_CHIPS} is not on this machine")
def test_real_landsat8_cloud_chips(sandbox):
    chips = {name: sorted((LANDSAT_CHIPS / name).glob("*.tif"))[:3] for name in ("clear", "cloudy")}
    zip_path = sandbox.uploads / "38cloud.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, paths in chips.items():
            for path in paths:
                archive.write(path, f"38-Cloud/{name}/{path.name}")

    summary = sandbox.ingest(zip_path)

    assert (summary.num_bands, summary.dtype, summary.tile_size) == (4, "uint16", (64, 64))
    assert summary.class_counts == {"clear": 3, "cloudy": 3}
    pixels = np.stack(
        [read_tile_pixels(path.read_bytes()) for paths in chips.values() for path in paths]
    ).astype(np.float64)
    np.testing.assert_allclose(summary.band_stats["mean"], pixels.mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(summary.band_stats["std"], pixels.std(axis=(0, 1, 2)))
    tiles, _, _ = load_training_cache(sandbox.dataset_dir)
    np.testing.assert_array_equal(tiles, pixels.astype(np.float32))


def test_loading_a_folder_without_a_dataset_says_so(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"dataset\.json, tiles\.npy, labels\.npy"):
        load_training_cache(tmp_path)


# Broken or hostile zips


def two_classes(**kwargs) -> dict[str, list[np.ndarray]]:
    return {"a": random_tiles(2, **kwargs), "b": random_tiles(2, **kwargs)}


def test_not_a_zip(sandbox):
    path = sandbox.uploads / "d.zip"
    path.write_bytes(b"just some text, not a zip\n")

    sandbox.refuses(path, match=r"the upload is not a zip file, or is truncated")


def test_truncated_zip(sandbox):
    path = write_dataset_zip(sandbox.uploads / "d.zip", two_classes())
    path.write_bytes(truncated(path.read_bytes(), 0.7))

    sandbox.refuses(path, match=r"the upload is not a zip file, or is truncated")


def test_corrupt_member_data(sandbox):
    path = write_dataset_zip(sandbox.uploads / "d.zip", two_classes(), folder_entries=False)
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[1]
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 20 : start + 60] = bytes(range(40))
    path.write_bytes(bytes(data))

    message = sandbox.refuses(path, match=r"is corrupt or truncated")
    assert repr(info.filename) in message


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("../evil.tif", r"has a '\.\.' path component"),
        ("a/../../evil.tif", r"has a '\.\.' path component"),
        ("/etc/x", r"is an absolute path"),
        ("/a/x.tif", r"is an absolute path"),
        ("C:/a/x.tif", r"is an absolute path"),
        ("\\\\server\\share\\x.tif", r"is an absolute path"),
        ("a\\x.tif", r"uses backslashes"),
        ("a//x.tif", r"has an empty or '\.' path component"),
    ],
)
def test_unsafe_entry_names(sandbox, name, rule):
    path = write_dataset_zip(sandbox.uploads / "d.zip", two_classes(), extra={name: b"x"})

    message = sandbox.refuses(path, match=rule)
    assert repr(name) in message


def test_symlink_entry(sandbox):
    info, target = symlink_entry("a/link.tif", "/etc/passwd")
    path = write_dataset_zip(sandbox.uploads / "d.zip", two_classes(), extra={info: target})

    sandbox.refuses(path, match=r"entry 'a/link\.tif' is a symbolic link")


def test_encrypted_entry(sandbox):
    path = write_dataset_zip(
        sandbox.uploads / "d.zip", two_classes(), extra={"a/locked.tif": b"x" * 64}
    )
    mark_encrypted(path, "a/locked.tif")

    sandbox.refuses(path, match=r"entry 'a/locked\.tif' is encrypted")


def test_duplicate_entry(sandbox):
    tiles = two_classes()
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = write_dataset_zip(
            sandbox.uploads / "d.zip", tiles, extra={"a/a_0.tif": tile_bytes(tiles["a"][0])}
        )

    sandbox.refuses(path, match=r"entry 'a/a_0\.tif' appears twice")


def test_zip_bomb_past_the_entry_limit(sandbox):
    path = write_zip_bomb(sandbox.uploads / "d.zip", "a/bomb.tif", 8 * 2**20, extra=two_flat())
    assert path.stat().st_size < 100_000

    sandbox.refuses(
        path,
        match=r"entry 'a/bomb\.tif' inflates past 4 MiB, the limit for one file \(ANYBAND_MAX_ENTRY_BYTES\)",
        max_entry_bytes=4 * 2**20,
        max_compression_ratio=10_000,
    )


def test_zip_bomb_past_the_compression_ratio(sandbox):
    path = write_zip_bomb(sandbox.uploads / "d.zip", "a/bomb.tif", 8 * 2**20, extra=two_flat())

    sandbox.refuses(
        path, match=r"inflates more than 100 times .* zip bomb \(ANYBAND_MAX_COMPRESSION_RATIO\)"
    )


def test_tiles_past_the_dataset_total(sandbox):
    path = write_dataset_zip(sandbox.uploads / "d.zip", two_classes(shape=(64, 64, 4)))

    sandbox.refuses(
        path,
        match=r"the tiles inflate past 64 KiB, the limit for a whole dataset \(ANYBAND_MAX_DATASET_BYTES",
        max_total_bytes=64 * 2**10,
    )


def test_too_many_entries(sandbox):
    path = write_dataset_zip(
        sandbox.uploads / "d.zip", {"a": random_tiles(3), "b": random_tiles(3)}
    )

    sandbox.refuses(
        path,
        match=r"the zip has 8 entries; at most 7 are allowed \(ANYBAND_MAX_ZIP_ENTRIES\)",
        max_entries=7,
    )


def test_cache_past_its_budget(sandbox):
    path = write_dataset_zip(sandbox.uploads / "d.zip", two_classes(shape=(32, 32, 3)))

    sandbox.refuses(
        path,
        match=r"4 tiles of 32 x 32 x 3 make a 48 KiB float32 training cache, over the 32 KiB",
        max_cache_bytes=32 * 2**10,
    )


def two_flat() -> dict[str, bytes]:
    """Enough honest tiles beside a hostile one for the layout rules to pass."""
    tiles = random_tiles(3)
    return {
        "a/ok.tif": tile_bytes(tiles[0]),
        "b/1.tif": tile_bytes(tiles[1]),
        "b/2.tif": tile_bytes(tiles[2]),
    }


# Tiles that are not GeoTIFFs, or not the same kind


def test_text_renamed_tif(sandbox):
    path = zip_with(sandbox.uploads / "d.zip", {**two_flat(), "a/notes.tif": b"field,value\n"})

    sandbox.refuses(
        path, InvalidRasterError, match=r"'a/notes\.tif' is not a GeoTIFF: it starts with 'field"
    )


def test_truncated_tiff(sandbox):
    data = truncated(tile_bytes(random_tiles(1, shape=(64, 64, 3))[0]), 0.5)
    path = zip_with(sandbox.uploads / "d.zip", {**two_flat(), "a/cut.tif": data})

    message = sandbox.refuses(
        path, InvalidRasterError, match=r"'a/cut\.tif' is a truncated or corrupt TIFF"
    )
    assert STAGING_DIR not in message


def test_vrt_renamed_tif_pointing_at_a_real_file(sandbox, tmp_path):
    secret = write_tile(tmp_path / "secret.tif", random_tiles(1)[0])
    path = zip_with(sandbox.uploads / "d.zip", {**two_flat(), "a/x.tif": vrt_text(secret)})

    sandbox.refuses(
        path,
        InvalidRasterError,
        match=r"'a/x\.tif' is not a GeoTIFF: it starts with '<VRTDataset ",
    )


def test_tiff_declaring_100000_by_100000(sandbox):
    path = zip_with(sandbox.uploads / "d.zip", {**two_flat(), "a/huge.tif": huge_tiff_header()})
    assert path.stat().st_size < 20_000

    sandbox.refuses(
        path,
        InvalidRasterError,
        match=r"'a/huge\.tif' declares 100000 x 100000 x 1 uint8 = 9\.3 GiB, over the 256 MiB",
    )


def test_mixed_band_counts(sandbox):
    tiles = {"a": random_tiles(2, shape=(32, 32, 5)), "b": random_tiles(2, shape=(32, 32, 4))}
    path = write_dataset_zip(sandbox.uploads / "d.zip", tiles)

    sandbox.refuses(
        path,
        match=r"mixed band counts: 2 of 4 tiles have 5 bands, but 'b/b_0\.tif' has 4 bands, "
        r"'b/b_1\.tif' has 4 bands; every tile must have the same",
    )


def test_mixed_dtypes(sandbox):
    tiles = {"a": random_tiles(2), "b": random_tiles(2, dtype="uint8")}
    path = write_dataset_zip(sandbox.uploads / "d.zip", tiles)

    sandbox.refuses(
        path, match=r"mixed pixel types: 2 of 4 tiles have uint16, but 'b/b_0\.tif' has uint8"
    )


def test_mixed_sizes(sandbox):
    tiles = {"a": random_tiles(2, shape=(32, 48, 3)), "b": random_tiles(2, shape=(48, 32, 3))}
    path = write_dataset_zip(sandbox.uploads / "d.zip", tiles)

    sandbox.refuses(
        path,
        match=r"mixed tile sizes: 2 of 4 tiles have 32 x 48 px, but 'b/b_0\.tif' has 48 x 32 px",
    )


def test_one_odd_tile_that_comes_first_is_the_one_named(sandbox):
    tiles = {"a": random_tiles(1, shape=(32, 32, 3)) + random_tiles(2, shape=(32, 32, 4))}
    tiles["b"] = random_tiles(3, shape=(32, 32, 4))
    path = write_dataset_zip(sandbox.uploads / "d.zip", tiles)

    sandbox.refuses(
        path, match=r"mixed band counts: 5 of 6 tiles have 4 bands, but 'a/a_0\.tif' has 3 bands;"
    )


def test_many_odd_tiles_are_counted_not_all_listed(sandbox):
    tiles = {"a": random_tiles(6, shape=(32, 32, 3)), "b": random_tiles(2, shape=(32, 32, 3))}
    tiles["b"] += random_tiles(5, shape=(32, 32, 3), dtype="uint8")
    path = write_dataset_zip(sandbox.uploads / "d.zip", tiles)

    sandbox.refuses(
        path,
        match=r"mixed pixel types: 8 of 13 tiles have uint16, but 'b/b_2\.tif' has uint8, "
        r"'b/b_3\.tif' has uint8, 'b/b_4\.tif' has uint8 and 2 more differ;",
    )


def test_mixed_nodata_values(sandbox):
    path = zip_with(
        sandbox.uploads / "d.zip",
        {
            "a/1.tif": tile_bytes(random_tiles(1)[0], nodata=0),
            "a/2.tif": tile_bytes(random_tiles(1)[0]),
            "b/1.tif": tile_bytes(random_tiles(1)[0], nodata=65535),
            "b/2.tif": tile_bytes(random_tiles(1)[0], nodata=0),
        },
    )

    sandbox.refuses(
        path, match=r"mixed nodata values: 'b/1\.tif' declares 65535, 'a/1\.tif' declares 0"
    )


def test_tiles_under_32_px(sandbox):
    path = write_dataset_zip(sandbox.uploads / "d.zip", two_classes(shape=(31, 64, 3)))

    sandbox.refuses(
        path, match=r"tile 'a/a_0\.tif' is 31 x 64 px .* at least 32 x 32 px, the backbone's"
    )


def test_band_without_any_valid_pixel(sandbox):
    tiles = random_tiles(4, shape=(32, 32, 3), dtype="float32")
    for tile in tiles:
        tile[..., 1] = np.nan
    path = write_dataset_zip(sandbox.uploads / "d.zip", {"a": tiles[:2], "b": tiles[2:]})

    sandbox.refuses(path, match=r"band 2 has no valid pixel in any tile")


# Layouts


def test_one_class_only(sandbox):
    path = write_dataset_zip(sandbox.uploads / "d.zip", {"water": random_tiles(3)})

    sandbox.refuses(path, match=r"the zip holds one class \('water'\); .* at least 2 classes")


def test_class_with_one_tile(sandbox):
    path = write_dataset_zip(
        sandbox.uploads / "d.zip", {"land": random_tiles(2), "water": random_tiles(1)}
    )

    sandbox.refuses(path, match=r"class 'water' has 1 tile; each class needs at least 2")


def test_empty_class_folder(sandbox):
    path = write_dataset_zip(sandbox.uploads / "d.zip", {**two_classes(), "ice": []})

    sandbox.refuses(path, match=r"class folder 'ice/' has no tiles")


def test_tiles_outside_class_folders(sandbox):
    path = write_dataset_zip(
        sandbox.uploads / "d.zip",
        two_classes(),
        extra={"loose.tif": tile_bytes(random_tiles(1)[0])},
    )

    sandbox.refuses(path, match=r"tile 'loose\.tif' is outside any class folder")


def test_tiles_outside_class_folders_under_a_top_folder(sandbox):
    path = write_dataset_zip(
        sandbox.uploads / "d.zip",
        two_classes(),
        top_folder="top",
        extra={"top/loose.tif": tile_bytes(random_tiles(1)[0])},
    )

    sandbox.refuses(path, match=r"tile 'top/loose\.tif' is outside any class folder")


def test_deeper_nesting(sandbox):
    path = write_dataset_zip(
        sandbox.uploads / "d.zip",
        two_classes(),
        extra={"a/2019/x.tif": tile_bytes(random_tiles(1)[0])},
    )

    sandbox.refuses(path, match=r"tile 'a/2019/x\.tif' is nested too deep")


def test_other_files_are_refused(sandbox):
    path = write_dataset_zip(
        sandbox.uploads / "d.zip", two_classes(), extra={"a/readme.txt": b"hi"}
    )

    sandbox.refuses(path, match=r"entry 'a/readme\.txt' is not a \.tif or \.tiff tile")


def test_zip_without_tiles(sandbox):
    path = zip_with(sandbox.uploads / "d.zip", {"__MACOSX/._x": b"", ".DS_Store": b""})

    sandbox.refuses(path, match=r"the zip holds no tiles")
