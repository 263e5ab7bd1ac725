"""The architecture as data: a JSON spec that builds a network, and weights.

A spec is a JSON object::

    {"input_shape": [3, 32, 32],
     "layers": [{"type": "conv2d", "name": "conv1", "num_filters": 16,
                 "filter_size": 3, "padding": "same", "nonlinearity": "relu"},
                {"type": "conv2d", "name": "conv2", "num_filters": 16,
                 "filter_size": 3, "padding": "same",
                 "nonlinearity": "identity"},
                {"type": "add", "name": "residual",
                 "inputs": ["conv1", "conv2"]},
                {"type": "global_avg_pool", "name": "pool"},
                {"type": "dense", "name": "fc", "num_units": 10,
                 "nonlinearity": "identity"},
                {"type": "softmax", "name": "prob"}]}

Layers are listed in topological order. Each has a ``type`` (a key of
:data:`LAYER_TYPES`), a unique ``name`` without dots, optional ``inputs``
(names of earlier layers, ``"input"`` for the network's input; by default
the previous layer, or the input for the first) and the keyword arguments of
its class in :mod:`model_store.layers`. The output is the last layer, and
every layer must feed it. Weights are a ``.npz`` archive with one array per
parameter, keyed ``<layer>.<param>``; it is always read with
``allow_pickle=False``.

Sizes are checked from the shapes before any weight is allocated: at most
:data:`MAX_LAYERS` layers, :data:`MAX_ELEMENTWISE_CHAIN` elementwise layers
in a chain, :data:`MAX_PARAMETERS` parameter values and
:data:`MAX_ACTIVATIONS` values output per example (all layers together).
"""

from __future__ import annotations

import inspect
import io
import math
import weakref
from typing import Any, Mapping

import numpy as np

from model_store import layers as L
from model_store.errors import ModelIntegrityError, SpecError, WeightShapeError

LAYER_TYPES: dict[str, type] = {
    "conv2d": L.Conv2DLayer,
    "dense": L.DenseLayer,
    "batch_norm": L.BatchNormLayer,
    "activation": L.ActivationLayer,
    "add": L.AddLayer,
    "multiply": L.MultiplyLayer,
    "concat": L.ConcatLayer,
    "global_avg_pool": L.GlobalAvgPoolLayer,
    "avg_pool2d": L.AvgPool2DLayer,
    "max_pool2d": L.MaxPool2DLayer,
    "flatten": L.FlattenLayer,
    "dropout": L.DropoutLayer,
    "softmax": L.SoftmaxLayer,
}

INPUT = "input"  # the name ``inputs`` use for the network's input
# Compiling a predictor, measured here (2 cores; seconds and peak RSS):
# chains of 1,995 conv2d layers 51 s, 381 MB; of 1,995 dense layers 8 s,
# 220 MB; of 665 conv2d+batch_norm+activation blocks 8 s, 225 MB. What is
# superlinear is a chain of elementwise layers, which Theano fuses into one
# operation: activations 250 / 500 / 1,000 deep 6.5 s, 203 MB / 20 s,
# 532 MB / 69 s, 1.7 GB (1,994 deep: 366 s, 7 GB); batch_norm layers that
# follow no conv2d (not folded) 30 / 60 / 120 / 250 deep 12 s / 41 s /
# 98 s, 486 MB / over 300 s. Such chains are capped instead (below): with
# chains of 16 between 1x1 convolutions, 1,992 layers took 52 s, 536 MB.
# ResNet-152 has 515 layers, EfficientNet-Lite0 143.
MAX_LAYERS = 2_000
# Layer types that compile to elementwise operations, which Theano fuses
# when each is the only reader of the one before (see
# _check_elementwise_chains); real networks chain at most 3 (ResNet's
# batch_norm, add, relu; Lite0 2).
ELEMENTWISE = frozenset({"activation", "batch_norm", "add", "multiply",
                         "dropout", "flatten"})
