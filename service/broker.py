"""The API's side of the broker: a Celery client that enqueues tasks by name, and its health."""

from __future__ import annotations

import logging

from celery import Celery

from anyband.queues import (
    SCENE_QUEUE,
    SCENE_TASK,
    TRAIN_QUEUE,
    TRAIN_TASK,
    celery_config,
    ensure_broker_dirs,
)
from anyband.settings import Settings

log = logging.getLogger("anyband.service")


def make_client(settings: Settings) -> Celery:
    ensure_broker_dirs(settings)
    client = Celery("anyband-api")
    client.conf.update(celery_config(settings))
    return client


def enqueue_training(client: Celery, job_id: str) -> bool:
    """Send the job's wake-up message. False if the broker refused: the job stays queued in the
    database and a worker's reconciler enqueues it again, so nothing is lost."""
    try:
        client.send_task(TRAIN_TASK, args=[job_id], queue=TRAIN_QUEUE, retry=True)
    except Exception:
        log.exception("job %s: could not reach the broker; a worker will enqueue it later", job_id)
        return False
    return True


def enqueue_scene(client: Celery, scene_id: str) -> bool:
    try:
        client.send_task(SCENE_TASK, args=[scene_id], queue=SCENE_QUEUE, retry=True)
    except Exception:
        log.exception(
            "scene %s: could not reach the broker; a worker will enqueue it later", scene_id
        )
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
