"""Turning a stored model into a compiled predictor.

The inference graph is not the training graph: a ``batch_norm`` whose only
input is a ``conv2d`` (or ``dense``) with no nonlinearity, that feeds nothing
else, is folded into that layer's weights, ``W' = W * s`` and ``b' = (b -
mean) * s + beta`` with ``s = gamma / sqrt(var + epsilon)``; an
``activation`` that is the only reader of such a layer (folded or not) is
fused as its nonlinearity. Every convolution is then built by
:func:`model_store.kernels.conv2d_bias_act` and every dense layer by
:func:`model_store.kernels.dense_bias_act`; other layers give their
deterministic output.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from model_store import kernels, predictor_cache
from model_store import layers as L
from model_store.engine import T, floatX, function, keep_freed_memory, shared
from model_store.ops.running import chunk_size, run_in_chunks
from model_store.store import StoredModel


class Predictor:
    """A compiled network: ``float32 (N, C, H, W)`` -> probabilities ``(N, K)``.

    Compile once (it takes seconds) and call it for every batch; any batch
    size works; calls from several threads take turns. Build it with
    :func:`compile_predictor`.

    Attributes:
        stored: the stored model (``StoredModel``) it was compiled from.
        flops_per_example: forward-pass FLOPs for one image.
        embedding_size: values per embedding (compiled with
            ``embeddings=True``), else None.
    """

    def __init__(self, stored: StoredModel, theano_function, *,
                 flops_per_example: int, chunk: int,
                 embedding_size: int | None = None):
        self.stored = stored
        self.input_shape = tuple(stored.metadata["input_shape"])
        self.flops_per_example = flops_per_example
        self.embedding_size = embedding_size
        self._fn = theano_function
        # Images per call: large activations stream through the cache in
        # chunks (model_store/ops/running.py); digits-cnn takes one chunk.
        self._chunk = chunk
        # A Theano function owns the storage of its inputs, intermediates
        # and outputs: two threads calling it at once (runners run several
        # bundles per worker process in threads) overwrite each other's.
        # Calls take turns; the network uses every core anyway, and the
        # fast ops release the GIL, so other threads decode meanwhile.
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)``."""
        result = self.predict(batch)
        return result[0] if self.embedding_size else result

    def predict(self, batch: np.ndarray):
        """Probabilities, or ``(probabilities, embeddings (N, D))`` when
        compiled with ``embeddings=True``."""
        batch = np.ascontiguousarray(batch, dtype=floatX)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ValueError(f"model {self.stored.ref} takes a batch of shape "
                             f"(N, {', '.join(map(str, self.input_shape))}), "
                             f"got {batch.shape}")
        if len(batch) == 0:
            probs = np.zeros((0, len(self.stored.class_names)), floatX)
            return (probs, np.zeros((0, self.embedding_size), floatX)) \
                if self.embedding_size else probs
        with self._lock:
            outputs = run_in_chunks(self._fn, batch, self._chunk)
        return tuple(outputs) if self.embedding_size else outputs


def compile_predictor(stored: StoredModel, *, embeddings: bool = False,
                      cached: bool = False) -> Predictor:
    """Compiles ``stored`` for inference (dropout off, batch norm folded);
    with ``embeddings``, the same call also returns the model's embeddings
    (the output of ``stored.embedding_layer``, by default the input of the
    last dense layer). With ``cached``, the optimised function is taken
    from (or saved to) this machine's predictor cache
    (:mod:`model_store.predictor_cache`)."""
    if not cached:
        return Predictor(stored, **_compiled(stored, embeddings))
    keep_freed_memory()  # a cached function is loaded, not compiled
    entry = predictor_cache.load(stored, embeddings=embeddings)
    if entry is None:
        entry = _compiled(stored, embeddings)
        predictor_cache.store(stored, embeddings=embeddings, entry=entry)
    return Predictor(stored, **entry)


