"""Class maps of whole scenes: a sliding window read by window, batched through the model, written as a tiled GeoTIFF."""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from anyband.errors import InvalidRasterError, JobCancelled
from anyband.inference import ModelInput, check_raster, prepare, valid_pixels
from anyband.rasters import RasterInfo, open_geotiff, raster_info

OUTPUT_NODATA = -1.0
# Output tile side: GDAL's usual 256, smaller (a multiple of 16, as TIFF requires) for small scenes.
_BLOCK_SIZE = 256
# GDAL's block cache (process-wide, 5% of RAM by default) keeps every block it has read or
# written until it is full, which would hold whole scenes; during a scene it is capped, at least:
_MIN_CACHE_BYTES = 4 * 2**20


@dataclass(frozen=True)
class SceneResult:
    width: int
    height: int
    windows: int
    classes: list[str]
    stride: tuple[int, int]  # (rows, columns)
    seconds: float


def check_scene(
    path: str | os.PathLike,
    model_input: ModelInput,
    tile_size: tuple[int, int],
    *,
    max_bytes: int,
    name: str | None = None,
) -> RasterInfo:
    """The scene's header, or InvalidRasterError unless it is a GeoTIFF within `max_bytes` that
    carries the model's bands and is at least one (height, width) tile in each dimension."""
    name = Path(path).name if name is None else name
    with open_geotiff(path, max_bytes=max_bytes, name=name) as dataset:
        info = raster_info(dataset)
    _check_info(info, model_input, tile_size, name)
    return info


def classify_scene(
    predict: Callable[[np.ndarray], np.ndarray],
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    model_input: ModelInput,
    classes: Sequence[str],
    tile_size: tuple[int, int],
    stride: int | None = None,
    batch_size: int = 64,
    max_bytes: int,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    name: str | None = None,
) -> SceneResult:
    """Write the class map of the scene at `input_path` to `output_path`.

    Windows of `tile_size` (h, w) start every `stride` pixels (default: the tile size) in each
    direction, the last one shifted back to end at the scene edge. `predict` maps float32
    (N, h, w, channels) windows, `prepare`d as in training, to (N, classes) probabilities.

    Which window a pixel takes: along each axis, window i (start o_i) owns the pixels from
    (o_{i-1} + o_i + tile) // 2 up to the next such boundary: those nearest its centre, ties to
    the later window. With windows `stride` apart that is the stride x stride block centred in the
    window, (tile - stride) // 2 into it, and the whole window when stride == tile; the first and
    last windows also own the margins to the scene edges, and the overlap of the shifted last
    window is split at its middle. The blocks partition the scene: each pixel is written once.

    Output (float32, same size, CRS and transform, tiled, deflate): band 1 the class index, band
    1 + k the probability of `classes[k]`; -1 (the nodata value) in every band where any input
    band is nodata, NaN or infinite. It appears at `output_path` only once complete: after each
    strip `on_progress(windows done, total)` is called, and before each `should_stop()` is asked,
    True raising JobCancelled with nothing written. `name` is the input's name in messages.

    Peak memory besides the model's: one strip of tile_h x width x bands (input type, plus a
    float32 copy to find invalid pixels); one batch of batch_size x tile_h x tile_w x channels
    float32 (twice while being prepared); output rows, (1 + classes) x (256 + tile_h) x width
    float32; and GDAL's block cache, capped for the call at the input blocks a strip touches,
    (tile_h + 2 x block height) x width x bands x itemsize, at least 4 MiB. It grows with the
    scene's width, never with its height.
    """
    strides = _check_stride(stride, tile_size)
    (tile_h, tile_w), classes = tile_size, list(classes)
    name = Path(input_path).name if name is None else name
    output_path = Path(output_path)
    tmp_path = output_path.with_name(f".{output_path.name}.{uuid.uuid4().hex}.tmp")
    started = time.perf_counter()
    try:
        with ExitStack() as stack:
            source = stack.enter_context(open_geotiff(input_path, max_bytes=max_bytes, name=name))
            info = raster_info(source)
            _check_info(info, model_input, tile_size, name)
            nodata = model_input.nodata if info.nodata is None else info.nodata
            stack.enter_context(_capped_block_cache(_cache_bytes(source, tile_h)))
            writer = _RowWriter(stack.enter_context(_create_output(tmp_path, source, classes)))
            rows = _window_starts(info.height, tile_h, strides[0])
            cols = _window_starts(info.width, tile_w, strides[1])
            row_bounds = _owned_bounds(rows, tile_h, info.height)
            col_owner = np.repeat(
                np.arange(len(cols)), np.diff(_owned_bounds(cols, tile_w, info.width))
            )
            total = len(rows) * len(cols)
            for j, top in enumerate(rows):
                if should_stop is not None and should_stop():
                    raise JobCancelled(f"scene stopped after {j * len(cols)} of {total} windows")
                strip = np.moveaxis(source.read(window=Window(0, top, info.width, tile_h)), 0, -1)
                windows = [strip[:, left : left + tile_w] for left in cols]  # views
                probs = _predict(predict, windows, model_input, nodata, batch_size, len(classes))
                owned = strip[row_bounds[j] - top : row_bounds[j + 1] - top]
                block = np.empty((1 + len(classes), *owned.shape[:2]), dtype=np.float32)
                block[0] = np.argmax(probs, axis=1)[col_owner]
                block[1:] = probs.T[:, None, col_owner]
                block[:, ~valid_pixels(owned, nodata)] = OUTPUT_NODATA
                writer.add(block)
                if on_progress is not None:
                    on_progress((j + 1) * len(cols), total)
            writer.flush()
        os.replace(tmp_path, output_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    return SceneResult(info.width, info.height, total, classes, strides, seconds)


def _check_info(info: RasterInfo, model_input: ModelInput, tile_size: tuple[int, int], name: str):
    check_raster(info, model_input, name, min_size=min(tile_size))
    if info.height < tile_size[0] or info.width < tile_size[1]:
        raise InvalidRasterError(
            f"{name!r} is {info.height} x {info.width} px; the model's windows are "
            f"{tile_size[0]} x {tile_size[1]}, so a scene must be at least that large"
        )


def _check_stride(stride: int | None, tile_size: tuple[int, int]) -> tuple[int, int]:
    if stride is None:
        return (int(tile_size[0]), int(tile_size[1]))
    if not 1 <= stride <= min(tile_size):
        raise ValueError(
            f"stride must be between 1 and the tile's shorter side {min(tile_size)}. "
            f"Received: stride={stride}"
        )
    return (stride, stride)


def _window_starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)  # shifted back so the window ends at the edge
    return starts


