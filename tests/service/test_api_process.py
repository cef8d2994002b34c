"""`anyband api` as a user starts it: a real uvicorn process answering over a real socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.tiles import random_tiles, write_dataset_zip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"anyband api exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.5)
    raise AssertionError("anyband api did not answer /healthz in time")


@pytest.mark.slow
def test_api_process_serves_uploads_and_binds_loopback_without_keys(tmp_path):
    port = free_port()
    env = {**os.environ, "ANYBAND_DATA_DIR": str(tmp_path / "data"), "ANYBAND_API_KEYS": ""}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    command = [sys.executable, "-m", "anyband.cli", "api", "--host", "0.0.0.0", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        zip_path = write_dataset_zip(
            tmp_path / "d.zip", {"a": random_tiles(2, seed=1), "b": random_tiles(2, seed=2)}
        )
        with open(zip_path, "rb") as handle:
            response = httpx.post(
                f"{url}/v1/datasets", files={"file": ("d.zip", handle)}, data={"name": "d"}
            )
        assert response.status_code == 201, response.text
        assert response.json()["num_tiles"] == 4
        assert (tmp_path / "data" / "anyband.db").is_file()
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    log = stderr.decode()
    assert "authentication is off: binding to 127.0.0.1 instead of 0.0.0.0" in log
    assert "Uvicorn running on http://127.0.0.1:" in log
