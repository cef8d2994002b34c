"""The API's side of the broker: a Celery client that enqueues tasks by name, and its health."""

from __future__ import annotations

import logging

from celery import Celery

from anyband.queues import TASK_QUEUES, celery_config, ensure_broker_dirs
from anyband.settings import Settings

log = logging.getLogger("anyband.service")


def make_client(settings: Settings) -> Celery:
    ensure_broker_dirs(settings)
    client = Celery("anyband-api")
    client.conf.update(celery_config(settings))
    return client


def enqueue(client: Celery, task: str, record_id: str) -> bool:
    """Send a job's (or scene's) wake-up message to its task's queue. False if the broker
    refused: the row stays queued in the database and a worker's reconciler enqueues it again,
    so nothing is lost."""
    try:
        client.send_task(task, args=[record_id], queue=TASK_QUEUES[task], retry=True)
    except Exception:
        log.exception("%s %s: broker unreachable; a worker will enqueue it later", task, record_id)
        return False
    return True


def broker_health(client: Celery, settings: Settings) -> str:
    if client.conf.broker_url.startswith("filesystem://"):
        queue = settings.broker_dir / "queue"
        return "ok" if queue.is_dir() else f"error: {queue} is missing"
    try:
        with client.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:
        return f"error: {exc.__class__.__name__}"
