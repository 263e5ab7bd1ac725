"""Turning a stored model into a compiled predictor."""

from __future__ import annotations

import numpy as np

from model_store import layers as L
from model_store.engine import T, floatX, function
from model_store.store import StoredModel


class Predictor:
    """A compiled network: ``float32 (N, C, H, W)`` -> probabilities ``(N, K)``.

    Compile once (it takes seconds) and call it for every batch; any batch
    size works. Build it with :func:`compile_predictor`.

    Attributes:
        model: the stored model it was compiled from.
        flops_per_example: forward-pass FLOPs for one image.
    """

    def __init__(self, model: StoredModel, network):
        self.model = model
        self.input_shape = tuple(model.metadata["input_shape"])
        self.flops_per_example = L.count_flops(network)
        inputs = T.tensor4("images", dtype=floatX)
        probs = L.get_output(network, inputs, deterministic=True)
        self._fn = function([inputs], probs, name=f"predict[{model.ref}]")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=floatX)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ValueError(f"model {self.model.ref} takes a batch of shape "
                             f"(N, {', '.join(map(str, self.input_shape))}), "
                             f"got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, len(self.model.class_names)), floatX)
        return self._fn(batch)


def compile_predictor(model: StoredModel) -> Predictor:
    """Compiles ``model`` for inference (dropout off)."""
    return Predictor(model, model.build())
