"""Write the GeoTIFFs and dataset zips the tests use, honest and hostile, from code rather than blobs."""

from __future__ import annotations

import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.transform import Affine

# 10 m pixels from (500000, 5000000), north up.
DEFAULT_TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)


def tile_bytes(
    array: np.ndarray,
    *,
    nodata: float | None = None,
    crs: str | None = "EPSG:32633",
    transform: Affine | None = DEFAULT_TRANSFORM,
    **creation_options,
) -> bytes:
    """A GeoTIFF of an (H, W, bands) array, as bytes; `crs=None` writes an unreferenced one."""
    height, width, count = array.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": array.dtype.name,
        "nodata": nodata,
        "compress": "deflate",
        **creation_options,
    }
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with MemoryFile() as memory, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with memory.open(**profile) as dataset:
            dataset.write(np.moveaxis(array, -1, 0))
        return memory.read()


def write_tile(path: str | Path, array: np.ndarray, **kwargs) -> Path:
    """Write an (H, W, bands) array as a GeoTIFF; keywords (creation options too) as for
    `tile_bytes`."""
    path = Path(path)
    path.write_bytes(tile_bytes(array, **kwargs))
    return path


def write_dataset_zip(
    zip_path: str | Path,
    classes: Mapping[str, Iterable[np.ndarray]],
    *,
    top_folder: str | None = None,
    dtype: str | None = None,
    nodata: float | None = None,
    extra: Mapping[str | zipfile.ZipInfo, bytes] | None = None,
    folder_entries: bool = True,
) -> Path:
    """A zip of `<class>/<class>_<i>.tif` tiles (optionally under `top_folder/`), plus `extra`
    entries written as given. `dtype` casts every array first."""
    zip_path = Path(zip_path)
    prefix = f"{top_folder}/" if top_folder else ""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        if prefix and folder_entries:
            archive.writestr(prefix, b"")
        for name, arrays in classes.items():
            if folder_entries:
                archive.writestr(f"{prefix}{name}/", b"")
            for i, array in enumerate(arrays):
                array = array.astype(dtype) if dtype else array
                archive.writestr(f"{prefix}{name}/{name}_{i}.tif", tile_bytes(array, nodata=nodata))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return zip_path


def random_tiles(count: int, shape=(32, 32, 3), dtype="uint16", seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 1000, size=shape).astype(dtype) for _ in range(count)]


def symlink_entry(name: str, target: str = "/etc/passwd") -> tuple[zipfile.ZipInfo, bytes]:
    """A zip entry that unzip would restore as a symbolic link to `target`."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so external_attr's high half is a file mode
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def write_zip_bomb(zip_path: str | Path, entry: str, size: int, extra=None) -> Path:
    """A zip whose `entry` is `size` zero bytes, deflated to about a thousandth of that."""
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(entry, "w", force_zip64=True) as out:
            chunk = bytes(2**20)
            for start in range(0, size, len(chunk)):
                out.write(chunk[: size - start])
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return zip_path


def vrt_text(source: str | Path, width: int = 32, height: int = 32) -> bytes:
    """A GDAL VRT whose band 1 is band 1 of `source`: what a hostile .tif could really be."""
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">\n'
        f'  <VRTRasterBand dataType="UInt16" band="1">\n'
        f"    <SimpleSource>\n"
        f'      <SourceFilename relativeToVRT="0">{source}</SourceFilename>\n'
        f"      <SourceBand>1</SourceBand>\n"
        f"    </SimpleSource>\n"
        f"  </VRTRasterBand>\n"
        f"</VRTDataset>\n"
    ).encode()


def huge_tiff_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid little-endian TIFF of width x height uint8 pixels in one deflate strip, about
    130 bytes long: GDAL opens it and reports its size, and reading it would fail or explode."""
    strip = zlib.compress(bytes(16))
    # (tag, type, value); type 3 is SHORT, 4 is LONG; StripOffsets is filled in below.
    entries = [
        (256, 4, width),  # ImageWidth
        (257, 4, height),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 8),  # Compression: deflate
        (262, 3, 1),  # PhotometricInterpretation: min-is-black
        (273, 4, 0),  # StripOffsets
        (277, 3, 1),  # SamplesPerPixel
        (278, 4, height),  # RowsPerStrip
        (279, 4, len(strip)),  # StripByteCounts
    ]
    strip_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = strip_offset if tag == 273 else value
        ifd += struct.pack("<HHI", tag, kind, 1)
        ifd += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + strip


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def read_tile_pixels(data: bytes) -> np.ndarray:
    """(H, W, bands) pixels of a GeoTIFF held in memory."""
    with MemoryFile(data) as memory, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with memory.open() as dataset:
            return np.moveaxis(dataset.read(), 0, -1)


def zip_with(zip_path: str | Path, entries: Mapping[str | zipfile.ZipInfo, bytes]) -> Path:
    """A zip of exactly `entries`, names (or ZipInfos) kept as given, however hostile."""
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return zip_path


def mark_encrypted(zip_path: str | Path, entry: str) -> Path:
    """Set the 'encrypted' flag of `entry` in its local and central headers (zipfile cannot
    write encrypted entries); the data stays plain."""
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo(entry)
    data = bytearray(zip_path.read_bytes())
    data[info.header_offset + 6] |= 0x1  # local header: general purpose flags at offset 6
    name = entry.encode()
    central = _central_header_offset(data, name)
    data[central + 8] |= 0x1  # central header: flags at offset 8
    zip_path.write_bytes(bytes(data))
    return zip_path


def _central_header_offset(data: bytearray, name: bytes) -> int:
    start = 0
    while True:
        offset = data.index(b"PK\1\2", start)
        name_length = struct.unpack_from("<H", data, offset + 28)[0]
        if data[offset + 46 : offset + 46 + name_length] == name:
            return offset
        start = offset + 4


def separable_classes(
    names: Iterable[str] = ("water", "forest", "urban"),
    per_class: int = 8,
    shape=(32, 32, 5),
    dtype="uint16",
    seed=0,
) -> dict[str, list[np.ndarray]]:
    """Tiles a model can learn in an epoch or two: class k is brighter in band k (mod bands)."""
    rng = np.random.default_rng(seed)
    classes = {}
    for k, name in enumerate(names):
        tiles = []
        for _ in range(per_class):
            tile = rng.normal(300, 40, size=shape)
            tile[..., k % shape[-1]] += 600
            tiles.append(np.clip(tile, 1, None).astype(dtype))
        classes[name] = tiles
    return classes
