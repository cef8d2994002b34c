"""An inference copy of a model with each BatchNormalization folded into the convolution before it.

At inference a BatchNormalization is a per-channel affine map, y = (x - mean) / sqrt(var + eps)
* gamma + beta, so after a convolution it can be merged into the convolution's kernel and bias:

    scale = gamma / sqrt(var + eps)
    kernel' = kernel * scale          (per output channel)
    bias'   = (bias - mean) * scale + beta

ResNet50 has 53 of them, one after each convolution; without them the graph runs each
convolution, its bias and its ReLU as one fused op. This is what TensorFlow Serving's and
TensorRT's graph optimizers do; the answers differ from the unfolded model's by float32
rounding (about 1e-6 relative), not by what the model computes.
"""

from __future__ import annotations

import keras
import numpy as np

# Keras exports no name for a functional model's class; keras.Model(inputs, outputs) makes one.
from keras.src.models.functional import Functional


class PassThrough(keras.layers.Layer):
    """Stands where a folded BatchNormalization stood (the clone keeps its name)."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def fold_batch_norms(model: keras.Model) -> tuple[keras.Model, int]:
    """(an inference copy of `model` with foldable BatchNormalizations folded, how many).

    A BatchNormalization is folded when its input is the output of a channels-last Conv2D with
    a bias that nothing else reads, in a functional model (nested functional models included);
    any other layer is copied as it is. `model` itself is not changed. The copy is for
    inference only: a folded layer no longer normalizes by batch statistics in training.
    """
    pairs = list(_foldable(model))
    if not pairs:
        return model, 0
    folded_norms = {id(norm) for norm, _ in pairs}
    norm_after = {id(conv): norm for norm, conv in pairs}

    def clone(layer):
        if id(layer) in folded_norms:
            return PassThrough(name=layer.name, dtype=layer.dtype_policy)
        if isinstance(layer, Functional):
            return keras.models.clone_model(layer, clone_function=clone)
        return layer.__class__.from_config(layer.get_config())

    folded = keras.models.clone_model(model, clone_function=clone)
    copies = dict(_layers(folded))
    for path, layer in _layers(model):
        if id(layer) in folded_norms or isinstance(layer, Functional) or not layer.weights:
            continue
        if id(layer) in norm_after:
            copies[path].set_weights(_folded_weights(layer, norm_after[id(layer)]))
        else:
            copies[path].set_weights(layer.get_weights())
    return folded, len(pairs)


def _folded_weights(conv: keras.layers.Conv2D, norm: keras.layers.BatchNormalization) -> list:
    kernel, bias = (np.asarray(w, dtype="float64") for w in conv.get_weights())
    gamma = np.asarray(norm.gamma.numpy(), "float64") if norm.scale else 1.0
    beta = np.asarray(norm.beta.numpy(), "float64") if norm.center else 0.0
    mean = np.asarray(norm.moving_mean.numpy(), "float64")
    variance = np.asarray(norm.moving_variance.numpy(), "float64")
    scale = gamma / np.sqrt(variance + norm.epsilon)
    return [(kernel * scale).astype("float32"), ((bias - mean) * scale + beta).astype("float32")]


def _foldable(model: keras.Model):
    """(BatchNormalization, Conv2D) pairs that can be folded, in every functional model inside."""
    if not isinstance(model, Functional):
        return
    for layer in model.layers:
        if isinstance(layer, Functional):
            yield from _foldable(layer)
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.axis not in (-1, 3):
            continue
        if len(layer._inbound_nodes) != 1 or len(layer._inbound_nodes[0].parent_nodes) != 1:
            continue
        conv = layer._inbound_nodes[0].parent_nodes[0].operation
        if (
            type(conv) is keras.layers.Conv2D  # not a subclass: its call may do more
            and conv.use_bias
            and conv.data_format == "channels_last"
            and len(conv._inbound_nodes) == 1
            and len(conv._outbound_nodes) == 1
        ):
            yield layer, conv


def _layers(model: keras.Model, prefix: str = ""):
    """(path, layer) for every layer, nested functional models' layers after the model."""
    for layer in model.layers:
        path = prefix + layer.name
        yield path, layer
        if isinstance(layer, Functional):
            yield from _layers(layer, path + "/")