def _compiled(stored: StoredModel, embeddings: bool) -> dict:
    """The keyword arguments of :class:`Predictor` for ``stored``."""
    network = stored.build()
    inputs = T.tensor4("images", dtype=floatX)
    # What the folded predictor writes: the convolutions' outputs.
    sizes = {"flops_per_example": L.count_flops(network),
             "chunk": chunk_size(np.dtype(floatX).itemsize * sum(
                 int(np.prod(layer.output_shape[1:]))
                 for layer in L.get_all_layers(network)
                 if isinstance(layer, L.Conv2DLayer)))}
    if not embeddings:
        probs = inference_outputs(network, inputs, [network])[0]
        return dict(sizes, theano_function=function(
            [inputs], probs, name=f"predict[{stored.ref}]"))
    # One function, two outputs: the features are computed once.
    layer = L.embedding_layer(network, stored.embedding_layer)
    probs, features = inference_outputs(network, inputs, [network, layer])
    return dict(sizes, theano_function=function(
        [inputs], [probs, T.flatten(features, 2)],
        name=f"predict+embed[{stored.ref}]"),
        embedding_size=int(np.prod(layer.output_shape[1:])))


@dataclasses.dataclass(frozen=True)
class FusedLayer:
    """A conv2d or dense layer, the batch_norm folded into it (or None) and
    the nonlinearity it applies (its own or a fused activation's)."""
    base: L.Layer
    batch_norm: L.BatchNormLayer | None
    activation: str
    last: L.Layer  # the layer whose output this computes


def fusion_plan(network, keep=()) -> list[FusedLayer]:
    """How :func:`inference_outputs` groups the layers: one entry per conv2d
    or dense layer, in graph order. Nothing is folded or fused into a layer
    of ``keep``, whose own output is wanted."""
    layers = L.get_all_layers(network)
    readers: dict = {layer: [] for layer in layers}
    for layer in layers:
        for parent in layer.input_layers:
            readers[parent].append(layer)

    def only_reader(layer, kind):
        found = readers[layer]
        if layer not in keep and len(found) == 1 and isinstance(found[0], kind):
            return found[0]
        return None

    plan = []
    for layer in layers:
        if not isinstance(layer, (L.Conv2DLayer, L.DenseLayer)):
            continue
        last, bn, activation = layer, None, layer.nonlinearity_name
        if activation == "identity":
            bn = only_reader(layer, L.BatchNormLayer)
            last = bn or layer
            fused = only_reader(last, L.ActivationLayer)
            if fused is not None:
                last, activation = fused, fused.nonlinearity_name
        plan.append(FusedLayer(layer, bn, activation, last))
    return plan


def inference_outputs(network, inputs, wanted) -> list:
    """The deterministic outputs of the ``wanted`` layers of ``network`` for
    ``inputs``, with batch norm folded and activations fused (see the module
    docstring), in one walk of the graph."""
    plan = {fused.last: fused for fused in fusion_plan(network, set(wanted))}
    skipped = {member for fused in plan.values()
               for member in (fused.base, fused.batch_norm) if member}
    outputs = {}
    for layer in L.get_all_layers(network):
        if isinstance(layer, L.InputLayer):
            outputs[layer] = inputs
        elif layer in plan:
            fused = plan[layer]
            outputs[layer] = _fused_output(
                fused, outputs[fused.base.input_layer])
        elif layer not in skipped:
            arguments = [outputs[parent] for parent in layer.input_layers]
            outputs[layer] = layer.get_output_for(
                arguments if isinstance(layer, L.MergeLayer)
                else arguments[0], deterministic=True)
    return [outputs[layer] for layer in wanted]


def _fused_output(fused: FusedLayer, input):
    base = fused.base
    W, b = _folded_weights(base, fused.batch_norm)
    if isinstance(base, L.DenseLayer):
        return kernels.dense_bias_act(input, W, b,
                                      activation=fused.activation)
    return kernels.conv2d_bias_act(
        input, W, b, input_shape=base.input_shape, stride=base.stride,
        padding=base.padding, groups=base.groups,
        activation=fused.activation)


def _folded_weights(base, bn):
    """``(W, b)`` shared variables with ``bn`` (if any) folded in."""
    W = base.W.get_value().astype(np.float64)
    b = (np.zeros(W.shape[0 if W.ndim == 4 else 1]) if base.b is None
         else base.b.get_value().astype(np.float64))
    if bn is not None:
        gamma, beta, mean, var = (p.get_value().astype(np.float64) for p in
                                  (bn.gamma, bn.beta, bn.mean, bn.var))
        scale = gamma / np.sqrt(var + bn.epsilon)
        W = W * (scale[:, None, None, None] if W.ndim == 4 else scale)
        b = (b - mean) * scale + beta
    return (shared(W.astype(floatX), name=f"{base.name}.W_folded"),
            shared(b.astype(floatX), name=f"{base.name}.b_folded"))
