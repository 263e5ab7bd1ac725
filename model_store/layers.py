"""Network layers, in the style of Lasagne.

A layer is a small object that knows its output shape
(:meth:`Layer.get_output_shape_for`) and its symbolic output
(:meth:`Layer.get_output_for`); parameters are registered with
:meth:`Layer.add_param`. Whole-network operations are free functions over one
walk of the graph: :func:`get_all_layers`, :func:`get_output`,
:func:`get_all_params`, :func:`count_flops`. The batch dimension is always
``None``: a compiled network takes any batch size.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from model_store.engine import MRG_RandomStreams, T, conv2d, floatX, pool_2d, shared
from model_store.errors import SpecError

Shape = tuple  # (batch, ...) with batch None


# Nonlinearities -------------------------------------------------------------

def relu(x):
    return T.nnet.relu(x)


def identity(x):
    return x


def softmax(x):
    return T.nnet.softmax(x)


NONLINEARITIES: dict[str, Callable] = {
    "relu": relu, "identity": identity, "softmax": softmax}


def _nonlinearity(name: str) -> Callable:
    try:
        return NONLINEARITIES[name]
    except KeyError:
        raise SpecError(
            f"unknown nonlinearity {name!r}: use one of "
            f"{', '.join(sorted(NONLINEARITIES))}") from None


# Initialisers ----------------------------------------------------------------

def he_normal(shape: Sequence[int], rng: np.random.RandomState) -> np.ndarray:
    """He et al. (2015) initialisation, suited to ReLU units."""
    fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else int(shape[0])
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)


def zeros(shape: Sequence[int], rng: np.random.RandomState) -> np.ndarray:
    del rng
    return np.zeros(shape)


# Layers ------------------------------------------------------------------------

class Layer:
    """Base class: one input layer (or an input shape), a name, parameters.

    Args:
        incoming: the layer this one reads, or the input shape for an input.
        name: unique name within the network; parameters are ``name.param``.
    """

    def __init__(self, incoming, *, name: str):
        if isinstance(incoming, tuple):
            self.input_layer = None
            self.input_shape = incoming
        else:
            self.input_layer = incoming
            self.input_shape = incoming.output_shape
        self.name = name
        self.params: OrderedDict = OrderedDict()  # shared variable -> tags

    @property
    def output_shape(self) -> Shape:
        return self.get_output_shape_for(self.input_shape)

    def add_param(self, init, shape: Sequence[int], name: str,
                  rng: np.random.RandomState, **tags):
        """Creates a shared variable ``<layer>.<name>`` and registers it.

        Args:
            init: a function ``(shape, rng) -> array``.
            shape: the parameter's shape.
            name: the parameter's name within the layer.
            rng: random state for the initialiser.
            **tags: boolean tags; every parameter is ``trainable`` unless told.
        """
        value = np.asarray(init(tuple(shape), rng), dtype=floatX)
        param = shared(value, name=f"{self.name}.{name}")
        tags.setdefault("trainable", True)
        self.params[param] = {tag for tag, on in tags.items() if on}
        return param

    def get_params(self, **tags) -> list:
        """Parameters carrying all the tags set True and none set False."""
        wanted = {tag for tag, on in tags.items() if on}
        unwanted = {tag for tag, on in tags.items() if not on}
        return [p for p, have in self.params.items()
                if wanted <= have and not (unwanted & have)]

    def get_output_shape_for(self, input_shape: Shape) -> Shape:
        return input_shape

    def get_output_for(self, input, **kwargs):
        raise NotImplementedError

    def flops_per_example(self) -> int:
        """Multiply-adds times two for one example; 0 for cheap layers."""
        return 0


class InputLayer(Layer):
    """The network's input: a symbolic tensor of shape ``(None, C, H, W)``."""

    def __init__(self, shape: Sequence[int], *, name: str = "input"):
        shape = tuple(None if s is None else int(s) for s in shape)
        super().__init__(shape, name=name)
        self.input_var = T.TensorType(floatX, (False,) * len(shape))(name)


class _WeightedLayer(Layer):
    """Shared base of :class:`DenseLayer` and :class:`Conv2DLayer`.

    Both hold a weight ``W`` and a bias ``b`` and apply a nonlinearity to
    ``linear(x) + b``; subclasses say only what ``W``'s shape is and how the
    linear part is computed.
    """

    def __init__(self, incoming, *, name: str, nonlinearity: str,
                 rng: np.random.RandomState):
        super().__init__(incoming, name=name)
        self.nonlinearity_name = nonlinearity
        self.nonlinearity = _nonlinearity(nonlinearity)
        self.W = self.add_param(he_normal, self.weight_shape(), "W", rng)
        self.b = self.add_param(zeros, (self.weight_shape()[self._bias_axis],),
                                "b", rng)

    _bias_axis = 0

    def weight_shape(self) -> tuple:
        raise NotImplementedError

    def linear(self, input):
        raise NotImplementedError

    def get_output_for(self, input, **kwargs):
        bias = self.b.dimshuffle(*self._bias_pattern)
        return self.nonlinearity(self.linear(input) + bias)


