"""Serializable layers that let `per_band` share one backbone across bands (no Lambda layers)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="anyband")
class BandsToBatch(keras.layers.Layer):
    """(batch, h, w, bands) -> (batch * bands, h, w, 1): each band becomes its own image.

    Folding the bands into the batch runs the shared backbone once on a bigger batch instead
    of once per band, which is the same function and keeps a GPU busy.
    """

    def call(self, inputs):
        shape = keras.ops.shape(inputs)
        per_band = keras.ops.transpose(inputs, (0, 3, 1, 2))
        return keras.ops.reshape(per_band, (-1, shape[1], shape[2], 1))

    def compute_output_shape(self, input_shape):
        batch, height, width, bands = input_shape
        folded = None if batch is None or bands is None else batch * bands
        return (folded, height, width, 1)


@keras.saving.register_keras_serializable(package="anyband")
class BatchToBands(keras.layers.Layer):
    """(batch * bands, features) -> (batch, bands * features): band 1's features first."""

    def __init__(self, bands: int, **kwargs):
        super().__init__(**kwargs)
        self.bands = int(bands)

    def call(self, inputs):
        return keras.ops.reshape(inputs, (-1, self.bands * inputs.shape[-1]))

    def compute_output_shape(self, input_shape):
        batch, features = input_shape
        unfolded = None if batch is None else batch // self.bands
        return (unfolded, self.bands * features)

    def get_config(self):
        return {**super().get_config(), "bands": self.bands}
