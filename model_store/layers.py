"""Network layers, in the style of Lasagne.

A layer is a small object that knows its output shape
(:meth:`Layer.get_output_shape_for`) and its symbolic output
(:meth:`Layer.get_output_for`); parameters are registered with
:meth:`Layer.add_param`. A layer reads one layer (:class:`Layer`) or several
(:class:`MergeLayer`, ``incomings``), so networks are graphs: residual
connections and branches share their inputs. Whole-network operations are
free functions over one walk of the graph in topological order
(:func:`get_all_layers`), each layer visited once even when several layers
read it: :func:`get_output`, :func:`get_output_and_updates`,
:func:`get_all_params`, :func:`count_flops`, :func:`count_params`. The batch
dimension is always ``None``: a compiled network takes any batch size.

Padding, wherever a layer takes it, is resolved to ``((top, bottom), (left,
right))`` by :func:`resolve_padding`: ``"valid"``, ``"same"`` (TensorFlow's
rule: the odd pixel goes to the bottom/right), an int, a pair ``[h, w]`` or
``[[top, bottom], [left, right]]``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from model_store import kernels, nonlinearities
from model_store.engine import MRG_RandomStreams, T, floatX, pool_2d, shared
from model_store.errors import SpecError

Shape = tuple  # (batch, ...) with batch None
Padding = tuple  # ((top, bottom), (left, right))

# Passed as ``rng`` to a layer, defers its parameters' initial values until
# :func:`initialize_params` (so a spec's sizes can be checked before any
# weight is allocated; see model_store.spec).
DEFERRED = "deferred"


# Initialisers ----------------------------------------------------------------

def he_normal(shape: Sequence[int], rng: np.random.RandomState) -> np.ndarray:
    """He et al. (2015) initialisation, suited to ReLU units."""
    fan_in = math.prod(shape[1:]) if len(shape) == 4 else int(shape[0])
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)


def zeros(shape: Sequence[int], rng: np.random.RandomState) -> np.ndarray:
    del rng
    return np.zeros(shape)


def ones(shape: Sequence[int], rng: np.random.RandomState) -> np.ndarray:
    del rng
    return np.ones(shape)


# Base classes ----------------------------------------------------------------

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
        self.param_shapes: OrderedDict = OrderedDict()  # shared -> shape
        self._pending: dict = {}  # shared variable -> initialiser

    @property
    def input_layers(self) -> list:
        return [] if self.input_layer is None else [self.input_layer]

    @property
    def output_shape(self) -> Shape:
        return self.get_output_shape_for(self.input_shape)

    def add_param(self, init, shape: Sequence[int], name: str, rng, **tags):
        """Creates a shared variable ``<layer>.<name>`` and registers it.

        Args:
            init: a function ``(shape, rng) -> array``.
            shape: the parameter's shape.
            name: the parameter's name within the layer.
            rng: random state for the initialiser, or :data:`DEFERRED` to
                give the value later with :func:`initialize_params`.
            **tags: boolean tags; every parameter is ``trainable`` unless told.
        """
        shape = tuple(int(s) for s in shape)
        if rng is DEFERRED:  # a placeholder of the right rank, no memory
            param = shared(np.zeros((0,) * len(shape), dtype=floatX),
                           name=f"{self.name}.{name}")
            self._pending[param] = init
        else:
            param = shared(np.asarray(init(shape, rng), dtype=floatX),
                           name=f"{self.name}.{name}")
        tags.setdefault("trainable", True)
        self.params[param] = {tag for tag, on in tags.items() if on}
        self.param_shapes[param] = shape
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

    def get_updates_for(self, input, **kwargs) -> list:
        """``[(shared variable, new value)]`` this layer's output implies
        (running statistics while training); none by default."""
        return []

    def flops_per_example(self) -> int:
        """Multiply-adds times two for one example; 0 for cheap layers."""
        return 0


class MergeLayer(Layer):
    """Base class of layers that read several layers (Lasagne's MergeLayer).

    Args:
        incomings: the layers this one reads, in order.
        name: layer name.
    """

    def __init__(self, incomings, *, name: str):
        super().__init__((), name=name)
        self.incomings = list(incomings)
        self.input_shapes = [layer.output_shape for layer in self.incomings]

    @property
    def input_layers(self) -> list:
        return list(self.incomings)

    @property
    def output_shape(self) -> Shape:
        return self.get_output_shape_for(self.input_shapes)

    def get_output_shape_for(self, input_shapes: list) -> Shape:
        raise NotImplementedError

    def get_output_for(self, inputs: list, **kwargs):
        raise NotImplementedError


class InputLayer(Layer):
    """The network's input: a symbolic tensor of shape ``(None, C, H, W)``."""

    def __init__(self, shape: Sequence[int], *, name: str = "input"):
        shape = tuple(None if s is None else int(s) for s in shape)
        super().__init__(shape, name=name)
        self.input_var = T.TensorType(floatX, (False,) * len(shape))(name)


# Layers with weights -----------------------------------------------------------

class _WeightedLayer(Layer):
    """Shared base of :class:`DenseLayer` and :class:`Conv2DLayer`.

    Both hold a weight ``W`` and optionally a bias ``b`` and apply a
    nonlinearity to ``linear(x) + b``; subclasses say only what ``W``'s shape
    is and how the linear part is computed.
    """

    _bias_pattern: tuple = ()

    def __init__(self, incoming, *, name: str, nonlinearity: str, bias: bool,
                 rng):
        super().__init__(incoming, name=name)
        self.nonlinearity_name = nonlinearity
        self.nonlinearity = nonlinearities.get(nonlinearity)
        _check_softmax_input(nonlinearity, self.output_shape, name)
        if not isinstance(bias, bool):
            raise SpecError(f"layer {name!r}: bias must be true or false, "
                            f"got {bias!r}")
        rng = np.random.RandomState(0) if rng is None else rng
        self.W = self.add_param(he_normal, self.weight_shape(), "W", rng)
        self.b = (self.add_param(zeros, (self.num_outputs(),), "b", rng)
                  if bias else None)

    def weight_shape(self) -> tuple:
        raise NotImplementedError

    def num_outputs(self) -> int:
        raise NotImplementedError

    def linear(self, input):
        raise NotImplementedError

    def get_output_for(self, input, **kwargs):
        out = self.linear(input)
        if self.b is not None:
            out = out + self.b.dimshuffle(*self._bias_pattern)
        return self.nonlinearity(out)


class DenseLayer(_WeightedLayer):
    """Fully connected layer; flattens its input to ``(batch, features)``.

    Args:
        incoming: the layer this one reads.
        num_units: number of output units.
        name: layer name.
        nonlinearity: a name from :mod:`model_store.nonlinearities`.
        bias: whether the layer has a bias ``b``.
        rng: random state for the initial weights (or :data:`DEFERRED`).
    """

    _bias_pattern = ("x", 0)

    def __init__(self, incoming, num_units: int, *, name: str,
                 nonlinearity: str = "relu", bias: bool = True, rng=None):
        self.num_units = _positive_int(num_units, "num_units", name)
        super().__init__(incoming, name=name, nonlinearity=nonlinearity,
                         bias=bias, rng=rng)

    def num_inputs(self) -> int:
        return math.prod(self.input_shape[1:])

    def num_outputs(self) -> int:
        return self.num_units

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
        num_filters: number of output channels ``F``.
        filter_size: kernel size, an int or ``(height, width)``.
        name: layer name.
        stride: step between applications, an int or a pair.
        padding: see :func:`resolve_padding`.
        pad: the older name of ``padding`` (give one of them).
        groups: channel groups; ``W`` is ``(F, C / groups, kh, kw)``, and
            ``groups == C`` is a depthwise convolution.
        bias: whether the layer has a bias ``b``.
        nonlinearity: a name from :mod:`model_store.nonlinearities`.
        rng: random state for the initial weights (or :data:`DEFERRED`).
    """

    _bias_pattern = ("x", 0, "x", "x")

    def __init__(self, incoming, num_filters: int, filter_size, *, name: str,
                 stride=1, padding=None, pad=None, groups: int = 1,
                 bias: bool = True, nonlinearity: str = "relu", rng=None):
        self.num_filters = _positive_int(num_filters, "num_filters", name)
        self.filter_size = _pair(filter_size, "filter_size", name)
        self.stride = _pair(stride, "stride", name)
        self.groups = _positive_int(groups, "groups", name)
        if padding is not None and pad is not None:
            raise SpecError(f"layer {name!r}: give 'padding' or its older "
                            f"name 'pad', not both")
        in_shape = _four_d(incoming.output_shape, "conv2d", name)
        self.padding = resolve_padding(
            "valid" if padding is None and pad is None else
            padding if pad is None else pad,
            self.filter_size, self.stride, in_shape[2:], name)
        if in_shape[1] % self.groups or self.num_filters % self.groups:
            raise SpecError(f"layer {name!r}: groups={self.groups} must "
                            f"divide the {in_shape[1]} input channels and "
                            f"the {self.num_filters} filters")
        super().__init__(incoming, name=name, nonlinearity=nonlinearity,
                         bias=bias, rng=rng)
        _check_window_fits(self, "filter_size", self.filter_size)

    def num_outputs(self) -> int:
        return self.num_filters

    def weight_shape(self) -> tuple:
        return ((self.num_filters, self.input_shape[1] // self.groups)
                + self.filter_size)

    def get_output_shape_for(self, input_shape):
        return (input_shape[0], self.num_filters) + _window_output_size(
            input_shape[2:], self.filter_size, self.stride, self.padding)

    def linear(self, input):
        return kernels.conv2d(input, self.W, input_shape=self.input_shape,
                              stride=self.stride, padding=self.padding,
                              groups=self.groups)

    def flops_per_example(self) -> int:
        _, f, h, w = self.output_shape
        return 2 * f * h * w * math.prod(self.weight_shape()[1:])


class BatchNormLayer(Layer):
    """Batch normalisation over the channels (4-D) or features (2-D).

    ``gamma * (x - mean) / sqrt(var + epsilon) + beta``. While training the
    mean and (biased) variance are the batch's, and
    :meth:`get_updates_for` moves the running ``mean`` and ``var`` towards
    them: ``running = momentum * running + (1 - momentum) * batch``. With
    ``deterministic=True`` the running statistics are used.

    Args:
        incoming: the layer this one reads, 2-D or 4-D.
        name: layer name.
        epsilon: added to the variance.
        momentum: weight of the old running statistics, in ``[0, 1)``.
        rng: unused by the initialisers; :data:`DEFERRED` defers them.
    """

    def __init__(self, incoming, *, name: str, epsilon: float = 1e-3,
                 momentum: float = 0.99, rng=None):
        super().__init__(incoming, name=name)
        if len(self.input_shape) not in (2, 4):
            raise SpecError(f"layer {name!r}: batch_norm needs a 2-D or 4-D "
                            f"input, got {self.input_shape}")
        self.epsilon = _number(epsilon, "epsilon", name, low=0.0,
                               low_open=True)
        self.momentum = _number(momentum, "momentum", name, low=0.0,
                                high=1.0)
        self.axes = (0,) if len(self.input_shape) == 2 else (0, 2, 3)
        size = (self.input_shape[1],)
        rng = np.random.RandomState(0) if rng is None else rng
        self.gamma = self.add_param(ones, size, "gamma", rng)
        self.beta = self.add_param(zeros, size, "beta", rng)
        self.mean = self.add_param(zeros, size, "mean", rng, trainable=False)
        self.var = self.add_param(ones, size, "var", rng, trainable=False)

    def _broadcast(self, vector):
        pattern = ("x", 0) if len(self.axes) == 1 else ("x", 0, "x", "x")
        return vector.dimshuffle(*pattern)

    def _batch_statistics(self, input):
        mean = input.mean(axis=self.axes)
        var = T.sqr(input - self._broadcast(mean)).mean(axis=self.axes)
        return mean, var

    def get_output_for(self, input, deterministic: bool = False, **kwargs):
        if deterministic:
            mean, var = self.mean, self.var
        else:
            mean, var = self._batch_statistics(input)
        scale = self.gamma / T.sqrt(var + np.asarray(self.epsilon, floatX))
        return ((input - self._broadcast(mean)) * self._broadcast(scale)
                + self._broadcast(self.beta))

    def get_updates_for(self, input, deterministic: bool = False, **kwargs):
        if deterministic:
            return []
        mean, var = self._batch_statistics(input)
        keep = np.asarray(self.momentum, floatX)
        move = np.asarray(1.0 - self.momentum, floatX)
        return [(self.mean, keep * self.mean + move * mean),
                (self.var, keep * self.var + move * var)]


# Layers without weights --------------------------------------------------------

class ActivationLayer(Layer):
    """Applies a nonlinearity (see :mod:`model_store.nonlinearities`).

    Args:
        incoming: the layer this one reads.
        nonlinearity: its name; ``softmax`` needs a 2-D input.
        name: layer name.
    """

    def __init__(self, incoming, nonlinearity: str, *, name: str):
        super().__init__(incoming, name=name)
        self.nonlinearity_name = nonlinearity
        self.nonlinearity = nonlinearities.get(nonlinearity)
        _check_softmax_input(nonlinearity, self.input_shape, name)

    def get_output_for(self, input, **kwargs):
        return self.nonlinearity(input)


class AddLayer(MergeLayer):
    """Elementwise sum of two or more inputs of one shape (residuals)."""

    def __init__(self, incomings, *, name: str):
        super().__init__(incomings, name=name)
        _check_input_count(self, 2)
        if len(set(self.input_shapes)) != 1:
            raise SpecError(f"layer {name!r}: add needs inputs of one shape, "
                            f"got {self.input_shapes}")

    def get_output_shape_for(self, input_shapes):
        return input_shapes[0]

    def get_output_for(self, inputs, **kwargs):
        total = inputs[0]
        for other in inputs[1:]:
            total = total + other
        return total


class MultiplyLayer(MergeLayer):
    """Elementwise product of two inputs.

    Either both have one shape, or one is ``(N, C, H, W)`` and the other a
    gate ``(N, C)`` or ``(N, C, 1, 1)`` that scales each channel
    (squeeze-and-excitation).
    """

    def __init__(self, incomings, *, name: str):
        super().__init__(incomings, name=name)
        _check_input_count(self, 2, 2)
        first, second = self.input_shapes
        if first != second and self._gate_index() is None:
            raise SpecError(
                f"layer {name!r}: multiply needs two inputs of one shape, or "
                f"(N, C, H, W) and a (N, C) or (N, C, 1, 1) gate; got "
                f"{first} and {second}")

    def _gate_index(self):
        for gate, full in ((0, 1), (1, 0)):
            g, f = self.input_shapes[gate], self.input_shapes[full]
            if (len(f) == 4 and g[:2] == f[:2] and g != f
                    and (len(g) == 2 or g[2:] == (1, 1))):
                return gate
        return None

    def get_output_shape_for(self, input_shapes):
        return max(input_shapes, key=lambda s: (len(s), math.prod(s[1:])))

    def get_output_for(self, inputs, **kwargs):
        inputs = list(inputs)
        gate = self._gate_index()
        if gate is not None:
            inputs[gate] = inputs[gate].flatten(2).dimshuffle(0, 1, "x", "x")
        return inputs[0] * inputs[1]


class ConcatLayer(MergeLayer):
    """Concatenation of two or more inputs along the channels (axis 1)."""

    def __init__(self, incomings, *, name: str):
        super().__init__(incomings, name=name)
        _check_input_count(self, 2)
        if len({s[:1] + s[2:] for s in self.input_shapes}) != 1:
            raise SpecError(f"layer {name!r}: concat needs inputs that differ "
                            f"only in channels, got {self.input_shapes}")

    def get_output_shape_for(self, input_shapes):
        first = input_shapes[0]
        return ((first[0], sum(s[1] for s in input_shapes)) + first[2:])

    def get_output_for(self, inputs, **kwargs):
        return T.concatenate(inputs, axis=1)


class GlobalAvgPoolLayer(Layer):
    """Mean over height and width: ``(N, C, H, W) -> (N, C)``, or
    ``(N, C, 1, 1)`` with ``keepdims``."""

    def __init__(self, incoming, *, name: str, keepdims: bool = False):
        super().__init__(incoming, name=name)
        _four_d(self.input_shape, "global_avg_pool", name)
        if not isinstance(keepdims, bool):
            raise SpecError(f"layer {name!r}: keepdims must be true or "
                            f"false, got {keepdims!r}")
        self.keepdims = keepdims

    def get_output_shape_for(self, input_shape):
        return input_shape[:2] + ((1, 1) if self.keepdims else ())

    def get_output_for(self, input, **kwargs):
        out = input.mean(axis=(2, 3))
        return out.dimshuffle(0, 1, "x", "x") if self.keepdims else out


class _Pool2DLayer(Layer):
    """Shared base of the pooling layers: window, stride and padding."""

    kind = ""

    def __init__(self, incoming, pool_size, *, name: str, stride=None,
                 padding=0):
        super().__init__(incoming, name=name)
        _four_d(self.input_shape, self.kind, name)
        self.pool_size = _pair(pool_size, "pool_size", name)
        self.stride = self.pool_size if stride is None else _pair(
            stride, "stride", name)
        self.padding = resolve_padding(padding, self.pool_size, self.stride,
                                       self.input_shape[2:], name)
        for (before, after), size in zip(self.padding, self.pool_size):
            if before >= size or after >= size:
                raise SpecError(f"layer {name!r}: padding {self.padding} "
                                f"must be smaller than pool_size "
                                f"{self.pool_size}")
        _check_window_fits(self, "pool_size", self.pool_size)

    def get_output_shape_for(self, input_shape):
        return input_shape[:2] + _window_output_size(
            input_shape[2:], self.pool_size, self.stride, self.padding)

    def _pooled(self, input, fill, mode):
        padded = _pad_constant(input, self.padding, fill, self.input_shape)
        return pool_2d(padded, ws=self.pool_size, stride=self.stride,
                       ignore_border=True, mode=mode)


class MaxPool2DLayer(_Pool2DLayer):
    """Max pooling; padded cells are -inf, so they are never the maximum.

    Args:
        incoming: the layer this one reads, shape ``(None, C, H, W)``.
        pool_size: window size, an int or a pair.
        name: layer name.
        stride: step between windows; defaults to ``pool_size``.
        padding: see :func:`resolve_padding`; smaller than the window.
    """

    kind = "max_pool2d"

    def get_output_for(self, input, **kwargs):
        return self._pooled(input, -np.inf, "max")


class AvgPool2DLayer(_Pool2DLayer):
    """Average pooling.

    Args:
        incoming, pool_size, name, stride, padding: as for
            :class:`MaxPool2DLayer` (padded cells are zeros).
        count_include_pad: whether padded cells count in a window's
            average; by default they do not.
    """

    kind = "avg_pool2d"

    def __init__(self, incoming, pool_size, *, name: str, stride=None,
                 padding=0, count_include_pad: bool = False):
        super().__init__(incoming, pool_size, name=name, stride=stride,
                         padding=padding)
        if not isinstance(count_include_pad, bool):
            raise SpecError(f"layer {name!r}: count_include_pad must be true "
                            f"or false, got {count_include_pad!r}")
        self.count_include_pad = count_include_pad

    def window_counts(self) -> np.ndarray:
        """How many cells each output averages, ``(H_out, W_out)``."""
        counts = []
        for axis in range(2):
            size, window = self.input_shape[2 + axis], self.pool_size[axis]
            before = self.padding[axis][0]
            starts = (np.arange(self.output_shape[2 + axis])
                      * self.stride[axis] - before)
            if self.count_include_pad:
                counts.append(np.full(len(starts), window))
            else:
                counts.append(np.minimum(starts + window, size)
                              - np.maximum(starts, 0))
        return np.outer(counts[0], counts[1])

    def get_output_for(self, input, **kwargs):
        total = self._pooled(input, 0.0, "sum")
        return total / np.asarray(self.window_counts(), floatX)


class FlattenLayer(Layer):
    """``(N, ...) -> (N, product of the rest)``."""

    def get_output_shape_for(self, input_shape):
        return (input_shape[0], math.prod(input_shape[1:]))

    def get_output_for(self, input, **kwargs):
        return input.flatten(2)


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
        self.p = _number(p, "dropout p", name, low=0.0, high=1.0)
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

    def __init__(self, incoming, *, name: str):
        super().__init__(incoming, name=name)
        _check_softmax_input("softmax", self.input_shape, name)

    def get_output_for(self, input, **kwargs):
        return nonlinearities.softmax(input)


# Whole-network functions -----------------------------------------------------

def get_all_layers(layer: Layer) -> list[Layer]:
    """Every layer feeding ``layer`` once, each after all its inputs, ``layer``
    last (depth-first, inputs in order; iterative, so any depth works)."""
    order, done = [], set()
    stack = [(layer, False)]
    while stack:
        current, expanded = stack.pop()
        if current in done:
            continue
        if expanded:
            done.add(current)
            order.append(current)
            continue
        stack.append((current, True))
        stack.extend((parent, False) for parent in
                     reversed(current.input_layers) if parent not in done)
    return order


def get_output_and_updates(layer: Layer, inputs=None, **kwargs):
    """The symbolic output of ``layer`` and the updates it implies.

    Each layer's output is computed once and reused by every layer reading
    it. The updates (running statistics of batch normalisation while
    training) go to ``theano.function(updates=...)`` next to the optimiser's.

    Args:
        layer: the network's output layer.
        inputs: a symbolic tensor to use in place of the input layer's own.
        **kwargs: passed to every layer, e.g. ``deterministic=True``.

    Returns:
        ``(output, OrderedDict {shared variable: new value})``.
    """
    outputs, updates = {}, OrderedDict()
    for current in get_all_layers(layer):
        if isinstance(current, InputLayer):
            outputs[current] = current.input_var if inputs is None else inputs
            continue
        arguments = [outputs[parent] for parent in current.input_layers]
        argument = arguments if isinstance(current, MergeLayer) \
            else arguments[0]
        outputs[current] = current.get_output_for(argument, **kwargs)
        updates.update(current.get_updates_for(argument, **kwargs))
    return outputs[layer], updates


def get_output(layer: Layer, inputs=None, **kwargs):
    """The symbolic output of ``layer``; see :func:`get_output_and_updates`."""
    return get_output_and_updates(layer, inputs, **kwargs)[0]


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


def get_param_shapes(layer: Layer) -> "OrderedDict[str, tuple]":
    """Every parameter's shape keyed ``layer.param``, in graph order (what
    the spec asks for, whether or not the value was given yet)."""
    return OrderedDict((p.name, current.param_shapes[p])
                       for current in get_all_layers(layer)
                       for p in current.get_params())


def set_param_values(layer: Layer, values: Mapping[str, np.ndarray]) -> None:
    """Gives the parameters named in ``values`` those values, deferred ones
    included (they are then never initialised randomly). The caller checks
    the shapes (see :func:`get_param_shapes`)."""
    for current in get_all_layers(layer):
        for param in current.get_params():
            if param.name in values:
                param.set_value(np.asarray(values[param.name],
                                           dtype=param.dtype))
                current._pending.pop(param, None)


def initialize_params(layer: Layer, rng: np.random.RandomState) -> None:
    """Gives every parameter created with ``rng=DEFERRED`` its initial value,
    in graph order."""
    for current in get_all_layers(layer):
        for param, init in current._pending.items():
            shape = current.param_shapes[param]
            param.set_value(np.asarray(init(shape, rng), dtype=floatX))
        current._pending = {}


def count_params(layer: Layer, **tags) -> int:
    """Number of parameter values (``trainable=True`` for the trainable
    ones), from the shapes alone."""
    return sum(math.prod(current.param_shapes[p])
               for current in get_all_layers(layer)
               for p in current.get_params(**tags))


def count_activations(layer: Layer) -> int:
    """Values every layer outputs for one example, the input included."""
    return sum(math.prod(current.output_shape[1:])
               for current in get_all_layers(layer))


def count_flops(layer: Layer) -> int:
    """Floating-point operations for one example's forward pass."""
    return sum(current.flops_per_example()
               for current in get_all_layers(layer))


