"""Class maps of whole scenes: a sliding window read by window, batched through the model, written as a tiled GeoTIFF."""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import RasterioError
from rasterio.windows import Window

from anyband.errors import InvalidRasterError, JobCancelled
from anyband.inference import ModelInput, check_raster, prepare, valid_pixels
from anyband.rasters import RasterInfo, open_geotiff, raster_info, unreferenced_is_normal

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
    crs: str | None = None
    transform: tuple[float, ...] | None = None  # the input's, None when not georeferenced
    dtype: str = "float32"  # the input's pixel type
    class_pixels: dict[str, int] | None = None  # pixels of each class in the map
    nodata_pixels: int = 0
    # The class of every `preview_step`-th pixel in each direction (-1: nodata), for a quicklook.
    preview: np.ndarray | None = None
    preview_step: int = 1
    # Each model band's mean (raw units) over the valid pixels of the preview's sample (every
    # pixel up to preview_side); None when none is valid.
    band_means: tuple[float, ...] | None = None


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
    chunk_width: int = 1024,
    max_bytes: int,
    on_progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    name: str | None = None,
    preview_side: int = 1024,
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
    band is nodata, NaN or infinite. It appears at `output_path` only once complete. `name` is
    the input's name in messages. Its tags `class_pixels` and `nodata_pixels` count the map's
    pixels of each class and of nodata; the result returns them too, with a preview of the map
    at most `preview_side` px on its longer side (the pixel nearest the centre of each cell),
    and each model band's mean over the valid pixels of that sample.

    The scene is mapped in chunks of `chunk_width` output columns (rounded down to whole output
    blocks, at least one, and no narrower than the input's blocks: a striped input, whose blocks
    are whole rows, in one chunk), left to right, each from its top to its bottom one strip of
    windows at a time. A chunk reads the input columns of the windows that own any of its
    pixels, so a window across a chunk's edge is predicted in both chunks. Windows reach
    `predict` `batch_size` at a time whatever the chunk's width: a batch may span strips, and
    only the scene's last is smaller. `should_stop()` is asked before each strip is read, True raising
    JobCancelled with nothing written; `on_progress(windows done, total)` is called as each
    strip's rows are complete, a window counted in the chunk where its pixels begin, the last
    call at the total.

    Peak memory besides the model's depends on the chunk, the tile and the batch, not on the
    scene's width or height: the strips read but not yet written (those one batch's windows
    span, plus one), each tile_h x (chunk_width + 2 x tile_w) x bands (input type, plus a float32
    copy of the rows a strip owns to find invalid pixels); one batch of batch_size x tile_h x
    tile_w x channels float32 (twice while being prepared); one chunk's output rows,
    (1 + classes) x (256 + tile_h) x chunk_width float32; and GDAL's block cache, capped for the
    call at the input blocks one strip of a chunk touches, (tile_h + 2 x block height) x
    (chunk_width + 2 x tile_w + 2 x block width) x bands x itemsize, at least 4 MiB, at most the
    scene. Except for a striped (untiled) input: its blocks are whole rows, so it is read in one
    chunk the scene's width (each row decoded once), and the strips, the output rows and that
    cap, (tile_h + 2 x rows per strip) x width, grow with the scene's width.
    """
    strides = _check_stride(stride, tile_size)
    if chunk_width < 1:
        raise ValueError(f"chunk_width must be at least 1 px. Received: chunk_width={chunk_width}")
    if preview_side < 1:
        raise ValueError(
            f"preview_side must be at least 1 px. Received: preview_side={preview_side}"
        )
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
            output = stack.enter_context(_create_output(tmp_path, source, classes))
            rows = _window_starts(info.height, tile_h, strides[0])
            cols = _window_starts(info.width, tile_w, strides[1])
            row_bounds = _owned_bounds(rows, tile_h, info.height)
            chunks = _chunks(cols, tile_w, info.width, _chunk_step(source, output, chunk_width))
            read_width = max(chunk.read_width for chunk in chunks)
            stack.enter_context(_capped_block_cache(_cache_bytes(source, tile_h, read_width)))
            queue = _WindowQueue(predict, model_input, nodata, batch_size, len(classes))
            waiting: deque[tuple[_Chunk, int, np.ndarray]] = deque()  # read, not yet written
            writer = _BlockRowWriter(output, max(chunk.stop - chunk.start for chunk in chunks))
            summary = _MapSummary(
                info.width, info.height, len(classes), preview_side, model_input.band_index
            )
            total, done = len(rows) * len(cols), 0
            for chunk, (j, top) in itertools.product(chunks, enumerate(rows)):
                if should_stop is not None and should_stop():
                    raise JobCancelled(f"scene stopped after {done} of {total} windows")
                window = Window(chunk.read_left, top, chunk.read_width, tile_h)
                strip = np.moveaxis(source.read(window=window), 0, -1)
                windows = [strip[:, left : left + tile_w] for left in chunk.lefts]  # views
                queue.add(windows, last=chunk is chunks[-1] and j == len(rows) - 1)
                owned = strip[row_bounds[j] - top : row_bounds[j + 1] - top, chunk.owned]
                waiting.append((chunk, j, owned))
                # Strips are written in reading order, each once all its windows are predicted.
                while waiting and (probs := queue.take(len(waiting[0][0].lefts))) is not None:
                    ready, row, pixels = waiting.popleft()
                    if row == 0:
                        writer.begin(ready.start, ready.stop)
                    valid = valid_pixels(pixels, nodata)
                    class_rows = _class_rows(probs, ready.owner, valid)
                    writer.add(class_rows)
                    summary.add(class_rows[0], pixels, row_bounds[row], ready.start)
                    if row == len(rows) - 1:
                        writer.flush()
                    done += ready.new_windows
                    if on_progress is not None:
                        on_progress(done, total)
            class_pixels = dict(zip(classes, summary.counts[1:].tolist(), strict=True))
            nodata_pixels = int(summary.counts[0])
            output.update_tags(
                class_pixels=json.dumps(class_pixels), nodata_pixels=str(nodata_pixels)
            )
        os.replace(tmp_path, output_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    return SceneResult(
        info.width,
        info.height,
        total,
        classes,
        strides,
        seconds,
        crs=info.crs,
        transform=info.transform,
        dtype=info.dtype,
        class_pixels=class_pixels,
        nodata_pixels=nodata_pixels,
        preview=summary.preview,
        preview_step=summary.step,
        band_means=summary.band_means(),
    )


def _check_info(info: RasterInfo, model_input: ModelInput, tile_size: tuple[int, int], name: str):
    check_raster(info, model_input, name, min_size=min(tile_size), what="scene")
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


def window_count(width: int, height: int, tile_size: tuple[int, int], stride: int | None) -> int:
    """How many windows `classify_scene` runs on a `width` x `height` scene: the total its
    progress counts to, known before it starts."""
    strides = _check_stride(stride, tile_size)
    rows = _window_starts(height, tile_size[0], strides[0])
    return len(rows) * len(_window_starts(width, tile_size[1], strides[1]))


def _window_starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)  # shifted back so the window ends at the edge
    return starts


def _owned_bounds(starts: list[int], tile: int, length: int) -> list[int]:
    """[0, b_1, ..., length]: window i owns [b_i, b_{i+1}), the pixels nearest its centre."""
    return [0, *((a + b + tile) // 2 for a, b in itertools.pairwise(starts)), length]


@dataclass(frozen=True, eq=False)
class _Chunk:
    """Output columns [start, stop), and the windows that own any of them."""

    start: int
    stop: int
    read_left: int  # the input columns read: those of the windows below
    read_width: int
    lefts: list[int]  # the windows' starts, from read_left
    owner: np.ndarray  # for each output column, its window's position in `lefts`
    new_windows: int  # those whose owned columns begin here: each window counts in one chunk

    @property
    def owned(self) -> slice:
        return slice(self.start - self.read_left, self.stop - self.read_left)


def _chunks(starts: list[int], tile: int, length: int, step: int) -> list[_Chunk]:
    """Columns [0, length) in chunks of `step`, windows of `tile` starting at `starts`."""
    bounds = _owned_bounds(starts, tile, length)
    chunks = []
    for start in range(0, length, step):
        stop = min(start + step, length)
        first = bisect.bisect_right(bounds, start) - 1  # owns column `start`
        last = bisect.bisect_left(bounds, stop) - 1  # owns column `stop - 1`
        left = starts[first]
        owner = np.repeat(np.arange(last + 1 - first), np.diff(bounds[first : last + 2]))
        chunks.append(
            _Chunk(
                start=start,
                stop=stop,
                read_left=left,
                read_width=starts[last] + tile - left,
                lefts=[o - left for o in starts[first : last + 1]],
                owner=owner[start - bounds[first] : stop - bounds[first]],
                new_windows=last + 1 - bisect.bisect_left(bounds, start),
            )
        )
    return chunks


def _chunk_step(source, output, chunk_width: int) -> int:
    """Columns a chunk: whole output blocks, so that each is written once, and no narrower than
    the input's blocks. A striped input's blocks are whole rows: in narrower chunks, GDAL would
    decode every row once per chunk (a 10980 px wide scene eleven times at 1024 px)."""
    block_w = output.block_shapes[0][1]
    step = max(1, chunk_width // block_w) * block_w
    input_block_w = source.block_shapes[0][1]
    return max(step, -(-input_block_w // block_w) * block_w)


@contextmanager
def _capped_block_cache(max_bytes: int) -> Iterator[None]:
    # Set and restored by hand: a rasterio.Env nested in open_geotiff's would not restore it.
    previous = get_gdal_config("GDAL_CACHEMAX")
    set_gdal_config("GDAL_CACHEMAX", max_bytes)
    try:
        yield
    finally:
        set_gdal_config("GDAL_CACHEMAX", previous)


def _cache_bytes(source, tile_h: int, read_width: int) -> int:
    """The input blocks one strip touches; a striped input's blocks are whole rows."""
    block_h, block_w = source.block_shapes[0]
    rows = min(source.height, tile_h + 2 * block_h)
    cols = min(source.width, read_width + 2 * block_w)
    return max(_MIN_CACHE_BYTES, rows * cols * source.count * np.dtype(source.dtypes[0]).itemsize)


