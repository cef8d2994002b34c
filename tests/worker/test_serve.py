"""`anyband serve`, the README's run command: API and worker in one command, filesystem broker,
SQLite, no Redis; a real process over a real socket."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.service.test_api_process import free_port, wait_healthy
from tests.tiles import separable_classes, write_dataset_zip

pytestmark = pytest.mark.slow


def wait_for_job(url: str, job_id: str, seconds: float = 300) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def start_serve(tmp_path) -> tuple[subprocess.Popen, str, Path]:
    """`anyband serve` in its own process group; returns once its worker has beaten."""
    data_dir = tmp_path / "data"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANYBAND_")}
    env.pop("KERAS_HOME", None)  # HOME is the test's own: no ImageNet file anywhere
    env.update(ANYBAND_DATA_DIR=str(data_dir), TF_CPP_MIN_LOG_LEVEL="3")
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "anyband.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/healthz").json()["workers"] < 1:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return process, url, log


def test_serve_runs_api_and_worker_end_to_end_without_redis(tmp_path):
    data_dir = tmp_path / "data"
    process, url, log = start_serve(tmp_path)
    try:
        health = httpx.get(f"{url}/healthz").json()
        assert health == {"status": "ok", "database": "ok", "broker": "ok", "workers": 1}

        zip_path = write_dataset_zip(
            tmp_path / "d.zip", separable_classes(per_class=6, shape=(32, 32, 4))
        )
        with open(zip_path, "rb") as handle:
            dataset = httpx.post(f"{url}/v1/datasets", files={"file": ("d.zip", handle)}).json()

        # ImageNet weights are not on this machine: the job fails and says what to do.
        missing = httpx.post(f"{url}/v1/jobs", json={"dataset_id": dataset["id"]}).json()
        missing = wait_for_job(url, missing["id"])
        assert missing["status"] == "failed"
        assert (
            "ImageNet weights not found: put resnet50_weights_tf_dim_ordering" in (missing["error"])
        )

        spec = {"dataset_id": dataset["id"], "weights": "none", "epochs": 1, "batch_size": 8}
        job = httpx.post(f"{url}/v1/jobs", json=spec).json()
        job = wait_for_job(url, job["id"])
        assert job["status"] == "succeeded", (job, log.read_text()[-3000:])
        curves = httpx.get(f"{url}/v1/models/{job['model_id']}/artifacts/curves.png")
        assert curves.status_code == 200 and curves.content[:4] == b"\x89PNG"
        assert (data_dir / "anyband.db").is_file()
        assert (data_dir / "broker" / "queue").is_dir()
        worker_pids = [child.pid for child in psutil.Process(process.pid).children()]
        assert worker_pids, "serve started no worker process"
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    # Stopping serve stops its worker too: nothing is left running.
    time.sleep(1)
    assert not [pid for pid in worker_pids if psutil.pid_exists(pid)]


def test_sigterm_to_serve_stops_its_worker_too(tmp_path):
    # What `kill PID`, systemd and `docker stop` send. uvicorn re-raises SIGTERM after its own
    # shutdown; with the default handler serve died there and left its worker running alone.
    process, _, log = start_serve(tmp_path)
    worker_pids = [child.pid for child in psutil.Process(process.pid).children()]
    assert worker_pids, "serve started no worker process"
    try:
        process.send_signal(signal.SIGTERM)  # serve alone, not its process group
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in worker_pids), log.read_text()[-3000:]
        assert "Cold shutdown" in log.read_text()  # the worker was told to stop, not killed
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
