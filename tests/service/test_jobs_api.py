"""POST/GET /v1/jobs and /v1/models through the real app, no worker: validation, idempotency,
cancel, the queue message, and what is refused. (Training itself: tests/worker.)"""

from __future__ import annotations

import json
import threading
import time

import pytest

from anyband.store import Job
from tests.service.conftest import assert_problem
from tests.service.test_datasets_api import upload
from tests.tiles import separable_classes, write_dataset_zip


@pytest.fixture
def dataset(client, tmp_path):
    zip_path = write_dataset_zip(
        tmp_path / "six.zip", separable_classes(per_class=5, shape=(32, 32, 6))
    )
    response = upload(client, zip_path, name="six")
    assert response.status_code == 201, response.text
    return response.json()


def queued_messages(data_dir) -> list[dict]:
    """The task messages the filesystem broker holds, decoded."""
    messages = []
    for path in sorted((data_dir / "broker" / "queue").glob("*.msg")):
        envelope = json.loads(path.read_text())
        messages.append(envelope)
    return messages


def test_accepted_job_is_queued_with_defaults_and_one_message_for_a_worker(
    client, dataset, data_dir
):
    response = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": "none"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["spec"]["bands"] == [1, 2, 3, 4, 5, 6] and job["spec"]["channels"] == 6
    assert job["spec"]["init_strategy"] == "repeat" and job["spec"]["epochs"] == 10
    assert job["progress"] == {"epoch": 0, "epochs": 10, "metrics": None}
    assert job["model_id"] is None and job["attempts"] == 0
    messages = queued_messages(data_dir)
    assert len(messages) == 1
    assert messages[0]["headers"]["task"] == "anyband.train"
    assert job["id"] in messages[0]["headers"]["argsrepr"]
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    listed = client.get("/v1/jobs", params={"status": "queued"}).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == job["id"]


@pytest.mark.parametrize(
    ("spec", "field", "needle"),
    [
        ({"bands": [1, 7]}, "bands", "bands 1..6"),
        ({"bands": [1, 2], "channels": 3}, "channels", "channels must equal"),
        ({"init_strategy": "rgb", "bands": [1, 2]}, "init_strategy", "at least 3 bands"),
        ({"init_strategy": "rgb", "bands": [4, 3, 2], "rgb_bands": [4, 1, 2]}, "rgb_bands", "1..3"),
        ({"initializer": "glorot_sideways"}, "initializer", "glorot_sideways"),
        ({"weights": "no-such-weights"}, "weights", "no-such-weights"),
        ({"init_strategy": "per_band", "initializer": "zeros"}, "initializer", "per_band"),
        ({"init_strategy": "mean", "rgb_bands": [3, 2, 1]}, "rgb_bands", "only by init_strategy"),
        ({"initializer": "he_normal"}, "initializer", "repeat builds conv1 from the pretrained"),
        ({"val_fraction": 0.05}, "val_fraction", "smallest class"),
    ],
)
def test_spec_that_does_not_fit_the_dataset_is_422_naming_the_field(
    client, dataset, data_dir, spec, field, needle
):
    response = client.post("/v1/jobs", json={"dataset_id": dataset["id"], **spec})
    body = assert_problem(response, 422, field)
    assert [e["field"] for e in body["errors"]] == [field]
    assert needle in body["errors"][0]["message"]
    assert client.get("/v1/jobs").json()["count"] == 0
    assert queued_messages(data_dir) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"init_strategy": "glorot"}, "init_strategy"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"rgb_bands": [1, 2]}, "rgb_bands"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_malformed_spec_is_422_naming_the_field(client, dataset, spec, field):
    response = client.post("/v1/jobs", json={"dataset_id": dataset["id"], **spec})
    body = assert_problem(response, 422, field)
    assert any(e["field"] == field for e in body["errors"])


