"""The Celery app of the workers, configured from anyband's settings; starts the reconciler."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import uuid

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from anyband import jobs
from anyband.queues import (
    SCENE_QUEUE,
    SCENE_TASK,
    TRAIN_QUEUE,
    TRAIN_TASK,
    celery_config,
    ensure_broker_dirs,
)
from anyband.settings import get_settings
from anyband.store import Job, Scene, init_db

log = logging.getLogger("anyband.worker")

settings = get_settings()
ensure_broker_dirs(settings)
app = Celery("anyband")
app.conf.update(celery_config(settings))
app.conf.include = ["worker.tasks"]
# Celery's solo pool (the task runs in this process, so TensorFlow and its GPU memory are held
# once and a job never shares the process with another), handing the job back on a cold
# shutdown. Set here, not with --pool: the command line only takes Celery's own pool names.
app.conf.worker_pool = "worker.pool:TaskPool"

# Unique per process: a restarted worker on the same host is a different lease owner.
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
current_job: dict[str, str | None] = {"id": None}


def enqueue_training(job_id: str) -> None:
    app.send_task(TRAIN_TASK, args=[job_id], queue=TRAIN_QUEUE)


def enqueue_scene(scene_id: str) -> None:
    app.send_task(SCENE_TASK, args=[scene_id], queue=SCENE_QUEUE)


class Housekeeper(threading.Thread):
    """Beats this worker's heartbeat row and reconciles jobs, at start and every period."""

    def __init__(self, period: float):
        super().__init__(name="anyband-housekeeper", daemon=True)
        self.period = period
        self.stopped = threading.Event()
        # Opened in run(), not here: a database that is down (or busy) when the worker starts
        # is retried every period, instead of leaving the worker with no heartbeat and no
        # reconciler for good (Celery logs a failing worker_ready handler and runs on).
        self.sessions = None

    def run(self) -> None:
        while True:
            try:
                if self.sessions is None:
                    self.sessions = init_db(settings.sqlalchemy_url)
                jobs.beat_worker(
                    self.sessions,
                    WORKER_ID,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    devices=_visible_devices(),
                    current_job_id=current_job["id"],
                )
                for table, enqueue in ((Job, enqueue_training), (Scene, enqueue_scene)):
                    jobs.reconcile(
                        self.sessions,
                        enqueue,
                        requeue_after_seconds=settings.requeue_after_seconds,
                        max_attempts=settings.max_attempts,
                        table=table,
                    )
            except Exception:
                log.exception("housekeeping failed; trying again in %.0f s", self.period)
            if self.stopped.wait(self.period):
                return

    def stop(self, timeout: float = 10.0) -> None:
        """Stop beating, and remove this worker's heartbeat row: a worker that stopped leaves
        /healthz's count at once, not a minute later. Called as the process exits (atexit), once
        its task has handed its job back: from worker_shutdown, which can run inside a signal
        handler while the main thread is suspended mid-transaction (SQLite holds its write lock),
        a write could stall the hand-back past the job's lease."""
        self.stopped.set()
        self.join(timeout)
        if self.sessions is not None:
            try:
                jobs.forget_worker(self.sessions, WORKER_ID)
            except Exception:
                log.exception("could not remove this worker's heartbeat row")


def _visible_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [f"GPU:{d}" for d in visible.split(",") if d] if visible else []


_housekeeper: Housekeeper | None = None


@worker_ready.connect
def _start_housekeeping(**_kwargs) -> None:
    global _housekeeper
    period = min(settings.reconcile_seconds, settings.lease_seconds / 2)
    _housekeeper = Housekeeper(period)
    _housekeeper.start()
    atexit.register(_housekeeper.stop, 5.0)
    log.info("worker %s ready (broker %s)", WORKER_ID, settings.celery_broker_url)


@worker_shutdown.connect
def _stop_housekeeping(**_kwargs) -> None:
    # Only the event here; the heartbeat row goes at exit (Housekeeper.stop).
    if _housekeeper is not None:
        _housekeeper.stopped.set()
