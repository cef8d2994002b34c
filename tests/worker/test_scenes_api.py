"""A whole scene through the API and a real worker: the class map GeoTIFF keeps the input's
grid, agrees with the model on each window, and keeps nodata as nodata."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from anyband.inference import ModelInput, prepare
from anyband.saving import load_model
from tests.service.conftest import assert_problem
from tests.tiles import DEFAULT_TRANSFORM, separable_classes, tile_bytes

pytestmark = pytest.mark.slow


def test_scene_class_map_keeps_the_grid_and_matches_the_model(stack_factory):
    stack = stack_factory("filesystem://")
    dataset = stack.upload_dataset(bands=4, per_class=6)
    stack.start_worker()
    job = stack.submit(dataset_id=dataset["id"], weights="none", epochs=1, batch_size=8)
    job = stack.wait_done(job["id"])
    assert job["status"] == "succeeded", job
    model = stack.client.get(f"/v1/models/{job['model_id']}").json()

    # A 3 x 2 grid of 32 px tiles of known classes, then a nodata corner.
    tiles = separable_classes(per_class=2, shape=(32, 32, 4), seed=9)
    grid = [[tiles["forest"][0], tiles["urban"][0], tiles["water"][0]],
            [tiles["water"][1], tiles["forest"][1], tiles["urban"][1]]]  # fmt: skip
    scene = np.concatenate([np.concatenate(row, axis=1) for row in grid], axis=0)
    scene[:5, :7, :] = 0
    data = tile_bytes(scene, nodata=0, crs="EPSG:32633")

    bad = stack.client.post(
        f"/v1/models/{model['id']}/scenes",
        files={"file": ("three.tif", tile_bytes(scene[..., :3]), "image/tiff")},
    )
    assert_problem(bad, 422, "model expects 4 bands, scene has 3")
    bad_stride = stack.client.post(
        f"/v1/models/{model['id']}/scenes",
        files={"file": ("s.tif", data, "image/tiff")},
        data={"stride": "64"},
    )
    assert_problem(bad_stride, 422, "stride must be an integer in 1..32")

    response = stack.client.post(
        f"/v1/models/{model['id']}/scenes", files={"file": ("scene.tif", data, "image/tiff")}
    )
    assert response.status_code == 202, response.text
    scene_job = response.json()
    assert scene_job["status"] == "queued" and (scene_job["width"], scene_job["height"]) == (96, 64)
    # The total is known from the start: progress never reads "0 of 0".
    assert scene_job["progress"] == {"windows_done": 0, "windows_total": 6, "fraction": 0.0}
    assert_problem(
        stack.client.get(f"/v1/scenes/{scene_job['id']}/result.tif"), 409, "no result yet"
    )
    done = _wait_scene(stack, scene_job["id"])
    assert done["status"] == "succeeded", (done, stack.workers[0].text()[-3000:])
    assert done["progress"] == {"windows_done": 6, "windows_total": 6, "fraction": 1.0}

    result = stack.client.get(done["result"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/tiff"
    with rasterio.open(io.BytesIO(result.content)) as output:
        assert (output.width, output.height) == (96, 64)
        assert output.crs.to_string() == "EPSG:32633"
        assert output.transform == DEFAULT_TRANSFORM
        assert output.count == 1 + 3 and output.nodata == -1
        assert output.descriptions[0] == "class"
        assert output.descriptions[1:] == tuple(f"p({c})" for c in model["classes"])
        bands = output.read()
        class_pixels = json.loads(output.tags()["class_pixels"])
    assert class_pixels == {c: int(np.sum(bands[0] == k)) for k, c in enumerate(model["classes"])}
    assert sum(class_pixels.values()) == 96 * 64 - 5 * 7
    preview = stack.client.get(done["preview"])  # the map as a picture, with each class's share
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert preview.content[:8] == b"\x89PNG\r\n\x1a\n"

    keras_model = load_model(stack.settings.data_dir / "models" / model["id"] / "model.keras")
    model_input = ModelInput(dataset_bands=4, bands=(1, 2, 3, 4),
                             band_mean=tuple(dataset["band_stats"]["mean"]), nodata=0)  # fmt: skip
    windows = [scene[r : r + 32, c : c + 32] for r in (0, 32) for c in (0, 32, 64)]
    expected = keras_model.predict(np.stack([prepare(w, model_input) for w in windows]), verbose=0)
    for i, (r, c) in enumerate((r, c) for r in (0, 32) for c in (0, 32, 64)):
        block = bands[:, r : r + 32, c : c + 32]
        valid = block[0] != -1
        assert np.all(block[0][valid] == np.argmax(expected[i]))
        for k in range(3):
            np.testing.assert_allclose(block[1 + k][valid], expected[i][k], rtol=1e-4, atol=1e-6)
    assert np.all(bands[:, :5, :7] == -1)  # nodata stays nodata, in every band
    assert np.count_nonzero(bands[0] == -1) == 5 * 7
    # The broker keeps its files in the data directory, not in the current folder.
    assert not (Path.cwd() / "control").exists()
    assert (stack.settings.data_dir / "broker" / "control").is_dir()
    # The uploaded scene is not kept once mapped; the result is.
    assert not (stack.settings.data_dir / "scenes" / scene_job["id"] / "input.tif").exists()


def _wait_scene(stack, scene_id, seconds=180, until=None):
    until = until or (lambda scene: scene["status"] in ("succeeded", "failed"))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        scene = stack.client.get(f"/v1/scenes/{scene_id}").json()
        if until(scene):
            return scene
        time.sleep(0.3)
    raise AssertionError(f"scene {scene_id} did not get there: {scene}")


def test_a_stopped_worker_hands_its_scene_back_and_the_next_maps_it(stack_factory):
    stack = stack_factory("filesystem://")
    dataset = stack.upload_dataset(bands=4, per_class=6)
    first = stack.start_worker()
    job = stack.wait_done(
        stack.submit(dataset_id=dataset["id"], weights="none", epochs=1, batch_size=8)["id"]
    )
    assert job["status"] == "succeeded", job
    scene = np.random.default_rng(3).integers(1, 3000, (480, 480, 4), dtype=np.uint16)
    response = stack.client.post(
        f"/v1/models/{job['model_id']}/scenes",
        files={"file": ("big.tif", tile_bytes(scene, crs="EPSG:32633"), "image/tiff")},
        data={"stride": "8"},  # 57 x 57 windows: long enough to stop it halfway
    )
    assert response.status_code == 202, response.text
    scene_id = response.json()["id"]
    _wait_scene(stack, scene_id, until=lambda s: s["progress"]["windows_done"] > 0)

    os.killpg(first.process.pid, signal.SIGQUIT)  # a cold shutdown
    assert first.process.wait(timeout=60) is not None
    handed_back = stack.client.get(f"/v1/scenes/{scene_id}").json()
    assert handed_back["status"] == "queued", (handed_back, first.text()[-3000:])
    assert handed_back["error"] is None
    assert handed_back["progress"] == {"windows_done": 0, "windows_total": 57 * 57, "fraction": 0}
    assert f"scene {scene_id}: this worker is shutting down; handed back" in first.text()

    second = stack.start_worker()
    done = _wait_scene(stack, scene_id)
    assert done["status"] == "succeeded", (done, second.text()[-3000:])
    assert done["progress"]["windows_done"] == done["progress"]["windows_total"] == 57 * 57

    # The same scene again, cancelled while the worker maps it: the worker stops, then the
    # scene and its files can be deleted.
    response = stack.client.post(
        f"/v1/models/{job['model_id']}/scenes",
        files={"file": ("big.tif", tile_bytes(scene, crs="EPSG:32633"), "image/tiff")},
        data={"stride": "8"},
    )
    again = response.json()["id"]
    _wait_scene(stack, again, until=lambda s: s["progress"]["windows_done"] > 0)
    assert_problem(stack.client.delete(f"/v1/scenes/{again}"), 409, "cancel it first")
    assert stack.client.post(f"/v1/scenes/{again}/cancel").status_code == 202
    deadline = time.monotonic() + 60
    while f"scene {again}: stopped (cancelled" not in second.text():
        assert time.monotonic() < deadline, second.text()[-3000:]
        time.sleep(0.3)
    stopped = stack.client.get(f"/v1/scenes/{again}").json()
    assert stopped["status"] == "cancelled" and stopped["result"] is None
    assert stopped["progress"]["windows_done"] < 57 * 57
    assert stack.client.delete(f"/v1/scenes/{again}").status_code == 204
    assert not (stack.settings.data_dir / "scenes" / again).exists()
    listed = stack.client.get("/v1/scenes").json()
    assert [s["id"] for s in listed["data"]] == [scene_id]
