"""Real worker processes (`anyband worker`) against a real Redis or the filesystem broker, with
the API in-process over HTTP; each stack has its own data directory and database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from anyband.settings import Settings
from service.main import create_app
from tests.service.test_datasets_api import upload
from tests.tiles import separable_classes, write_dataset_zip

REDIS_URL = os.environ.get("ANYBAND_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
API_KEY = "worker-test-key"
# Short leases so a dead worker's job is taken up within seconds.
LEASE_SECONDS = 4.0
RECONCILE_SECONDS = 1.0
TERMINAL = ("succeeded", "failed", "cancelled")


_redis_databases = iter(range(15, 0, -1))


@pytest.fixture(scope="session")
def redis_server():
    """The Redis CI starts. Yields a factory of empty databases: stacks never share a queue."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis answers at {REDIS_URL}: {exc}")
    used = []

    def fresh_database() -> str:
        url = f"{REDIS_URL.rsplit('/', 1)[0]}/{next(_redis_databases)}"
        redis.Redis.from_url(url).flushdb()
        used.append(url)
        return url

    yield fresh_database
    for url in used:
        redis.Redis.from_url(url).flushdb()
    client.close()


@pytest.fixture(scope="session")
def postgres_databases(postgres_server):
    """A factory of fresh PostgreSQL databases on the test server, dropped at the end."""
    import uuid

    import sqlalchemy

    admin_url = postgres_server.rsplit("/", 1)[0] + "/postgres"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    names = []

    def fresh_database() -> str:
        name = f"anyband_worker_{uuid.uuid4().hex[:10]}"
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'create database "{name}"'))
        names.append(name)
        return f"{admin_url.rsplit('/', 1)[0]}/{name}"

    yield fresh_database
    with admin.connect() as connection:
        for name in names:
            connection.execute(sqlalchemy.text(f'drop database if exists "{name}" with (force)'))
    admin.dispose()


class WorkerProcess:
    """`anyband worker` in its own process group, logging to a file."""

    def __init__(self, env: dict, log: Path):
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "anyband.cli", "worker"],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, seconds: float = 120) -> WorkerProcess:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited:\n{self.text()[-3000:]}")
            if " ready." in self.text():
                return self
            time.sleep(0.3)
        raise AssertionError(f"worker not ready in {seconds} s:\n{self.text()[-3000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group: what an OOM kill or a lost machine looks like."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, wait: bool = True) -> None:
        """A cold shutdown (SIGQUIT); `wait`: until it exits, at most 20 s, then SIGKILL."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGQUIT)
        if wait:
            self.wait_stopped()

    def wait_stopped(self) -> None:
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Stack:
    """API (in-process, real HTTP semantics) + database + broker + worker processes."""

    root: Path
    settings: Settings
    env: dict
    client: TestClient
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self) -> WorkerProcess:
        log = self.root / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(self.env, log)
        self.workers.append(worker)
        return worker.wait_ready()

    def upload_dataset(self, bands: int = 5, per_class: int = 8, size: int = 32) -> dict:
        zip_path = write_dataset_zip(
            self.root / f"d{bands}.zip",
            separable_classes(per_class=per_class, shape=(size, size, bands)),
        )
        response = upload(self.client, zip_path, name=f"{bands}-band")
        assert response.status_code == 201, response.text
        return response.json()

    def submit(self, headers=None, **spec) -> dict:
        response = self.client.post("/v1/jobs", json=spec, headers=headers or {})
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return self.client.get(f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, until, seconds: float = 300) -> dict:
        deadline = time.monotonic() + seconds
        job = self.job(job_id)
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            if job["status"] in TERMINAL:
                break
            time.sleep(0.25)
        logs = "\n".join(w.text()[-2500:] for w in self.workers)
        raise AssertionError(f"job {job_id} never got there; last seen: {job}\n{logs}")

    def wait_done(self, job_id: str, seconds: float = 300) -> dict:
        return self.wait(job_id, lambda job: job["status"] in TERMINAL, seconds)

    def close(self) -> None:
        for worker in self.workers:  # all at once: each takes seconds to shut down
            worker.stop(wait=False)
        for worker in self.workers:
            worker.wait_stopped()
        self.client.__exit__(None, None, None)


def make_stack(root: Path, *, broker_url: str, database_url: str, keras_home: Path) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    values = {
        "data_dir": root / "data",
        "database_url": database_url,
        "broker_url": broker_url,
        "api_keys": API_KEY,
        "lease_seconds": LEASE_SECONDS,
        "reconcile_seconds": RECONCILE_SECONDS,
        "requeue_after_seconds": 600.0,
    }
    settings = Settings(**values)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANYBAND_")}
    env.update({f"ANYBAND_{k.upper()}": str(v) for k, v in values.items()})
    env.update(KERAS_HOME=str(keras_home), TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    client.__enter__()
    client.headers["Authorization"] = f"Bearer {API_KEY}"
    return Stack(root=root, settings=settings, env=env, client=client)


@pytest.fixture
def stack_factory(tmp_path, keras_home_dir):
    """make(broker, database_url): broker "filesystem://" or a Redis URL; database "" = SQLite."""
    stacks = []

    def make(broker: str, database_url: str = "") -> Stack:
        stack = make_stack(
            tmp_path / f"stack{len(stacks)}",
            broker_url=broker,
            database_url=database_url,
            keras_home=keras_home_dir,
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()
