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
        embedding_size: values per embedding (compiled with
            ``embeddings=True``), else None.
    """

    def __init__(self, model: StoredModel, network, *,
                 embeddings: bool = False):
        self.model = model
        self.input_shape = tuple(model.metadata["input_shape"])
        self.flops_per_example = L.count_flops(network)
        inputs = T.tensor4("images", dtype=floatX)
        self.embedding_size = None
        if not embeddings:
            probs = L.get_output(network, inputs, deterministic=True)
            self._fn = function([inputs], probs, name=f"predict[{model.ref}]")
            return
        # One function, two outputs: the features are computed once.
        layer = L.embedding_layer(network, model.embedding_layer)
        probs, features = L.get_outputs(network, [network, layer], inputs,
                                        deterministic=True)
        self.embedding_size = int(np.prod(layer.output_shape[1:]))
        self._fn = function([inputs], [probs, T.flatten(features, 2)],
                            name=f"predict+embed[{model.ref}]")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)``."""
        result = self.predict(batch)
        return result[0] if self.embedding_size else result

    def predict(self, batch: np.ndarray):
        """Probabilities, or ``(probabilities, embeddings (N, D))`` when
        compiled with ``embeddings=True``."""
        batch = np.ascontiguousarray(batch, dtype=floatX)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ValueError(f"model {self.model.ref} takes a batch of shape "
                             f"(N, {', '.join(map(str, self.input_shape))}), "
                             f"got {batch.shape}")
        if len(batch) == 0:
            probs = np.zeros((0, len(self.model.class_names)), floatX)
            return (probs, np.zeros((0, self.embedding_size), floatX)) \
                if self.embedding_size else probs
        outputs = self._fn(batch)
        return tuple(outputs) if self.embedding_size else outputs


def compile_predictor(model: StoredModel, *,
                      embeddings: bool = False) -> Predictor:
    """Compiles ``model`` for inference (dropout off); with ``embeddings``,
    the same call also returns the model's embeddings (the output of
    ``model.embedding_layer``, by default the input of the last dense
    layer)."""
    return Predictor(model, model.build(), embeddings=embeddings)
