"""The worker's housekeeper (heartbeat and reconciler) survives a database that fails at start."""

from __future__ import annotations

import importlib
import logging
import time

from sqlalchemy.exc import OperationalError

from anyband import jobs
from anyband.settings import get_settings
from anyband.store import init_db


def test_a_database_failing_when_the_worker_starts_is_retried_not_fatal(
    tmp_path, monkeypatch, caplog
):
    url = f"sqlite:///{tmp_path / 'anyband.db'}"
    monkeypatch.setenv("ANYBAND_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ANYBAND_DATABASE_URL", url)
    get_settings.cache_clear()
    worker_app = importlib.reload(importlib.import_module("worker.app"))
    calls = []

    def flaky_init_db(database_url):
        calls.append(database_url)
        if len(calls) <= 2:  # as when another process is creating the schema, or it is down
            raise OperationalError("CREATE TABLE datasets", {}, Exception("database is locked"))
        return init_db(database_url)

    monkeypatch.setattr(worker_app, "init_db", flaky_init_db)
    with caplog.at_level(logging.ERROR, logger="anyband.worker"):
        housekeeper = worker_app.Housekeeper(period=0.05)  # before: raised here, for good
        housekeeper.start()
        try:
            sessions, deadline = init_db(url), time.monotonic() + 30
            while True:
                with sessions() as session:
                    beating = jobs.live_workers(session, within_seconds=60)
                if beating or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        finally:
            housekeeper.stop()  # what the worker_shutdown signal calls

    assert [w.id for w in beating] == [worker_app.WORKER_ID]
    assert len(calls) == 3
    assert caplog.text.count("housekeeping failed; trying again") == 2
    assert not housekeeper.is_alive()
    with sessions() as session:  # a worker that stopped cleanly is not counted a minute more
        assert jobs.live_workers(session, within_seconds=60) == []
