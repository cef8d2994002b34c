"""The app's frame: health, auth, problem details, the OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

from scripts.export_openapi import OPENAPI_PATH, render
from tests.service.conftest import assert_problem


def test_healthz_is_open_and_reports_the_database(client):
    client.headers.pop("Authorization")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
    assert response.json()["status"] == "ok"


def test_missing_api_key_is_401(client):
    client.headers.pop("Authorization")
    assert_problem(client.get("/v1/datasets"), 401, "missing API key", "Bearer")


def test_wrong_api_key_is_401(client):
    client.headers["Authorization"] = "Bearer not-a-key"
    assert_problem(client.get("/v1/weights"), 401, "not recognised")


def test_auth_is_off_without_keys(make_client):
    client = make_client(api_keys="")
    client.headers.pop("Authorization")
    assert client.get("/v1/datasets").json() == {"data": [], "count": 0}


def test_unknown_dataset_is_a_404_problem(client):
    assert_problem(client.get("/v1/datasets/nope"), 404, "no dataset with id 'nope'")


def test_committed_openapi_matches_the_app():
    committed = json.loads(Path(OPENAPI_PATH).read_text())
    assert committed == json.loads(render()), "run: python scripts/export_openapi.py"


def test_operation_ids_are_stable_names():
    spec = json.loads(render())
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert {"create_dataset", "list_datasets", "get_dataset", "delete_dataset"} <= ids
    assert {"create_weights", "list_weights", "health"} <= ids
