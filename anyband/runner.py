"""Runs one training job for a worker: lease, train, artifacts, model record; safe to call twice."""

from __future__ import annotations

import logging
import shutil
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from anyband import jobs
from anyband.artifacts import (
    CARD_FILE,
    MODEL_FILE,
    classification_metrics,
    plot_curves,
    sha256_file,
    write_history_csv,
    write_json,
)
from anyband.errors import AnybandError, JobCancelled
from anyband.jobspec import JobSpec
from anyband.paths import dataset_dir, job_dir, model_dir, weights_path
from anyband.settings import Settings
from anyband.store import Dataset, Job, Model, WeightsFile, init_db, new_id

log = logging.getLogger("anyband.runner")


class Lease:
    """Renews a job's (or scene's) lease in a thread; `lost` is set once it is no longer ours
    (cancelled, or taken over after our lease ran out)."""

    def __init__(self, sessions, job_id: str, owner: str, lease_seconds: float, table=Job):
        self.sessions, self.job_id, self.owner = sessions, job_id, owner
        self.lease_seconds, self.table = lease_seconds, table
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def renew(self, **values) -> bool:
        try:
            ok = jobs.renew(
                self.sessions,
                self.job_id,
                self.owner,
                self.lease_seconds,
                table=self.table,
                **values,
            )
        except Exception:  # a database blip: keep training, try again next beat
            log.exception("job %s: could not renew the lease", self.job_id)
            return True
        if not ok:
            self.lost.set()
        return ok

    def _loop(self) -> None:
        interval = min(self.lease_seconds / 4, 5.0)
        while not self._stop.wait(interval):
            if not self.renew():
                log.warning("job %s: cancelled or taken over; stopping", self.job_id)
                return


def run_training_job(
    job_id: str,
    settings: Settings,
    worker_id: str,
    *,
    devices=None,
    interrupted: Callable[[], bool] = lambda: False,
) -> str:
    """Train job `job_id` if no other worker holds it. Returns the job's status afterwards.

    `interrupted()` turns True when the worker is shutting down: training stops after the
    batch it is in and the job is handed back (see `hand_back`), not failed."""
    from anyband.training import train  # TensorFlow loads only in processes that train

    sessions = init_db(settings.sqlalchemy_url)
    try:
        job = jobs.claim(sessions, job_id, worker_id, settings.lease_seconds)
        if job is None:
            with sessions() as session:
                current = session.get(Job, job_id)
            status = current.status if current else "missing"
            log.info("job %s: %s, not mine to run; skipping this delivery", job_id, status)
            return status
        log.info("job %s: attempt %d on %s", job_id, job.attempts, worker_id)
        spec = JobSpec.model_validate(job.spec)
        checkpoints = job_dir(settings.data_dir, job_id)
        with Lease(sessions, job_id, worker_id, settings.lease_seconds) as lease:
            try:
                weights = _weights_for(spec, sessions, settings)

                def on_epoch(epoch: int, row: dict) -> None:
                    metrics = {k: v for k, v in row.items() if k not in ("epoch",)}
                    lease.renew(epoch=epoch, metrics=metrics)

                resumed = _checkpoint_epoch(checkpoints)
                if resumed:
                    lease.renew(resumed_from_epoch=resumed, epoch=resumed)
                result = train(
                    spec,
                    dataset_dir(settings.data_dir, spec.dataset_id),
                    weights=weights,
                    job_dir=checkpoints,
                    on_epoch=on_epoch,
                    should_stop=lambda: lease.lost.is_set() or interrupted(),
                    devices=devices,
                )
                if lease.lost.is_set():
                    raise JobCancelled("cancelled while the last epoch ended")
                model = _publish(job_id, spec, result, sessions, settings)
            except JobCancelled:
                if interrupted() and not lease.lost.is_set():
                    epoch = _checkpoint_epoch(checkpoints)
                    resumes = (
                        f"resumes from its checkpoint after epoch {epoch}"
                        if epoch
                        else "starts from epoch 1"
                    )
                    return hand_back(sessions, job_id, worker_id, resumes)
                log.info("job %s: stopped (cancelled or taken over)", job_id)
                _discard_checkpoints_if_dropped(sessions, settings, job_id)
                return _status(sessions, job_id)
            except Exception as exc:
                log_failure(log, "job", job_id, exc)
                jobs.fail(sessions, job_id, worker_id, _readable(exc))
                return _status(sessions, job_id)
        if jobs.finish(sessions, job_id, worker_id, model):
            shutil.rmtree(job_dir(settings.data_dir, job_id), ignore_errors=True)
            log.info("job %s succeeded: model %s", job_id, model.id)
        else:  # cancelled between the last epoch and now: publish nothing
            shutil.rmtree(model_dir(settings.data_dir, model.id), ignore_errors=True)
            _discard_checkpoints_if_dropped(sessions, settings, job_id)
        return _status(sessions, job_id)
    finally:
        sessions.kw["bind"].dispose()


