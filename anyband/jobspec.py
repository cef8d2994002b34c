"""The training job spec: its fields and defaults, and its check against a dataset and weights."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from anyband.adapt import INIT_STRATEGIES, resolve_initializer
from anyband.errors import InvalidJobSpecError
from anyband.store import DATASET_READY, Dataset

InitStrategy = Literal["random", "repeat", "mean", "rgb", "per_band"]
assert set(InitStrategy.__args__) == set(INIT_STRATEGIES)
DEFAULT_RGB_BANDS = [1, 2, 3]


class JobSpec(BaseModel):
    """POST /v1/jobs. `bands` and `channels` default from the dataset (see `resolve_spec`)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    bands: list[int] | None = Field(
        default=None, min_length=1, description="1-based dataset bands, in model order"
    )
    channels: int | None = Field(default=None, ge=1, description="the model's input band count")
    init_strategy: InitStrategy = "repeat"
    rgb_bands: list[int] = Field(
        default=DEFAULT_RGB_BANDS,
        min_length=3,
        max_length=3,
        description="for rgb: R, G, B positions",
    )
    initializer: str | None = Field(default=None, max_length=64)
    weights: str = Field(default="imagenet", description="imagenet, none or a weights id")
    epochs: int = Field(default=10, ge=1, le=10_000)
    freeze_epochs: int = Field(default=2, ge=0)
    batch_size: int = Field(default=32, ge=1, le=4096)
    learning_rate: float = Field(default=1e-3, gt=0, le=10)
    fine_tune_learning_rate: float = Field(default=1e-4, gt=0, le=10)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    augment: bool = True

    @model_validator(mode="before")
    @classmethod
    def _default_freeze_fits_epochs(cls, data):
        """`epochs: 1` alone means one frozen epoch, not a refusal of the default of 2."""
        if isinstance(data, dict) and "freeze_epochs" not in data:
            epochs = data.get("epochs")
            if isinstance(epochs, int) and not isinstance(epochs, bool) and 0 <= epochs < 2:
                data = {**data, "freeze_epochs": epochs}
        return data

    @field_validator("freeze_epochs")
    @classmethod
    def _freeze_within_epochs(cls, freeze_epochs: int, info: ValidationInfo) -> int:
        epochs = info.data.get("epochs")
        if epochs is not None and freeze_epochs > epochs:
            raise ValueError(
                f"freeze_epochs must be <= epochs. Received: freeze_epochs={freeze_epochs}, "
                f"epochs={epochs}"
            )
        return freeze_epochs


def resolve_spec(
    spec: JobSpec, dataset: Dataset | None, weights_exists: Callable[[str], bool]
) -> JobSpec:
    """The spec with `bands` and `channels` filled in, or InvalidJobSpecError naming each field."""
    errors: list[dict] = []

    def error(field: str, message: str) -> None:
        errors.append({"field": field, "message": message})

    if dataset is None:
        raise InvalidJobSpecError(
            [{"field": "dataset_id", "message": f"no dataset with id '{spec.dataset_id}'"}]
        )
    if dataset.status != DATASET_READY:
        error("dataset_id", f"dataset '{dataset.id}' is {dataset.status}, expected ready")

    bands = spec.bands if spec.bands is not None else list(range(1, dataset.num_bands + 1))
    outside = [b for b in bands if not 1 <= b <= dataset.num_bands]
    if outside:
        error(
            "bands",
            f"dataset '{dataset.id}' has bands 1..{dataset.num_bands}. Received: bands={bands}",
        )
    elif len(set(bands)) != len(bands):
        error("bands", f"bands must be distinct. Received: bands={bands}")
    else:
        stds = (dataset.band_stats or {}).get("std") or []
        constant = [b for b in bands if b <= len(stds) and not stds[b - 1] > 0]
        if constant:
            error(
                "bands",
                f"band(s) {constant} of dataset '{dataset.id}' hold one value in every valid "
                "pixel (std 0): they tell the classes nothing, and any other value in a tile "
                "to predict would reach the model unscaled. Leave them out of bands. "
                f"Received: bands={bands}",
            )

    channels = spec.channels if spec.channels is not None else len(bands)
    if channels != len(bands):
        error(
            "channels",
            f"channels must equal the number of bands used ({len(bands)}). "
            f"Received: channels={channels}, bands={bands}",
        )

    if spec.init_strategy == "rgb":
        if channels < 3:
            error("init_strategy", f"rgb needs at least 3 bands. Received: {channels} band(s)")
        elif len(set(spec.rgb_bands)) != 3 or not all(1 <= b <= channels for b in spec.rgb_bands):
            error(
                "rgb_bands",
                f"rgb_bands must be 3 distinct positions within 1..{channels} (the model's "
                f"bands). Received: rgb_bands={spec.rgb_bands}",
            )
    elif spec.rgb_bands != DEFAULT_RGB_BANDS:
        # A setting the strategy would ignore is refused: the user meant something else.
        error(
            "rgb_bands",
            f"rgb_bands is read only by init_strategy 'rgb'; {spec.init_strategy} would ignore "
            f"it. Drop rgb_bands or set init_strategy to 'rgb'. Received: "
            f"rgb_bands={spec.rgb_bands}, init_strategy={spec.init_strategy!r}",
        )
    if spec.initializer is not None:
        if spec.init_strategy == "per_band":
            error(
                "initializer",
                "per_band takes no initializer: every band goes through one shared one-band "
                "conv1, the pretrained kernel summed over R, G, B (random with weights 'none'). "
                f"Received: initializer={spec.initializer!r}",
            )
        elif spec.init_strategy in ("repeat", "mean") and spec.weights != "none":
            error(
                "initializer",
                f"{spec.init_strategy} builds conv1 from the pretrained kernel alone and takes "
                "no initializer (random and rgb take one, and so do repeat and mean with "
                f"weights 'none'). Received: initializer={spec.initializer!r}",
            )
        else:
            try:
                resolve_initializer(spec.initializer, spec.init_strategy, spec.seed)
            except ValueError as exc:
                error("initializer", str(exc))
    if spec.weights not in ("imagenet", "none") and not weights_exists(spec.weights):
        error(
            "weights",
            f"weights must be 'imagenet', 'none' or an uploaded weights id (GET /v1/weights). "
            f"Received: weights={spec.weights!r}",
        )
    if min(validation_tiles(n, spec.val_fraction) for n in dataset.class_counts.values()) < 1:
        error(
            "val_fraction",
            f"val_fraction={spec.val_fraction} leaves no validation tile for the smallest class "
            f"({min(dataset.class_counts.values())} tiles); raise it",
        )
    if errors:
        raise InvalidJobSpecError(errors)
    return spec.model_copy(update={"bands": bands, "channels": channels})


def validation_tiles(class_tiles: int, val_fraction: float) -> int:
    """How many of a class's tiles the stratified split holds out (never all of them)."""
    return min(round(val_fraction * class_tiles), class_tiles - 1)


def spec_sha256(spec: JobSpec) -> str:
    """Identity of a spec for Idempotency-Key checks: same fields, same hash."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
