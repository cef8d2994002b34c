"""Where each record's files live inside the data directory (one place for the layout)."""

from __future__ import annotations

from pathlib import Path

from anyband.pretrained import WEIGHTS_SUFFIXES


def dataset_dir(data_dir: Path, dataset_id: str) -> Path:
    return data_dir / "datasets" / dataset_id


def job_dir(data_dir: Path, job_id: str) -> Path:
    """Checkpoints of a training job: what a second worker resumes from."""
    return data_dir / "jobs" / job_id


def model_dir(data_dir: Path, model_id: str) -> Path:
    """A finished model's artifacts: model.keras, metrics.json, history.csv, curves.png, card.json."""
    return data_dir / "models" / model_id


def weights_path(data_dir: Path, weights_id: str, filename: str) -> Path:
    """Stored as weights/{id}/weights{suffix}: the suffix tells the loader the format."""
    suffix = next(s for s in WEIGHTS_SUFFIXES if filename.endswith(s))
    return data_dir / "weights" / weights_id / f"weights{suffix}"


def scene_dir(data_dir: Path, scene_id: str) -> Path:
    """A scene job's input.tif (until it is mapped) and result.tif."""
    return data_dir / "scenes" / scene_id