def hand_back(sessions, job_id: str, worker_id: str, resumes: str, *, table=Job, **reset) -> str:
    """The worker is shutting down: queue the job (or scene) again now, so that the next worker
    takes it up without waiting for the lease to run out; `reset`: progress that starts over.
    `resumes` says how, in the log. Returns its status afterwards."""
    if jobs.release(sessions, job_id, worker_id, table=table, **reset):
        log.warning(
            "%s %s: this worker is shutting down; handed back, it %s",
            table.__tablename__[:-1],
            job_id,
            resumes,
        )
    return _status(sessions, job_id, table=table)


def _weights_for(spec: JobSpec, sessions, settings: Settings) -> str | Path:
    """`none` stays; `imagenet` becomes the file (a readable error if absent); an id its file."""
    from anyband.pretrained import resolve_imagenet_weights

    if spec.weights == "none":
        return "none"
    if spec.weights == "imagenet":
        return resolve_imagenet_weights(settings)
    with sessions() as session:
        record = session.get(WeightsFile, spec.weights)
    if record is None:
        raise AnybandError(f"weights '{spec.weights}' no longer exist; upload them again")
    return weights_path(settings.data_dir, record.id, record.filename)


def _checkpoint_epoch(checkpoints: Path) -> int:
    from anyband.training import read_checkpoint

    checkpoint = read_checkpoint(checkpoints) if checkpoints.is_dir() else None
    return checkpoint.epoch if checkpoint else 0


def _publish(job_id: str, spec: JobSpec, result, sessions, settings: Settings) -> Model:
    """Write every artifact into a staging folder, then move it into models/{id} whole."""
    model_id = new_id()
    final = model_dir(settings.data_dir, model_id)
    staging = final.with_name(f".{model_id}.partial")
    staging.mkdir(parents=True)
    try:
        result.model.save(staging / MODEL_FILE)
        metrics = classification_metrics(result.val_true, result.val_pred, result.classes)
        metrics["history"] = result.history
        write_json(staging / "metrics.json", metrics)
        write_history_csv(result.history, staging / "history.csv")
        plot_curves(result.history, staging / "curves.png")
        with sessions() as session:
            dataset = session.get(Dataset, spec.dataset_id)
        band_index = [b - 1 for b in spec.bands]
        stats = result.summary["band_stats"]
        card = {
            "model_id": model_id,
            "job_id": job_id,
            "architecture": "ResNet50",
            "dataset": {
                "id": spec.dataset_id,
                "name": dataset.name if dataset else None,
                "num_bands": result.summary["num_bands"],
                "dtype": result.summary["dtype"],
                "nodata": result.summary.get("nodata"),
                "class_counts": result.summary["class_counts"],
            },
            "bands": spec.bands,
            "channels": spec.channels,
            "init_strategy": spec.init_strategy,
            "weights": spec.weights,
            "band_stats": {
                "mean": [stats["mean"][i] for i in band_index],
                "std": [stats["std"][i] for i in band_index],
            },
            "classes": result.classes,
            "tile_size": result.summary["tile_size"],
            "training": {
                "replicas": result.replicas,
                "precision_policy": result.precision_policy,
                "resumed_from_epoch": result.started_from_epoch or None,
            },
            "metrics": {k: metrics[k] for k in ("accuracy", "macro_f1", "num_samples")},
            "spec": spec.model_dump(mode="json"),
        }
        write_json(staging / CARD_FILE, card)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    model_file = final / MODEL_FILE
    height, width = result.summary["tile_size"]
    return Model(
        id=model_id,
        job_id=job_id,
        dataset_id=spec.dataset_id,
        classes=result.classes,
        bands=spec.bands,
        dataset_bands=result.summary["num_bands"],
        channels=spec.channels,
        init_strategy=spec.init_strategy,
        weights=spec.weights,
        tile_height=height,
        tile_width=width,
        dtype=result.summary["dtype"],
        nodata=result.summary.get("nodata"),
        metrics=card["metrics"],
        sha256=sha256_file(model_file),
        size_bytes=model_file.stat().st_size,
    )


def _discard_checkpoints_if_dropped(sessions, settings: Settings, job_id: str) -> None:
    """Cancelled, or cancelled and deleted while this worker still trained (DELETE removed
    the folder, and the epoch that ended meanwhile wrote it again): nothing will resume."""
    if _status(sessions, job_id) in ("cancelled", "missing"):
        shutil.rmtree(job_dir(settings.data_dir, job_id), ignore_errors=True)


def _status(sessions, job_id: str, *, table=Job) -> str:
    with sessions() as session:
        job = session.get(table, job_id)
        return job.status if job else "missing"


def _readable(exc: Exception) -> str:
    """What a user can act on: our own errors as they are, others with their type."""
    if isinstance(exc, (AnybandError, FileNotFoundError, ValueError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def log_failure(logger: logging.Logger, what: str, job_id: str, exc: Exception) -> None:
    """A refusal anyband raised on purpose (weights not found, a bad dataset) is the user's to
    fix and is said in one line; anything else is a bug, logged with its traceback."""
    if isinstance(exc, AnybandError):
        logger.warning("%s %s failed: %s", what, job_id, exc)
    else:
        logger.error("%s %s failed:\n%s", what, job_id, traceback.format_exc())
