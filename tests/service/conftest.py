"""The real app over HTTP (ASGI in-process), on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from anyband.settings import Settings
from service.main import create_app

API_KEY = "test-key-1"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    if request.param == "sqlite":
        return ""  # a fresh file in each test's data directory
    url = request.getfixturevalue("postgres_server")
    import sqlalchemy

    from anyband.store import Base

    engine = sqlalchemy.create_engine(url)
    Base.metadata.drop_all(engine)  # each test starts from an empty schema, as on SQLite
    engine.dispose()
    return url


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def make_client(data_dir):
    clients = []

    def make(**overrides) -> TestClient:
        fields = {"data_dir": data_dir, "api_keys": API_KEY, **overrides}
        client = TestClient(create_app(Settings(**fields)), raise_server_exceptions=False)
        client.__enter__()
        client.headers["Authorization"] = f"Bearer {API_KEY}"
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client, database_url):
    return make_client(database_url=database_url)


def assert_problem(response, status: int, *needles: str) -> dict:
    """A problem detail (RFC 9457) with this status whose detail names each needle."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"]
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    return body
