"""Benchmark: a training job's training phase against plain `keras.Model.fit` on the same arrays.

    .venv/bin/python bench/train_throughput.py [--tiles 240] [--batch-size 32] [--epochs 3]
        [--no-augment] [--repeat 3] [--breakdown] [--workdir /tmp] [--keep] [--json PATH]

One run writes a dataset of 13-band uint16 64x64 GeoTIFFs into a zip, ingests it with
`ingest_dataset_zip`, then trains the same ResNet50 (same `spec_classifier` call, same layers
trainable, same optimizer, loss, batch size and train/validation split) twice:

- raw: `model.fit` on the split held in RAM as float32 numpy arrays, nothing else;
- job: `anyband.training.train`, as a job runs it: tf.data from the memory-mapped cache,
  augmentation, a stop check after every batch, a checkpoint and progress after every epoch.

Images/s is training tiles per epoch over the median epoch time, the first epoch (tracing)
left out. It prints both, the ratio job/raw and whether the ratio meets the target; it never
asserts speed. `--breakdown` then measures where the job's epoch time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

import anyband
from anyband.datasets import DatasetLimits, ingest_dataset_zip, load_training_cache
from anyband.jobspec import JobSpec
from anyband.training import (
    PHASE_FINE_TUNE,
    distribution_strategy,
    dtype_policy,
    make_dataset,
    precision_policy,
    set_phase,
    spec_classifier,
    stratified_split,
    train,
)

# The project's target for the job's training throughput, as a fraction of plain fit's.
TARGET_RATIO = 0.9
BANDS = 13
TILE_SIZE = 64
CLASSES = ("cropland", "forest", "urban")
# No internet here: ImageNet weights cannot be fetched, and the speed of a step does not depend
# on the values of the weights. With "none" the job lets BatchNorm train; the raw path does too.
WEIGHTS = "none"


@dataclass
class Measurement:
    path: str
    epoch_seconds: list[float]  # every epoch, the first (tracing) included
    train_tiles: int
    checkpoint_mb: float | None = None  # the job's last checkpoint on disk

    @property
    def timed_epoch_seconds(self) -> float:
        """Median over epochs 2..E: the first epoch traces and compiles the step."""
        return statistics.median(self.epoch_seconds[1:])

    @property
    def images_per_second(self) -> float:
        return self.train_tiles / self.timed_epoch_seconds

    @property
    def fastest_epoch_seconds(self) -> float:
        """Other work on the machine only ever slows an epoch: the fastest is the least disturbed."""
        return min(self.epoch_seconds[1:])


class EpochClock:
    """Wall-clock time at the start of fit and at the end of each epoch."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def start(self) -> None:
        self.marks = [time.perf_counter()]

    def mark(self) -> None:
        self.marks.append(time.perf_counter())

    @property
    def epoch_seconds(self) -> list[float]:
        return [end - start for start, end in itertools.pairwise(self.marks)]


class _EpochEnd(keras.callbacks.Callback):
    def __init__(self, clock: EpochClock) -> None:
        super().__init__()
        self.clock = clock

    def on_train_begin(self, logs=None):
        self.clock.start()

    def on_epoch_end(self, epoch, logs=None):
        self.clock.mark()


# ---------------------------------------------------------------- dataset


def write_dataset_zip(zip_path: Path, num_tiles: int, seed: int = 0) -> None:
    """Tiles round-robin over CLASSES; class k is brighter in band k, so the model can learn."""
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff",
        "width": TILE_SIZE,
        "height": TILE_SIZE,
        "count": BANDS,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 4_000_000, 10, 10),
    }
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for i in range(num_tiles):
            k = i % len(CLASSES)
            pixels = rng.normal(300, 40, size=(BANDS, TILE_SIZE, TILE_SIZE))
            pixels[k] += 600
            with MemoryFile() as memory:
                with memory.open(**profile) as dataset:
                    dataset.write(np.clip(pixels, 1, None).astype(np.uint16))
                archive.writestr(f"{CLASSES[k]}/tile_{i:05d}.tif", memory.read())


# ---------------------------------------------------------------- the two paths