def _owned_bounds(starts: list[int], tile: int, length: int) -> list[int]:
    """[0, b_1, ..., length]: window i owns [b_i, b_{i+1}), the pixels nearest its centre."""
    return [0, *((a + b + tile) // 2 for a, b in itertools.pairwise(starts)), length]


@contextmanager
def _capped_block_cache(max_bytes: int) -> Iterator[None]:
    # Set and restored by hand: a rasterio.Env nested in open_geotiff's would not restore it.
    previous = get_gdal_config("GDAL_CACHEMAX")
    set_gdal_config("GDAL_CACHEMAX", max_bytes)
    try:
        yield
    finally:
        set_gdal_config("GDAL_CACHEMAX", previous)


def _cache_bytes(source, tile_h: int) -> int:
    rows = min(source.height, tile_h + 2 * source.block_shapes[0][0])
    row_bytes = source.width * source.count * np.dtype(source.dtypes[0]).itemsize
    return max(_MIN_CACHE_BYTES, rows * row_bytes)


def _predict(predict, windows, model_input, nodata, batch_size, n_classes) -> np.ndarray:
    """(len(windows), classes) probabilities, `batch_size` windows prepared at a time."""
    probs = np.empty((len(windows), n_classes), dtype=np.float32)
    for first in range(0, len(windows), batch_size):
        batch = prepare(np.stack(windows[first : first + batch_size]), model_input, nodata)
        out = np.asarray(predict(batch))
        if out.shape != (len(batch), n_classes):
            raise ValueError(
                f"predict must return (windows, classes) = {(len(batch), n_classes)} "
                f"probabilities. Received: shape={out.shape}"
            )
        probs[first : first + len(batch)] = out
    return probs


def _create_output(path: Path, source, classes: list[str]):
    side = [max(16, min(_BLOCK_SIZE, n // 16 * 16)) for n in (source.width, source.height)]
    profile = dict(
        driver="GTiff",
        width=source.width,
        height=source.height,
        count=1 + len(classes),
        dtype="float32",
        nodata=OUTPUT_NODATA,
        crs=source.crs,
        transform=source.transform,
        tiled=True,
        blockxsize=side[0],
        blockysize=side[1],
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    output = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            output = rasterio.open(path, "w", **profile)
        output.descriptions = ("class", *(f"p({c})" for c in classes))
        output.update_tags(classes=json.dumps(classes))
        output.update_tags(1, class_values=json.dumps(dict(enumerate(classes))))
    except RasterioError as error:
        if output is not None:
            output.close()
        # An OSError, not a RasterioError, so open_geotiff does not blame the input file.
        raise OSError(f"cannot write the class map: {error}") from error
    return output


class _RowWriter:
    """Buffers output rows until a whole row of output blocks is complete, then writes it, so
    each compressed block is written once."""

    def __init__(self, output):
        self.output = output
        self.block_rows = output.block_shapes[0][0]
        self.buffer = np.empty((output.count, self.block_rows, output.width), dtype=np.float32)
        self.top = 0  # first image row held in the buffer
        self.filled = 0

    def add(self, rows: np.ndarray) -> None:
        while rows.shape[1]:
            take = min(rows.shape[1], self.block_rows - self.filled)
            self.buffer[:, self.filled : self.filled + take] = rows[:, :take]
            self.filled += take
            rows = rows[:, take:]
            if self.filled == self.block_rows:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            window = Window(0, self.top, self.output.width, self.filled)
            try:
                self.output.write(self.buffer[:, : self.filled], window=window)
            except RasterioError as error:
                raise OSError(f"cannot write the class map: {error}") from error
            self.top += self.filled
            self.filled = 0
