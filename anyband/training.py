"""Fine-tuning: data pipeline from the training cache, two phases, checkpoints, resume, devices."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from anyband.datasets import load_training_cache
from anyband.errors import JobCancelled
from anyband.jobspec import JobSpec, validation_tiles
from anyband.model import backbone_of, build_classifier

log = logging.getLogger("anyband.training")

PHASE_FROZEN = "frozen"  # conv1 and the head train; the rest of the backbone is frozen
PHASE_FINE_TUNE = "fine_tune"  # every layer trains except BatchNorm (kept in inference mode)
CHECKPOINT_FILE = "checkpoint.json"


@dataclass
class TrainingResult:
    model: keras.Model
    history: list[dict]  # one dict per epoch: epoch (1-based), phase, loss, accuracy, val_*
    val_true: np.ndarray
    val_pred: np.ndarray
    classes: list[str]
    summary: dict  # the dataset's summary (dataset.json)
    started_from_epoch: int  # 0, or the checkpointed epoch a resumed job continued after
    replicas: int = 1
    precision_policy: str = "float32"


@dataclass
class Checkpoint:
    epoch: int  # epochs completed
    phase: str
    history: list[dict] = field(default_factory=list)
    weights: Path | None = None
    optimizer: Path | None = None


# ---------------------------------------------------------------- data


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices, each class split at `val_fraction`; `resolve_spec` has
    checked that every class keeps at least one tile on each side."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = validation_tiles(len(members), val_fraction)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def make_dataset(
    tiles: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    band_index: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool,
    seed: int,
) -> tf.data.Dataset:
    """Batches read from the (memory-mapped) cache by index: the cache never has to fit in RAM."""
    band_index = np.asarray(band_index, dtype=np.intp)
    height, width = tiles.shape[1:3]
    channels = len(band_index)

    def gather(batch_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.sort(batch_indices)  # ascending reads from the memmap
        return np.ascontiguousarray(tiles[rows][..., band_index], np.float32), labels[rows]

    def read(batch_indices):
        x, y = tf.numpy_function(gather, [batch_indices], (tf.float32, tf.int32))
        x.set_shape((None, height, width, channels))
        y.set_shape((None,))
        return x, y

    ds = tf.data.Dataset.from_tensor_slices(indices.astype(np.int64))
    if shuffle:
        ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(read, num_parallel_calls=tf.data.AUTOTUNE)
    if augment:
        square = height == width
        ds = ds.map(lambda x, y: (augment_batch(x, square=square), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def augment_batch(x: tf.Tensor, *, square: bool) -> tf.Tensor:
    """Per tile, a random element of the dihedral group: flips, and 90° rotations when square."""
    x = tf.image.random_flip_left_right(x)
    x = tf.image.random_flip_up_down(x)
    if square:  # transpose + the two flips give all eight rotations and reflections
        swap = tf.random.uniform([tf.shape(x)[0], 1, 1, 1]) < 0.5
        x = tf.where(swap, tf.transpose(x, [0, 2, 1, 3]), x)
    return x


# ---------------------------------------------------------------- devices


def distribution_strategy(devices: Sequence[str] | None = None) -> tf.distribute.Strategy:
    """One MirroredStrategy across the GPUs this process sees (or `devices`), else the default."""
    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy(devices=list(devices))
    return tf.distribute.get_strategy()


def precision_policy(devices: Sequence[str] | None = None) -> str:
    """mixed_float16 on GPUs (tensor cores), float32 on CPUs where float16 is slower."""
    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    return "mixed_float16" if any("GPU" in d.upper() for d in devices) else "float32"


@contextlib.contextmanager
def dtype_policy(name: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# ---------------------------------------------------------------- phases


def set_phase(model: keras.Model, phase: str, *, freeze_batch_norm: bool = True) -> None:
    """Which layers train. With pretrained weights BatchNorm never does: frozen, it runs in
    inference mode and keeps ImageNet's statistics (Keras' transfer-learning guide)."""
    backbone = backbone_of(model)
    backbone.trainable = True
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and freeze_batch_norm:
            layer.trainable = False
        elif phase == PHASE_FROZEN:
            layer.trainable = layer.name == "conv1_conv"
        else:
            layer.trainable = True


def phases(spec: JobSpec) -> list[tuple[str, int, int, float]]:
    """(phase, first epoch, end epoch, learning rate); epochs 0-based, end exclusive."""
    plan = []
    if spec.freeze_epochs:
        plan.append((PHASE_FROZEN, 0, spec.freeze_epochs, spec.learning_rate))
    if spec.epochs > spec.freeze_epochs:
        plan.append(
            (PHASE_FINE_TUNE, spec.freeze_epochs, spec.epochs, spec.fine_tune_learning_rate)
        )
    return plan


# ---------------------------------------------------------------- checkpoints


def read_checkpoint(job_dir: Path) -> Checkpoint | None:
    path = Path(job_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    folder = Path(job_dir) / state["folder"]
    return Checkpoint(
        epoch=state["epoch"],
        phase=state["phase"],
        history=state["history"],
        weights=folder / "weights.npz",
        optimizer=folder / "optimizer.npz",
    )


def load_checkpoint_weights(model: keras.Model, checkpoint: Checkpoint) -> None:
    """Set `model`'s weights from a checkpoint written for a model built the same way."""
    with np.load(checkpoint.weights) as saved:
        keys = sorted(saved.files)
        paths = [key.split(":", 1)[1] for key in keys]
        expected = [variable.path for variable in model.weights]
        if paths != expected:
            raise ValueError(
                f"checkpoint {checkpoint.weights} holds other weights than this model "
                f"({len(paths)} saved, {len(expected)} expected)"
            )
        model.set_weights([saved[key] for key in keys])


