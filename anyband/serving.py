"""Trained models ready to answer: loaded once (hash checked), one compiled function each, LRU-cached."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from anyband.artifacts import MODEL_FILE, read_card, verify_sha256
from anyband.folding import fold_batch_norms
from anyband.inference import ModelInput
from anyband.saving import load_model


@dataclass
class ServedModel:
    """A model as served: its compiled function, what it expects, what it answers."""

    model_id: str
    model_input: ModelInput
    classes: list[str]
    tile_size: tuple[int, int]
    function: Callable = field(repr=False)
    keras_model: object = field(repr=False)  # the model `function` calls (folded, by default)
    folded_batch_norms: int = 0

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """float32 (N, H, W, channels), already `prepare`d -> (N, classes) probabilities."""
        return self.function(tf.convert_to_tensor(tiles, dtype=tf.float32)).numpy()


def load_served_model(
    model_id: str, folder: Path, sha256: str, *, fold_batch_norm: bool = True
) -> ServedModel:
    """Load a worker-written model: only if model.keras still hashes to its record, safe mode.
    `fold_batch_norm`: serve a copy with BatchNormalizations folded into their convolutions
    (anyband.folding); the model as saved otherwise."""
    path = verify_sha256(Path(folder) / MODEL_FILE, sha256)
    card = read_card(folder)
    model, folded = load_model(path), 0
    if fold_batch_norm:
        model, folded = fold_batch_norms(model)
    channels = model.input_shape[-1]
    # One trace for every batch size and tile size: no retracing per request.
    function = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32)],
        reduce_retracing=True,
    )
    return ServedModel(
        model_id=model_id,
        model_input=ModelInput.from_card(card),
        classes=list(card["classes"]),
        tile_size=tuple(card["tile_size"]),
        function=function,
        keras_model=model,
        folded_batch_norms=folded,
    )


class ModelCache:
    """Least recently used models, at most `capacity`; a model loads once even when many
    requests ask for it at the same moment."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1. Received: capacity={capacity}")
        self.capacity = capacity
        self._models: OrderedDict[str, ServedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.loads = 0  # how many times a model was read from disk (tests and metrics)

    def get(self, model_id: str, loader: Callable[[], ServedModel]) -> ServedModel:
        served = self.peek(model_id)
        if served is not None:
            return served
        with self._lock:
            loading = self._loading.setdefault(model_id, threading.Lock())
        with loading:
            # Another request may have loaded it while this one waited.
            served = self.peek(model_id)
            if served is not None:
                return served
            served = loader()
            with self._lock:
                self.loads += 1
                self._models[model_id] = served
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
                self._loading.pop(model_id, None)
            return served

    def peek(self, model_id: str) -> ServedModel | None:
        """The model if it is loaded (and now the most recently used), else None."""
        with self._lock:
            served = self._models.get(model_id)
            if served is not None:
                self._models.move_to_end(model_id)
            return served

    def discard(self, model_id: str) -> None:
        """Forget a model (deleted): the next request for it loads it again, or finds it gone."""
        with self._lock:
            self._models.pop(model_id, None)

    def __contains__(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._models


class MemoryBudget:
    """Bytes that concurrent requests may hold at once, shared across threads.

    A reservation that does not fit is refused at once, never waited for: a request that held
    part of the budget while it waited for more could wait forever on another doing the same.
    """

    def __init__(self, total: int):
        if total < 1:
            raise ValueError(f"total must be >= 1 byte. Received: total={total}")
        self.total = total
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        with self._lock:
            return self._held

    @contextmanager
    def reservation(self) -> Iterator[Reservation]:
        """A reservation that grows with `add` and gives all it holds back on exit."""
        reservation = Reservation(self)
        try:
            yield reservation
        finally:
            with self._lock:
                self._held -= reservation.nbytes
            reservation.nbytes = 0

    def _take(self, nbytes: int) -> bool:
        with self._lock:
            if self._held + nbytes > self.total:
                return False
            self._held += nbytes
            return True


class Reservation:
    """What one request holds of a MemoryBudget."""

    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self.nbytes = 0

    def add(self, nbytes: int) -> bool:
        """Hold `nbytes` more if the budget has room (True), else hold nothing more (False)."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0. Received: nbytes={nbytes}")
        if not self.budget._take(nbytes):
            return False
        self.nbytes += nbytes
        return True
