"""Task names, queues and the Celery configuration shared by the API (sender) and the workers.

Plain data, no Celery import: the service enqueues by name and never imports the worker.
"""

from __future__ import annotations

from anyband.settings import Settings

TRAIN_QUEUE = "train"
TRAIN_TASK = "anyband.train"
SCENE_QUEUE = "scenes"
SCENE_TASK = "anyband.scene"
WORKER_QUEUES = (TRAIN_QUEUE, SCENE_QUEUE)
TASK_QUEUES = {TRAIN_TASK: TRAIN_QUEUE, SCENE_TASK: SCENE_QUEUE}


def is_filesystem_broker(settings: Settings) -> bool:
    return settings.celery_broker_url.startswith("filesystem://")


def celery_config(settings: Settings) -> dict:
    """Celery settings for long GPU jobs: late acks, one message at a time, no result backend."""
    config = {
        "broker_url": settings.celery_broker_url,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": TRAIN_QUEUE,
        "task_routes": {task: {"queue": queue} for task, queue in TASK_QUEUES.items()},
        # The job row is the record; the message is only a wake-up call for a worker.
        "task_ignore_result": True,
        "result_backend": None,
        # Ack after the job ran, so a message whose worker dies is not acked as done...
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # ...and never hold a second long job in reserve while one trains.
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_send_task_events": False,
        "task_publish_retry_policy": {
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
        },
    }
    if is_filesystem_broker(settings):
        folder = settings.broker_dir
        config["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            # Exchange bindings; kombu's default is ./control, in whatever folder the process runs.
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.5,
        }
        # The filesystem transport has no fanout exchange: no remote control, mingle or gossip.
        config["worker_enable_remote_control"] = False
    else:
        # Redis hands an unacked message to another worker after this; above the longest job.
        config["broker_transport_options"] = {
            "visibility_timeout": settings.broker_visibility_timeout
        }
    return config


def ensure_broker_dirs(settings: Settings) -> None:
    if is_filesystem_broker(settings):
        for name in ("queue", "processed", "control"):
            (settings.broker_dir / name).mkdir(parents=True, exist_ok=True)
