"""Class maps of whole scenes: window grid, pixel ownership, nodata, band selection, memory."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.env import get_gdal_config
from rasterio.errors import NotGeoreferencedWarning

from anyband.errors import InvalidRasterError, JobCancelled
from anyband.inference import ModelInput, prepare
from anyband.scenes import check_scene, classify_scene, window_count
from tests.tiles import DEFAULT_TRANSFORM, vrt_text, write_tile

BUDGET = 256 * 2**20
TILE = (32, 32)
REPO_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def band_model(channels: int, classes: int, scale: float = 0.02):
    """Mean of each band -> softmax(scale x mean): class k is the window's brightest band k."""
    import keras

    inputs = keras.Input((None, None, channels))
    dense = keras.layers.Dense(classes, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([scale * np.eye(channels, classes, dtype="float32"), np.zeros(classes)])
    return model


def predictor(model):
    return lambda windows: np.asarray(model(windows, training=False))


def model_input(bands=3, dataset_bands=None, nodata=None, order=None) -> ModelInput:
    order = tuple(order or range(1, bands + 1))
    return ModelInput(
        dataset_bands=dataset_bands or bands,
        bands=order,
        band_mean=tuple(150.0 + 10 * b for b in order),
        nodata=nodata,
    )


def read_output(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            return dataset.read()


def nearest_window(length: int, tile: int, stride: int) -> tuple[list[int], np.ndarray]:
    """Window starts and, for each pixel, the window whose centre is nearest (ties: the later
    one): the documented rule, computed the slow way."""
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    distance = np.abs(np.arange(length)[:, None] + 0.5 - (np.asarray(starts) + tile / 2))
    owner = len(starts) - 1 - np.argmin(distance[:, ::-1], axis=1)
    return starts, owner


def expected_map(array, model, inputs, stride, nodata=None) -> np.ndarray:
    """(H, W, classes): each pixel gets the model's output on the window that owns it."""
    rows, row_owner = nearest_window(array.shape[0], TILE[0], stride)
    cols, col_owner = nearest_window(array.shape[1], TILE[1], stride)
    windows = np.stack([array[r : r + TILE[0], c : c + TILE[1]] for r in rows for c in cols])
    probs = np.asarray(model(prepare(windows, inputs, nodata), training=False))
    probs = probs.reshape(len(rows), len(cols), -1)
    return probs[row_owner[:, None], col_owner[None, :]]


def two_part_scene(height=200, width=300, split=160, bands=3, seed=0) -> np.ndarray:
    """Noise in every band; band 1 brighter left of `split`, band 3 brighter right of it."""
    rng = np.random.default_rng(seed)
    array = rng.integers(100, 200, size=(height, width, bands)).astype("uint16")
    array[:, :split, 0] += 500
    array[:, split:, 2] += 500
    return array


def classify(tmp_path, array, inputs=None, classes=("left", "middle", "right"), **kwargs):
    layout = ("nodata", "crs", "tiled", "blockxsize", "blockysize")
    raster = {k: kwargs.pop(k) for k in layout if k in kwargs}
    source = write_tile(tmp_path / "scene.tif", array, **raster)
    inputs = inputs or model_input(array.shape[-1])
    model = band_model(len(inputs.bands), len(classes))
    predict = kwargs.pop("predict", predictor(model))
    output = tmp_path / "out" / "classes.tif"
    output.parent.mkdir(exist_ok=True)
    kwargs = {"tile_size": TILE, "max_bytes": BUDGET, **kwargs}
    result = classify_scene(predict, source, output, model_input=inputs, classes=classes, **kwargs)
    return result, output, model


@pytest.fixture
def out_dir(tmp_path):
    """Where class maps go: empty unless one was written (no temporary file left behind)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def test_class_map_keeps_the_grid_and_describes_its_bands(tmp_path):
    result, output, _ = classify(tmp_path, two_part_scene())

    with rasterio.open(tmp_path / "scene.tif") as source, rasterio.open(output) as out:
        assert (out.crs, out.transform) == (source.crs, source.transform)
        assert (out.width, out.height, out.count) == (300, 200, 4)
        assert out.transform == DEFAULT_TRANSFORM
        assert out.dtypes == ("float32",) * 4 and out.nodata == -1.0
        assert out.descriptions == ("class", "p(left)", "p(middle)", "p(right)")
        assert json.loads(out.tags()["classes"]) == ["left", "middle", "right"]
        assert json.loads(out.tags(1)["class_values"]) == {"0": "left", "1": "middle", "2": "right"}
        assert out.profile["tiled"] and out.compression.value == "DEFLATE"
        assert set(out.block_shapes) == {(192, 256)}  # 200 rows: the largest multiple of 16
    assert (result.width, result.height, result.stride) == (300, 200, (32, 32))
    assert result.windows == 7 * 10  # row starts 0..160 and 168; column starts 0..256 and 268
    assert window_count(300, 200, TILE, None) == 7 * 10
    assert result.classes == ["left", "middle", "right"]
    assert os.listdir(output.parent) == ["classes.tif"]  # no temporary file left beside it


@pytest.mark.parametrize(("side", "step"), [(1024, 1), (64, 5), (7, 43)])
def test_the_result_counts_each_class_and_previews_the_map(tmp_path, side, step):
    array = two_part_scene()
    array[:30, :50] = 0  # nodata
    result, output, _ = classify(tmp_path, array, nodata=0, preview_side=side, chunk_width=64)

    classes = read_output(output)[0]
    counts = {name: int(np.count_nonzero(classes == k)) for k, name in enumerate(result.classes)}
    assert result.class_pixels == counts
    assert counts["left"] > 0 and counts["right"] > 0  # both halves were mapped
    assert result.nodata_pixels == np.count_nonzero(classes == -1) == 30 * 50
    assert result.preview_step == step
    # The pixel nearest the centre of each step x step cell, from every chunk of columns.
    np.testing.assert_array_equal(result.preview, classes[step // 2 :: step, step // 2 :: step])
    assert max(result.preview.shape) <= side
    with rasterio.open(output) as out:  # the file says the same
        assert json.loads(out.tags()["class_pixels"]) == counts
        assert int(out.tags()["nodata_pixels"]) == 30 * 50
    assert (result.crs, result.transform) == ("EPSG:32633", tuple(DEFAULT_TRANSFORM)[:6])


@pytest.mark.parametrize(("side", "step"), [(1024, 1), (64, 5)])
def test_the_result_holds_each_model_bands_mean_over_the_sampled_valid_pixels(tmp_path, side, step):
    array = two_part_scene(bands=4)
    array[:30, :50, 1] = 0  # nodata in a band the model does not read: still not valid
    inputs = model_input(dataset_bands=4, nodata=0, order=(3, 1, 4))

    result, _, _ = classify(
        tmp_path, array, inputs=inputs, chunk_width=64, preview_side=side, nodata=0
    )

    valid = np.ones(array.shape[:2], bool)
    valid[:30, :50] = False
    sample = (slice(step // 2, None, step),) * 2  # every pixel up to the preview's side
    expected = [
        array[..., band - 1][sample][valid[sample]].astype(np.float64).mean() for band in (3, 1, 4)
    ]
    np.testing.assert_allclose(result.band_means, expected, rtol=1e-12)


def test_a_preview_below_one_px_is_refused(tmp_path):
    with pytest.raises(ValueError, match="preview_side must be at least 1 px"):
        classify(tmp_path, two_part_scene(48, 40), preview_side=0)


def test_unreferenced_scene_gives_an_unreferenced_class_map(tmp_path):
    _, output, _ = classify(tmp_path, two_part_scene(48, 40), crs=None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(output) as out:
            assert out.crs is None and out.transform.is_identity
            assert set(out.block_shapes) == {(48, 32)}


@pytest.mark.parametrize("chunk_width", [1024, 1], ids=["one chunk", "one block a chunk"])
def test_class_map_and_probabilities_are_the_model_on_the_owning_window(tmp_path, chunk_width):
    array = two_part_scene()  # 300 x 200: neither a multiple of the 32 px tile
    _, output, model = classify(tmp_path, array, chunk_width=chunk_width)
    out = read_output(output)

    # The split at column 160 is on the window grid: every window lies in one part.
    np.testing.assert_array_equal(out[0, :, :160], 0)
    np.testing.assert_array_equal(out[0, :, 160:], 2)
    np.testing.assert_allclose(out[1:].sum(axis=0), 1.0, atol=1e-5)
    expected = expected_map(array, model, model_input(), stride=32)
    np.testing.assert_allclose(np.moveaxis(out[1:], 0, -1), expected, rtol=1e-5, atol=1e-6)
    assert out[1:].std(axis=(1, 2)).min() > 0  # the noise makes windows differ


@pytest.mark.parametrize(
    ("raster_nodata", "model_nodata"), [(0, None), (None, 0)], ids=["raster", "model"]
)
def test_nodata_pixels_are_nodata_in_every_output_band(tmp_path, raster_nodata, model_nodata):
    array = two_part_scene()
    array[50:70, 100:130] = 0  # all bands
    array[5, 7, 1] = 0  # one band is enough
    inputs = model_input(nodata=model_nodata)
    _, output, model = classify(tmp_path, array, inputs, nodata=raster_nodata)
    out = read_output(output)

    invalid = np.zeros(array.shape[:2], dtype=bool)
    invalid[50:70, 100:130] = invalid[5, 7] = True
    assert (out[:, invalid] == -1).all()
    assert (out[:, ~invalid] >= 0).all()
    # Invalid values reach the model as band means, as in training.
    expected = expected_map(array, model, inputs, stride=32, nodata=raster_nodata)
    np.testing.assert_allclose(np.moveaxis(out[1:], 0, -1)[~invalid], expected[~invalid], atol=1e-6)


def test_nan_and_infinite_pixels_of_a_float_scene_are_nodata(tmp_path):
    array = two_part_scene().astype("float32")
    array[10, 20, 0] = np.nan
    array[100, 250, 2] = np.inf
    _, output, model = classify(tmp_path, array)
    out = read_output(output)

    invalid = np.zeros(array.shape[:2], dtype=bool)
    invalid[10, 20] = invalid[100, 250] = True
    assert (out[:, invalid] == -1).all()
    assert (out[:, ~invalid] >= 0).all()
    expected = expected_map(array, model, model_input(), stride=32)
    np.testing.assert_allclose(np.moveaxis(out[1:], 0, -1)[~invalid], expected[~invalid], atol=1e-6)


@pytest.mark.parametrize("chunk_width", [1024, 1], ids=["one chunk", "one block a chunk"])
@pytest.mark.parametrize(
    ("height", "width", "stride"), [(200, 300, 16), (70, 45, 7), (33, 40, 1), (32, 32, 32)]
)
def test_overlapping_windows_write_each_pixel_once_from_the_nearest_window(
    tmp_path, height, width, stride, chunk_width
):
    rng = np.random.default_rng(1)
    array = rng.integers(1, 1000, size=(height, width, 3)).astype("uint16")
    result, output, model = classify(tmp_path, array, stride=stride, chunk_width=chunk_width)
    out = read_output(output)

    assert (out != -1).all()  # a new GeoTIFF reads -1 wherever nothing was written
    expected = expected_map(array, model, model_input(), stride=stride)
    np.testing.assert_allclose(np.moveaxis(out[1:], 0, -1), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[0], expected.argmax(axis=-1))
    rows, _ = nearest_window(height, TILE[0], stride)
    cols, _ = nearest_window(width, TILE[1], stride)
    assert result.windows == len(rows) * len(cols) and result.stride == (stride, stride)
    assert window_count(width, height, TILE, stride) == result.windows  # what the API stores


@pytest.mark.parametrize("stride", [None, 16, 13, 7])
@pytest.mark.parametrize(("height", "width"), [(70, 600), (50, 100)])
def test_chunks_of_columns_give_the_map_of_one_chunk_and_count_each_window_once(
    tmp_path, height, width, stride
):
    # The class map's blocks are 256 px wide (96 at 100 px) and chunk_width=1 rounds up to one
    # block: chunks of 256, 256 and 88 columns (96 and 4). A window owning columns on both sides
    # of a chunk's edge is predicted in both chunks. The input is tiled in 16 px blocks (a
    # striped one is read in one chunk: see the next test).
    block = min(256, width // 16 * 16)
    rng = np.random.default_rng(2)
    array = rng.integers(1, 1000, size=(height, width, 3)).astype("uint16")
    array[20:30, block - 6 : block + 6] = 0  # nodata across the first chunk edge
    model = band_model(3, 3)
    maps, progress, batches = {}, {}, {}
    for chunk_width in (1, 4096):
        progress[chunk_width], batches[chunk_width] = [], []

        def predict(windows, sizes=batches[chunk_width]):
            sizes.append(len(windows))
            return predictor(model)(windows)

        result, output, _ = classify(
            tmp_path, array, stride=stride, nodata=0, chunk_width=chunk_width, batch_size=16,
            predict=predict, on_progress=lambda *p, calls=progress[chunk_width]: calls.append(p),
            tiled=True, blockxsize=16, blockysize=16,
        )  # fmt: skip
        maps[chunk_width] = read_output(output)

    np.testing.assert_array_equal(maps[1], maps[4096])
    invalid = (array == 0).any(axis=-1)
    assert (maps[1][:, invalid] == -1).all() and (maps[1][:, ~invalid] >= 0).all()
    expected = expected_map(array, model, model_input(), stride or TILE[1], nodata=0)
    out = np.moveaxis(maps[1][1:], 0, -1)
    np.testing.assert_allclose(out[~invalid], expected[~invalid], rtol=1e-5, atol=1e-6)

    rows, _ = nearest_window(height, TILE[0], stride or TILE[0])
    cols, col_owner = nearest_window(width, TILE[1], stride or TILE[1])
    total = len(rows) * len(cols)
    assert result.windows == total
    assert progress[4096] == [(len(cols) * (j + 1), total) for j in range(len(rows))]
    # Chunk by chunk, each strip adds the windows whose owned columns begin in its chunk.
    first_columns = np.unique(col_owner, return_index=True)[1]
    chunks = -(-width // block)
    added = np.repeat(np.bincount(first_columns // block, minlength=chunks), len(rows))
    assert progress[1] == [(int(done), total) for done in np.cumsum(added)]
    straddling = sum(col_owner[edge - 1] == col_owner[edge] for edge in range(block, width, block))
    assert sum(batches[4096]) == total
    assert sum(batches[1]) == total + len(rows) * straddling
    assert all(size == 16 for size in batches[1][:-1])  # full batches whatever the chunk


def test_with_stride_16_each_window_owns_the_16_px_block_at_its_centre():
    _, owner = nearest_window(200, 32, 16)
    # Window 1 starts at 16: it owns 24..39, 8 px in from each side; window 0 also owns 0..7.
    assert list(np.flatnonzero(owner == 1)) == list(range(24, 40))
    assert list(np.flatnonzero(owner == 0)) == list(range(24))


def test_model_reads_only_its_bands_in_its_order(tmp_path):
    # Left: band 3 bright; right: band 1 bright. Bands 2 and 4 say the opposite, brighter still.
    array = np.full((96, 128, 4), 100, dtype="uint16")
    array[:, :64, 2] = array[:, 64:, 0] = 900
    array[:, 64:, 1] = array[:, :64, 3] = 5000
    inputs = model_input(2, dataset_bands=4, order=(3, 1))
    _, output, model = classify(tmp_path, array, inputs, classes=("band3", "band1"))
    out = read_output(output)

    np.testing.assert_array_equal(out[0, :, :64], 0)
    np.testing.assert_array_equal(out[0, :, 64:], 1)
    expected = expected_map(array, model, inputs, stride=32)
    np.testing.assert_allclose(np.moveaxis(out[1:], 0, -1), expected, atol=1e-6)


def test_check_scene_returns_the_header(tmp_path):
    path = write_tile(tmp_path / "s.tif", two_part_scene(40, 50), nodata=0)
    info = check_scene(path, model_input(), TILE, max_bytes=BUDGET)
    assert (info.height, info.width, info.count, info.nodata) == (40, 50, 3, 0.0)


@pytest.mark.parametrize("check", [check_scene, "classify"])
def test_scene_with_the_wrong_band_count_is_refused(tmp_path, out_dir, check):
    path = write_tile(tmp_path / "s.tif", two_part_scene(64, 64, bands=4))
    with pytest.raises(InvalidRasterError, match="model expects 3 bands, scene has 4"):
        if check == "classify":
            classify_scene(
                predictor(band_model(3, 3)), path, out_dir / "o.tif", model_input=model_input(),
                classes="abc", tile_size=TILE, max_bytes=BUDGET,
            )  # fmt: skip
        else:
            check(path, model_input(), TILE, max_bytes=BUDGET)
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize(
    ("shape", "tile", "message"),
    [
        ((40, 20), (32, 32), "is 40 x 20 px; the model needs at least 32 x 32"),
        ((40, 48), (32, 64), "is 40 x 48 px; the model's windows are 32 x 64"),
    ],
)
def test_scene_smaller_than_a_tile_is_refused(tmp_path, out_dir, shape, tile, message):
    path = write_tile(tmp_path / "s.tif", two_part_scene(*shape))
    with pytest.raises(InvalidRasterError, match=message):
        check_scene(path, model_input(), tile, max_bytes=BUDGET)
    with pytest.raises(InvalidRasterError, match=message):
        classify_scene(
            predictor(band_model(3, 3)), path, out_dir / "o.tif", model_input=model_input(),
            classes="abc", tile_size=tile, max_bytes=BUDGET,
        )  # fmt: skip
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("stride", [0, -1, 33])
def test_stride_outside_one_to_the_tile_is_refused(tmp_path, stride):
    with pytest.raises(
        ValueError, match=rf"stride must be between 1 and .* 32\. .*stride={stride}"
    ):
        classify(tmp_path, two_part_scene(64, 64), stride=stride)
    assert os.listdir(tmp_path / "out") == []


def test_chunk_width_below_one_px_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"chunk_width must be at least 1 px\. .*chunk_width=0"):
        classify(tmp_path, two_part_scene(64, 64), chunk_width=0)
    assert os.listdir(tmp_path / "out") == []


def test_vrt_renamed_tif_is_refused_before_gdal_sees_it(tmp_path, out_dir):
    secret = write_tile(tmp_path / "secret.tif", two_part_scene(64, 64))
    path = tmp_path / "scene.tif"
    path.write_bytes(vrt_text(secret, 64, 64))
    with pytest.raises(InvalidRasterError, match="not a GeoTIFF"):
        check_scene(path, model_input(1), TILE, max_bytes=BUDGET)
    with pytest.raises(InvalidRasterError, match="not a GeoTIFF"):
        classify_scene(
            predictor(band_model(1, 1)), path, out_dir / "o.tif", model_input=model_input(1),
            classes="a", tile_size=TILE, max_bytes=BUDGET,
        )  # fmt: skip
    assert os.listdir(out_dir) == []


def test_scene_over_the_byte_budget_is_refused(tmp_path):
    with pytest.raises(InvalidRasterError, match="budget"):
        classify(tmp_path, two_part_scene(64, 64), max_bytes=64 * 64 * 3 * 2 - 1)


def test_should_stop_cancels_and_leaves_no_output(tmp_path):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    # Batches of one strip's 10 windows: each strip is written before the next one is read.
    with pytest.raises(JobCancelled, match="after 20 of 70 windows"):
        classify(tmp_path, two_part_scene(), should_stop=should_stop, batch_size=10)
    assert os.listdir(tmp_path / "out") == []


def test_on_progress_counts_windows_per_strip_up_to_the_total(tmp_path):
    progress = []
    result, _, _ = classify(tmp_path, two_part_scene(), on_progress=lambda *p: progress.append(p))
    assert progress == [(10 * (j + 1), 70) for j in range(7)]
    assert progress[-1] == (result.windows, result.windows)


def test_predict_with_the_wrong_output_shape_is_refused(tmp_path, out_dir):
    path = write_tile(tmp_path / "s.tif", two_part_scene(64, 300))
    two_classes = predictor(band_model(3, 2))
    # Two strips of 10 windows: one batch.
    with pytest.raises(ValueError, match=r"predict must return .* Received: shape=\(20, 2\)"):
        classify_scene(
            two_classes, path, out_dir / "o.tif", model_input=model_input(), classes="abc",
            tile_size=TILE, max_bytes=BUDGET,
        )  # fmt: skip
    assert os.listdir(out_dir) == []


def test_a_striped_scene_is_read_in_one_chunk_whatever_the_chunk_width(tmp_path):
    # Its blocks are whole rows: in 256 px chunks GDAL would decode each row three times, and
    # the windows across the chunks' edges would be predicted twice.
    array = np.random.default_rng(3).integers(1, 1000, size=(96, 600, 3)).astype("uint16")
    model, maps, predicted = band_model(3, 3), {}, {}
    for layout in ("striped", "tiled"):
        sizes = predicted.setdefault(layout, [])

        def predict(windows, sizes=sizes):
            sizes.append(len(windows))
            return predictor(model)(windows)

        tiled = {"tiled": True, "blockxsize": 16, "blockysize": 16} if layout == "tiled" else {}
        result, output, _ = classify(
            tmp_path, array, stride=24, chunk_width=1, predict=predict, **tiled
        )
        maps[layout] = read_output(output)
        with rasterio.open(tmp_path / "scene.tif") as source:
            assert (source.block_shapes[0][1] == 600) is (layout == "striped")
    np.testing.assert_array_equal(maps["striped"], maps["tiled"])
    assert sum(predicted["striped"]) == result.windows  # one chunk: every window once
    assert sum(predicted["tiled"]) > result.windows  # three chunks: the edges' windows twice


def test_gdal_block_cache_is_capped_during_a_scene_and_restored_after(tmp_path):
    before = get_gdal_config("GDAL_CACHEMAX")
    model, during = band_model(3, 3), []

    def predict(windows):
        during.append(get_gdal_config("GDAL_CACHEMAX"))
        return predictor(model)(windows)

    classify(tmp_path, two_part_scene(), predict=predict)
    assert set(during) == {4 * 2**20}  # a small scene: the cap's floor
    assert get_gdal_config("GDAL_CACHEMAX") == before
    stop = len(during) + 2  # mid-scene: after two strips, a batch of 10 windows each
    with pytest.raises(JobCancelled):
        classify(
            tmp_path, two_part_scene(), predict=predict, batch_size=10,
            should_stop=lambda: len(during) >= stop,
        )  # fmt: skip
    assert get_gdal_config("GDAL_CACHEMAX") == before


def peak_rss_increase(scene: str, output: str) -> None:
    """Run in a fresh interpreter: warm up on a small scene, then print the peak RSS above the
    baseline while classifying `scene`, in MiB."""
    import threading
    import time

    import psutil

    array_bands = 6
    inputs = model_input(array_bands)
    model = band_model(array_bands, 3)
    options = {"model_input": inputs, "classes": "abc", "tile_size": TILE, "max_bytes": 2**34}
    warm_up = Path(output).with_name("warm_up.tif")
    write_tile(warm_up, np.ones((96, 96, array_bands), dtype="uint16"))
    classify_scene(predictor(model), warm_up, output, **options)
    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    classify_scene(predictor(model), scene, output, **options)
    done.set()
    sampler.join()
    print(json.dumps({"peak_increase_mib": (peak - baseline) / 2**20}))


@pytest.mark.slow
def test_memory_does_not_grow_with_the_scene(tmp_path):
    rng = np.random.default_rng(0)
    increases = {}
    for width, height in [(1024, 1024), (4096, 1024), (1024, 4096)]:
        array = rng.integers(1, 1000, (height, width, 6)).astype("uint16")
        scene = write_tile(
            tmp_path / f"s{width}x{height}.tif", array, tiled=True, blockxsize=256, blockysize=256
        )
        code = (
            "from tests.test_scenes import peak_rss_increase; "
            f"peak_rss_increase({str(scene)!r}, {str(tmp_path / f'o{width}x{height}.tif')!r})"
        )
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        run = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-3000:]
        increases[width, height] = json.loads(run.stdout.strip().splitlines()[-1])[
            "peak_increase_mib"
        ]
    print(f"peak RSS increase (MiB), by (width, height): {increases}")
    # 4096 x 1024 x 6 bands is 48 MiB of uint16 and its class map 64 MiB of float32, 4x the
    # 1024^2 scene's. Holding a strip of the whole width would break this bound: the output rows
    # of a 4096 px wide scene alone are 4 bands x 256 rows x 4096 px float32, 16 MiB. What may
    # grow: GDAL's block cache cap, clipped at a 1024 px scene's width (here 4 MiB more).
    small = increases[1024, 1024]
    assert increases[4096, 1024] < small + 10, increases
    assert increases[1024, 4096] < small + 10, increases