# Shapes and padding ------------------------------------------------------------

def resolve_padding(value, window: tuple, stride: tuple, size: tuple,
                    layer: str) -> Padding:
    """A padding argument as ``((top, bottom), (left, right))``.

    Args:
        value: ``"valid"``; ``"same"`` (TensorFlow: total ``max((ceil(n/s)
            - 1) * s + k - n, 0)``, the smaller half at the top/left); an
            int; ``[h, w]``; or ``[[top, bottom], [left, right]]``.
        window: kernel or pool size ``(kh, kw)``.
        stride: ``(sh, sw)``.
        size: input ``(H, W)``.
        layer: the layer's name, for errors.
    """
    if value == "valid":
        return ((0, 0), (0, 0))
    if value == "same":
        pads = []
        for n, k, s in zip(size, window, stride):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (list, tuple)) for v in value):
        return tuple(_pair(v, "padding", layer, minimum=0) for v in value)
    try:
        h, w = _pair(value, "padding", layer, minimum=0)
    except SpecError:
        raise SpecError(
            f"layer {layer!r}: padding must be 'valid', 'same', an integer, "
            f"[h, w] or [[top, bottom], [left, right]], got {value!r}") \
            from None
    return ((h, h), (w, w))


def _window_output_size(size, window, stride, padding) -> tuple:
    return tuple((n + before + after - k) // s + 1 for n, k, s, (before, after)
                 in zip(size, window, stride, padding))


