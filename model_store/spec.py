"""The architecture as data: a JSON spec that builds a network, and weights.

A spec is a JSON object::

    {"input_shape": [1, 32, 32],
     "layers": [{"type": "conv2d", "name": "conv1", "num_filters": 32,
                 "filter_size": 3},
                {"type": "max_pool2d", "name": "pool1", "pool_size": 2},
                ...
                {"type": "softmax", "name": "prob"}]}

Layers are applied in order. Every key but ``type`` is a keyword argument of
the layer class. Weights are a ``.npz`` archive with one array per parameter,
keyed ``<layer>.<param>``; it is always read with ``allow_pickle=False``.
"""

from __future__ import annotations

import inspect
import io
from typing import Any, Mapping

import numpy as np

from model_store import layers as L
from model_store.errors import ModelIntegrityError, SpecError, WeightShapeError

LAYER_TYPES: dict[str, type] = {
    "conv2d": L.Conv2DLayer,
    "max_pool2d": L.MaxPool2DLayer,
    "dense": L.DenseLayer,
    "dropout": L.DropoutLayer,
    "softmax": L.SoftmaxLayer,
}


def validate_spec(spec: Any) -> dict:
    """Checks a spec's structure (not yet its shapes); returns it."""
    if not isinstance(spec, Mapping):
        raise SpecError(f"a network spec must be a JSON object, got "
                        f"{type(spec).__name__}")
    unknown = set(spec) - {"input_shape", "layers"}
    if unknown:
        raise SpecError(f"unknown spec keys {sorted(unknown)}: a spec has "
                        f"'input_shape' and 'layers'")
    shape = spec.get("input_shape")
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(s, int) and s > 0 for s in shape)):
        raise SpecError(f"spec 'input_shape' must be [channels, height, "
                        f"width] of positive integers, got {shape!r}")
    layer_specs = spec.get("layers")
    if not isinstance(layer_specs, list) or not layer_specs:
        raise SpecError("spec 'layers' must be a non-empty list")
    names = set()
    for index, layer_spec in enumerate(layer_specs):
        if not isinstance(layer_spec, Mapping):
            raise SpecError(f"spec layer {index} must be an object, got "
                            f"{layer_spec!r}")
        kind, name = layer_spec.get("type"), layer_spec.get("name")
        if kind not in LAYER_TYPES:
            raise SpecError(f"spec layer {index}: unknown type {kind!r}; use "
                            f"one of {', '.join(sorted(LAYER_TYPES))}")
        if not isinstance(name, str) or not name or "." in name:
            raise SpecError(f"spec layer {index}: 'name' must be a non-empty "
                            f"string without dots, got {name!r}")
        if name in names:
            raise SpecError(f"spec layer {index}: duplicate name {name!r}")
        names.add(name)
        allowed = _keyword_arguments(LAYER_TYPES[kind]) - {"rng"}
        extra = set(layer_spec) - {"type", "name"} - allowed
        if extra:
            raise SpecError(f"spec layer {name!r} ({kind}): unknown arguments "
                            f"{sorted(extra)}; allowed: {sorted(allowed)}")
    return dict(spec)


def build_network(spec: Mapping, *, seed: int = 0):
    """Builds the network a spec describes, with freshly initialised weights.

    Args:
        spec: the spec (see the module docstring).
        seed: seed of the initial weights and of dropout masks.

    Returns:
        The output layer; walk it with :func:`model_store.layers.get_all_layers`.
    """
    spec = validate_spec(spec)
    rng = np.random.RandomState(seed)
    layer = L.InputLayer((None, *spec["input_shape"]))
    for layer_spec in spec["layers"]:
        kwargs = {k: v for k, v in layer_spec.items() if k != "type"}
        cls = LAYER_TYPES[layer_spec["type"]]
        accepted = _keyword_arguments(cls)
        if "rng" in accepted:
            kwargs["rng"] = rng
        if "seed" in accepted and "seed" not in kwargs:
            kwargs["seed"] = seed
        try:
            layer = cls(layer, **kwargs)
        except TypeError as error:  # a missing required argument
            raise SpecError(f"spec layer {layer_spec['name']!r} "
                            f"({layer_spec['type']}): {error}") from None
    layer.spec = spec  # so that the store can save what built the network
    return layer


def set_weights(network, weights: Mapping[str, np.ndarray], *,
                source: str) -> None:
    """Sets every parameter of ``network`` from ``weights``.

    Args:
        network: output layer of a built network.
        weights: arrays keyed ``<layer>.<param>``.
        source: where the weights came from, for error messages.

    Raises:
        ModelIntegrityError: an array is missing, or one is left over.
        WeightShapeError: an array's shape differs from the spec's.
    """
    params = L.get_all_params(network)
    expected = {p.name for p in params}
    missing = sorted(expected - set(weights))
    if missing:
        raise ModelIntegrityError(
            f"{source}: no array for parameter(s) {', '.join(missing)} that "
            f"the spec defines; the weights do not belong to this spec")
    extra = sorted(set(weights) - expected)
    if extra:
        raise ModelIntegrityError(
            f"{source}: array(s) {', '.join(extra)} match no parameter of the "
            f"spec; the weights do not belong to this spec")
    for param in params:
        value = weights[param.name]
        want = param.get_value(borrow=True).shape
        if value.shape != want:
            layer = param.name.split(".")[0]
            raise WeightShapeError(
                f"{source}: layer {layer!r} parameter {param.name!r} has "
                f"shape {value.shape} but the spec needs {want}")
        param.set_value(np.asarray(value, dtype=param.dtype))


def weights_to_bytes(network) -> bytes:
    """The network's parameters as ``.npz`` bytes (no pickled objects)."""
    buffer = io.BytesIO()
    np.savez(buffer, **L.get_param_values(network))
    return buffer.getvalue()


def weights_from_bytes(data: bytes, *, source: str) -> dict[str, np.ndarray]:
    """Reads ``.npz`` bytes; object arrays are refused, never unpickled."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as error:  # numpy refuses object arrays this way
        raise ModelIntegrityError(
            f"{source}: not a plain .npz of numeric arrays ({error}); "
            f"imgclass never unpickles weights") from None
    except (OSError, EOFError) as error:
        raise ModelIntegrityError(
            f"{source}: not a readable .npz file ({error})") from None


def _keyword_arguments(cls: type) -> set[str]:
    parameters = inspect.signature(cls).parameters
    return {name for name in parameters if name != "incoming"}