def _class_rows(probs, owner, valid) -> np.ndarray:
    """(1 + classes, rows, columns) output for owned pixels (`valid`: those valid in every input
    band), column c from window owner[c]."""
    rows = np.empty((1 + probs.shape[1], *valid.shape), dtype=np.float32)
    rows[0] = np.argmax(probs, axis=1)[owner]
    rows[1:] = probs.T[:, None, owner]
    rows[:, ~valid] = OUTPUT_NODATA
    return rows


class _MapSummary:
    """What a class map holds, gathered as its rows are written: the pixels of each class (index
    0: nodata); a preview, the class of the pixel nearest the centre of each `step` x `step`
    cell, at most `side` px on its longer side; and each model band's mean over the valid
    pixels of that same sample (every pixel of a scene up to `side` px, about a million of a
    larger one). All stay small whatever the scene's size."""

    def __init__(self, width: int, height: int, classes: int, side: int, band_index: np.ndarray):
        self.step = max(1, math.ceil(max(width, height) / side))
        self.rows = np.arange(self.step // 2, height, self.step)
        self.cols = np.arange(self.step // 2, width, self.step)
        self.preview = np.full((len(self.rows), len(self.cols)), -1, dtype=np.int16)
        self.counts = np.zeros(1 + classes, dtype=np.int64)
        self.band_index = band_index
        self.band_sums = np.zeros(len(band_index), dtype=np.float64)
        self.sampled = 0  # valid pixels in the sample

    def add(self, class_rows: np.ndarray, pixels: np.ndarray, top: int, left: int) -> None:
        """`class_rows` (-1: nodata) the map's pixels from row `top` and column `left` on, made
        from the input `pixels` (rows, columns, bands) there."""
        self.counts += np.bincount(
            (class_rows + 1).astype(np.intp).ravel(), minlength=len(self.counts)
        )
        height, width = class_rows.shape
        rows = slice(*np.searchsorted(self.rows, (top, top + height)))
        cols = slice(*np.searchsorted(self.cols, (left, left + width)))
        at = np.ix_(self.rows[rows] - top, self.cols[cols] - left)
        sample = class_rows[at]
        self.preview[rows, cols] = sample
        valid = sample != OUTPUT_NODATA
        self.band_sums += np.take(pixels[at][valid], self.band_index, axis=-1).sum(
            axis=0, dtype=np.float64
        )
        self.sampled += int(np.count_nonzero(valid))

    def band_means(self) -> tuple[float, ...] | None:
        """Each model band's mean over the sample's valid pixels; None when none is valid."""
        if not self.sampled:
            return None
        return tuple((self.band_sums / self.sampled).tolist())


class _WindowQueue:
    """Windows on their way to the model, predicted `batch_size` at a time: only the last call
    (`add(..., last=True)`) may be smaller. Probabilities come out in the order windows went in."""

    def __init__(self, predict, model_input, nodata, batch_size: int, n_classes: int):
        self.predict, self.model_input, self.nodata = predict, model_input, nodata
        self.batch_size = batch_size
        self.waiting: list[np.ndarray] = []
        self.ready = np.empty((0, n_classes), dtype=np.float32)

    def add(self, windows: list[np.ndarray], *, last: bool) -> None:
        self.waiting += windows
        n = len(self.waiting) if last else len(self.waiting) // self.batch_size * self.batch_size
        if n:
            probs = _predict(
                self.predict, self.waiting[:n], self.model_input, self.nodata, self.batch_size,
                self.ready.shape[1],
            )  # fmt: skip
            self.ready = np.concatenate([self.ready, probs])
            del self.waiting[:n]

    def take(self, n: int) -> np.ndarray | None:
        """The next `n` windows' probabilities, or None until all of them are predicted."""
        if len(self.ready) < n:
            return None
        probs, self.ready = self.ready[:n], self.ready[n:]
        return probs


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
        with unreferenced_is_normal():
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


class _BlockRowWriter:
    """Buffers output rows until a whole row of output blocks is complete, then writes it, so
    each compressed block is written once; a chunk of columns [start, stop) at a time, `start` on
    a block edge and `stop` on one or the scene's."""

    def __init__(self, output, width: int):
        self.output = output
        self.block_rows = output.block_shapes[0][0]
        # One buffer for every chunk, up to `width` columns: one allocated per chunk left the
        # process holding ~10 MB more after a few chunks (the allocator keeps freed space).
        self.memory = np.empty(output.count * self.block_rows * width, dtype=np.float32)
        self.begin(0, width)

    def begin(self, start: int, stop: int) -> None:
        self.start, self.width = start, stop - start
        size = self.output.count * self.block_rows * self.width
        self.buffer = self.memory[:size].reshape(self.output.count, self.block_rows, self.width)
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
            window = Window(self.start, self.top, self.width, self.filled)
            try:
                self.output.write(self.buffer[:, : self.filled], window=window)
            except RasterioError as error:
                raise OSError(f"cannot write the class map: {error}") from error
            self.top += self.filled
            self.filled = 0