def compiled_model(spec: JobSpec, summary: dict) -> keras.Model:
    """The model `train` fits in its fine-tune phase: same build call, layers, optimizer, loss.
    Call inside `job_scope()`."""
    mean = np.asarray(summary["band_stats"]["mean"], dtype="float64")
    std = np.asarray(summary["band_stats"]["std"], dtype="float64")
    std = np.where(std > 0, std, 1.0)
    model = spec_classifier(spec, len(summary["classes"]), mean, std, weights=WEIGHTS)
    set_phase(model, PHASE_FINE_TUNE, freeze_batch_norm=WEIGHTS != "none")
    model.compile(
        optimizer=keras.optimizers.Adam(spec.fine_tune_learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


@contextlib.contextmanager
def job_scope(spec: JobSpec):
    """A fresh session with the seed, dtype policy and device strategy `train` picks."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(spec.seed)
    with dtype_policy(precision_policy()), distribution_strategy().scope():
        yield


def measure_raw(spec: JobSpec, dataset_dir: Path) -> Measurement:
    """Plain `fit` on in-memory float32 arrays of the job's split, with the job's model setup."""
    tiles, labels, summary = load_training_cache(dataset_dir)
    train_index, val_index = stratified_split(labels, spec.val_fraction, spec.seed)
    x_train, y_train = np.array(tiles[train_index], np.float32), labels[train_index]
    x_val, y_val = np.array(tiles[val_index], np.float32), labels[val_index]
    clock = EpochClock()
    with job_scope(spec):
        model = compiled_model(spec, summary)
        model.fit(
            x_train,
            y_train,
            batch_size=spec.batch_size,
            epochs=spec.epochs,
            validation_data=(x_val, y_val),
            shuffle=True,
            callbacks=[_EpochEnd(clock)],
            verbose=0,
        )
    return Measurement("raw keras fit (numpy)", clock.epoch_seconds, len(train_index))


def measure_job(
    spec: JobSpec, dataset_dir: Path, job_dir: Path | None, path: str = "job anyband.training.train"
) -> Measurement:
    """`train` as a job calls it, timed by its progress callback: each epoch's progress comes
    once its checkpoint is written."""
    if job_dir is not None:
        shutil.rmtree(job_dir, ignore_errors=True)  # no checkpoint to resume from
    _, labels, _ = load_training_cache(dataset_dir)
    train_index, _ = stratified_split(labels, spec.val_fraction, spec.seed)
    marks: list[tuple[int, float]] = []
    # train() builds its model before fit starts, so epoch 1 has no start mark here; it is left
    # out of the figure anyway. Epochs 2..E run progress to progress, checkpoint writes included
    # (progress comes once a checkpoint is on disk; when the disk lags, a checkpoint can cover
    # two epochs, whose time is then shared between them). The last epoch's mark comes after
    # its own checkpoint, which nothing overlaps: the job's whole tail is counted.
    train(
        spec,
        dataset_dir,
        weights=WEIGHTS,
        job_dir=job_dir,
        on_epoch=lambda epoch, row: marks.append((epoch, time.perf_counter())),
    )
    seconds = [float("nan")] * (marks[0][0] if marks else 1)
    for (first, start), (last, end) in itertools.pairwise(marks):
        seconds += [(end - start) / (last - first)] * (last - first)
    checkpoint_mb = None
    if job_dir is not None:
        files = [file for file in job_dir.rglob("*") if file.is_file()]
        checkpoint_mb = sum(file.stat().st_size for file in files) / 2**20
    return Measurement(path, seconds, len(train_index), checkpoint_mb)


# ---------------------------------------------------------------- breakdown


def pipeline_images_per_second(
    spec: JobSpec, dataset_dir: Path, *, augment: bool, passes: int = 3
) -> float:
    """The job's training tf.data alone, iterated without a model: its ceiling on images/s."""
    tiles, labels, _ = load_training_cache(dataset_dir)
    train_index, _ = stratified_split(labels, spec.val_fraction, spec.seed)
    ds = make_dataset(
        tiles, labels, train_index, range(tiles.shape[-1]), spec.batch_size,
        shuffle=True, augment=augment, seed=spec.seed,
    )  # fmt: skip
    for _ in ds:  # the first pass builds the pipeline
        pass
    start = time.perf_counter()
    for _ in range(passes):
        for _ in ds:
            pass
    return passes * len(train_index) / (time.perf_counter() - start)


def measure_fit_on_job_dataset(spec: JobSpec, dataset_dir: Path) -> Measurement:
    """Plain `fit` on the job's tf.data (augmented as the spec says), with no job callback."""
    tiles, labels, summary = load_training_cache(dataset_dir)
    train_index, val_index = stratified_split(labels, spec.val_fraction, spec.seed)
    bands = range(tiles.shape[-1])
    train_ds = make_dataset(
        tiles, labels, train_index, bands, spec.batch_size,
        shuffle=True, augment=spec.augment, seed=spec.seed,
    )  # fmt: skip
    val_ds = make_dataset(
        tiles, labels, val_index, bands, spec.batch_size,
        shuffle=False, augment=False, seed=spec.seed,
    )  # fmt: skip
    clock = EpochClock()
    with job_scope(spec):
        model = compiled_model(spec, summary)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=spec.epochs,
            callbacks=[_EpochEnd(clock)],
            shuffle=False,
            verbose=0,
        )
    return Measurement("fit on the job's tf.data", clock.epoch_seconds, len(train_index))


def breakdown(spec: JobSpec, dataset_dir: Path, raw: Measurement, job: Measurement) -> dict:
    """Where the job's epoch goes: each step from plain fit towards the job adds one cost."""
    print("\nbreakdown: measuring ...", flush=True)
    pipeline = {
        augment: pipeline_images_per_second(spec, dataset_dir, augment=augment)
        for augment in {False, spec.augment}
    }
    fit_tf_data = measure_fit_on_job_dataset(spec, dataset_dir)
    keras.backend.clear_session()
    no_checkpoint = measure_job(spec, dataset_dir, None, "job without checkpoints")
    keras.backend.clear_session()

    rows = [raw, fit_tf_data, no_checkpoint, job]
    print(f"\n{'path':<28}{'epoch s':>10}{'images/s':>10}{'ratio':>8}{'+ s/epoch':>11}")
    print("-" * 28 + " ---------" * 2 + " ------- ----------")
    previous = None
    for row in rows:
        added = "" if previous is None else f"{row.timed_epoch_seconds - previous:+.2f}"
        print(
            f"{row.path:<28}{row.timed_epoch_seconds:>10.2f}{row.images_per_second:>10.1f}"
            f"{row.images_per_second / raw.images_per_second:>8.3f}{added:>11}"
        )
        previous = row.timed_epoch_seconds
    for augment, rate in sorted(pipeline.items()):
        print(f"job's tf.data alone, augment={augment}: {rate:.0f} images/s (no model)")
    print(
        "each row adds one thing to the one above: the job's tf.data and augmentation; then the "
        "job's\ncallback and train() itself; then checkpoints. + s/epoch is its cost per epoch."
    )
    return {
        "measurements": [_figures(row) for row in rows],
        "pipeline_images_per_second": {f"augment={k}": v for k, v in pipeline.items()},
    }


# ---------------------------------------------------------------- report


def report(setup: dict, rounds: list[tuple[Measurement, Measurement]]) -> dict:
    raw_rates = [raw.images_per_second for raw, _ in rounds]
    job_rates = [job.images_per_second for _, job in rounds]
    raw_rate, job_rate = statistics.median(raw_rates), statistics.median(job_rates)
    ratio = job_rate / raw_rate
    met = ratio >= TARGET_RATIO

    print()
    for key, value in setup.items():
        print(f"{key:<18} {value}")
    print(
        "images/s: training tiles per epoch over the median epoch time, epochs 2..E. Both paths'\n"
        "epoch times include the same validation pass; the job's also what its checkpoint costs."
    )
    if len(rounds) > 1:
        print(f"medians over {len(rounds)} rounds, raw first in each")
    print(f"\n{'path':<28}{'epoch s':>10}{'images/s':>10}{'ratio':>8}{'fastest s':>11}")
    print("-" * 28 + " ---------" * 2 + " ------- ----------")
    fastest = {}
    for name, rows, rate in (
        (rounds[0][0].path, [raw for raw, _ in rounds], raw_rate),
        (rounds[0][1].path, [job for _, job in rounds], job_rate),
    ):
        epoch = statistics.median(row.timed_epoch_seconds for row in rows)
        fastest[name] = min(row.fastest_epoch_seconds for row in rows)
        print(f"{name:<28}{epoch:>10.2f}{rate:>10.1f}{rate / raw_rate:>8.3f}{fastest[name]:>11.2f}")
    fastest_ratio = fastest[rounds[0][0].path] / fastest[rounds[0][1].path]
    for i, (raw, job) in enumerate(rounds, start=1):
        print(
            f"round {i}: ratio {job.images_per_second / raw.images_per_second:.3f}; epoch "
            f"seconds raw {_seconds(raw.epoch_seconds)}, job {_seconds(job.epoch_seconds)}"
        )
    checkpoint_mb = statistics.median(job.checkpoint_mb for _, job in rounds)
    print(f"the job's checkpoint on disk: {checkpoint_mb:.0f} MB, rewritten every epoch")
    print(
        f"fastest epoch of each path, raw over job: {fastest_ratio:.3f} (the same ratio, less "
        "disturbed by other work on the machine)"
    )
    print(
        f"\nRATIO job/raw = {ratio:.2f} (target >= {TARGET_RATIO}: {'met' if met else 'NOT met'})"
    )
    return {
        "setup": setup,
        "rounds": [{path.path: _figures(path) for path in pair} for pair in rounds],
        "raw_images_per_second": raw_rate,
        "job_images_per_second": job_rate,
        "ratio_job_over_raw": ratio,
        "fastest_epoch_ratio_job_over_raw": fastest_ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": met,
    }


def _figures(row: Measurement) -> dict:
    return {
        **asdict(row),
        "images_per_second": row.images_per_second,
        "fastest_epoch_seconds": row.fastest_epoch_seconds,
    }


def _seconds(values: list[float]) -> str:
    return " ".join("-" if math.isnan(value) else f"{value:.2f}" for value in values)


def run(args: argparse.Namespace) -> None:
    # Each round builds a new model and the job predicts with it: TF's retracing warning about
    # that is expected here.
    tf.get_logger().setLevel("ERROR")
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="anyband-bench-train-", dir=args.workdir))
    try:
        zip_path, dataset_dir = root / "dataset.zip", root / "dataset"
        start = time.perf_counter()
        write_dataset_zip(zip_path, args.tiles)
        summary = ingest_dataset_zip(zip_path, dataset_dir, DatasetLimits())
        spec = JobSpec(
            dataset_id="bench",
            init_strategy="repeat",
            weights=WEIGHTS,
            epochs=args.epochs,
            freeze_epochs=0,  # one fine-tune phase, every layer training, as the raw path
            batch_size=args.batch_size,
            val_fraction=args.val_fraction,
            augment=args.augment,
        )
        _, labels, _ = load_training_cache(dataset_dir)
        train_index, val_index = stratified_split(labels, spec.val_fraction, spec.seed)
        print(
            f"dataset: {summary.num_tiles} tiles of {BANDS} x {TILE_SIZE} x {TILE_SIZE} uint16 in "
            f"{len(CLASSES)} classes, {len(train_index)} train / {len(val_index)} validation "
            f"(written and ingested in {time.perf_counter() - start:.1f}s) under {root}",
            flush=True,
        )
        load_before = os.getloadavg()[0]
        rounds = []
        for i in range(1, args.repeat + 1):
            raw = measure_raw(spec, dataset_dir)
            print(f"round {i}: raw {raw.images_per_second:.1f} images/s", flush=True)
            keras.backend.clear_session()
            job = measure_job(spec, dataset_dir, root / "job")
            print(f"round {i}: job {job.images_per_second:.1f} images/s", flush=True)
            keras.backend.clear_session()
            rounds.append((raw, job))
        setup = {
            "tiles": f"{summary.num_tiles} ({len(train_index)} train, {len(val_index)} val)",
            "bands x size": f"{BANDS} x {TILE_SIZE} x {TILE_SIZE} (uint16 tiles, float32 cache)",
            "batch size": spec.batch_size,
            "epochs": f"{spec.epochs} (first excluded), freeze_epochs 0",
            "augment (job)": spec.augment,
            "weights": f"{WEIGHTS} (no internet here; step cost does not depend on values)",
            "init strategy": spec.init_strategy,
            "TF / Keras": f"{tf.__version__} / {keras.__version__}",
            "devices": ", ".join(d.name for d in tf.config.list_logical_devices()),
            "CPUs": os.cpu_count(),
            # Other work on the machine slows whichever path runs beside it: rerun if this is high.
            "load average": f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1 min)",
            "python": platform.python_version(),
            "anyband": str(Path(anyband.__file__).parent),
        }
        results = report(setup, rounds)
        if args.breakdown:
            raw, job = rounds[-1]
            results["breakdown"] = breakdown(spec, dataset_dir, raw, job)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.json}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=240, help="tiles in the dataset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="at least 2; the first is not timed")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument(
        "--no-augment", dest="augment", action="store_false", help="the job without augmentation"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of raw then job; medians are reported"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="parent of the run's folder",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="then measure where the job's epoch time goes (about as long again)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.epochs < 2:
        sys.exit(f"--epochs must be at least 2 (the first is not timed). Received: {args.epochs}")
    if args.repeat < 1:
        sys.exit(f"--repeat must be at least 1. Received: {args.repeat}")
    run(args)


if __name__ == "__main__":
    main()