MAX_ELEMENTWISE_CHAIN = 16
MAX_PARAMETERS = 500_000_000  # 2 GB of float32 weights
MAX_ACTIVATIONS = 250_000_000  # 1 GB of float32 per example, all layers
_RESERVED = {"type", "name", "inputs"}


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
            or not all(isinstance(s, int) and not isinstance(s, bool)
                       and s > 0 for s in shape)):
        raise SpecError(f"spec 'input_shape' must be [channels, height, "
                        f"width] of positive integers, got {shape!r}")
    layer_specs = spec.get("layers")
    if not isinstance(layer_specs, list) or not layer_specs:
        raise SpecError("spec 'layers' must be a non-empty list")
    if len(layer_specs) > MAX_LAYERS:
        raise SpecError(f"spec has {len(layer_specs):,} layers, more than the "
                        f"limit of {MAX_LAYERS:,}")
    names = {INPUT}
    for index, layer_spec in enumerate(layer_specs):
        _validate_layer(index, layer_spec, names)
        names.add(layer_spec["name"])
    _check_elementwise_chains(layer_specs)
    return dict(spec)


def _check_elementwise_chains(layer_specs: list) -> None:
    """SpecError for a chain of more than :data:`MAX_ELEMENTWISE_CHAIN`
    layers of :data:`ELEMENTWISE` types, each the only reader of the one
    before: Theano fuses such a chain into one operation, and its optimiser
    takes time and memory quadratic in the chain's length. A layer read by
    several layers ends a chain (Theano does not fuse it into its readers),
    as does a layer of any other type."""
    readers: dict[str, int] = {}
    previous = INPUT
    for layer_spec in layer_specs:
        for name in layer_spec.get("inputs", [previous]):
            readers[name] = readers.get(name, 0) + 1
        previous = layer_spec["name"]
    chain, previous = {INPUT: 0}, INPUT
    for layer_spec in layer_specs:
        name = layer_spec["name"]
        chain[name] = 0 if layer_spec["type"] not in ELEMENTWISE else 1 + max(
            chain[i] if readers[i] == 1 else 0
            for i in layer_spec.get("inputs", [previous]))
        if chain[name] > MAX_ELEMENTWISE_CHAIN:
            raise SpecError(
                f"spec layer {name!r} ends a chain of more than "
                f"{MAX_ELEMENTWISE_CHAIN} elementwise layers "
                f"({', '.join(sorted(ELEMENTWISE))}) in a row, the limit: "
                f"Theano fuses such a chain into one operation that takes "
                f"minutes and gigabytes to compile; put a conv2d, dense or "
                f"pooling layer between them")
        previous = name


def check_probabilities(spec: Mapping) -> None:
    """SpecError unless the (validated) spec's output is a probability
    distribution: its last layer a softmax layer, or one whose
    nonlinearity is softmax. Training minimises cross-entropy on it, and
    ``classify`` writes it as confidences in [0, 1]."""
    last = spec["layers"][-1]
    if last["type"] == "softmax" or last.get("nonlinearity") == "softmax":
        return
    what = last["type"] + (f", nonlinearity {last['nonlinearity']}"
                           if "nonlinearity" in last else "")
    raise SpecError(f"the last layer {last['name']!r} ({what}) does not "
                    f"output class probabilities: end the spec with "
                    f'{{"type": "softmax", "name": "prob"}}')


def _validate_layer(index: int, layer_spec: Any, earlier: set) -> None:
    if not isinstance(layer_spec, Mapping):
        raise SpecError(f"spec layer {index} must be an object, got "
                        f"{type(layer_spec).__name__}")
    kind, name = layer_spec.get("type"), layer_spec.get("name")
    if not isinstance(kind, str) or kind not in LAYER_TYPES:
        raise SpecError(f"spec layer {index}: unknown type {kind!r}; use "
                        f"one of {', '.join(sorted(LAYER_TYPES))}")
    if not isinstance(name, str) or not name or "." in name:
        raise SpecError(f"spec layer {index}: 'name' must be a non-empty "
                        f"string without dots, got {name!r}")
    if name in earlier:
        raise SpecError(f"spec layer {index}: duplicate name {name!r}"
                        + (" ('input' names the network's input)"
                           if name == INPUT else ""))
    inputs = layer_spec.get("inputs")
    if inputs is not None and (
            not isinstance(inputs, list) or not inputs
            or not all(isinstance(i, str) and i in earlier for i in inputs)):
        raise SpecError(f"spec layer {name!r}: 'inputs' must be a non-empty "
                        f"list of names of earlier layers (or 'input'), got "
                        f"{inputs!r}")
    cls = LAYER_TYPES[kind]
    if inputs is not None and len(inputs) != 1 and not issubclass(
            cls, L.MergeLayer):
        raise SpecError(f"spec layer {name!r}: {kind} reads one input, got "
                        f"{len(inputs)}")
    allowed = _keyword_arguments(cls) - {"rng"}
    extra = set(layer_spec) - _RESERVED - allowed
    if extra:
        raise SpecError(f"spec layer {name!r} ({kind}): unknown arguments "
                        f"{sorted(extra)}; allowed: {sorted(allowed)}")