def test_freeze_epochs_beyond_epochs_is_422(client, dataset):
    response = client.post(
        "/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 2, "freeze_epochs": 3}
    )
    body = assert_problem(response, 422, "freeze_epochs must be <= epochs")
    assert "Value error" not in body["detail"]  # the validator's own words, not pydantic's
    assert body["errors"] == [
        {
            "field": "freeze_epochs",
            "message": "freeze_epochs must be <= epochs. Received: freeze_epochs=3, epochs=2",
        }
    ]


def test_unknown_dataset_is_422_on_dataset_id(client):
    response = client.post("/v1/jobs", json={"dataset_id": "nope"})
    body = assert_problem(response, 422, "dataset_id")
    assert body["errors"] == [{"field": "dataset_id", "message": "no dataset with id 'nope'"}]


def test_uploaded_weights_id_is_accepted(client, dataset, tmp_path, pretrained_weights):
    from tests.resnet_weights import write_keras_notop_h5

    path = write_keras_notop_h5(tmp_path / "mine_notop.h5", pretrained_weights)
    with open(path, "rb") as handle:
        weights = client.post("/v1/weights", files={"file": (path.name, handle)}).json()
    response = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": weights["id"]})
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["weights"] == weights["id"]


def test_uploaded_weights_in_use_are_not_deleted_then_are_and_their_id_is_unknown(
    client, dataset, tmp_path, pretrained_weights, data_dir
):
    from tests.resnet_weights import write_keras_notop_h5

    path = write_keras_notop_h5(tmp_path / "mine_notop.h5", pretrained_weights)
    with open(path, "rb") as handle:
        weights = client.post("/v1/weights", files={"file": (path.name, handle)}).json()
    spec = {"dataset_id": dataset["id"], "weights": weights["id"]}
    job = client.post("/v1/jobs", json=spec).json()
    stored = data_dir / "weights" / weights["id"] / "weights.h5"

    response = client.delete(f"/v1/weights/{weights['id']}")

    assert_problem(response, 409, "in use by 1 queued or running job(s)", job["id"])
    assert stored.is_file()
    # Another queued job (other weights) does not hold these.
    client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": "none"})
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    assert client.delete(f"/v1/weights/{weights['id']}").status_code == 204
    assert not stored.parent.exists()
    assert client.get("/v1/weights").json() == {"data": [], "count": 0}
    assert_problem(client.post("/v1/jobs", json=spec), 422, "weights")
    assert_problem(client.delete(f"/v1/weights/{weights['id']}"), 404, "no weights with id")


def test_a_finished_job_is_deleted_with_its_leftover_checkpoints(client, dataset, data_dir):
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "weights": "none"}).json()
    url = f"/v1/jobs/{job['id']}"

    assert_problem(client.delete(url), 409, "is queued", f"POST {url}/cancel")
    assert client.post(f"{url}/cancel").status_code == 202
    # What a failed job leaves: its checkpoints (a cancelled one's are removed by its worker).
    checkpoints = data_dir / "jobs" / job["id"]
    checkpoints.mkdir(parents=True)
    (checkpoints / "checkpoint.weights.h5").write_bytes(b"\0" * 1024)

    assert client.delete(url).status_code == 204

    assert not checkpoints.exists()
    assert_problem(client.get(url), 404, f"no job with id '{job['id']}'")
    assert client.get("/v1/jobs").json()["count"] == 0
    assert client.get(f"/v1/datasets/{dataset['id']}").status_code == 200
    assert_problem(client.delete(url), 404, "no job with id")