def _pad_constant(input, padding: Padding, value: float, input_shape: Shape):
    (top, bottom), (left, right) = padding
    if not (top or bottom or left or right):
        return input
    height, width = input_shape[2], input_shape[3]
    out = T.alloc(np.asarray(value, floatX), input.shape[0], input.shape[1],
                  height + top + bottom, width + left + right)
    return T.set_subtensor(out[:, :, top:top + height, left:left + width],
                           input)


# Argument checks shared by the layers ----------------------------------------

def _four_d(shape: Shape, kind: str, layer: str) -> Shape:
    if len(shape) != 4:
        raise SpecError(f"layer {layer!r}: {kind} needs a 4-D input (batch, "
                        f"channels, height, width), got {shape}")
    return shape


def _check_window_fits(layer: Layer, what: str, window: tuple) -> None:
    if min(layer.output_shape[2:]) < 1:
        raise SpecError(f"layer {layer.name!r}: input {layer.input_shape} is "
                        f"too small for {what} {window}")


def _check_input_count(layer: MergeLayer, least: int, most: int = 0) -> None:
    count = len(layer.incomings)
    if count < least or (most and count > most):
        wanted = f"exactly {least}" if most == least else f"at least {least}"
        raise SpecError(f"layer {layer.name!r}: {type(layer).__name__} needs "
                        f"{wanted} inputs, got {count}")


def _check_softmax_input(nonlinearity: str, shape: Shape, layer: str) -> None:
    if nonlinearity == "softmax" and len(shape) != 2:
        raise SpecError(f"layer {layer!r}: softmax needs a 2-D (batch, "
                        f"classes) input, got {shape}")


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


def _number(value, what: str, layer: str, *, low: float, high: float = math.inf,
            low_open: bool = False) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and math.isfinite(value) and (value > low if low_open
                                        else value >= low) and value < high)
    if not ok:
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g})"
        raise SpecError(f"layer {layer!r}: {what} must be a number in "
                        f"{bounds}, got {value!r}")
    return float(value)
