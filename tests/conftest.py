"""Shared fixtures: a seeded 3-band ResNet50 weights file written where Keras looks for ImageNet's."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from anyband.pretrained import IMAGENET_WEIGHTS_FILE
from anyband.settings import get_settings
from tests.resnet_weights import (
    random_resnet50_weights,
    reference_backbone,
    write_keras_notop_h5,
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """No test sees the developer's ~/.keras or ANYBAND_ settings, and settings are re-read."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    for name in list(os.environ):
        if name.startswith("ANYBAND_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


POSTGRES_URL = os.environ.get(
    "ANYBAND_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_server():
    """A fresh database on the PostgreSQL server CI starts; dropped at the end."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES_URL}: {exc}")
    name = f"anyband_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'create database "{name}"'))
    yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'drop database if exists "{name}" with (force)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pretrained_weights():
    """Per-layer weights of a seeded stand-in for ImageNet's ResNet50 (no internet here)."""
    return random_resnet50_weights(seed=7)


@pytest.fixture(scope="session")
def keras_home_dir(tmp_path_factory, pretrained_weights):
    home = tmp_path_factory.mktemp("keras_home")
    write_keras_notop_h5(home / "models" / IMAGENET_WEIGHTS_FILE, pretrained_weights)
    return home


@pytest.fixture
def imagenet_weights(monkeypatch, keras_home_dir):
    """KERAS_HOME points at a folder holding the notop file under Keras' own file name."""
    monkeypatch.setenv("KERAS_HOME", str(keras_home_dir))
    get_settings.cache_clear()
    return keras_home_dir / "models" / IMAGENET_WEIGHTS_FILE


@pytest.fixture(scope="session")
def pretrained_backbone(pretrained_weights):
    """Plain 3-band Keras ResNet50 with the stand-in weights: what adapted models are compared to."""
    return reference_backbone(pretrained_weights)
