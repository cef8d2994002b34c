"""Training: the split, augmentation, which layers train in each phase, checkpoints and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from anyband.datasets import DatasetLimits, ingest_dataset_zip
from anyband.errors import JobCancelled
from anyband.jobspec import JobSpec
from anyband.model import backbone_of, build_classifier
from anyband.training import (
    PHASE_FINE_TUNE,
    PHASE_FROZEN,
    augment_batch,
    dtype_policy,
    load_checkpoint_weights,
    phases,
    precision_policy,
    read_checkpoint,
    set_phase,
    stratified_split,
    train,
)
from tests.tiles import separable_classes, write_dataset_zip


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    zip_path = write_dataset_zip(root / "d.zip", separable_classes(per_class=8, shape=(32, 32, 4)))
    ingest_dataset_zip(zip_path, root / "dataset", DatasetLimits())
    return root / "dataset"


def test_stratified_split_keeps_every_class_in_both_parts_and_is_seeded():
    labels = np.repeat(np.arange(3), [10, 5, 3]).astype(np.int32)
    train_index, val_index = stratified_split(labels, 0.2, seed=3)
    assert set(train_index) | set(val_index) == set(range(18))
    assert not set(train_index) & set(val_index)
    assert [int(np.sum(labels[val_index] == c)) for c in range(3)] == [2, 1, 1]
    assert set(labels[train_index]) == {0, 1, 2}
    again = stratified_split(labels, 0.2, seed=3)
    other = stratified_split(labels, 0.2, seed=4)
    assert np.array_equal(again[1], val_index)
    assert not np.array_equal(other[1], val_index)


def test_augmentation_only_rotates_and_reflects_each_tile():
    rng = np.random.default_rng(0)
    tiles = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    out = augment_batch(tiles, square=True).numpy()
    seen = set()
    for tile, moved in zip(tiles, out, strict=True):
        matches = [
            k for k, candidate in enumerate(_dihedral(tile)) if np.array_equal(candidate, moved)
        ]
        assert matches, "an augmented tile is not a rotation or reflection of its source"
        seen.add(matches[0])
    assert len(seen) >= 6  # random per tile, not one transform for the batch


def test_non_square_tiles_are_only_flipped():
    tiles = np.random.default_rng(1).normal(size=(16, 6, 10, 2)).astype("float32")
    out = augment_batch(tiles, square=False).numpy()
    assert out.shape == tiles.shape
    for tile, moved in zip(tiles, out, strict=True):
        flips = [tile, tile[::-1], tile[:, ::-1], tile[::-1, ::-1]]
        assert any(np.array_equal(f, moved) for f in flips)


def _dihedral(tile):
    for k in range(4):
        rotated = np.rot90(tile, k)
        yield rotated
        yield rotated[:, ::-1]


def test_phases_follow_freeze_epochs():
    spec = JobSpec(dataset_id="d", epochs=5, freeze_epochs=2)
    assert phases(spec) == [(PHASE_FROZEN, 0, 2, 1e-3), (PHASE_FINE_TUNE, 2, 5, 1e-4)]
    assert phases(JobSpec(dataset_id="d", epochs=3, freeze_epochs=0)) == [
        (PHASE_FINE_TUNE, 0, 3, 1e-4)
    ]
    assert phases(JobSpec(dataset_id="d", epochs=2, freeze_epochs=2)) == [
        (PHASE_FROZEN, 0, 2, 1e-3)
    ]


def test_frozen_phase_trains_conv1_and_head_only_and_batchnorm_never():
    model = build_classifier(6, 3, strategy="mean", weights="none")
    backbone = backbone_of(model)
    set_phase(model, PHASE_FROZEN)
    trainable = {v.path.split("/")[-2] for v in model.trainable_variables}
    assert trainable == {"conv1_conv", "predictions"}
    set_phase(model, PHASE_FINE_TUNE)
    batch_norms = [
        layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert batch_norms and not any(layer.trainable for layer in batch_norms)
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(layer.trainable for layer in convs)
    trainable_paths = {v.path for v in model.trainable_variables}
    assert not any("_bn/" in path for path in trainable_paths)
    set_phase(model, PHASE_FINE_TUNE, freeze_batch_norm=False)  # nothing pretrained to keep
    assert all(layer.trainable for layer in batch_norms)


def test_precision_is_mixed_only_on_gpus():
    assert precision_policy(["/job:localhost/replica:0/task:0/device:GPU:0"]) == "mixed_float16"
    assert precision_policy(["/cpu:0", "/cpu:1"]) == "float32"
    assert precision_policy([]) == "float32"


def test_mixed_precision_model_keeps_normalization_and_softmax_in_float32():
    with dtype_policy("mixed_float16"):
        model = build_classifier(4, 3, weights="none", band_mean=[1e4] * 4, band_std=[1.0] * 4)
    assert model.get_layer("band_normalization").compute_dtype == "float32"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert backbone_of(model).get_layer("conv1_conv").compute_dtype == "float16"
    # 10000.5 and 10000 differ after normalization (float16 would make them equal)
    x = np.full((1, 32, 32, 4), 10000.0, dtype="float32")
    normalized = model.get_layer("band_normalization")(x + np.float32(0.5))
    assert float(np.asarray(normalized).mean()) == pytest.approx(0.5 * 57.4, rel=1e-3)


def test_a_stop_ends_training_after_that_batch_without_a_validation_pass(
    dataset_dir, tmp_path, monkeypatch
):
    # 18 training tiles in batches of 8: three batches an epoch; stop is asked after the second.
    spec = JobSpec(dataset_id="d", epochs=2, batch_size=8, weights="none", init_strategy="mean")
    polls, evaluations = [], []
    evaluate = keras.Model.evaluate

    def counted_evaluate(model, *args, **kwargs):
        evaluations.append(kwargs.get("steps"))
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "evaluate", counted_evaluate)
    with pytest.raises(JobCancelled, match="training stopped on request"):
        train(
            spec, dataset_dir, weights="none", job_dir=tmp_path / "job",
            should_stop=lambda: polls.append(True) or len(polls) >= 2,
        )  # fmt: skip
    assert len(polls) == 2  # asked after each batch; the batch that asked was the last
    assert evaluations == []  # no validation pass for an epoch that is thrown away
    assert read_checkpoint(tmp_path / "job") is None  # nor a checkpoint of it


def test_a_stop_asked_during_validation_ends_it_there(dataset_dir, tmp_path):
    # Three training batches, then the validation pass: its first batch sees the stop. Before,
    # the pass ran to its end, the epoch was checkpointed, and the next training batch stopped.
    spec = JobSpec(dataset_id="d", epochs=2, batch_size=8, weights="none", init_strategy="mean")
    polls, epochs = [], []
    with pytest.raises(JobCancelled, match="training stopped on request"):
        train(
            spec, dataset_dir, weights="none", job_dir=tmp_path / "job",
            on_epoch=lambda epoch, row: epochs.append(epoch),
            should_stop=lambda: polls.append(True) or len(polls) >= 4,
        )  # fmt: skip
    assert len(polls) == 4
    assert epochs == [] and read_checkpoint(tmp_path / "job") is None


@pytest.mark.slow
def test_stopped_training_resumes_from_its_checkpoint(dataset_dir, tmp_path):
    spec = JobSpec(
        dataset_id="d", epochs=3, freeze_epochs=1, batch_size=8, init_strategy="repeat",
        weights="none", augment=True,
    )  # fmt: skip
    job_dir = tmp_path / "job"
    epochs_seen = []

    def stop_after_first_epoch():
        return len(epochs_seen) >= 1

    with pytest.raises(JobCancelled):
        train(
            spec, dataset_dir, weights="none", job_dir=job_dir,
            on_epoch=lambda e, row: epochs_seen.append(e), should_stop=stop_after_first_epoch,
        )  # fmt: skip
    checkpoint = read_checkpoint(job_dir)
    assert checkpoint.epoch == 1 and checkpoint.phase == PHASE_FROZEN
    assert epochs_seen == [1]
    first_epoch = checkpoint.history[0]

    resumed = []
    result = train(
        spec, dataset_dir, weights="none", job_dir=job_dir,
        on_epoch=lambda e, row: resumed.append(e),
    )  # fmt: skip
    assert result.started_from_epoch == 1
    assert resumed == [2, 3]  # epoch 1 was not trained again
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.history[0] == first_epoch
    assert [row["phase"] for row in result.history] == [
        PHASE_FROZEN,
        PHASE_FINE_TUNE,
        PHASE_FINE_TUNE,
    ]
    assert read_checkpoint(job_dir).epoch == 3
    assert len(list(job_dir.glob("epoch-*"))) == 1  # older checkpoints are removed
    assert result.val_true.shape == result.val_pred.shape == (6,)
    # The served copy holds no optimizer, computes in float32 and has the last epoch's weights.
    assert getattr(result.model, "optimizer", None) is None
    assert result.model.get_layer("predictions").compute_dtype == "float32"
    last = build_classifier(4, 3, weights="none", band_mean=[0] * 4, band_std=[1] * 4)
    load_checkpoint_weights(last, read_checkpoint(job_dir))
    for saved, served in zip(last.get_weights(), result.model.get_weights(), strict=True):
        if saved.shape == served.shape and saved.size > 4:  # all but normalization's stats
            np.testing.assert_array_equal(saved, served)


@pytest.mark.slow
def test_checkpoint_weights_are_the_weights_training_continues_from(dataset_dir, tmp_path):
    spec = JobSpec(dataset_id="d", epochs=1, freeze_epochs=1, batch_size=8, augment=False)
    job_dir = tmp_path / "job"
    result = train(spec, dataset_dir, weights="none", job_dir=job_dir)
    checkpoint = read_checkpoint(job_dir)
    restored = build_classifier(4, 3, weights="none", band_mean=[0] * 4, band_std=[1] * 4)
    load_checkpoint_weights(restored, checkpoint)
    head = result.model.get_layer("predictions").get_weights()
    assert np.array_equal(restored.get_layer("predictions").get_weights()[0], head[0])
    with np.load(checkpoint.optimizer) as optimizer_state:
        assert len(optimizer_state.files) > 2  # Adam's moments for conv1 and the head
    other = build_classifier(5, 3, weights="none")  # same layers, a 5-band conv1
    with pytest.raises(ValueError, match=r"\(7, 7, 5, 64\) is not compatible"):
        load_checkpoint_weights(other, checkpoint)
    summary = json.loads((dataset_dir / "dataset.json").read_text())
    assert result.classes == summary["classes"]


@pytest.mark.slow
def test_training_mirrors_across_two_logical_devices(dataset_dir, tmp_path):
    """The multi-GPU path (MirroredStrategy) on two logical CPU devices, in a fresh process."""
    script = textwrap.dedent(
        f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from anyband.jobspec import JobSpec
        from anyband.training import train
        spec = JobSpec(dataset_id="d", epochs=1, freeze_epochs=1, batch_size=8)
        result = train(spec, {str(dataset_dir)!r}, weights="none",
                       devices=["/cpu:0", "/cpu:1"])
        print("REPLICAS", result.replicas, "EPOCHS", len(result.history),
              "LOSS", result.history[-1]["loss"])
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(row for row in done.stdout.splitlines() if row.startswith("REPLICAS"))
    _, replicas, _, epochs, _, loss = line.split()
    assert int(replicas) == 2 and int(epochs) == 1 and np.isfinite(float(loss))


def _small_compiled_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")], name="m")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_checkpoint_writer_keeps_the_newest_snapshot_while_the_disk_is_busy(tmp_path):
    import threading

    from anyband.training import CheckpointWriter

    model = _small_compiled_model()
    release, busy, written = threading.Event(), threading.Event(), []

    def on_written(epoch, row):
        written.append(epoch)
        busy.set()
        release.wait(10)  # the first write is slow: the disk is busy

    writer = CheckpointWriter(tmp_path, on_written)
    history = []
    for epoch in (1, 2, 3):
        model.layers[0].kernel.assign(np.full((3, 2), float(epoch), dtype="float32"))
        history.append({"epoch": epoch})
        writer.submit(model, epoch, PHASE_FINE_TUNE, history, {"epoch": epoch})
        if epoch == 1:
            assert busy.wait(10)  # epoch 1 is being written when epochs 2 and 3 end
    release.set()
    writer.close()
    assert written == [1, 3]  # epoch 2's snapshot was superseded before the disk was free
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.epoch == 3 and [row["epoch"] for row in checkpoint.history] == [1, 2, 3]
    restored = _small_compiled_model()
    load_checkpoint_weights(restored, checkpoint)
    assert np.all(restored.layers[0].kernel.numpy() == 3.0)
    assert [p.name for p in tmp_path.glob("epoch-*")] == ["epoch-0003"]


def test_checkpoint_writer_reports_a_failed_write_to_the_trainer(tmp_path):
    from anyband.training import CheckpointWriter

    def on_written(epoch, row):
        raise OSError("No space left on device")

    writer = CheckpointWriter(tmp_path, on_written)
    writer.submit(_small_compiled_model(), 1, PHASE_FINE_TUNE, [{"epoch": 1}], {"epoch": 1})
    with pytest.raises(OSError, match="No space left"):
        writer.close()