class CheckpointWriter:
    """Writes epoch checkpoints (weights, optimizer state, history) in a background thread, so
    an epoch waits only for its in-memory snapshot. Latest wins: if the disk is still writing
    when another epoch ends, the newest snapshot replaces any older one still waiting, so
    training never waits on a slow disk (at most two snapshots are held). `on_written(epoch,
    row)` runs once a checkpoint is on disk and checkpoint.json points at it, so an epoch
    reported as done can always be resumed from."""

    def __init__(self, job_dir: Path, on_written: Callable[[int, dict], None]):
        self.job_dir, self.on_written = Path(job_dir), on_written
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._lock = threading.Condition()
        self._waiting: tuple | None = None
        self._busy = False
        self._error: BaseException | None = None

    def submit(
        self, model: keras.Model, epoch: int, phase: str, history: list[dict], row: dict
    ) -> None:
        self._raise_error()
        weights = {
            f"{i:05d}:{variable.path}": variable.numpy() for i, variable in enumerate(model.weights)
        }
        optimizer: dict[str, np.ndarray] = {}
        model.optimizer.save_own_variables(optimizer)
        with self._lock:
            self._waiting = (weights, optimizer, epoch, phase, list(history), row)
            if not self._busy:
                self._busy = True
                self._executor.submit(self._drain)

    def wait(self) -> None:
        """Block until every submitted checkpoint is written; raise what a write raised."""
        with self._lock:
            while self._busy:
                self._lock.wait()
        self._raise_error()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._executor.shutdown()

    def _raise_error(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _drain(self) -> None:
        while True:
            with self._lock:
                item, self._waiting = self._waiting, None
                if item is None or self._error is not None:
                    self._busy = False
                    self._lock.notify_all()
                    return
            try:
                self._write(*item)
            except BaseException as exc:
                with self._lock:
                    self._error = exc

    def _write(self, weights, optimizer, epoch, phase, history, row) -> None:
        folder = self.job_dir / f"epoch-{epoch:04d}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        np.savez(folder / "weights.npz", **weights)
        np.savez(folder / "optimizer.npz", **optimizer)
        state = {"epoch": epoch, "phase": phase, "history": history, "folder": folder.name}
        tmp = self.job_dir / f".{CHECKPOINT_FILE}.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.job_dir / CHECKPOINT_FILE)
        for old in self.job_dir.glob("epoch-*"):
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        self.on_written(epoch, row)


class _JobCallback(keras.callbacks.Callback):
    """Per batch (training and validation): stop when asked. Per epoch: history, then
    checkpoint and progress."""

    def __init__(self, run: _Run, phase: str, learning_rate: float):
        super().__init__()
        self.run, self.phase, self.learning_rate = run, phase, learning_rate

    def on_train_batch_end(self, batch, logs=None):
        if self.run.should_stop():  # reading a threading.Event is free: every batch
            # Raised rather than model.stop_training: with that, Keras still runs the whole
            # validation pass (minutes on a large dataset) for an epoch that is thrown away,
            # and a partial epoch is not a checkpoint.
            raise JobCancelled("training stopped on request")

    def on_test_batch_end(self, batch, logs=None):
        # The validation pass too: a stopping worker has seconds, not the whole pass.
        self.on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "phase": self.phase, "learning_rate": self.learning_rate}
        row.update({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        self.run.history.append(row)
        if self.run.checkpoints is not None:
            self.run.checkpoints.submit(self.model, epoch + 1, self.phase, self.run.history, row)
        else:
            self.run.on_epoch(epoch + 1, row)


@dataclass
class _Run:
    checkpoints: CheckpointWriter | None
    should_stop: Callable[[], bool]
    on_epoch: Callable[[int, dict], None]
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- training


def train(
    spec: JobSpec,
    dataset_dir: str | os.PathLike,
    *,
    weights: str | os.PathLike = "imagenet",
    job_dir: str | os.PathLike | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    devices: Sequence[str] | None = None,
    verbose: int = 0,
) -> TrainingResult:
    """Fine-tune an adapted ResNet50 on an ingested dataset as `spec` says.

    With `job_dir`, a checkpoint is written after every epoch and an existing one is resumed
    from. `should_stop` is polled after every batch; when it returns True, JobCancelled is
    raised after the batch. `weights` is a path, `imagenet` or `none` (spec.weights may be an
    id the caller resolved to this path). `devices`: the devices to mirror across; default all
    GPUs this process sees, if any.
    """
    tiles, labels, summary = load_training_cache(dataset_dir)
    bands = spec.bands or list(range(1, tiles.shape[-1] + 1))
    band_index = [b - 1 for b in bands]
    mean = np.asarray(summary["band_stats"]["mean"], dtype="float64")[band_index]
    std = np.asarray(summary["band_stats"]["std"], dtype="float64")[band_index]
    std = np.where(std > 0, std, 1.0)  # a constant band: centre it, leave the scale alone

    job_dir = Path(job_dir) if job_dir is not None else None
    if job_dir is not None:
        job_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = read_checkpoint(job_dir) if job_dir is not None else None
    start = checkpoint.epoch if checkpoint else 0
    on_epoch = on_epoch or (lambda epoch, row: None)
    run = _Run(
        checkpoints=CheckpointWriter(job_dir, on_epoch) if job_dir is not None else None,
        should_stop=should_stop or (lambda: False),
        on_epoch=on_epoch,
        history=list(checkpoint.history) if checkpoint else [],
    )
    try:
        return _train(spec, run, tiles, labels, summary, bands, mean, std, checkpoint, start,
                      weights=weights, devices=devices, verbose=verbose)  # fmt: skip
    finally:
        if run.checkpoints is not None:
            run.checkpoints.close()  # every epoch trained is on disk before we return or raise


def _train(spec, run, tiles, labels, summary, bands, mean, std, checkpoint, start, *,
           weights, devices, verbose) -> TrainingResult:  # fmt: skip
    band_index = [b - 1 for b in bands]
    train_index, val_index = stratified_split(labels, spec.val_fraction, spec.seed)

    keras.backend.clear_session()
    keras.utils.set_random_seed(spec.seed + start)  # a resumed run does not replay epoch 1's draws
    strategy = distribution_strategy(devices)
    policy = precision_policy(devices)
    train_ds = make_dataset(
        tiles, labels, train_index, band_index, spec.batch_size,
        shuffle=True, augment=spec.augment, seed=spec.seed + start,
    )  # fmt: skip
    val_ds = make_dataset(
        tiles, labels, val_index, band_index, spec.batch_size,
        shuffle=False, augment=False, seed=spec.seed,
    )  # fmt: skip

    with dtype_policy(policy), strategy.scope():
        model = spec_classifier(spec, len(summary["classes"]), mean, std, weights=weights)
        if checkpoint is not None:
            load_checkpoint_weights(model, checkpoint)
            log.info("resuming after epoch %d of %d", start, spec.epochs)
        for phase, first, end, learning_rate in phases(spec):
            if end <= start:
                continue
            set_phase(model, phase, freeze_batch_norm=str(weights) != "none")
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            if checkpoint is not None and checkpoint.phase == phase and start > first:
                _restore_optimizer(model, checkpoint.optimizer)
            model.fit(
                train_ds,
                validation_data=val_ds,
                initial_epoch=max(first, start),
                epochs=end,
                callbacks=[_JobCallback(run, phase, learning_rate)],
                shuffle=False,  # the dataset shuffles itself
                verbose=verbose,
            )
        if run.checkpoints is not None:
            run.checkpoints.wait()  # the last epoch's checkpoint and progress are written
        probabilities = model.predict(val_ds, verbose=0)
    return TrainingResult(
        model=_serving_copy(model, spec, len(summary["classes"]), mean, std),
        history=run.history,
        val_true=labels[val_index],
        val_pred=np.argmax(probabilities, axis=-1),
        classes=list(summary["classes"]),
        summary=summary,
        started_from_epoch=start,
        replicas=strategy.num_replicas_in_sync,
        precision_policy=policy,
    )


def spec_classifier(
    spec: JobSpec, classes: int, mean: np.ndarray, std: np.ndarray, *, weights: str
) -> keras.Model:
    """The classifier a job spec describes, for the bands whose training-cache mean and std
    (constant bands' std already 1) are given: what training fits and what it saves."""
    return build_classifier(
        len(mean),
        classes,
        strategy=spec.init_strategy,
        weights=weights,
        rgb_bands=tuple(spec.rgb_bands),
        initializer=spec.initializer,
        band_mean=mean.tolist(),
        band_std=std.tolist(),
        seed=spec.seed,
    )


def _serving_copy(
    model: keras.Model, spec: JobSpec, classes: int, mean: np.ndarray, std: np.ndarray
) -> keras.Model:
    """The trained weights in a float32, uncompiled twin: what is saved and served. It holds no
    optimizer state (a third of the file) and computes in float32 on any device."""
    serving = spec_classifier(spec, classes, mean, std, weights="none")
    serving.set_weights([np.asarray(w, dtype=np.float32) for w in model.get_weights()])
    return serving


def _restore_optimizer(model: keras.Model, path: Path) -> None:
    """Adam's moments from the checkpoint, so a resumed phase continues rather than restarts."""
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    with np.load(path) as saved:
        store = {key: saved[key] for key in saved.files}
    if len(store) != len(optimizer.variables):
        log.warning("optimizer state in %s does not match this model; starting it afresh", path)
        return
    optimizer.load_own_variables(store)