# The spec each network build_network made was built from, so that the
# store can save it (kept here, not as an attribute on the layer).
_BUILT_FROM: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def build_network(spec: Mapping, *, seed: int = 0, initialize: bool = True):
    """Builds the network a spec describes, with freshly initialised weights.

    Its sizes are checked against the limits (see the module docstring)
    before any weight is allocated.

    Args:
        spec: the spec (see the module docstring).
        seed: seed of the initial weights and of dropout masks.
        initialize: False leaves the weights empty for :func:`set_weights`
            to give (loading a stored model: 0.2 s saved for Lite0).

    Returns:
        The output layer; walk it with :func:`model_store.layers.get_all_layers`.
    """
    spec = validate_spec(spec)
    built = {INPUT: L.InputLayer((None, *spec["input_shape"]), name=INPUT)}
    previous = INPUT
    for layer_spec in spec["layers"]:
        inputs = [built[n] for n in layer_spec.get("inputs", [previous])]
        layer = _build_layer(layer_spec, inputs, seed)
        previous = layer.name
        built[previous] = layer
    network = built[previous]
    _check_all_feed_output(network, spec)
    _check_sizes(network)
    if initialize:
        L.initialize_params(network, np.random.RandomState(seed))
    _BUILT_FROM[network] = spec
    return network


def spec_of(network) -> dict:
    """The spec :func:`build_network` built ``network`` (its output layer)
    from.

    Raises:
        ValueError: ``network`` was not built by :func:`build_network`.
    """
    try:
        return _BUILT_FROM[network]
    except (KeyError, TypeError):
        raise ValueError("save_model needs a network built by "
                         "model_store.spec.build_network (it knows its "
                         "spec)") from None


def _build_layer(layer_spec: Mapping, inputs: list, seed: int):
    cls = LAYER_TYPES[layer_spec["type"]]
    kwargs = {k: v for k, v in layer_spec.items() if k not in ("type",
                                                               "inputs")}
    accepted = _keyword_arguments(cls)
    if "rng" in accepted:
        kwargs["rng"] = L.DEFERRED
    if "seed" in accepted and "seed" not in kwargs:
        kwargs["seed"] = seed
    incoming = inputs if issubclass(cls, L.MergeLayer) else inputs[0]
    try:
        return cls(incoming, **kwargs)
    except TypeError as error:  # a missing required argument
        raise SpecError(f"spec layer {layer_spec['name']!r} "
                        f"({layer_spec['type']}): {error}") from None


def _check_all_feed_output(network, spec: Mapping) -> None:
    used = {layer.name for layer in L.get_all_layers(network)}
    unused = [s["name"] for s in spec["layers"] if s["name"] not in used]
    if unused:
        raise SpecError(f"spec layer(s) {', '.join(map(repr, unused))} feed "
                        f"nothing: the output is the last layer, "
                        f"{network.name!r}")


def _check_sizes(network) -> None:
    params = L.count_params(network)
    if params > MAX_PARAMETERS:
        raise SpecError(f"spec has {params:,} parameter values, more than "
                        f"the limit of {MAX_PARAMETERS:,}")
    activations = L.count_activations(network)
    if activations > MAX_ACTIVATIONS:
        raise SpecError(f"spec's layers output {activations:,} values per "
                        f"image, more than the limit of {MAX_ACTIVATIONS:,}; "
                        f"use a smaller input_shape or fewer channels")


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
    shapes = L.get_param_shapes(network)
    missing = sorted(set(shapes) - set(weights))
    if missing:
        raise ModelIntegrityError(
            f"{source}: no array for parameter(s) {', '.join(missing)} that "
            f"the spec defines; the weights do not belong to this spec")
    extra = sorted(set(weights) - set(shapes))
    if extra:
        raise ModelIntegrityError(
            f"{source}: array(s) {', '.join(extra)} match no parameter of the "
            f"spec; the weights do not belong to this spec")
    for name, want in shapes.items():
        if weights[name].shape != want:
            raise WeightShapeError(
                f"{source}: layer {name.split('.')[0]!r} parameter {name!r} "
                f"has shape {weights[name].shape} but the spec needs {want}")
    L.set_param_values(network, weights)


