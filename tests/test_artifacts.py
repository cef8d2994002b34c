"""Tests for the files a finished training job writes: metrics, history, curves, hashes."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import numpy as np
import pytest
from PIL import Image

from anyband.artifacts import (
    ARTIFACT_MEDIA_TYPES,
    ARTIFACT_NAMES,
    HASH_CHUNK_BYTES,
    classification_metrics,
    plot_curves,
    sha256_file,
    verify_sha256,
    why_unusable,
    write_history_csv,
    write_json,
)
from anyband.errors import ModelFileMismatchError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["forest", "water", "urban"]


@pytest.fixture
def model_dir(tmp_path):
    """An empty models/{id}/ folder (tmp_path itself also holds conftest's fake home)."""
    folder = tmp_path / "models" / "job"
    folder.mkdir(parents=True)
    return folder


def test_every_artifact_has_a_media_type():
    assert set(ARTIFACT_MEDIA_TYPES) == set(ARTIFACT_NAMES)
    assert ARTIFACT_MEDIA_TYPES["curves.png"] == "image/png"
    assert ARTIFACT_MEDIA_TYPES["history.csv"] == "text/csv"
    assert ARTIFACT_MEDIA_TYPES["metrics.json"] == "application/json"


def test_metrics_match_a_hand_computed_three_class_example():
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
    # Rows are true classes, columns predicted:
    #              forest water urban
    #   forest  [     2,    1,    1 ]   support 4
    #   water   [     1,    2,    0 ]   support 3
    #   urban   [     0,    1,    2 ]   support 3
    #   column      3     4     3
    # forest: precision 2/3, recall 2/4, f1 = 2*(2/3)*(1/2)/(2/3+1/2) = 4/7
    # water:  precision 2/4, recall 2/3, f1 = 4/7
    # urban:  precision 2/3, recall 2/3, f1 = 2/3
    metrics = classification_metrics(np.array(y_true), np.array(y_pred), CLASSES)

    assert metrics["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert metrics["num_samples"] == 10
    assert metrics["classes"] == CLASSES
    assert metrics["accuracy"] == pytest.approx(6 / 10)
    expected = {
        "forest": (2 / 3, 2 / 4, 4 / 7, 4),
        "water": (2 / 4, 2 / 3, 4 / 7, 3),
        "urban": (2 / 3, 2 / 3, 2 / 3, 3),
    }
    for name, (precision, recall, f1, support) in expected.items():
        scores = metrics["per_class"][name]
        assert scores["precision"] == pytest.approx(precision)
        assert scores["recall"] == pytest.approx(recall)
        assert scores["f1"] == pytest.approx(f1)
        assert scores["support"] == support
    assert metrics["macro_f1"] == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)


def test_metrics_agree_with_each_other_on_random_data():
    rng = np.random.default_rng(0)
    classes = [f"class_{k}" for k in range(5)]
    y_true = rng.integers(0, 5, size=400)
    y_pred = np.where(rng.random(400) < 0.6, y_true, rng.integers(0, 5, size=400))

    metrics = classification_metrics(y_true, y_pred, classes)
    confusion = np.array(metrics["confusion_matrix"])

    assert confusion.shape == (5, 5)
    assert confusion.sum() == metrics["num_samples"] == 400
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert metrics["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    for k, name in enumerate(classes):
        scores = metrics["per_class"][name]
        assert scores["support"] == confusion[k].sum() == np.sum(y_true == k)
        assert scores["recall"] == pytest.approx(confusion[k, k] / confusion[k].sum())
        assert scores["precision"] == pytest.approx(confusion[k, k] / confusion[:, k].sum())
    f1s = [scores["f1"] for scores in metrics["per_class"].values()]
    assert metrics["macro_f1"] == pytest.approx(np.mean(f1s))


def test_undefined_precision_and_recall_are_zero_not_nan():
    # "urban" is never predicted (precision 0/0) and never present (recall 0/0).
    metrics = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), CLASSES)

    urban = metrics["per_class"]["urban"]
    assert urban == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert not any(math.isnan(value) for value in urban.values())
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.0) / 3)


def test_metrics_are_plain_python_values_that_json_accepts():
    metrics = classification_metrics(np.array([0, 1, 2]), np.array([0, 2, 2]), CLASSES)

    assert type(metrics["accuracy"]) is float
    assert type(metrics["num_samples"]) is int
    assert type(metrics["confusion_matrix"][0][0]) is int
    assert type(metrics["per_class"]["water"]["support"]) is int
    assert json.loads(json.dumps(metrics)) == metrics


def test_mismatched_lengths_raise_with_both_lengths():
    with pytest.raises(ValueError, match=r"len\(y_true\)=3, len\(y_pred\)=2"):
        classification_metrics(np.array([0, 1, 2]), np.array([0, 1]), CLASSES)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "name", "bad"),
    [([0, 1, 3], [0, 1, 2], "y_true", 3), ([0, 1, 2], [0, -1, 2], "y_pred", -1)],
)
def test_class_index_out_of_range_raises_naming_the_value(y_true, y_pred, name, bad):
    with pytest.raises(ValueError, match=rf"Received: {name} containing {bad}\b"):
        classification_metrics(np.array(y_true), np.array(y_pred), CLASSES)


