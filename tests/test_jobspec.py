"""The job spec: its defaults, its model-level checks, its check against a stored dataset, its hash."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from anyband.errors import InvalidJobSpecError
from anyband.jobspec import JobSpec, resolve_spec, spec_sha256
from anyband.store import DATASET_FAILED, DATASET_READY, Dataset, init_db

KNOWN_WEIGHTS = "w" * 32


def add_ready_dataset(session: Session, **overrides) -> Dataset:
    """A ready 6-band uint16 dataset of 32x32 tiles, 5 in each of classes 'a' and 'b', committed."""
    fields = {
        "name": "six-band",
        "status": DATASET_READY,
        "num_tiles": 10,
        "num_bands": 6,
        "dtype": "uint16",
        "tile_height": 32,
        "tile_width": 32,
        "classes": ["a", "b"],
        "class_counts": {"a": 5, "b": 5},
        "band_stats": {"mean": [100.0 * b for b in range(1, 7)], "std": [10.0] * 6},
        "nodata": None,
        **overrides,
    }
    dataset = Dataset(**fields)
    session.add(dataset)
    session.commit()
    return dataset


@pytest.fixture
def sqlite_sessions(tmp_path) -> sessionmaker:
    sessions = init_db(f"sqlite:///{tmp_path}/t.db")
    yield sessions
    sessions.kw["bind"].dispose()


@pytest.fixture
def dataset(sqlite_sessions) -> Dataset:
    """The ready dataset as read back from the database (JSON columns round-tripped)."""
    with sqlite_sessions() as session:
        dataset_id = add_ready_dataset(session).id
    with sqlite_sessions() as session:
        return session.get(Dataset, dataset_id)


def only_known_weights(weights_id: str) -> bool:
    return weights_id == KNOWN_WEIGHTS


def resolve(dataset: Dataset, **fields) -> JobSpec:
    return resolve_spec(JobSpec(dataset_id=dataset.id, **fields), dataset, only_known_weights)


def field_errors(dataset: Dataset | None, **fields) -> list[dict]:
    """The errors resolve_spec reports for a spec with these fields (fails if it reports none)."""
    spec = JobSpec(dataset_id=dataset.id if dataset else "missing-id", **fields)
    with pytest.raises(InvalidJobSpecError) as caught:
        resolve_spec(spec, dataset, only_known_weights)
    return caught.value.errors


def the_error(dataset: Dataset | None, **fields) -> dict:
    errors = field_errors(dataset, **fields)
    assert len(errors) == 1, errors
    return errors[0]


# ---------------------------------------------------------------- defaults and bands


def test_defaults_use_every_dataset_band_and_as_many_channels(dataset):
    resolved = resolve(dataset)

    assert resolved.bands == [1, 2, 3, 4, 5, 6]
    assert resolved.channels == 6
    assert resolved.init_strategy == "repeat"
    assert resolved.weights == "imagenet"


def test_resolve_fills_a_copy_and_leaves_the_given_spec_unresolved(dataset):
    spec = JobSpec(dataset_id=dataset.id)

    resolve_spec(spec, dataset, only_known_weights)

    assert spec.bands is None and spec.channels is None


def test_explicit_bands_keep_their_order(dataset):
    resolved = resolve(dataset, bands=[4, 3, 2, 6])

    assert resolved.bands == [4, 3, 2, 6]
    assert resolved.channels == 4


@pytest.mark.parametrize("bands", [[0, 1, 2], [1, 2, 7], [-1]])
def test_bands_outside_the_dataset_name_its_band_count_and_the_received_bands(dataset, bands):
    error = the_error(dataset, bands=bands)

    assert error["field"] == "bands"
    assert "1..6" in error["message"]
    assert f"bands={bands}" in error["message"]


def test_duplicate_bands_are_rejected(dataset):
    error = the_error(dataset, bands=[1, 2, 2, 3])

    assert error["field"] == "bands"
    assert "distinct" in error["message"]
    assert "bands=[1, 2, 2, 3]" in error["message"]


def test_channels_matching_the_bands_pass(dataset):
    assert resolve(dataset, bands=[1, 2, 3], channels=3).channels == 3


@pytest.mark.parametrize(
    ("bands", "channels", "used"), [([1, 2, 3], 4, 3), ([1, 2, 3], 2, 3), (None, 3, 6)]
)
def test_channels_disagreeing_with_bands_are_rejected(dataset, bands, channels, used):
    error = the_error(dataset, bands=bands, channels=channels)

    assert error["field"] == "channels"
    assert f"({used})" in error["message"]
    assert f"channels={channels}" in error["message"]


# ---------------------------------------------------------------- init strategy and initializer


def test_rgb_with_fewer_than_3_bands_is_rejected(dataset):
    error = the_error(dataset, bands=[1, 2], init_strategy="rgb")

    assert error["field"] == "init_strategy"
    assert "2 band" in error["message"]


def test_rgb_bands_are_positions_within_the_model_bands(dataset):
    resolved = resolve(dataset, bands=[4, 3, 2, 6], init_strategy="rgb", rgb_bands=[1, 2, 3])

    assert resolved.rgb_bands == [1, 2, 3]
    assert resolve(
        dataset, bands=[4, 3, 2, 6], init_strategy="rgb", rgb_bands=[4, 1, 2]
    ).rgb_bands == [4, 1, 2]


@pytest.mark.parametrize("rgb_bands", [[5, 1, 2], [0, 1, 2], [1, 1, 2]])
def test_rgb_bands_outside_the_model_bands_or_repeated_are_rejected(dataset, rgb_bands):
    # Band 5 exists in the dataset, but the model sees only 4 bands: position 5 is out of range.
    error = the_error(dataset, bands=[4, 3, 2, 6], init_strategy="rgb", rgb_bands=rgb_bands)

    assert error["field"] == "rgb_bands"
    assert "1..4" in error["message"]
    assert f"rgb_bands={rgb_bands}" in error["message"]


def test_a_known_initializer_passes(dataset):
    assert resolve(dataset, init_strategy="random", initializer="he_normal").initializer == (
        "he_normal"
    )


def test_unknown_initializer_name_is_rejected(dataset):
    error = the_error(dataset, init_strategy="random", initializer="not_an_initializer")

    assert error["field"] == "initializer"
    assert "not_an_initializer" in error["message"]


def test_per_band_takes_no_initializer(dataset):
    error = the_error(dataset, init_strategy="per_band", initializer="he_normal")

    assert error["field"] == "initializer"
    assert "per_band" in error["message"]
    assert "'he_normal'" in error["message"]


@pytest.mark.parametrize("strategy", ["random", "repeat", "mean", "per_band"])
def test_rgb_bands_with_another_strategy_are_refused_not_ignored(dataset, strategy):
    error = the_error(dataset, init_strategy=strategy, rgb_bands=[3, 2, 1])

    assert error["field"] == "rgb_bands"
    assert "only by init_strategy 'rgb'" in error["message"]
    assert f"init_strategy={strategy!r}" in error["message"]


def test_the_default_rgb_bands_spelled_out_pass_with_any_strategy(dataset):
    # A spec read back from GET /v1/jobs/{id} carries every default: it must resubmit as it is.
    assert resolve(dataset, init_strategy="repeat", rgb_bands=[1, 2, 3]).rgb_bands == [1, 2, 3]


@pytest.mark.parametrize("strategy", ["repeat", "mean"])
def test_an_initializer_that_pretrained_repeat_or_mean_would_ignore_is_refused(dataset, strategy):
    error = the_error(dataset, init_strategy=strategy, initializer="he_normal")

    assert error["field"] == "initializer"
    assert f"{strategy} builds conv1 from the pretrained kernel alone" in error["message"]
    # Without pretrained weights conv1 is drawn from it, whatever the strategy.
    assert resolve(
        dataset, init_strategy=strategy, initializer="he_normal", weights="none"
    ).initializer == ("he_normal")


# ---------------------------------------------------------------- weights, dataset, val_fraction


def test_unknown_weights_id_is_rejected(dataset):
    error = the_error(dataset, weights="no-such-weights")

    assert error["field"] == "weights"
    assert "'no-such-weights'" in error["message"]


def test_a_known_weights_id_passes(dataset):
    assert resolve(dataset, weights=KNOWN_WEIGHTS).weights == KNOWN_WEIGHTS


@pytest.mark.parametrize("weights", ["imagenet", "none"])
def test_builtin_weights_never_consult_weights_exists(dataset, weights):
    asked = []

    def weights_exists(weights_id: str) -> bool:
        asked.append(weights_id)
        return False

    resolved = resolve_spec(
        JobSpec(dataset_id=dataset.id, weights=weights), dataset, weights_exists
    )

    assert resolved.weights == weights
    assert asked == []


def test_missing_dataset_is_reported_on_dataset_id(sqlite_sessions):
    with sqlite_sessions() as session:
        missing = session.get(Dataset, "no-such-dataset")

    spec = JobSpec(dataset_id="no-such-dataset")
    with pytest.raises(InvalidJobSpecError) as caught:
        resolve_spec(spec, missing, only_known_weights)

    assert caught.value.errors == [
        {"field": "dataset_id", "message": "no dataset with id 'no-such-dataset'"}
    ]


def test_dataset_that_is_not_ready_is_reported_on_dataset_id(sqlite_sessions):
    with sqlite_sessions() as session:
        failed = add_ready_dataset(session, status=DATASET_FAILED)

    error = the_error(failed)

    assert error["field"] == "dataset_id"
    assert DATASET_FAILED in error["message"]


def test_val_fraction_leaving_the_smallest_class_no_validation_tile_is_rejected(
    sqlite_sessions,
):
    with sqlite_sessions() as session:
        uneven = add_ready_dataset(session, num_tiles=43, class_counts={"a": 40, "b": 3})

    error = the_error(uneven, val_fraction=0.1)  # 4 tiles of 'a' but 0.3 of 'b'

    assert error["field"] == "val_fraction"
    assert "val_fraction=0.1" in error["message"]
    assert "(3 tiles)" in error["message"]
    assert resolve(uneven, val_fraction=0.2).val_fraction == 0.2  # 0.6 of 'b' rounds to 1


def test_several_bad_fields_are_reported_together(dataset):
    errors = field_errors(dataset, bands=[0, 2], channels=5, weights="gone", val_fraction=0.05)

    assert [error["field"] for error in errors] == ["bands", "channels", "weights", "val_fraction"]


def test_the_error_message_joins_every_field(dataset):
    spec = JobSpec(dataset_id=dataset.id, bands=[2, 2], weights="gone")
    with pytest.raises(InvalidJobSpecError, match=r"bands: .*; weights: "):
        resolve_spec(spec, dataset, only_known_weights)


# ---------------------------------------------------------------- the pydantic model


def test_freeze_epochs_above_epochs_is_rejected_by_the_model():
    with pytest.raises(ValidationError, match=r"freeze_epochs=6, epochs=5"):
        JobSpec(dataset_id="d", epochs=5, freeze_epochs=6)


def test_freeze_epochs_equal_to_epochs_is_allowed():
    assert JobSpec(dataset_id="d", epochs=5, freeze_epochs=5).freeze_epochs == 5


def test_unknown_fields_are_rejected_by_the_model():
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate({"dataset_id": "d", "band": [1, 2]})

    assert [(e["type"], e["loc"]) for e in caught.value.errors()] == [
        ("extra_forbidden", ("band",))
    ]


# ---------------------------------------------------------------- spec_sha256

# A value different from the default for every field of JobSpec.
CHANGED_FIELDS = {
    "dataset_id": "other",
    "bands": [1, 2, 3],
    "channels": 3,
    "init_strategy": "mean",
    "rgb_bands": [3, 2, 1],
    "initializer": "zeros",
    "weights": "none",
    "epochs": 11,
    "freeze_epochs": 1,
    "batch_size": 16,
    "learning_rate": 2e-3,
    "fine_tune_learning_rate": 2e-4,
    "val_fraction": 0.25,
    "seed": 1,
    "augment": False,
}


def test_spec_sha256_is_equal_for_equal_specs():
    first = JobSpec.model_validate({"dataset_id": "d", "bands": [3, 1], "epochs": 4, "seed": 9})
    second = JobSpec.model_validate({"seed": 9, "epochs": 4, "bands": [3, 1], "dataset_id": "d"})

    assert spec_sha256(first) == spec_sha256(second)
    assert spec_sha256(JobSpec(dataset_id="d")) == spec_sha256(
        JobSpec(dataset_id="d", epochs=10, weights="imagenet")  # the defaults, spelled out
    )


def test_changed_fields_cover_every_spec_field():
    assert set(CHANGED_FIELDS) == set(JobSpec.model_fields)


@pytest.mark.parametrize("field", sorted(CHANGED_FIELDS))
def test_spec_sha256_changes_when_any_field_changes(field):
    base = JobSpec(dataset_id="d")
    changed = JobSpec(**{"dataset_id": "d", field: CHANGED_FIELDS[field]})

    assert getattr(changed, field) != getattr(base, field)
    assert spec_sha256(changed) != spec_sha256(base)


def test_spec_sha256_tells_band_order_apart():
    assert spec_sha256(JobSpec(dataset_id="d", bands=[1, 2])) != spec_sha256(
        JobSpec(dataset_id="d", bands=[2, 1])
    )


def test_epochs_below_the_default_freeze_epochs_freezes_every_epoch():
    spec = JobSpec(dataset_id="d", epochs=1)
    assert spec.freeze_epochs == 1
    assert JobSpec(dataset_id="d", epochs=5).freeze_epochs == 2
    with pytest.raises(ValidationError, match="freeze_epochs must be <= epochs"):
        JobSpec(dataset_id="d", epochs=1, freeze_epochs=2)


def test_a_constant_band_is_refused_naming_it_and_can_be_left_out(sqlite_sessions):
    with sqlite_sessions() as session:
        stats = {"mean": [100.0 * b for b in range(1, 7)], "std": [10.0, 0.0, 10, 10, 0, 10]}
        dataset = add_ready_dataset(session, band_stats=stats)
        error = the_error(dataset)  # the default: every band
        assert error["field"] == "bands"
        assert "band(s) [2, 5]" in error["message"] and "Leave them out" in error["message"]
        assert resolve(dataset, bands=[1, 3, 4, 6]).channels == 4