def weights_to_bytes(network) -> bytes:
    """The network's parameters as ``.npz`` bytes (no pickled objects)."""
    buffer = io.BytesIO()
    np.savez(buffer, **L.get_param_values(network))
    return buffer.getvalue()


def weights_from_bytes(data: bytes, *, source: str,
                       shapes: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """Reads ``.npz`` bytes holding the parameters ``shapes`` (keyed
    ``<layer>.<param>``, as :func:`model_store.layers.get_param_shapes`
    gives them). Every member's header is checked before any array is
    decompressed or allocated (see :func:`_check_members`); object arrays
    are refused, never unpickled."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            _check_members(archive, source, shapes)
            return {key: archive[key] for key in archive.files}
    except ModelIntegrityError:  # a ValueError too: already says it all
        raise
    except ValueError as error:  # numpy refuses object arrays this way
        raise ModelIntegrityError(
            f"{source}: not a plain .npz of numeric arrays ({error}); "
            f"imgclass never unpickles weights") from None
    except (OSError, EOFError) as error:
        raise ModelIntegrityError(
            f"{source}: not a readable .npz file ({error})") from None


# The longest ``.npy`` header read (NumPy's own default limit): a header's
# length is checked before it is read, as a 2.0 header may declare 4 GiB.
MAX_NPY_HEADER_BYTES = 10_000
_NPY_HEADER_LENGTH = {(1, 0): "<H", (2, 0): "<I"}


def _check_members(archive, source: str, shapes: Mapping[str, tuple]) -> None:
    """ModelIntegrityError (WeightShapeError for a shape) unless every member
    of the ``.npz`` ``archive`` is a header-checked array of a parameter of
    ``shapes``, once: NumPy allocates what a member's header declares and
    zipfile inflates what the archive declares, so a hostile file (a small
    deflated member declaring gigabytes, with a consistent header and zip
    size) is refused from its header alone, before anything is inflated.
    Each array must hold the bytes its header declares and have its
    parameter's shape. ValueError for a member that is no ``.npy`` array of
    plain numbers (at most 8 bytes each: no objects, strings or records)."""
    import struct

    from numpy.lib import format as npy

    seen = set()
    for info in archive.zip.infolist():
        key = info.filename.removesuffix(".npy")
        if key in seen:
            raise ModelIntegrityError(f"{source}: array {info.filename!r} "
                                      f"appears twice; the file is damaged")
        if key not in shapes:
            raise ModelIntegrityError(
                f"{source}: array {info.filename!r} matches no parameter of "
                f"the spec; the weights do not belong to this spec")
        seen.add(key)
        with archive.zip.open(info) as member:
            version = npy.read_magic(member)
            if version not in _NPY_HEADER_LENGTH:
                raise ValueError(f"array {info.filename!r} has .npy format "
                                 f"version {version}")
            layout = _NPY_HEADER_LENGTH[version]
            length_bytes = member.read(struct.calcsize(layout))
            if len(length_bytes) < struct.calcsize(layout):
                raise ValueError(f"array {info.filename!r} ends in its "
                                 f"header")
            length, = struct.unpack(layout, length_bytes)
            if length > MAX_NPY_HEADER_BYTES:
                raise ModelIntegrityError(
                    f"{source}: array {info.filename!r} declares a header of "
                    f"{length:,} bytes, more than the limit of "
                    f"{MAX_NPY_HEADER_BYTES:,}; the file is damaged")
            header = io.BytesIO(length_bytes + member.read(length))
            shape, _, dtype = (npy.read_array_header_1_0 if version == (1, 0)
                               else npy.read_array_header_2_0)(header)
            declared = math.prod(shape) * dtype.itemsize
            held = info.file_size - member.tell()
        if declared > held:
            raise ModelIntegrityError(
                f"{source}: array {info.filename!r} declares shape {shape} "
                f"({declared:,} bytes) but holds {held:,} bytes; the file is "
                f"damaged")
        if dtype.kind not in "biuf" or dtype.itemsize > 8:
            raise ValueError(f"array {info.filename!r} has dtype {dtype}")
        if shape != tuple(shapes[key]):
            raise WeightShapeError(
                f"{source}: layer {key.split('.')[0]!r} parameter {key!r} "
                f"has shape {shape} but the spec needs {tuple(shapes[key])}")


def _keyword_arguments(cls: type) -> set[str]:
    parameters = inspect.signature(cls).parameters
    return {name for name in parameters if name not in ("incoming",
                                                        "incomings")}