def test_json_round_trips_and_leaves_no_temp_files(model_dir):
    card = {"model": "resnet50", "bands": 6, "classes": CLASSES, "nested": {"z": 1, "a": [1.5]}}
    path = model_dir / "card.json"
    path.write_text("old contents")

    write_json(path, card)

    assert json.loads(path.read_text()) == card
    assert list(json.loads(path.read_text())) == list(card)  # keys keep their order
    assert "\n  " in path.read_text()  # indented
    assert [p.name for p in model_dir.iterdir()] == ["card.json"]


def test_failed_json_write_keeps_old_file_and_no_temp(model_dir):
    path = model_dir / "metrics.json"
    write_json(path, {"accuracy": 0.5})

    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})

    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in model_dir.iterdir()] == ["metrics.json"]


def test_history_csv_has_epoch_first_then_keys_in_first_seen_order(model_dir):
    history = [
        {"epoch": 1, "loss": 1.2, "accuracy": 0.4, "learning_rate": 1e-3, "phase": "frozen"},
        {"epoch": 2, "loss": 0.9, "accuracy": 0.6, "val_loss": 1.0, "phase": "fine_tune"},
    ]
    path = model_dir / "history.csv"

    write_history_csv(history, path)

    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
        handle.seek(0)
        header = next(csv.reader(handle))
    assert header == ["epoch", "loss", "accuracy", "learning_rate", "phase", "val_loss"]
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert float(rows[0]["loss"]) == 1.2
    assert rows[0]["val_loss"] == ""  # missing in epoch 1
    assert float(rows[1]["val_loss"]) == 1.0
    assert [row["phase"] for row in rows] == ["frozen", "fine_tune"]
    assert [p.name for p in model_dir.iterdir()] == ["history.csv"]


def _assert_wide_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        width, height = image.size
    assert width > height


def test_curves_png_for_three_epochs_with_backbone_unfrozen(model_dir):
    history = [
        {
            "epoch": 1,
            "loss": 1.1,
            "accuracy": 0.5,
            "val_loss": 1.2,
            "val_accuracy": 0.45,
            "phase": "frozen",
        },
        {
            "epoch": 2,
            "loss": 0.8,
            "accuracy": 0.7,
            "val_loss": 0.9,
            "val_accuracy": 0.6,
            "phase": "frozen",
        },
        {
            "epoch": 3,
            "loss": 0.5,
            "accuracy": 0.85,
            "val_loss": 0.7,
            "val_accuracy": 0.75,
            "phase": "fine_tune",
        },
    ]
    path = model_dir / "curves.png"

    plot_curves(history, path)

    _assert_wide_png(path)
    assert [p.name for p in model_dir.iterdir()] == ["curves.png"]


def test_curves_draw_a_line_only_where_the_phase_changes(model_dir):
    frozen = [{"epoch": e, "loss": 1.0 / e, "phase": "frozen"} for e in (1, 2, 3)]
    unfrozen = [{**row, "phase": "fine_tune"} if row["epoch"] == 3 else row for row in frozen]

    plot_curves(frozen, model_dir / "a.png")
    plot_curves(frozen, model_dir / "b.png")
    plot_curves(unfrozen, model_dir / "c.png")

    pixels = {}
    for name in "abc":
        with Image.open(model_dir / f"{name}.png") as image:
            pixels[name] = np.asarray(image)
    assert np.array_equal(pixels["a"], pixels["b"])
    assert not np.array_equal(pixels["a"], pixels["c"])


def test_curves_png_for_one_epoch_without_validation(model_dir):
    path = model_dir / "curves.png"

    plot_curves([{"epoch": 1, "loss": 0.7, "accuracy": 0.6}], path)

    _assert_wide_png(path)


def test_curves_reject_an_empty_history(model_dir):
    with pytest.raises(ValueError, match=r"Received: history=\[\]"):
        plot_curves([], model_dir / "curves.png")
    assert not any(model_dir.iterdir())


def test_sha256_file_matches_hashlib_beyond_one_chunk(model_dir):
    data = np.random.default_rng(1).bytes(HASH_CHUNK_BYTES * 2 + 12345)
    path = model_dir / "model.keras"
    path.write_bytes(data)

    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_why_a_model_is_unusable_names_its_file_never_the_server_path(tmp_path):
    missing = tmp_path / "models" / "m1" / "model.keras"
    with pytest.raises(FileNotFoundError) as raised:
        verify_sha256(missing, "0" * 64)
    assert why_unusable(raised.value) == "its file model.keras is missing"
    changed = tmp_path / "model.keras"
    changed.write_bytes(b"not the trained model")
    with pytest.raises(ModelFileMismatchError) as raised:
        verify_sha256(changed, "0" * 64)
    reason = why_unusable(raised.value)
    assert reason.startswith("model.keras no longer matches") and str(tmp_path) not in reason
