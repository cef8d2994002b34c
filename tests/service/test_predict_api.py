"""POST /v1/models/{id}/predict on a model trained by a real job: answers equal model.predict,
every bad tile is a clear 4xx, concurrent requests are micro-batched and each gets its own answer."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from anyband import scene_runner
from anyband.inference import ModelInput, prepare
from anyband.runner import run_training_job
from anyband.saving import load_model
from anyband.scene_runner import run_scene_job
from anyband.settings import Settings
from service.main import create_app
from tests.service.conftest import assert_problem
from tests.service.test_datasets_api import upload
from tests.tiles import separable_classes, tile_bytes, vrt_text, write_dataset_zip

pytestmark = pytest.mark.slow
BANDS = 6
MODEL_BANDS = [5, 1, 3]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained by a real job (the runner a worker calls), on 6-band uint16 tiles with
    nodata, using bands 5, 1, 3."""
    root = tmp_path_factory.mktemp("predict")
    settings = Settings(data_dir=root / "data", api_keys="", model_cache_size=1)
    with TestClient(create_app(settings)) as client:
        classes = separable_classes(per_class=6, shape=(32, 32, BANDS), seed=3)
        classes["forest"][0][:4, :4, :] = 0  # some nodata, as real scenes have
        zip_path = write_dataset_zip(root / "d.zip", classes, nodata=0)
        dataset = upload(client, zip_path).json()
        job = client.post(
            "/v1/jobs",
            json={"dataset_id": dataset["id"], "bands": MODEL_BANDS, "weights": "none",
                  "epochs": 1, "batch_size": 8, "init_strategy": "mean"},
        ).json()  # fmt: skip
    assert run_training_job(job["id"], settings, "test-runner") == "succeeded"
    with TestClient(create_app(settings)) as client:
        job = client.get(f"/v1/jobs/{job['id']}").json()
        model = client.get(f"/v1/models/{job['model_id']}").json()
    return settings, model, classes


@pytest.fixture
def api(trained):
    settings = trained[0]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def tile_upload(arrays: dict[str, np.ndarray], **kwargs) -> list:
    return [
        ("files", (name, tile_bytes(array, **kwargs), "image/tiff"))
        for name, array in arrays.items()
    ]


def expected_probabilities(settings, model, arrays, nodata=None):
    keras_model = load_model(settings.data_dir / "models" / model["id"] / "model.keras")
    card = (settings.data_dir / "models" / model["id"] / "card.json").read_text()
    model_input = ModelInput.from_card(__import__("json").loads(card))
    batch = np.stack([prepare(a, model_input, nodata) for a in arrays])
    return keras_model.predict(batch, verbose=0)


def test_predictions_equal_model_predict_on_the_same_arrays(api, trained):
    settings, model, classes = trained
    rng = np.random.default_rng(11)
    arrays = {
        "forest.tif": classes["forest"][0],  # holds nodata pixels
        "water.tif": classes["water"][1],
        "noise.tif": rng.integers(1, 900, (32, 32, BANDS)).astype("uint16"),
    }
    response = api.post(f"/v1/models/{model['id']}/predict", files=tile_upload(arrays, nodata=0))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["filename"] for p in body["predictions"]] == list(arrays)
    expected = expected_probabilities(settings, model, list(arrays.values()), nodata=0)
    for prediction, want in zip(body["predictions"], expected, strict=True):
        got = [prediction["probabilities"][name] for name in model["classes"]]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        assert prediction["label"] == model["classes"][int(np.argmax(want))]
        assert sum(got) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("in_memory_bytes", [0, 64 * 2**20])
def test_small_bodies_are_read_in_memory_large_ones_via_disk_with_the_same_answers(
    trained, in_memory_bytes
):
    settings, model, classes = trained
    spooled = []
    arrays = {"forest.tif": classes["forest"][0], "water.tif": classes["water"][1]}
    tuned = settings.model_copy(update={"predict_in_memory_bytes": in_memory_bytes})
    real_open = Path.open

    def recording_open(self, *args, **kwargs):
        if self.suffix == ".part":
            spooled.append(self)
        return real_open(self, *args, **kwargs)

    with (
        TestClient(create_app(tuned)) as client,
        mock.patch.object(Path, "open", recording_open),
    ):
        response = client.post(
            f"/v1/models/{model['id']}/predict", files=tile_upload(arrays, nodata=0)
        )
    assert response.status_code == 200, response.text
    expected = expected_probabilities(settings, model, list(arrays.values()), nodata=0)
    for prediction, want in zip(response.json()["predictions"], expected, strict=True):
        got = [prediction["probabilities"][name] for name in model["classes"]]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Two tiles through disk when the limit is 0, none when the body fits in memory; either
    # way nothing is left behind.
    assert len(spooled) == (2 if in_memory_bytes == 0 else 0)
    assert not list((settings.data_dir / "uploads").glob("*.part"))


