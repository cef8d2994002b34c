"""What a finished training job leaves in models/{id}/: metrics, history, curves, card, hashes."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from anyband.errors import ModelFileMismatchError

MODEL_FILE = "model.keras"
CARD_FILE = "card.json"
ARTIFACT_NAMES = (MODEL_FILE, "metrics.json", "history.csv", "curves.png", CARD_FILE)
ARTIFACT_MEDIA_TYPES: dict[str, str] = {
    "model.keras": "application/octet-stream",
    "metrics.json": "application/json",
    "history.csv": "text/csv",
    "curves.png": "image/png",
    "card.json": "application/json",
}
HASH_CHUNK_BYTES = 1 << 20


def _class_indices(name: str, values: object, num_classes: int) -> np.ndarray:
    indices = np.asarray(values)
    if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
        raise ValueError(
            f"{name} must be a 1-D array of integer class indices. "
            f"Received: {name} with shape {indices.shape} and dtype {indices.dtype}"
        )
    outside = indices[(indices < 0) | (indices >= num_classes)]
    if outside.size:
        raise ValueError(
            f"{name} must hold class indices within 0..{num_classes - 1} for {num_classes} classes. "
            f"Received: {name} containing {int(outside[0])}"
        )
    return indices.astype(np.int64)


def _ratio(numerator: int, denominator: int) -> float:
    # Undefined ratios (nothing predicted, nothing to recall) count as 0.0, as scikit-learn does.
    return float(numerator / denominator) if denominator else 0.0


def classification_metrics(y_true: object, y_pred: object, classes: list[str]) -> dict:
    """Accuracy, confusion matrix (rows true, columns predicted) and per-class precision/recall/F1."""
    classes = list(classes)
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(
            f"classes must be a non-empty list of distinct names. Received: classes={classes!r}"
        )
    num_classes = len(classes)
    true = _class_indices("y_true", y_true, num_classes)
    pred = _class_indices("y_pred", y_pred, num_classes)
    if len(true) != len(pred):
        raise ValueError(
            "y_true and y_pred must have the same length. "
            f"Received: len(y_true)={len(true)}, len(y_pred)={len(pred)}"
        )
    counts = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    confusion = counts.reshape(num_classes, num_classes)
    per_class = {}
    for k, name in enumerate(classes):
        hits = int(confusion[k, k])
        support, predicted = int(confusion[k].sum()), int(confusion[:, k].sum())
        precision, recall = _ratio(hits, predicted), _ratio(hits, support)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": float(f1),
            "support": support,
        }
    return {
        "accuracy": _ratio(int(np.trace(confusion)), len(true)),
        "num_samples": len(true),
        "classes": classes,
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class,
        "macro_f1": float(np.mean([scores["f1"] for scores in per_class.values()])),
    }


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Readers see the old file or the whole new one, never half of it."""
    target = Path(path)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: object) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def write_history_csv(history: list[dict], path: str | os.PathLike) -> None:
    """One row per epoch: "epoch" then every metric in the order it first appears."""
    columns = ["epoch"]
    for row in history:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for number, row in enumerate(history, start=1):
        values = {key: value for key, value in row.items() if value is not None}
        writer.writerow({**values, "epoch": row.get("epoch", number)})
    write_atomic(path, buffer.getvalue().encode("utf-8"))


def _series(history: list[dict], key: str) -> tuple[list, list]:
    points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
    return [epoch for epoch, _ in points], [float(value) for _, value in points]


def plot_curves(history: list[dict], path: str | os.PathLike) -> None:
    """Loss and accuracy per epoch, side by side, with a line where the backbone was unfrozen."""
    if not history:
        raise ValueError(f"history must hold at least one epoch. Received: history={history!r}")
    history = [{"epoch": number, **row} for number, row in enumerate(history, start=1)]
    unfrozen_at = [
        (before["epoch"] + after["epoch"]) / 2
        for before, after in itertools.pairwise(history)
        if before.get("phase") == "frozen" and after.get("phase") == "fine_tune"
    ]
    first, last = min(row["epoch"] for row in history), max(row["epoch"] for row in history)
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(f"Training curves ({len(history)} epoch{'s' if len(history) != 1 else ''})")
    axes = figure.subplots(1, 2)
    for ax, metric, title in zip(axes, ("loss", "accuracy"), ("Loss", "Accuracy"), strict=True):
        plotted = False
        for key, label, color, marker in (
            (metric, "train", "C0", "o"),
            (f"val_{metric}", "validation", "C1", "s"),
        ):
            epochs, values = _series(history, key)
            if epochs:
                plotted = True
                ax.plot(epochs, values, color=color, marker=marker, markersize=4, label=label)
        for number, x in enumerate(unfrozen_at):
            label = "backbone unfrozen" if number == 0 else None
            ax.axvline(x, color="0.4", linestyle="--", linewidth=1, label=label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        if not plotted:
            ax.text(
                0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes
            )
        ax.set_title(title)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(title)
        ax.set_xlim(first - 0.5, last + 0.5)  # a lone epoch would otherwise get ticks like 0.995
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike, expected: str) -> Path:
    """`path` if its content hashes to `expected`; else ModelFileMismatchError. Only files the
    workers wrote, unchanged since, are loaded or served."""
    path = Path(path)
    actual = sha256_file(path)
    if actual != expected:
        raise ModelFileMismatchError(
            f"{path.name} no longer matches the sha256 recorded when it was trained "
            f"(expected {expected[:12]}..., found {actual[:12]}...); refusing to use it"
        )
    return path


def why_unusable(exc: Exception) -> str:
    """What a ModelFileMismatchError or FileNotFoundError from loading a model tells a client:
    the file's name, never the server's path to it."""
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"its file {Path(exc.filename).name} is missing"
    return str(exc)


def read_card(model_folder: str | os.PathLike) -> dict:
    """A published model's card.json: what it reads (bands, band stats, nodata) and answers."""
    return json.loads((Path(model_folder) / CARD_FILE).read_text())
