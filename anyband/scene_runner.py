"""Runs one scene job for a worker: lease, the model (hash checked), the sliding window, the result."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from anyband import jobs
from anyband.artifacts import why_unusable
from anyband.errors import JobCancelled
from anyband.paths import model_dir, scene_dir
from anyband.runner import Lease, hand_back, log_failure
from anyband.settings import Settings
from anyband.store import Model, Scene, init_db

log = logging.getLogger("anyband.scenes")

SCENE_INPUT = "input.tif"
SCENE_RESULT = "result.tif"
SCENE_PREVIEW = "preview.png"
# A scene reports progress after every strip of every chunk (256 times for a 4096 px square);
# the database hears of it at most this often, and always of the last window.
PROGRESS_SECONDS = 1.0


def run_scene_job(
    scene_id: str,
    settings: Settings,
    worker_id: str,
    *,
    interrupted: Callable[[], bool] = lambda: False,
) -> str:
    """Map scene `scene_id` if no other worker holds it; returns its status afterwards.
    `interrupted()` True: the worker is shutting down; the scene is handed back, not failed."""
    from anyband.inference import pixel_warnings
    from anyband.scenes import classify_scene

    sessions = init_db(settings.sqlalchemy_url)
    try:
        scene = jobs.claim(sessions, scene_id, worker_id, settings.lease_seconds, table=Scene)
        if scene is None:
            log.info("scene %s: done or leased by another worker; skipping", scene_id)
            return _status(sessions, scene_id)
        with sessions() as session:
            record = session.get(Model, scene.model_id)
        folder = scene_dir(settings.data_dir, scene_id)
        with Lease(sessions, scene_id, worker_id, settings.lease_seconds, table=Scene) as lease:
            try:
                if record is None:
                    raise FileNotFoundError(f"model '{scene.model_id}' no longer exists")
                served = _served_model(record, settings)
                result = classify_scene(
                    served.predict,
                    folder / SCENE_INPUT,
                    folder / SCENE_RESULT,
                    model_input=served.model_input,
                    classes=served.classes,
                    tile_size=served.tile_size,
                    stride=scene.stride,
                    max_bytes=settings.max_scene_bytes,
                    name=scene.filename,
                    on_progress=at_most_every(
                        PROGRESS_SECONDS,
                        lambda done, total: lease.renew(windows_done=done, windows_total=total),
                    ),
                    should_stop=lambda: lease.lost.is_set() or interrupted(),
                )
                _draw_preview(result, folder / SCENE_PREVIEW, scene_id, scene.filename, record.id)
                warnings = pixel_warnings(
                    result.dtype, result.band_means, served.model_input, "scene"
                )
            except JobCancelled:
                if interrupted() and not lease.lost.is_set():
                    return hand_back(
                        sessions, scene_id, worker_id, "starts again", table=Scene, windows_done=0
                    )
                log.info("scene %s: stopped (cancelled or taken over)", scene_id)
                return _status(sessions, scene_id)
            except Exception as exc:
                log_failure(log, "scene", scene_id, exc)
                jobs.fail(sessions, scene_id, worker_id, why_unusable(exc), table=Scene)
                return _status(sessions, scene_id)
        if jobs.finish_scene(sessions, scene_id, worker_id, warnings):
            (folder / SCENE_INPUT).unlink(missing_ok=True)  # the result is what was asked for
        return _status(sessions, scene_id)
    finally:
        sessions.kw["bind"].dispose()


# The model this worker process last mapped a scene with (an anyband.serving.ModelCache of
# one, made at the first scene): scene after scene with one model loads, folds and traces it
# once. Every scene still checks the model file's hash first.
_models = None


def _served_model(record: Model, settings: Settings):
    from anyband.artifacts import MODEL_FILE, verify_sha256
    from anyband.serving import ModelCache, load_served_model

    global _models
    if _models is None:
        _models = ModelCache(1)
    folder = model_dir(settings.data_dir, record.id)
    key = f"{record.id}:{record.sha256}:fold={settings.fold_batch_norm}"
    if _models.peek(key) is not None:
        verify_sha256(folder / MODEL_FILE, record.sha256)  # still the file that was trained
    return _models.get(
        key,
        lambda: load_served_model(
            record.id, folder, record.sha256, fold_batch_norm=settings.fold_batch_norm
        ),
    )


def _draw_preview(result, path, scene_id: str, filename: str, model_id: str) -> None:
    """The class map's quicklook. A picture that cannot be drawn costs the scene nothing: the
    map is written, and the preview's route says it is missing."""
    from anyband.quicklook import plot_class_map

    try:
        plot_class_map(result, path, title=f"{filename}: classes by model {model_id}")
    except Exception:
        log.warning("scene %s: the preview could not be drawn; the class map is kept", scene_id,
                    exc_info=True)  # fmt: skip


def at_most_every(
    seconds: float, report: Callable[[int, int], object]
) -> Callable[[int, int], None]:
    """`report(done, total)` for the first call, then once `seconds` have passed since the last
    report, and always when done == total."""
    last = -math.inf

    def throttled(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done >= total or now - last >= seconds:
            last = now
            report(done, total)

    return throttled


def _status(sessions, scene_id: str) -> str:
    with sessions() as session:
        scene = session.get(Scene, scene_id)
        return scene.status if scene else "missing"
