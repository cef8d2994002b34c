"""Training jobs end to end: real `anyband worker` processes, a real Redis (or the filesystem
broker), PostgreSQL or SQLite, the API over HTTP; tiny tiles, real TensorFlow training."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal

import numpy as np
import pytest

from anyband.queues import TRAIN_QUEUE, TRAIN_TASK
from anyband.saving import load_model
from tests.worker.conftest import make_stack

pytestmark = pytest.mark.slow

SMALL = {"epochs": 2, "freeze_epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory, keras_home_dir, redis_server, postgres_databases):
    """The scale-out configuration: Redis broker, PostgreSQL, one worker process."""
    stack = make_stack(
        tmp_path_factory.mktemp("redis_stack"),
        broker_url=redis_server(),
        database_url=postgres_databases(),
        keras_home=keras_home_dir,
    )
    stack.start_worker()
    stack.dataset = stack.upload_dataset(bands=5)
    yield stack
    stack.close()


STRATEGY_SPECS = {
    "random": {"init_strategy": "random", "initializer": "he_normal"},
    "repeat": {"init_strategy": "repeat"},
    "mean": {"init_strategy": "mean", "bands": [5, 4]},
    "rgb": {"init_strategy": "rgb", "bands": [3, 2, 1, 5], "rgb_bands": [1, 2, 3]},
    "per_band": {"init_strategy": "per_band", "bands": [1, 2, 3]},
}


@pytest.mark.parametrize("strategy", list(STRATEGY_SPECS))
def test_each_strategy_trains_to_a_complete_model(redis_stack, tmp_path, strategy):
    stack = redis_stack
    extra = STRATEGY_SPECS[strategy]
    job = stack.submit(dataset_id=stack.dataset["id"], weights="imagenet", **SMALL, **extra)
    job = stack.wait_done(job["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"]["epoch"] == 2 and job["attempts"] == 1
    assert set(job["progress"]["metrics"]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}

    model = stack.client.get(f"/v1/models/{job['model_id']}").json()
    bands = extra.get("bands", [1, 2, 3, 4, 5])
    assert model["job_id"] == job["id"] and model["init_strategy"] == strategy
    assert model["bands"] == bands and model["channels"] == len(bands)
    assert model["dataset_bands"] == 5 and model["classes"] == ["forest", "urban", "water"]

    def artifact(name):
        response = stack.client.get(f"/v1/models/{model['id']}/artifacts/{name}")
        assert response.status_code == 200, (name, response.text)
        return response

    model_bytes = artifact("model.keras").content
    assert hashlib.sha256(model_bytes).hexdigest() == model["sha256"]
    assert len(model_bytes) == model["size_bytes"]
    path = tmp_path / "model.keras"
    path.write_bytes(model_bytes)
    keras_model = load_model(path)  # safe mode
    assert keras_model.name == f"anyband_resnet50_{strategy}"
    assert keras_model.input_shape[-1] == len(bands)
    probabilities = keras_model.predict(np.full((2, 32, 32, len(bands)), 400.0), verbose=0)
    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

    metrics = artifact("metrics.json").json()
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == metrics["num_samples"] == 6
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    for i, name in enumerate(metrics["classes"]):
        per_class = metrics["per_class"][name]
        assert per_class["support"] == matrix[i].sum()
        assert per_class["recall"] == pytest.approx(matrix[i, i] / max(matrix[i].sum(), 1))
        assert per_class["precision"] == pytest.approx(matrix[i, i] / max(matrix[:, i].sum(), 1))
    assert model["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"])

    rows = list(csv.DictReader(io.StringIO(artifact("history.csv").text)))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert [row["phase"] for row in rows] == ["frozen", "fine_tune"]
    assert artifact("curves.png").content[:8] == b"\x89PNG\r\n\x1a\n"

    card = artifact("card.json").json()
    assert card["bands"] == bands and card["init_strategy"] == strategy
    assert card["weights"] == "imagenet" and card["tile_size"] == [32, 32]
    band_means = stack.dataset["band_stats"]["mean"]
    assert card["band_stats"]["mean"] == pytest.approx([band_means[b - 1] for b in bands])
    assert card["spec"] == job["spec"]
    # Checkpoints are cleared once the model is published.
    assert not (stack.settings.data_dir / "jobs" / job["id"]).exists()


def test_cancelled_job_stops_and_the_worker_takes_the_next(redis_stack):
    stack = redis_stack
    long = stack.submit(dataset_id=stack.dataset["id"], weights="none", epochs=40, batch_size=8)
    short = stack.submit(dataset_id=stack.dataset["id"], weights="none", **SMALL)
    stack.wait(long["id"], lambda job: job["progress"]["epoch"] >= 1)
    response = stack.client.post(f"/v1/jobs/{long['id']}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"

    short = stack.wait_done(short["id"])
    assert short["status"] == "succeeded", short
    cancelled = stack.job(long["id"])
    assert cancelled["status"] == "cancelled" and cancelled["model_id"] is None
    assert cancelled["progress"]["epoch"] < 10  # it stopped, it did not run to the end
    assert not (stack.settings.data_dir / "jobs" / long["id"]).exists()
    models = stack.client.get("/v1/models").json()["data"]
    assert long["id"] not in {m["job_id"] for m in models}
    assert f"job {long['id']}: stopped" in stack.workers[0].text()


@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_killed_worker_job_resumes_from_its_checkpoint_on_another(
    stack_factory, redis_server, postgres_databases, broker
):
    if broker == "redis":
        stack = stack_factory(redis_server(), postgres_databases())
    else:
        stack = stack_factory("filesystem://")  # and SQLite: the one-machine setup
    dataset = stack.upload_dataset(bands=4)
    first = stack.start_worker()
    job = stack.submit(
        dataset_id=dataset["id"], weights="none", epochs=4, freeze_epochs=1, batch_size=8
    )
    stack.wait(job["id"], lambda job: job["progress"]["epoch"] >= 1)
    first.kill()
    checkpoint = stack.settings.data_dir / "jobs" / job["id"] / "checkpoint.json"
    checkpointed = json.loads(checkpoint.read_text())["epoch"]
    assert 1 <= checkpointed < 4
    assert stack.job(job["id"])["status"] == "running"  # until its lease runs out

    second = stack.start_worker()
    done = stack.wait_done(job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["resumed_from_epoch"] == checkpointed
    assert f"resuming after epoch {checkpointed} of 4" in second.text()
    metrics = stack.client.get(f"/v1/models/{done['model_id']}/artifacts/metrics.json").json()
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4]
    assert "lease ran out" in second.text()  # the reconciler, not luck, brought it back


@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_stopped_worker_hands_its_job_back_and_the_next_resumes_it(
    stack_factory, redis_server, postgres_databases, broker
):
    # A cold shutdown (SIGQUIT: what `anyband serve` sends its worker on Ctrl-C or SIGTERM, and
    # Celery's second Ctrl-C) used to fail the job for good with Celery's NotImplementedError
    # from inside Keras; the worker now hands the job back.
    if broker == "redis":
        stack = stack_factory(redis_server(), postgres_databases())
    else:
        stack = stack_factory("filesystem://")
    dataset = stack.upload_dataset(bands=4)
    first = stack.start_worker()
    job = stack.submit(
        dataset_id=dataset["id"], weights="none", epochs=4, freeze_epochs=1, batch_size=8
    )
    stack.wait(job["id"], lambda job: job["progress"]["epoch"] >= 1)
    os.killpg(first.process.pid, signal.SIGQUIT)
    assert first.process.wait(timeout=60) is not None  # it stopped by itself, in time
    checkpoint = stack.settings.data_dir / "jobs" / job["id"] / "checkpoint.json"
    checkpointed = json.loads(checkpoint.read_text())["epoch"]
    assert 1 <= checkpointed < 4
    handed_back = stack.job(job["id"])
    assert handed_back["status"] == "queued", (handed_back, first.text()[-3000:])
    assert handed_back["error"] is None and handed_back["attempts"] == 0
    assert (
        f"job {job['id']}: this worker is shutting down; handed back, it resumes from its "
        f"checkpoint after epoch {checkpointed}"
    ) in first.text()
    assert "failed" not in first.text()

    second = stack.start_worker()
    done = stack.wait_done(job["id"])
    assert done["status"] == "succeeded", (done, second.text()[-3000:])
    assert done["attempts"] == 1  # the handed-back attempt does not count towards max_attempts
    assert done["resumed_from_epoch"] == checkpointed
    metrics = stack.client.get(f"/v1/models/{done['model_id']}/artifacts/metrics.json").json()
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4]


def test_job_delivered_twice_at_once_trains_once(stack_factory, redis_server, postgres_databases):
    stack = stack_factory(redis_server(), postgres_databases())
    dataset = stack.upload_dataset(bands=3)
    workers = [stack.start_worker(), stack.start_worker()]
    job = stack.submit(dataset_id=dataset["id"], weights="none", **SMALL)
    # A second message for the same job, as a redelivery or a reconciler would send it.
    stack.client.app.state.celery.send_task(TRAIN_TASK, args=[job["id"]], queue=TRAIN_QUEUE)
    done = stack.wait_done(job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1
    logs = "".join(worker.text() for worker in workers)
    skipped = [line for line in logs.splitlines() if "not mine to run" in line]
    assert logs.count(f"job {job['id']}: attempt 1") == 1
    assert logs.count(f"job {job['id']}: attempt") == 1
    assert len(stack.client.get("/v1/models").json()["data"]) == 1
    # Both workers got a delivery: one trained, the other skipped it.
    assert all(f"Task {TRAIN_TASK}[" in worker.text() for worker in workers), skipped
    assert len(skipped) == 1