def test_any_tile_size_the_backbone_accepts_is_answered(api, trained):
    settings, model, _ = trained
    big = np.random.default_rng(2).integers(1, 900, (48, 80, BANDS)).astype("uint16")
    response = api.post(f"/v1/models/{model['id']}/predict", files=tile_upload({"big.tif": big}))
    assert response.status_code == 200, response.text
    want = expected_probabilities(settings, model, [big])[0]
    got = [response.json()["predictions"][0]["probabilities"][c] for c in model["classes"]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def good_tile(seed=0):
    return np.random.default_rng(seed).integers(1, 900, (32, 32, BANDS)).astype("uint16")


@pytest.mark.parametrize(
    ("files", "status", "needle"),
    [
        (
            lambda: tile_upload({"four.tif": good_tile()[..., :4]}),
            422,
            "model expects 6 bands, tile has 4",
        ),
        (lambda: tile_upload({"small.tif": good_tile()[:16, :16]}), 422, "at least 32 x 32"),
        (
            lambda: [
                (
                    "files",
                    ("c.tif", tile_bytes(np.zeros((32, 32, BANDS), "complex64")), "image/tiff"),
                )
            ],
            422,
            "pixel type complex64",
        ),
        (
            lambda: [("files", ("bad.tif", tile_bytes(good_tile())[:300], "image/tiff"))],
            422,
            "bad.tif",
        ),
        (
            lambda: [("files", ("vrt.tif", vrt_text("/etc/passwd"), "image/tiff"))],
            422,
            "not a GeoTIFF",
        ),
        (lambda: [("other", ("x.tif", tile_bytes(good_tile()), "image/tiff"))], 422, "'files'"),
    ],
    ids=["band-count", "too-small", "complex", "corrupt", "vrt", "no-files"],
)
def test_bad_tile_is_a_clear_4xx_and_the_server_stays_healthy(api, trained, files, status, needle):
    _, model, _ = trained
    response = api.post(f"/v1/models/{model['id']}/predict", files=files())
    assert_problem(response, status, needle)
    assert api.get("/healthz").status_code == 200
    assert not any((trained[0].data_dir / "uploads").iterdir())
    ok = api.post(f"/v1/models/{model['id']}/predict", files=tile_upload({"ok.tif": good_tile()}))
    assert ok.status_code == 200


def test_tiles_decoding_beyond_the_request_budget_are_a_413_before_their_pixels(trained):
    settings, model, _ = trained
    # A 32 x 32 x 6 uint16 tile is 12 KiB as read and 12 KiB as float32 for the 3 model bands.
    budget = settings.model_copy(update={"max_predict_bytes": 60 * 1024})
    url = f"/v1/models/{model['id']}/predict"
    with TestClient(create_app(budget), raise_server_exceptions=False) as client:
        two = {"a.tif": good_tile(1), "b.tif": good_tile(2)}
        assert client.post(url, files=tile_upload(two)).status_code == 200
        three = {**two, "c.tif": good_tile(3)}
        response = client.post(url, files=tile_upload(three))
        assert_problem(response, 413, "up to 'c.tif' decode to 72 KiB", "over the 60 KiB")
        # One bigger tile is refused from its header; the server stays up and keeps answering.
        big = np.zeros((512, 512, BANDS), "uint16")
        assert_problem(client.post(url, files=tile_upload({"big.tif": big})), 413, "'big.tif'")
        assert client.get("/healthz").status_code == 200
        assert client.post(url, files=tile_upload(two)).status_code == 200
    assert not any((settings.data_dir / "uploads").iterdir())


def test_tiles_beyond_what_all_requests_in_flight_may_hold_are_a_503_to_retry(trained):
    settings, model, _ = trained
    # Each 32 x 32 x 6 uint16 tile holds 24 KiB: 12 KiB as read, 12 KiB as float32 (3 bands).
    # Bodies go to disk here, so only pixels count; bodies held in memory: the next test.
    limits = {
        "max_predict_bytes": 60 * 1024,
        "max_predict_inflight_bytes": 100 * 1024,
        "predict_in_memory_bytes": 0,
    }
    url = f"/v1/models/{model['id']}/predict"
    two = {"a.tif": good_tile(1), "b.tif": good_tile(2)}
    with TestClient(create_app(settings.model_copy(update=limits))) as client:
        memory = client.app.state.serving.memory
        assert client.post(url, files=tile_upload(two)).status_code == 200
        assert memory.held == 0  # an answered request gives back what it held
        with memory.reservation() as in_flight:  # another request holds 60 KiB meanwhile
            assert in_flight.add(60 * 1024)
            response = client.post(url, files=tile_upload(two))
            assert_problem(
                response,
                503,
                "in flight hold 84 KiB of the 100 KiB",
                "(ANYBAND_MAX_PREDICT_INFLIGHT_BYTES), and 'b.tif' needs 24 KiB more",
            )
            assert response.headers["retry-after"] == "1"
            assert memory.held == 60 * 1024  # the refused request gave 'a.tif' back
            one = client.post(url, files=tile_upload({"a.tif": good_tile(1)}))
            assert one.status_code == 200  # what fits is still answered
        # Once the other request is done, the same request is answered, with the same answers.
        again = client.post(url, files=tile_upload(two))
        assert again.status_code == 200
        assert again.json() == client.post(url, files=tile_upload(two)).json()
        # A tile refused after another was counted gives that one back too.
        bad = {"a.tif": good_tile(1), "four.tif": good_tile(2)[..., :4]}
        assert_problem(client.post(url, files=tile_upload(bad)), 422, "tile has 4")
        assert memory.held == 0
    assert not any((settings.data_dir / "uploads").iterdir())


def test_a_body_parsed_in_memory_counts_against_the_server_budget_before_it_is_read(trained):
    settings, model, _ = trained
    limits = {"max_predict_inflight_bytes": 200 * 1024, "predict_in_memory_bytes": 150 * 1024}
    url = f"/v1/models/{model['id']}/predict"
    files = tile_upload({"a.tif": good_tile(1)})
    with TestClient(create_app(settings.model_copy(update=limits))) as client:
        memory = client.app.state.serving.memory
        with memory.reservation() as in_flight:
            assert in_flight.add(195 * 1024)
            response = client.post(url, files=files)
            assert_problem(
                response,
                503,
                "hold 195 KiB of the 200 KiB",
                "this request's body (parsed in memory)",
            )
            assert response.headers["retry-after"] == "1"
            assert memory.held == 195 * 1024  # nothing of the refused request is held
        answered = client.post(url, files=files)
        assert answered.status_code == 200, answered.text
        assert memory.held == 0
        # Over the in-memory size the body streams to disk and only its pixels count.
        with memory.reservation() as in_flight:
            assert in_flight.add(170 * 1024)
            big = {f"t{i}.tif": good_tile(i) for i in range(20)}  # a body over 150 KiB
            assert_problem(client.post(url, files=tile_upload(big)), 503, "'t1.tif' needs 24 KiB")


def test_the_server_wide_predict_budget_must_hold_one_whole_request(tmp_path):
    limits = {"max_predict_bytes": 2048, "predict_in_memory_bytes": 1024}
    with pytest.raises(ValidationError, match="Received: max_predict_inflight_bytes=3071, max_pre"):
        Settings(data_dir=tmp_path, max_predict_inflight_bytes=3071, **limits)
    assert Settings(data_dir=tmp_path, max_predict_inflight_bytes=3072, **limits)


def test_unknown_model_is_404(api):
    response = api.post("/v1/models/nope/predict", files=tile_upload({"a.tif": good_tile()}))
    assert_problem(response, 404, "no model with id 'nope'")


@pytest.mark.parametrize(
    "change, needle",
    [("append", "model.keras no longer matches the sha256"), ("delete", "model.keras is missing")],
)
def test_model_file_changed_since_training_is_refused_for_tiles_and_scenes(
    trained, tmp_path, change, needle
):
    settings, model, _ = trained
    copy = Settings(data_dir=tmp_path / "data", api_keys="", model_cache_size=1)
    shutil.copytree(settings.data_dir, copy.data_dir)
    model_file = copy.data_dir / "models" / model["id"] / "model.keras"
    if change == "append":
        model_file.write_bytes(model_file.read_bytes() + b"\0")
    else:
        model_file.unlink()
    with TestClient(create_app(copy), raise_server_exceptions=False) as client:
        response = client.post(
            f"/v1/models/{model['id']}/predict", files=tile_upload({"a.tif": good_tile()})
        )
        assert_problem(response, 409, needle)
        # A scene is refused the same way, at once, not accepted and failed by the worker.
        scene = {"file": ("scene.tif", tile_bytes(good_tile()), "image/tiff")}
        response = client.post(f"/v1/models/{model['id']}/scenes", files=scene)
        assert_problem(response, 409, needle)
        for refused in (response, client.post(f"/v1/models/{model['id']}/predict")):
            assert str(tmp_path) not in refused.json()["detail"]  # no server paths
        assert not (copy.data_dir / "scenes").exists() or not any(
            (copy.data_dir / "scenes").iterdir()
        )
        assert client.get("/healthz").status_code == 200


def test_a_deleted_model_is_gone_with_its_files_and_no_api_process_serves_it_again(
    trained, tmp_path
):
    settings, model, _ = trained
    copy = Settings(data_dir=tmp_path / "data", api_keys="", model_cache_size=1)
    shutil.copytree(settings.data_dir, copy.data_dir)
    folder = copy.data_dir / "models" / model["id"]
    url = f"/v1/models/{model['id']}"
    tiles = tile_upload({"a.tif": good_tile()})
    scene = {"file": ("scene.tif", tile_bytes(good_tile()), "image/tiff")}
    # Two API processes on one data folder, as behind a load balancer; both have it loaded.
    with (
        TestClient(create_app(copy), raise_server_exceptions=False) as one,
        TestClient(create_app(copy), raise_server_exceptions=False) as other,
    ):
        assert one.post(f"{url}/predict", files=tiles).status_code == 200
        assert other.post(f"{url}/predict", files=tiles).status_code == 200
        queued = one.post(f"{url}/scenes", files=scene).json()
        # A queued scene would fail without its model: refused, nothing removed.
        response = one.delete(url)
        assert_problem(response, 409, "in use by 1 queued or running scene(s)", queued["id"])
        assert (folder / "model.keras").is_file()
        assert one.post(f"{url}/predict", files=tiles).status_code == 200

        assert one.post(f"/v1/scenes/{queued['id']}/cancel").status_code == 202
        assert one.delete(url).status_code == 204

        assert not folder.exists()
        assert_problem(one.get(url), 404, f"no model with id '{model['id']}'")
        assert model["id"] not in [m["id"] for m in one.get("/v1/models").json()["data"]]
        for api in (one, other):  # the other process had it in memory: it does not serve it
            assert_problem(api.post(f"{url}/predict", files=tiles), 404, "no model with id")
            assert_problem(api.post(f"{url}/scenes", files=scene), 404, "no model with id")
        assert_problem(one.delete(url), 404, "no model with id")
        # The scene it mapped (here: cancelled) and the job that trained it are kept.
        assert one.get(f"/v1/scenes/{queued['id']}").json()["status"] == "cancelled"
        assert one.get(f"/v1/jobs/{model['job_id']}").json()["model_id"] == model["id"]
        assert one.get("/healthz").status_code == 200


@pytest.mark.parametrize("concurrency", [1, 2])
def test_32_concurrent_requests_are_batched_and_each_gets_its_own_answer(trained, concurrency):
    settings, model, _ = trained
    arrays = [good_tile(seed) for seed in range(32)]
    expected = expected_probabilities(settings, model, arrays)
    batched = settings.model_copy(
        update={
            "predict_batch_wait_ms": 50.0,
            "predict_max_batch": 32,
            "predict_batch_concurrency": concurrency,
        }
    )
    app = create_app(batched)

    async def run():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                url = f"/v1/models/{model['id']}/predict"
                # Load the model first, so the 32 requests meet a warm model.
                warm = await client.post(url, files=tile_upload({"w.tif": arrays[0]}))
                assert warm.status_code == 200
                responses = await asyncio.gather(
                    *(
                        client.post(url, files=tile_upload({f"t{i}.tif": array}))
                        for i, array in enumerate(arrays)
                    )
                )
                serving = app.state.serving
                _, batcher = serving._batchers[model["id"]]
                return responses, list(batcher.batch_sizes), serving.cache.loads

    responses, batch_sizes, loads = asyncio.run(run())
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        prediction = response.json()["predictions"][0]
        assert prediction["filename"] == f"t{i}.tif"
        got = [prediction["probabilities"][c] for c in model["classes"]]
        np.testing.assert_allclose(got, expected[i], rtol=1e-4, atol=1e-6)
    assert loads == 1  # loaded once, then served from the cache
    assert sum(batch_sizes) == 33
    assert max(batch_sizes) > 1, batch_sizes  # requests shared model calls
    assert len(batch_sizes) < 33


def test_each_answer_says_how_much_of_its_tile_the_model_could_read(api, trained):
    _, model, _ = trained
    half = good_tile(2)
    half[:16, :, MODEL_BANDS[0] - 1] = 0  # nodata in the top half of a band the model reads
    unread = good_tile(3)
    unread[:, :, 1] = 0  # band 2 all nodata: the model does not read it
    tiles = {"full.tif": good_tile(1), "half.tif": half, "unread.tif": unread}
    tiles["empty.tif"] = np.zeros_like(half)

    response = api.post(f"/v1/models/{model['id']}/predict", files=tile_upload(tiles, nodata=0))

    assert response.status_code == 200, response.text
    got = {p["filename"]: p["valid_fraction"] for p in response.json()["predictions"]}
    assert got == {"full.tif": 1.0, "half.tif": 0.5, "unread.tif": 1.0, "empty.tif": 0.0}


def test_answers_warn_when_a_tile_looks_like_other_units_and_are_given_all_the_same(api, trained):
    _, model, classes = trained
    tile = classes["urban"][1]  # a training tile, uint16 digital numbers
    tiles = {
        "as_trained.tif": tile,
        "reflectance.tif": (tile * 1e-4).astype("float32"),
        "times_ten.tif": tile * 10,  # still uint16: only the values give it away
    }

    response = api.post(f"/v1/models/{model['id']}/predict", files=tile_upload(tiles))

    assert response.status_code == 200, response.text
    got = {p["filename"]: p["warnings"] for p in response.json()["predictions"]}
    assert got["as_trained.tif"] == []
    assert "pixel type is float32 and the training data's uint16" in got["reflectance.tif"][0]
    assert len(got["times_ten.tif"]) == 1 and "other units" in got["times_ten.tif"][0]
    assert "band 5 averages" in got["times_ten.tif"][0]  # band 5 is the model's first
    assert all(p["label"] in model["classes"] for p in response.json()["predictions"])


def test_scenes_are_listed_cancelled_and_deleted_with_their_files(api, trained):
    settings, model, _ = trained
    url = f"/v1/models/{model['id']}/scenes"
    ids = []
    for i in range(2):  # no worker here: they stay queued
        scene = {"file": (f"s{i}.tif", tile_bytes(good_tile(i)), "image/tiff")}
        response = api.post(url, files=scene)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])

    listed = api.get(f"/v1/scenes?model_id={model['id']}&status=queued").json()
    assert {s["id"] for s in listed["data"]} >= set(ids) and listed["count"] >= 2
    assert listed["data"][0]["id"] == ids[1]  # newest first
    assert api.get("/v1/scenes?model_id=nope").json() == {"data": [], "count": 0}
    assert_problem(api.get("/v1/scenes?status=done"), 422, "status must be one of")
    assert_problem(api.get("/v1/scenes?limit=0"), 422, "limit")

    first = settings.data_dir / "scenes" / ids[0]
    assert (first / "input.tif").is_file()
    assert_problem(api.delete(f"/v1/scenes/{ids[0]}"), 409, "is queued", "cancel it first")
    cancelled = api.post(f"/v1/scenes/{ids[0]}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert_problem(api.post(f"/v1/scenes/{ids[0]}/cancel"), 409, "already cancelled")
    gone = assert_problem(api.get(f"/v1/scenes/{ids[0]}/result.tif"), 409, "is cancelled")
    assert "it has no result" in gone["detail"] and "yet" not in gone["detail"]

    assert api.delete(f"/v1/scenes/{ids[0]}").status_code == 204
    assert not first.exists()
    assert_problem(api.get(f"/v1/scenes/{ids[0]}"), 404, ids[0])
    assert_problem(api.delete(f"/v1/scenes/{ids[0]}"), 404, ids[0])
    assert (settings.data_dir / "scenes" / ids[1] / "input.tif").is_file()  # the other stays
    assert api.get(f"/v1/scenes/{ids[1]}").json()["status"] == "queued"
    assert api.get("/healthz").status_code == 200


def test_a_mapped_scene_has_a_preview_and_says_so_when_it_is_missing(api, trained):
    settings, model, _ = trained
    response = api.post(
        f"/v1/models/{model['id']}/scenes",
        files={"file": ("field.tif", tile_bytes(good_tile(5)), "image/tiff")},
    )
    assert response.status_code == 202, response.text
    scene_id = response.json()["id"]
    assert response.json()["preview"] is None
    queued = api.get(f"/v1/scenes/{scene_id}/preview.png")
    assert_problem(queued, 409, "is queued (0 of 1 window); no result yet")
    assert queued.headers["Retry-After"] == "5"

    # What a worker runs for the scene task, here in the test's process.
    assert run_scene_job(scene_id, settings, "test-worker") == "succeeded"

    scene = api.get(f"/v1/scenes/{scene_id}").json()
    assert scene["preview"] == f"/v1/scenes/{scene_id}/preview.png"
    preview = api.get(scene["preview"])
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert preview.content[:8] == b"\x89PNG\r\n\x1a\n"
    (settings.data_dir / "scenes" / scene_id / "preview.png").unlink()
    assert_problem(api.get(scene["preview"]), 404, "has no preview", f"{scene_id}/result.tif")
    assert api.get(scene["result"]).status_code == 200  # the map itself is still there


def test_a_scene_in_other_units_is_mapped_with_warnings_from_its_type_and_its_pixels(api, trained):
    settings, model, classes = trained
    scene = np.concatenate([classes["urban"][0], classes["water"][0]], axis=1)  # 32 x 64
    as_trained = {"file": ("dn.tif", tile_bytes(scene), "image/tiff")}
    other_units = {"file": ("x10.tif", tile_bytes((scene * 10).astype("float32")), "image/tiff")}

    ids = []
    for files in (as_trained, other_units):
        response = api.post(f"/v1/models/{model['id']}/scenes", files=files)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    assert api.get(f"/v1/scenes/{ids[0]}").json()["warnings"] == []
    submitted = api.get(f"/v1/scenes/{ids[1]}").json()["warnings"]
    assert len(submitted) == 1  # the type is known from the header
    assert "scene's pixel type is float32 and the training data's uint16" in submitted[0]

    for scene_id in ids:
        assert run_scene_job(scene_id, settings, "test-worker") == "succeeded"

    assert api.get(f"/v1/scenes/{ids[0]}").json()["warnings"] == []
    mapped = api.get(f"/v1/scenes/{ids[1]}").json()["warnings"]
    # Once mapped, the pixels speak too: the type's warning shows the scene's band means beside
    # the training data's, and the far ones have their own.
    assert len(mapped) == 2 and mapped[0].startswith(submitted[0]), mapped
    assert "Its band means (the training data's): band 5 " in mapped[0]
    assert "unlike the training data: band 5 averages" in mapped[1]


def test_a_worker_maps_scene_after_scene_with_one_load_and_checks_the_file_each_time(
    api, trained, monkeypatch
):
    settings, model, _ = trained
    monkeypatch.setattr(scene_runner, "_models", None)  # as in a worker that just started
    ids = []
    for seed in range(3):
        scene = {"file": (f"s{seed}.tif", tile_bytes(good_tile(seed)), "image/tiff")}
        ids.append(api.post(f"/v1/models/{model['id']}/scenes", files=scene).json()["id"])

    assert run_scene_job(ids[0], settings, "test-worker") == "succeeded"
    assert run_scene_job(ids[1], settings, "test-worker") == "succeeded"
    assert scene_runner._models.loads == 1  # loaded, folded and traced once

    path = settings.data_dir / "models" / model["id"] / "model.keras"
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"tampered")
        assert run_scene_job(ids[2], settings, "test-worker") == "failed"
    finally:
        path.write_bytes(original)
    assert "model.keras no longer matches" in api.get(f"/v1/scenes/{ids[2]}").json()["error"]
