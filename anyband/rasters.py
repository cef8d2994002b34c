"""Open untrusted GeoTIFFs safely: TIFF bytes only, GTiff driver only, size checked before reading."""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader, MemoryFile

from anyband.errors import InvalidRasterError

# Classic and BigTIFF, little- and big-endian. Anything else never reaches GDAL, so a VRT, an
# XML or any other text renamed .tif cannot make GDAL open a file or URL named inside it.
TIFF_MAGICS = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
# The smallest tile side the ResNet50 backbone accepts (five stride-2 stages).
MIN_TILE_SIZE = 32
# Real-valued pixel types; complex ones have no meaning for a classifier's input.
SUPPORTED_DTYPES = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float32",
    "float64",
)
# warnings.catch_warnings swaps process-wide state and is not thread-safe (before Python 3.14):
# the API's concurrent reads restored each other's filters and let warnings through.
_WARNINGS_LOCK = threading.Lock()
# GDAL must look at the one file it was given: no directory listing (so no sidecar .ovr, .aux.xml,
# world or RPC files are found), no .aux.xml written next to it, no network.
_GDAL_HARDENING = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_PAM_ENABLED": "NO",
    "GDAL_GEOREF_SOURCES": "INTERNAL",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": "none",
    "GDAL_HTTP_MAX_RETRY": "0",
}
# The same, and no georeferencing read at all (building the CRS is half of opening a tile).
_NO_GEOREFERENCING = {**_GDAL_HARDENING, "GDAL_GEOREF_SOURCES": "NONE"}


@dataclass(frozen=True)
class RasterInfo:
    """What a GeoTIFF's header says, read before any pixel."""

    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    crs: str | None
    # Affine coefficients (a, b, c, d, e, f); None when the file is not georeferenced.
    transform: tuple[float, float, float, float, float, float] | None

    @property
    def nbytes(self) -> int:
        return declared_bytes(self.width, self.height, self.count, self.dtype)


def declared_bytes(width: int, height: int, count: int, dtype: str) -> int:
    """What reading a raster whole would take: width x height x bands x itemsize."""
    return width * height * count * np.dtype(dtype).itemsize


def format_bytes(size: float) -> str:
    """`268435456` -> `256 MiB`; binary units, because every limit is a power of two."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    if unit == "bytes":
        return f"{int(size)} bytes"
    return f"{size:.0f} {unit}" if float(size).is_integer() else f"{size:.1f} {unit}"


@contextmanager
def unreferenced_is_normal() -> Iterator[None]:
    """Open rasters without NotGeoreferencedWarning, safely from many threads: unreferenced chips
    are normal here (RasterInfo.transform says so with None)."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def raster_info(dataset: DatasetReader) -> RasterInfo:
    transform = tuple(dataset.transform[:6])
    georeferenced = dataset.crs is not None or not dataset.transform.is_identity
    return RasterInfo(
        width=dataset.width,
        height=dataset.height,
        count=dataset.count,
        dtype=dataset.dtypes[0],
        nodata=dataset.nodata,
        crs=dataset.crs.to_string() if dataset.crs else None,
        transform=transform if georeferenced else None,
    )


@contextmanager
def open_geotiff(
    source: str | os.PathLike | bytes,
    *,
    max_bytes: int,
    name: str | None = None,
    georeferencing: bool = True,
) -> Iterator[DatasetReader]:
    """Open `source` (a path, or a file's bytes) for reading as a GeoTIFF and nothing else, or
    raise InvalidRasterError.

    `name` is how messages refer to the file (a zip entry's name rather than a scratch path).
    The header is checked before the caller reads a pixel: a TIFF magic number, one real pixel
    type for all bands, and width x height x bands x itemsize within `max_bytes`. Reads done
    inside the `with` block that fail (a truncated or corrupt file) also raise InvalidRasterError.
    Bytes are opened from GDAL's in-memory file system, with the same driver and checks.
    `georeferencing=False`: GDAL reads no CRS or transform (the dataset reports none), which
    halves the cost of opening a small tile whose pixels are all the caller needs.
    """
    with ExitStack() as stack:
        if isinstance(source, bytes | bytearray | memoryview):
            name = "the upload" if name is None else name
            _check_head(bytes(source[:16]), name)
            memory = stack.enter_context(MemoryFile(source, ext=".tif"))
            path, opened = memory.name, memory.open
        else:
            # An absolute Path: rasterio never parses it as a URL, a /vsi path or an archive.
            path = Path(source).absolute()
            name = path.name if name is None else name
            _check_magic(path, name)
            opened = partial(rasterio.open, path)
        hardening = _GDAL_HARDENING if georeferencing else _NO_GEOREFERENCING
        stack.enter_context(rasterio.Env(**hardening))
        try:
            with unreferenced_is_normal():
                dataset = stack.enter_context(opened(driver="GTiff"))
        except RasterioError as error:
            raise _corrupt(error, path, name) from error
        _check_header(dataset, name, max_bytes)
        try:
            yield dataset
        except RasterioError as error:
            raise _corrupt(error, path, name) from error


