"""The app's frame: health, auth, problem details, the OpenAPI document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.export_openapi import OPENAPI_PATH, render
from tests.service.conftest import assert_problem
from tests.service.test_datasets_api import upload
from tests.tiles import random_tiles, write_dataset_zip


def test_healthz_is_open_and_reports_the_database(client):
    client.headers.pop("Authorization")
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
    assert response.json()["status"] == "ok"


def test_missing_api_key_is_401_naming_the_scheme_it_wants(client):
    client.headers.pop("Authorization")
    response = client.get("/v1/datasets")
    assert_problem(response, 401, "missing API key", "Bearer")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_api_key_is_401(client):
    client.headers["Authorization"] = "Bearer not-a-key"
    response = client.get("/v1/weights")
    assert_problem(response, 401, "not recognised")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_another_auth_scheme_is_401_saying_so(client):
    client.headers["Authorization"] = "Basic dXNlcjpwYXNz"
    assert_problem(client.get("/v1/jobs"), 401, "'Basic' scheme is not accepted", "Bearer <key>")


@pytest.mark.parametrize("route", ["/v1/datasets", "/v1/jobs", "/v1/models"])
@pytest.mark.parametrize("query", ["limit=-1", "limit=0", "limit=1001", "offset=-5"])
def test_paging_outside_its_range_is_a_422_naming_the_parameter(client, route, query):
    name = query.split("=")[0]
    assert_problem(client.get(f"{route}?{query}"), 422, name)


def test_paging_pages(client, tmp_path):
    zip_path = write_dataset_zip(tmp_path / "d.zip", {"a": random_tiles(2), "b": random_tiles(2)})
    ids = [upload(client, zip_path).json()["id"] for _ in range(3)]
    newest_first = ids[::-1]
    page = client.get("/v1/datasets?offset=1&limit=1").json()
    assert page["count"] == 3 and [d["id"] for d in page["data"]] == newest_first[1:2]


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


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", ["swagger-ui-bundle.js", "swagger-ui.css"]),
        ("/redoc", ["redoc.standalone.js"]),
    ],
)
def test_the_api_docs_load_nothing_from_a_cdn(client, page, assets):
    """GPU machines are often offline: the docs pages' scripts come from the API itself."""
    html = client.get(page)
    assert html.status_code == 200 and "/openapi.json" in html.text
    assert "cdn." not in html.text and "https://" not in html.text.replace(
        "https://fastapi.tiangolo.com", ""
    )
    for asset in assets:
        url = f"/static-offline-docs/{asset}"
        assert url in html.text
        served = client.get(url)
        assert served.status_code == 200 and len(served.content) > 10_000, asset
    # Swagger UI 5 or later: 4.x cannot render the OpenAPI 3.1 this app emits.
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    bundle = client.get("/static-offline-docs/swagger-ui-bundle.js").text
    assert "OpenAPI 3.1" in bundle or "openapi-3-1" in bundle or "OpenAPI31" in bundle