class DenseLayer(_WeightedLayer):
    """Fully connected layer; flattens its input to ``(batch, features)``.

    Args:
        incoming: the layer this one reads.
        num_units: number of output units.
        name: layer name.
        nonlinearity: ``relu``, ``identity`` or ``softmax``.
        rng: random state for the initial weights.
    """

    _bias_axis = 1
    _bias_pattern = ("x", 0)

    def __init__(self, incoming, num_units: int, *, name: str,
                 nonlinearity: str = "relu",
                 rng: np.random.RandomState | None = None):
        self.num_units = _positive_int(num_units, "num_units", name)
        super().__init__(incoming, name=name, nonlinearity=nonlinearity,
                         rng=rng or np.random.RandomState(0))

    def num_inputs(self) -> int:
        return int(np.prod(self.input_shape[1:]))

    def weight_shape(self) -> tuple:
        return (self.num_inputs(), self.num_units)

    def get_output_shape_for(self, input_shape):
        return (input_shape[0], self.num_units)

    def linear(self, input):
        if input.ndim > 2:
            input = input.flatten(2)
        return T.dot(input, self.W)

    def flops_per_example(self) -> int:
        return 2 * self.num_inputs() * self.num_units


class Conv2DLayer(_WeightedLayer):
    """2-D convolution (cross-correlation, as in every current framework).

    Args:
        incoming: the layer this one reads, shape ``(None, C, H, W)``.
        num_filters: number of output channels.
        filter_size: kernel size, an int or ``(height, width)``.
        name: layer name.
        stride: step between applications, an int or a pair.
        pad: ``"valid"``, ``"same"`` (odd kernels) or an int of zero padding.
        nonlinearity: ``relu``, ``identity`` or ``softmax``.
        rng: random state for the initial weights.
    """

    _bias_pattern = ("x", 0, "x", "x")

    def __init__(self, incoming, num_filters: int, filter_size, *, name: str,
                 stride=1, pad="valid", nonlinearity: str = "relu",
                 rng: np.random.RandomState | None = None):
        self.num_filters = _positive_int(num_filters, "num_filters", name)
        self.filter_size = _pair(filter_size, "filter_size", name)
        self.stride = _pair(stride, "stride", name)
        if pad == "same":
            if any(k % 2 == 0 for k in self.filter_size):
                raise SpecError(f"layer {name!r}: pad='same' needs an odd "
                                f"filter_size, got {self.filter_size}")
            self.pad = tuple(k // 2 for k in self.filter_size)
        elif pad == "valid":
            self.pad = (0, 0)
        else:
            self.pad = _pair(pad, "pad", name, minimum=0)
        incoming_shape = incoming.output_shape
        if len(incoming_shape) != 4:
            raise SpecError(f"layer {name!r}: conv2d needs a 4-D input "
                            f"(batch, channels, height, width), got "
                            f"{incoming_shape}")
        super().__init__(incoming, name=name, nonlinearity=nonlinearity,
                         rng=rng or np.random.RandomState(0))
        out = self.output_shape
        if out[2] < 1 or out[3] < 1:
            raise SpecError(f"layer {name!r}: input {incoming_shape} is too "
                            f"small for filter_size {self.filter_size}")

    def weight_shape(self) -> tuple:
        return (self.num_filters, self.input_shape[1]) + self.filter_size

    def get_output_shape_for(self, input_shape):
        size = [(input_shape[2 + i] + 2 * self.pad[i] - self.filter_size[i])
                // self.stride[i] + 1 for i in range(2)]
        return (input_shape[0], self.num_filters, size[0], size[1])

    def linear(self, input):
        return conv2d(input, self.W,
                      input_shape=self.input_shape,
                      filter_shape=self.weight_shape(),
                      border_mode=self.pad, subsample=self.stride,
                      filter_flip=False)

    def flops_per_example(self) -> int:
        _, f, h, w = self.output_shape
        return 2 * f * h * w * int(np.prod(self.weight_shape()[1:]))


class MaxPool2DLayer(Layer):
    """Max pooling over non-overlapping (or strided) windows.

    Args:
        incoming: the layer this one reads, shape ``(None, C, H, W)``.
        pool_size: window size, an int or a pair.
        name: layer name.
        stride: step between windows; defaults to ``pool_size``.
    """

    def __init__(self, incoming, pool_size, *, name: str, stride=None):
        super().__init__(incoming, name=name)
        self.pool_size = _pair(pool_size, "pool_size", name)
        self.stride = self.pool_size if stride is None else _pair(
            stride, "stride", name)
        out = self.output_shape
        if out[2] < 1 or out[3] < 1:
            raise SpecError(f"layer {name!r}: input {self.input_shape} is too "
                            f"small for pool_size {self.pool_size}")

    def get_output_shape_for(self, input_shape):
        size = [(input_shape[2 + i] - self.pool_size[i]) // self.stride[i] + 1
                for i in range(2)]
        return (input_shape[0], input_shape[1], size[0], size[1])

    def get_output_for(self, input, **kwargs):
        return pool_2d(input, ws=self.pool_size, stride=self.stride,
                       ignore_border=True, mode="max")


class DropoutLayer(Layer):
    """Sets a fraction ``p`` of inputs to zero while training.

    Scales the kept inputs by ``1 / (1 - p)`` so that the deterministic
    (inference) output is the identity.

    Args:
        incoming: the layer this one reads.
        p: probability of dropping an input, in ``[0, 1)``.
        name: layer name.
        seed: seed of the dropout mask stream.
    """

    def __init__(self, incoming, p: float = 0.5, *, name: str, seed: int = 0):
        super().__init__(incoming, name=name)
        if not 0.0 <= float(p) < 1.0:
            raise SpecError(f"layer {name!r}: dropout p must be in [0, 1), "
                            f"got {p!r}")
        self.p = float(p)
        # MRG streams refuse seed 0; shift so that every seed is accepted.
        self._srng = MRG_RandomStreams(seed + 1)

    def get_output_for(self, input, deterministic: bool = False, **kwargs):
        if deterministic or self.p == 0.0:
            return input
        keep = 1.0 - self.p
        mask = self._srng.binomial(input.shape, p=keep, dtype=floatX)
        return input * mask / np.asarray(keep, dtype=floatX)


class SoftmaxLayer(Layer):
    """Softmax over the last axis of a ``(batch, classes)`` input."""

    def get_output_for(self, input, **kwargs):
        return softmax(input)


# Whole-network functions -----------------------------------------------------

def get_all_layers(layer: Layer) -> list[Layer]:
    """All layers feeding ``layer``, inputs first, ``layer`` last."""
    chain = []
    while layer is not None:
        chain.append(layer)
        layer = layer.input_layer
    return chain[::-1]


def get_output(layer: Layer, inputs=None, **kwargs):
    """The symbolic output of ``layer``.

    Args:
        layer: the network's output layer.
        inputs: a symbolic tensor to use in place of the input layer's own.
        **kwargs: passed to every layer, e.g. ``deterministic=True``.
    """
    output = None
    for current in get_all_layers(layer):
        if isinstance(current, InputLayer):
            output = current.input_var if inputs is None else inputs
        else:
            output = current.get_output_for(output, **kwargs)
    return output


def get_outputs(layer: Layer, wanted: Sequence[Layer], inputs=None,
                **kwargs) -> list:
    """The symbolic outputs of the ``wanted`` layers of the network ending
    in ``layer``, in one walk (so one compiled function computes them all
    with the shared part once); arguments as :func:`get_output`."""
    outputs = {}
    output = None
    for current in get_all_layers(layer):
        if isinstance(current, InputLayer):
            output = current.input_var if inputs is None else inputs
        else:
            output = current.get_output_for(output, **kwargs)
        outputs[id(current)] = output
    missing = [w.name for w in wanted if id(w) not in outputs]
    if missing:
        raise ValueError(f"layers {missing} are not in the network")
    return [outputs[id(w)] for w in wanted]


def embedding_layer(layer: Layer, name: Optional[str] = None) -> Layer:
    """The layer whose output is the network's embedding: the layer named
    ``name``, or else the input of the last dense layer (the penultimate
    features)."""
    chain = get_all_layers(layer)
    if name is not None:
        for current in chain:
            if current.name == name:
                return current
        raise SpecError(f"embedding layer {name!r} is not in the network "
                        f"(layers: {', '.join(c.name for c in chain)})")
    dense = [c for c in chain if isinstance(c, DenseLayer)]
    if not dense or isinstance(dense[-1].input_layer, InputLayer):
        raise SpecError("the network has no layer before a dense layer to "
                        "take embeddings from; name one as "
                        "\"embedding_layer\" in the model's metadata")
    return dense[-1].input_layer


def get_all_params(layer: Layer, **tags) -> list:
    """Every parameter of the network, found by walking the graph."""
    params = []
    for current in get_all_layers(layer):
        params.extend(current.get_params(**tags))
    return params


def get_param_values(layer: Layer) -> "OrderedDict[str, np.ndarray]":
    """Parameter values keyed ``layer.param``, in graph order."""
    return OrderedDict((p.name, p.get_value()) for p in get_all_params(layer))


def count_flops(layer: Layer) -> int:
    """Floating-point operations for one example's forward pass."""
    return sum(current.flops_per_example()
               for current in get_all_layers(layer))


# Argument checks shared by the layers ----------------------------------------

def _positive_int(value, what: str, layer: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or value < minimum:
        raise SpecError(f"layer {layer!r}: {what} must be an integer >= "
                        f"{minimum}, got {value!r}")
    return int(value)


def _pair(value, what: str, layer: str, minimum: int = 1) -> tuple:
    items: Iterable = value if isinstance(value, (list, tuple)) else (value,
                                                                        value)
    items = tuple(items)
    if len(items) != 2:
        raise SpecError(f"layer {layer!r}: {what} must be an integer or a "
                        f"pair of integers, got {value!r}")
    return tuple(_positive_int(v, what, layer, minimum) for v in items)
