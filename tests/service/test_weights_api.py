"""POST/GET /v1/weights: a user's 3-band ResNet50 weights, checked by loading them."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest

from anyband.pretrained import IMAGENET_WEIGHTS_FILE, load_resnet50_weights
from tests.resnet_weights import random_resnet50_weights, write_keras_notop_h5
from tests.service.conftest import assert_problem


def upload(client, path, filename=None, name="mine"):
    with open(path, "rb") as handle:
        return client.post(
            "/v1/weights",
            files={"file": (filename or path.name, handle, "application/x-hdf5")},
            data={"name": name},
        )


@pytest.mark.slow
def test_valid_notop_weights_are_stored_checked_and_listed(client, keras_home_dir, data_dir):
    source = keras_home_dir / "models" / IMAGENET_WEIGHTS_FILE

    response = upload(client, source, name="imagenet (offline copy)")

    assert response.status_code == 201, response.text
    record = response.json()
    assert record["name"] == "imagenet (offline copy)"
    assert record["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert record["size_bytes"] == source.stat().st_size
    stored = data_dir / "weights" / record["id"] / "weights.h5"
    assert stored.read_bytes() == source.read_bytes()
    assert load_resnet50_weights(stored).keys() == load_resnet50_weights(source).keys()
    listed = client.get("/v1/weights").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == record["id"]


def test_six_band_resnet_weights_are_refused_and_not_kept(client, tmp_path, data_dir):
    path = write_keras_notop_h5(tmp_path / "six.h5", random_resnet50_weights(3, channels=6))

    assert_problem(upload(client, path), 422, "'six.h5' is not a 3-band ResNet50", "conv1_conv")

    assert client.get("/v1/weights").json()["count"] == 0
    assert not any((data_dir / "weights").iterdir())
    assert client.get("/healthz").json()["status"] == "ok"


def test_a_text_file_is_refused(client, tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("not weights")
    assert_problem(upload(client, path), 422, "not an HDF5 file")


def test_wrong_suffix_is_refused_before_loading(client, tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\0" * 100)
    assert_problem(upload(client, path), 422, "'weights.pt' must end in .weights.h5")


def test_weights_over_their_limit_are_413(make_client, tmp_path):
    client = make_client(max_weights_bytes=1000)
    path = tmp_path / "w.h5"
    path.write_bytes(b"\0" * 5000)
    assert_problem(upload(client, path), 413, "1000 byte limit")


def test_a_truncated_download_is_refused_by_its_name_and_not_kept(client, tmp_path, data_dir):
    whole = tmp_path / "whole.h5"
    with h5py.File(whole, "w") as f:
        f["conv1_conv/kernel"] = np.zeros((4000, 16), "float32")
    truncated = tmp_path / "resnet50_notop_download.h5"
    truncated.write_bytes(whole.read_bytes()[:2000])  # the HDF5 signature survives

    response = upload(client, truncated)

    assert_problem(response, 422, "'resnet50_notop_download.h5' could not be read", "again")
    assert client.get("/v1/weights").json()["count"] == 0
    assert not any((data_dir / "weights").iterdir())  # before: a 500, and the file left behind
    assert client.get("/healthz").json()["status"] == "ok"