def test_idempotency_key_returns_the_first_job_and_refuses_another_spec(client, dataset, data_dir):
    spec = {"dataset_id": dataset["id"], "epochs": 3, "freeze_epochs": 1}
    headers = {"Idempotency-Key": "upload-42-try"}
    first = client.post("/v1/jobs", json=spec, headers=headers)
    again = client.post("/v1/jobs", json=spec, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert client.get("/v1/jobs").json()["count"] == 1
    assert len(queued_messages(data_dir)) == 1  # the resubmission enqueued nothing
    # Defaults filled in or not, it is the same spec.
    explicit = {**spec, "bands": [1, 2, 3, 4, 5, 6], "channels": 6}
    assert (
        client.post("/v1/jobs", json=explicit, headers=headers).json()["id"] == first.json()["id"]
    )
    other = client.post("/v1/jobs", json={**spec, "epochs": 4}, headers=headers)
    body = assert_problem(other, 409, "upload-42-try", first.json()["id"])
    assert body["job_id"] == first.json()["id"]
    assert client.get("/v1/jobs").json()["count"] == 1


def test_cancel_a_queued_job_then_cancel_again_is_409(client, dataset):
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"]}).json()
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert_problem(client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "already cancelled")
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"


def test_unknown_job_and_model_are_404(client):
    assert_problem(client.get("/v1/jobs/nope"), 404, "no job with id 'nope'")
    assert_problem(client.post("/v1/jobs/nope/cancel"), 404, "no job with id 'nope'")
    assert_problem(client.get("/v1/models/nope"), 404, "no model with id 'nope'")
    assert_problem(client.get("/v1/models/nope/artifacts/model.keras"), 404, "no model")
    assert client.get("/v1/models").json() == {"data": [], "count": 0}


def test_job_list_filter_is_checked(client):
    assert_problem(client.get("/v1/jobs", params={"status": "done"}), 422, "status must be one of")


def test_dataset_in_use_by_a_queued_job_cannot_be_deleted(client, dataset, data_dir):
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"]}).json()
    assert_problem(client.delete(f"/v1/datasets/{dataset['id']}"), 409, "in use", job["id"])
    assert (data_dir / "datasets" / dataset["id"] / "tiles.npy").is_file()
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204


def test_job_rows_keep_the_resolved_spec(client, dataset):
    job = client.post(
        "/v1/jobs", json={"dataset_id": dataset["id"], "bands": [4, 3, 2], "init_strategy": "rgb"}
    ).json()
    with client.app.state.sessions() as session:
        row = session.get(Job, job["id"])
        assert row.spec["bands"] == [4, 3, 2] and row.spec["channels"] == 3
        assert row.enqueued_at is not None


def test_health_reports_broker_and_workers(client):
    body = client.get("/healthz").json()
    assert body == {"status": "ok", "database": "ok", "broker": "ok", "workers": 0}


def test_model_file_is_served_only_while_it_matches_its_recorded_hash(client, dataset, data_dir):
    import hashlib

    from anyband.store import Model, new_id

    content = b"pretend keras zip" * 1000
    model_id = new_id()
    folder = data_dir / "models" / model_id
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(content)
    (folder / "card.json").write_text('{"classes": ["forest", "urban", "water"]}')
    with client.app.state.sessions() as session:
        session.add(
            Model(
                id=model_id, job_id=new_id(), dataset_id=dataset["id"],
                classes=["forest", "urban", "water"], bands=[1, 2], dataset_bands=6, channels=2,
                init_strategy="mean", weights="none", tile_height=32, tile_width=32,
                dtype="uint16", nodata=None, metrics={"accuracy": 1.0},
                sha256=hashlib.sha256(content).hexdigest(), size_bytes=len(content),
            )
        )  # fmt: skip
        session.commit()
    url = f"/v1/models/{model_id}/artifacts"
    served = client.get(f"{url}/model.keras")
    assert served.status_code == 200 and served.content == content
    assert client.get(f"{url}/card.json").json() == {"classes": ["forest", "urban", "water"]}
    assert_problem(client.get(f"{url}/history.csv"), 404, "missing from storage")
    assert_problem(client.get(f"{url}/..%2Fanyband.db"), 404)
    assert_problem(client.get(f"{url}/secrets.txt"), 404, "Expected one of: model.keras")

    (folder / "model.keras").write_bytes(content + b"tampered")
    assert_problem(client.get(f"{url}/model.keras"), 409, "no longer matches the sha256")
    listed = client.get("/v1/models").json()
    assert listed["count"] == 1 and listed["data"][0]["artifacts"][0] == "model.keras"


def test_a_job_refused_by_anyband_is_logged_in_one_line_and_failed_with_the_reason(
    make_client, tmp_path, caplog
):
    from anyband.runner import run_training_job

    settings_fields = {"imagenet_weights": tmp_path / "nowhere" / "resnet50_notop.h5"}
    client = make_client(**settings_fields)
    zip_path = write_dataset_zip(
        tmp_path / "d.zip", separable_classes(per_class=4, shape=(32, 32, 3))
    )
    dataset = upload(client, zip_path).json()
    job = client.post("/v1/jobs", json={"dataset_id": dataset["id"], "epochs": 1}).json()

    with caplog.at_level("INFO", logger="anyband"):
        status = run_training_job(job["id"], client.app.state.settings, "test-runner")

    assert status == "failed"
    error = client.get(f"/v1/jobs/{job['id']}").json()["error"]
    assert "resnet50_notop.h5" in error
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.levelname for r in failures] == ["WARNING"]  # before: ERROR, with a traceback
    assert "Traceback" not in caplog.text and error.splitlines()[0] in failures[0].getMessage()


