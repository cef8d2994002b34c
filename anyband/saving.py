"""Load saved anyband models in Keras' safe mode, with anyband's layers registered."""

from __future__ import annotations

import os

import keras

import anyband.layers  # noqa: F401  registers BandsToBatch and BatchToBands


def load_model(path: str | os.PathLike) -> keras.Model:
    """A `.keras` model saved by anyband, loaded with safe_mode=True (no arbitrary code)."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)