def read_tile(
    source: str | os.PathLike | bytes,
    *,
    max_bytes: int,
    name: str | None = None,
    georeferencing: bool = True,
    before_read: Callable[[RasterInfo], None] | None = None,
) -> tuple[np.ndarray, RasterInfo]:
    """All bands of a GeoTIFF (a path or a file's bytes) as an (H, W, bands) array in the
    file's dtype, with its header (see `open_geotiff` for `georeferencing`). `before_read(info)`
    is called once the header is checked and before any pixel is decoded: it may raise."""
    opened = open_geotiff(source, max_bytes=max_bytes, name=name, georeferencing=georeferencing)
    with opened as dataset:
        info = raster_info(dataset)
        if before_read is not None:
            before_read(info)
        pixels = dataset.read()
    return np.moveaxis(pixels, 0, -1), info


def nodata_as(nodata: float | None, dtype: np.dtype) -> np.generic | None:
    """The nodata value in the tile's own type, as GDAL compares it; None if no pixel can be it."""
    if nodata is None or not math.isfinite(nodata):
        return None  # NaN and infinities are invalid anyway
    if dtype.kind in "iu":
        bounds = np.iinfo(dtype)
        if not float(nodata).is_integer() or not bounds.min <= nodata <= bounds.max:
            return None
        return dtype.type(int(nodata))
    with np.errstate(over="ignore"):
        return dtype.type(nodata)


def _check_magic(path: Path, name: str) -> None:
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError as error:
        raise InvalidRasterError(f"cannot read {name!r}: {error.strerror}") from error
    _check_head(head, name)


def _check_head(head: bytes, name: str) -> None:
    if head[:4] in TIFF_MAGICS:
        return
    if not head:
        raise InvalidRasterError(f"{name!r} is not a GeoTIFF: the file is empty")
    # Printable ASCII as it is, any other byte as \xNN: one escape per byte, text or binary.
    shown = "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in head)
    raise InvalidRasterError(
        f"{name!r} is not a GeoTIFF: it starts with '{shown}', not a TIFF signature "
        f"(II*\\0, MM\\0*, II+\\0 or MM\\0+)"
    )


def _check_header(dataset: DatasetReader, name: str, max_bytes: int) -> None:
    if dataset.driver != "GTiff":  # driver="GTiff" already ensures it; this keeps it so.
        raise InvalidRasterError(f"{name!r} is not a GeoTIFF: GDAL read it as {dataset.driver}")
    dtypes = set(dataset.dtypes)
    if len(dtypes) > 1:
        raise InvalidRasterError(
            f"{name!r} mixes pixel types across bands ({', '.join(sorted(dtypes))}); "
            f"expected one type for all bands"
        )
    dtype = dataset.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidRasterError(
            f"{name!r} has pixel type {dtype}; expected one of {', '.join(SUPPORTED_DTYPES)}"
        )
    size = declared_bytes(dataset.width, dataset.height, dataset.count, dtype)
    if size > max_bytes:
        raise InvalidRasterError(
            f"{name!r} declares {dataset.width} x {dataset.height} x {dataset.count} {dtype} "
            f"= {format_bytes(size)}, over the {format_bytes(max_bytes)} budget for one raster "
            "(ANYBAND_MAX_TILE_BYTES for a tile, ANYBAND_MAX_SCENE_BYTES for a scene)"
        )


def _corrupt(error: BaseException, path: Path | str, name: str) -> InvalidRasterError:
    """GDAL's own words from the innermost cause, with the scratch path replaced by `name`."""
    message = str(error)
    cause = error.__cause__
    while cause is not None:
        message = str(cause)
        cause = cause.__cause__
    message = message.replace(str(path), name).strip()
    return InvalidRasterError(f"{name!r} is a truncated or corrupt TIFF: {message}")