def test_a_body_that_is_not_json_is_a_422_on_the_body(client):
    response = client.post(
        "/v1/jobs", content=b"{'dataset_id': 'x'}", headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 422, "body: not valid JSON", "at character 1")
    assert problem["errors"][0]["field"] == "body"  # before: "0", the character offset


def test_a_job_cancelled_and_deleted_while_its_worker_trains_leaves_no_checkpoints(
    make_client, tmp_path
):
    """DELETE may follow a cancel before the worker notices it (at its next epoch's lease
    renewal); the checkpoint that epoch writes must not outlive the job."""
    from anyband.runner import run_training_job

    client = make_client()
    zip_path = write_dataset_zip(
        tmp_path / "d.zip", separable_classes(per_class=50, shape=(32, 32, 3))
    )
    dataset = upload(client, zip_path).json()
    # Epochs of a few seconds: the cancel and the DELETE land inside one, before its checkpoint.
    spec = {"dataset_id": dataset["id"], "weights": "none", "epochs": 30, "batch_size": 4}
    job = client.post("/v1/jobs", json=spec).json()
    settings = client.app.state.settings
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(status=run_training_job(job["id"], settings, "test-runner"))
    )
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job['id']}").json()["progress"]["epoch"] < 1:
            assert time.monotonic() < deadline and worker.is_alive(), "no epoch ended in 120 s"
            time.sleep(0.2)
        checkpoints = settings.data_dir / "jobs" / job["id"]
        assert checkpoints.is_dir()
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    finally:
        worker.join(timeout=120)
    assert not worker.is_alive() and result["status"] == "missing"
    assert not checkpoints.exists()


@pytest.mark.parametrize(
    ("content_type", "body", "needle"),
    [
        (  # curl -d without -H 'Content-Type: application/json'
            "application/x-www-form-urlencoded",
            b'{"dataset_id": "x"}',
            "expected a JSON object with Content-Type: application/json, received "
            "application/x-www-form-urlencoded",
        ),
        ("application/json", b'["x"]', "expected a JSON object, received an array"),
        ("application/json", b'"x"', "expected a JSON object, received a string"),
    ],
)
def test_a_body_that_is_not_a_json_object_says_what_to_send(client, content_type, body, needle):
    response = client.post("/v1/jobs", content=body, headers={"Content-Type": content_type})
    problem = assert_problem(response, 422, f"body: {needle}")
    assert problem["errors"] == [{"field": "body", "message": needle}]
