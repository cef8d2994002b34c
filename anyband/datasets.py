"""Ingest an untrusted zip of `<class>/<tile>.tif` into a float32 training cache with band stats."""

from __future__ import annotations

import json
import lzma
import math
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from rasterio.io import DatasetReader
from rasterio.windows import Window

from anyband.errors import DatasetNotFoundError, InvalidDatasetError
from anyband.rasters import (
    MIN_TILE_SIZE,
    RasterInfo,
    format_bytes,
    nodata_as,
    open_geotiff,
    raster_info,
)
from anyband.settings import Settings

TILES_FILE = "tiles.npy"
LABELS_FILE = "labels.npy"
SUMMARY_FILE = "dataset.json"
STAGING_DIR = ".staging"
TILE_SUFFIXES = (".tif", ".tiff")
LAYOUT = "<class>/<tile>.tif"

_CHUNK_BYTES = 2**20
# Pixels converted at a time, so a large tile never sits whole in memory as float32 and float64.
_CHUNK_PIXELS = 2**20
# Small entries may compress very well (an all-nodata tile) and can do no harm; the ratio check
# starts once an entry has inflated this far.
_RATIO_GRACE_BYTES = 2**20
# What zipfile and its decompressors raise on a truncated or corrupt member.
_ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
)


def _default(setting: str):
    return Settings.model_fields[setting].default


@dataclass(frozen=True)
class DatasetLimits:
    """What one upload may cost; every byte count is counted on bytes actually read."""

    # Defaults are the settings' defaults (anyband.settings is the one place for limits).
    max_entries: int = _default("max_zip_entries")
    max_total_bytes: int = _default("max_dataset_bytes")  # all tiles, uncompressed
    max_entry_bytes: int = _default("max_entry_bytes")  # one tile, uncompressed
    max_compression_ratio: float = _default("max_compression_ratio")  # bytes read / compressed
    max_tile_bytes: int = _default("max_tile_bytes")  # width x height x bands x itemsize
    max_cache_bytes: int = _default("max_cache_bytes")  # tiles.npy: N x H x W x bands x 4

    @classmethod
    def from_settings(cls, settings: Settings) -> DatasetLimits:
        return cls(
            max_entries=settings.max_zip_entries,
            max_total_bytes=settings.max_dataset_bytes,
            max_entry_bytes=settings.max_entry_bytes,
            max_compression_ratio=settings.max_compression_ratio,
            max_tile_bytes=settings.max_tile_bytes,
            max_cache_bytes=settings.max_cache_bytes,
        )


@dataclass
class DatasetSummary:
    """What a dataset holds; `files[i]` is tile i of tiles.npy, named `<class>/<tile>`."""

    num_tiles: int
    num_bands: int
    dtype: str
    tile_size: tuple[int, int]  # (height, width)
    classes: list[str]
    class_counts: dict[str, int]
    band_stats: dict[str, list[float]]  # {"mean": [...], "std": [...]}, raw band units
    nodata: float | None
    files: list[str] = field(repr=False)

    def to_dict(self) -> dict:
        return {
            "num_tiles": self.num_tiles,
            "num_bands": self.num_bands,
            "dtype": self.dtype,
            "tile_size": list(self.tile_size),
            "classes": list(self.classes),
            "class_counts": dict(self.class_counts),
            "band_stats": {key: list(values) for key, values in self.band_stats.items()},
            "nodata": self.nodata,
            "files": list(self.files),
        }


@dataclass(frozen=True)
class _Tile:
    info: zipfile.ZipInfo
    class_name: str
    file: str  # `<class>/<tile>`, without the top folder

    @property
    def entry(self) -> str:
        return self.info.filename


class _RunningStats:
    """Per-band count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.),
    all bands at once; float64 throughout."""

    def __init__(self, bands: int) -> None:
        self.count = np.zeros(bands, dtype=np.int64)
        self.mean = np.zeros(bands)
        self.m2 = np.zeros(bands)

    def add(self, values: np.ndarray, valid: np.ndarray) -> None:
        """`values` and `valid` are (..., bands); only valid values count."""
        values = values.reshape(-1, values.shape[-1]).astype(np.float64)
        valid = valid.reshape(values.shape)
        count = valid.sum(axis=0)
        if not count.any():
            return
        safe = np.maximum(count, 1)
        mean = np.where(valid, values, 0.0).sum(axis=0) / safe
        m2 = np.where(valid, np.square(values - mean), 0.0).sum(axis=0)
        total = self.count + count
        delta = mean - self.mean
        weight = np.divide(count, total, out=np.zeros(len(count)), where=total > 0)
        self.m2 += m2 + delta * delta * self.count * weight
        self.mean += delta * weight
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.maximum(self.count, 1))


def ingest_dataset_zip(
    zip_path: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    limits: DatasetLimits = DatasetLimits(),
) -> DatasetSummary:
    """Check a dataset zip and write tiles.npy, labels.npy and dataset.json into `dataset_dir`.

    Raises InvalidDatasetError (the zip or its layout) or InvalidRasterError (a tile) with a
    message naming the entry and the rule. Scratch files live in `dataset_dir/.staging` and
    are removed; on error nothing this call wrote is left, and nothing is written elsewhere.
    """
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(exist_ok=True)
    staging = dataset_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    published: list[Path] = []
    try:
        with _open_zip(zip_path) as archive:
            tiles = _plan(archive, limits)
            summary = _ingest(archive, Path(zip_path).stat().st_size, tiles, staging, limits)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
        for name in (TILES_FILE, LABELS_FILE, SUMMARY_FILE):  # dataset.json last: "complete"
            os.replace(staging / name, dataset_dir / name)
            published.append(dataset_dir / name)
    except BaseException:
        for path in published:
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def load_training_cache(dataset_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """tiles.npy memory-mapped read-only (N, H, W, bands), labels (N,) and the summary dict."""
    dataset_dir = Path(dataset_dir)
    missing = [
        name
        for name in (SUMMARY_FILE, TILES_FILE, LABELS_FILE)
        if not (dataset_dir / name).is_file()
    ]
    if missing:
        raise DatasetNotFoundError(
            f"{str(dataset_dir)!r} holds no ingested dataset ({', '.join(missing)} missing); "
            f"ingest a dataset zip first"
        )
    summary = json.loads((dataset_dir / SUMMARY_FILE).read_text())
    tiles = np.load(dataset_dir / TILES_FILE, mmap_mode="r")
    labels = np.load(dataset_dir / LABELS_FILE)
    if tiles.ndim != 4 or labels.shape != (tiles.shape[0],):
        raise InvalidDatasetError(
            f"{str(dataset_dir)!r} holds an inconsistent cache: tiles {tiles.shape}, "
            f"labels {labels.shape}; ingest the dataset again"
        )
    return tiles, labels, summary


def _open_zip(zip_path: str | os.PathLike) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        raise InvalidDatasetError(
            f"the upload is not a zip file, or is truncated ({error}); expected a zip of {LAYOUT}"
        ) from error


def _plan(archive: zipfile.ZipFile, limits: DatasetLimits) -> list[_Tile]:
    """Every rule that the entry names alone decide, checked before a byte is extracted."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise InvalidDatasetError(
            f"the zip has {len(infos)} entries; at most {limits.max_entries} are allowed "
            "(ANYBAND_MAX_ZIP_ENTRIES)"
        )
    seen: set[str] = set()
    kept: list[tuple[zipfile.ZipInfo, list[str]]] = []
    for info in infos:
        parts = _check_entry(info)
        if info.filename in seen:
            raise InvalidDatasetError(f"entry {info.filename!r} appears twice in the zip")
        seen.add(info.filename)
        if parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts):
            continue
        kept.append((info, parts))

    # One common top folder (the zip of a folder) is stripped; a zip holding a single class
    # folder keeps it, so it is refused as one class rather than as tiles outside any class.
    tops = {parts[0] for _, parts in kept}
    if len(tops) == 1 and any(not i.is_dir() and len(parts) > 2 for i, parts in kept):
        kept = [(info, parts[1:]) for info, parts in kept if len(parts) > 1]

    class_folders: set[str] = set()
    tiles: list[_Tile] = []
    for info, parts in kept:
        name = info.filename
        if info.is_dir():
            if len(parts) > 1:
                raise InvalidDatasetError(
                    f"folder {name!r} is nested too deep; expected {LAYOUT} "
                    f"(with at most one common top folder)"
                )
            class_folders.add(parts[0])
        elif not parts[-1].lower().endswith(TILE_SUFFIXES):
            raise InvalidDatasetError(
                f"entry {name!r} is not a .tif or .tiff tile; a dataset zip holds only {LAYOUT}"
            )
        elif len(parts) == 1:
            raise InvalidDatasetError(
                f"tile {name!r} is outside any class folder; expected {LAYOUT}"
            )
        elif len(parts) > 2:
            raise InvalidDatasetError(
                f"tile {name!r} is nested too deep; expected {LAYOUT} "
                f"(with at most one common top folder)"
            )
        else:
            tiles.append(_Tile(info, parts[0], "/".join(parts)))
    if not tiles:
        raise InvalidDatasetError(f"the zip holds no tiles; expected {LAYOUT}")

    counts = {name: 0 for name in class_folders}
    for tile in tiles:
        counts[tile.class_name] = counts.get(tile.class_name, 0) + 1
    for name, count in sorted(counts.items()):
        if count == 0:
            raise InvalidDatasetError(f"class folder {name + '/'!r} has no tiles")
    if len(counts) < 2:
        raise InvalidDatasetError(
            f"the zip holds one class ({next(iter(counts))!r}); a dataset needs at least 2 "
            f"classes, each a folder of tiles: {LAYOUT}"
        )
    for name, count in sorted(counts.items()):
        if count < 2:
            raise InvalidDatasetError(
                f"class {name!r} has {count} tile; each class needs at least 2"
            )
    return sorted(tiles, key=lambda tile: (tile.class_name, tile.file))


def _check_entry(info: zipfile.ZipInfo) -> list[str]:
    """The entry's path parts, or InvalidDatasetError if its name or type is unsafe."""
    name = info.filename
    if "\0" in name:
        raise InvalidDatasetError(f"entry name {name!r} contains a NUL byte")
    if name.startswith(("/", "\\")) or (name[:1].isalpha() and name[1:2] == ":"):
        raise InvalidDatasetError(
            f"entry {name!r} is an absolute path; expected relative paths like {LAYOUT}"
        )
    if "\\" in name:
        raise InvalidDatasetError(f"entry {name!r} uses backslashes; zip paths use '/'")
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        raise InvalidDatasetError(
            f"entry {name!r} has a '..' path component; entries must stay inside the zip"
        )
    if any(part in ("", ".") for part in parts):
        raise InvalidDatasetError(f"entry {name!r} has an empty or '.' path component")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise InvalidDatasetError(f"entry {name!r} is a symbolic link; links are refused")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise InvalidDatasetError(f"entry {name!r} is not a regular file or folder")
    if info.flag_bits & 0x1:
        raise InvalidDatasetError(f"entry {name!r} is encrypted; use a zip without a password")
    return parts


def _ingest(
    archive: zipfile.ZipFile,
    zip_size: int,
    tiles: list[_Tile],
    staging: Path,
    limits: DatasetLimits,
) -> DatasetSummary:
    classes = sorted({tile.class_name for tile in tiles})
    scratch = staging / "tile.tif"
    inflated = 0
    first: RasterInfo | None = None
    cache = None
    stats: _RunningStats | None = None
    nodata: float | None = None
    nodata_source = ""
    any_invalid = False
    try:
        for tile in tiles:
            inflated += _extract(archive, tile.info, scratch, zip_size, limits, inflated)
            with open_geotiff(scratch, max_bytes=limits.max_tile_bytes, name=tile.entry) as dataset:
                info = raster_info(dataset)
                if first is None:
                    first = info
                    _check_first_tile(info, tile, len(tiles), limits)
                    # Plain sequential writes, not a memmap: written pages of a memmap stay in
                    # the process's resident memory, which then grows with the dataset.
                    cache = open(staging / TILES_FILE, "wb")  # noqa: SIM115  closed below
                    np.lib.format.write_array_header_1_0(
                        cache,
                        {
                            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                            "fortran_order": False,
                            "shape": (len(tiles), info.height, info.width, info.count),
                        },
                    )
                    stats = _RunningStats(info.count)
                else:
                    for shared in _TRAITS:
                        trait = shared[1]
                        if trait(info) != trait(first):
                            raise _odd_ones_out(archive, zip_size, tiles, staging, limits, shared)
                if info.nodata is not None and math.isfinite(info.nodata):
                    if nodata is not None and info.nodata != nodata:
                        raise InvalidDatasetError(
                            f"mixed nodata values: {tile.entry!r} declares {info.nodata:g}, "
                            f"{nodata_source!r} declares {nodata:g}"
                        )
                    nodata, nodata_source = info.nodata, tile.entry
                any_invalid |= _copy_tile(dataset, info, cache, stats)
            scratch.unlink()
    finally:
        if cache is not None:
            cache.close()

    for band, count in enumerate(stats.count, start=1):
        if count == 0:
            raise InvalidDatasetError(
                f"band {band} has no valid pixel in any tile (all nodata, NaN or infinite)"
            )
    if any_invalid:
        _fill_invalid(staging / TILES_FILE, stats.mean.astype(np.float32))
    labels = np.array([classes.index(tile.class_name) for tile in tiles], dtype=np.int32)
    np.save(staging / LABELS_FILE, labels)
    return DatasetSummary(
        num_tiles=len(tiles),
        num_bands=first.count,
        dtype=first.dtype,
        tile_size=(first.height, first.width),
        classes=classes,
        class_counts={name: int((labels == i).sum()) for i, name in enumerate(classes)},
        band_stats={"mean": stats.mean.tolist(), "std": stats.std.tolist()},
        nodata=nodata,
        files=[tile.file for tile in tiles],
    )


def _extract(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    dest: Path,
    zip_size: int,
    limits: DatasetLimits,
    inflated_before: int,
) -> int:
    """Stream one entry to `dest`, counting the bytes it inflates to; returns that count."""
    name = info.filename
    # A compressed size larger than the file itself is a lie that would hide a high ratio.
    compressed = max(1, min(info.compress_size, zip_size))
    size = 0
    try:
        source = archive.open(info)
    except (*_ZIP_READ_ERRORS, RuntimeError) as error:
        raise InvalidDatasetError(f"entry {name!r} cannot be read: {error}") from error
    with source, open(dest, "wb") as out:
        while True:
            try:
                chunk = source.read(_CHUNK_BYTES)
            except _ZIP_READ_ERRORS as error:
                raise InvalidDatasetError(
                    f"entry {name!r} is corrupt or truncated: {error}"
                ) from error
            if not chunk:
                return size
            size += len(chunk)
            if size > limits.max_entry_bytes:
                raise InvalidDatasetError(
                    f"entry {name!r} inflates past {format_bytes(limits.max_entry_bytes)}, "
                    f"the limit for one file (ANYBAND_MAX_ENTRY_BYTES)"
                )
            if inflated_before + size > limits.max_total_bytes:
                raise InvalidDatasetError(
                    f"the tiles inflate past {format_bytes(limits.max_total_bytes)}, the limit "
                    f"for a whole dataset (ANYBAND_MAX_DATASET_BYTES; reached at entry {name!r})"
                )
            if size > _RATIO_GRACE_BYTES and size > compressed * limits.max_compression_ratio:
                raise InvalidDatasetError(
                    f"entry {name!r} inflates more than {limits.max_compression_ratio:g} times "
                    f"its compressed size of {format_bytes(compressed)}; refused as a zip bomb "
                    "(ANYBAND_MAX_COMPRESSION_RATIO)"
                )
            out.write(chunk)


def _check_first_tile(info: RasterInfo, tile: _Tile, num_tiles: int, limits: DatasetLimits):
    if min(info.height, info.width) < MIN_TILE_SIZE:
        raise InvalidDatasetError(
            f"tile {tile.entry!r} is {info.height} x {info.width} px (height x width); tiles "
            f"must be at least {MIN_TILE_SIZE} x {MIN_TILE_SIZE} px, the backbone's minimum"
        )
    cache_bytes = num_tiles * info.height * info.width * info.count * 4
    if cache_bytes > limits.max_cache_bytes:
        raise InvalidDatasetError(
            f"{num_tiles} tiles of {info.height} x {info.width} x {info.count} make a "
            f"{format_bytes(cache_bytes)} float32 training cache, over the "
            f"{format_bytes(limits.max_cache_bytes)} limit (ANYBAND_MAX_CACHE_BYTES)"
        )


# What every tile must share: (what it is called, its value in a header, how to say the value).
_TRAITS = (
    ("band counts", lambda info: info.count, lambda count: f"{count} bands"),
    ("pixel types", lambda info: info.dtype, str),
    ("tile sizes", lambda info: (info.height, info.width), lambda hw: f"{hw[0]} x {hw[1]} px"),
)


def _odd_ones_out(
    archive: zipfile.ZipFile,
    zip_size: int,
    tiles: list[_Tile],
    staging: Path,
    limits: DatasetLimits,
    shared: tuple,
) -> InvalidDatasetError:
    """The refusal of tiles that do not all share a trait (one of _TRAITS), naming the tiles
    that differ from most, not whichever came first (one odd tile that sorts first would blame
    all the others). Reads every tile's header again, within the same limits."""
    what, trait, show = shared
    seen: dict = {}
    scratch, inflated = staging / "header.tif", 0
    for tile in tiles:
        inflated += _extract(archive, tile.info, scratch, zip_size, limits, inflated)
        with open_geotiff(scratch, max_bytes=limits.max_tile_bytes, name=tile.entry) as dataset:
            seen.setdefault(trait(raster_info(dataset)), []).append(tile.entry)
        scratch.unlink()
    common = max(seen, key=lambda value: len(seen[value]))
    odd = [
        (entry, value) for value, entries in seen.items() if value != common for entry in entries
    ]
    named = ", ".join(f"{entry!r} has {show(value)}" for entry, value in odd[:3])
    more = f" and {len(odd) - 3} more differ" if len(odd) > 3 else ""
    return InvalidDatasetError(
        f"mixed {what}: {len(seen[common])} of {len(tiles)} tiles have {show(common)}, but "
        f"{named}{more}; every tile must have the same"
    )


def _copy_tile(
    dataset: DatasetReader, info: RasterInfo, out: BinaryIO, stats: _RunningStats
) -> bool:
    """Append one tile to `out` (H, W, bands) as float32 with NaN where a pixel is invalid
    (nodata, NaN, or infinite as float32), add its valid pixels to `stats`, say if any was not."""
    nodata = nodata_as(info.nodata, np.dtype(info.dtype))
    rows = max(1, _CHUNK_PIXELS // (info.width * info.count))
    any_invalid = False
    for top in range(0, info.height, rows):
        window = Window(0, top, info.width, min(rows, info.height - top))
        raw = np.moveaxis(dataset.read(window=window), 0, -1)
        with np.errstate(over="ignore"):
            values = raw.astype(np.float32)
        invalid = ~np.isfinite(values)
        if nodata is not None:
            invalid |= raw == nodata
        if invalid.any():
            any_invalid = True
            values[invalid] = np.nan
        out.write(values.tobytes())
        stats.add(values, ~invalid)
    return any_invalid


def _fill_invalid(tiles_path: Path, means: np.ndarray) -> None:
    """Second pass over tiles.npy, in chunks read and written back through the file (not a
    memmap, for the same reason as above): every invalid (NaN) pixel becomes its band's mean."""
    with open(tiles_path, "r+b") as cache:
        np.lib.format.read_magic(cache)
        np.lib.format.read_array_header_1_0(cache)
        offset = cache.tell()
        chunk = (_CHUNK_PIXELS * 4 // len(means)) * len(means) * 4  # whole pixels, in bytes
        while True:
            cache.seek(offset)
            block = np.frombuffer(cache.read(chunk), dtype=np.float32).copy()
            if block.size == 0:
                return
            values = block.reshape(-1, len(means))
            invalid = np.isnan(values)
            if invalid.any():
                np.copyto(values, means, where=invalid)
                cache.seek(offset)
                cache.write(values.tobytes())
            offset += block.nbytes
