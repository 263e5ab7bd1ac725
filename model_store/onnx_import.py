"""Importing an ONNX image classifier as a stored model version.

:func:`onnx_to_spec` translates an ONNX graph, node by node, into a graph
spec (see ``SPEC_FORMAT``/:mod:`model_store.spec`) and its weights;
:func:`import_onnx` adds class names and preprocessing and saves the result
as the next version of a model. The ``onnx`` package only reads the file;
nothing of ONNX is needed to run the imported model.

Supported ops (:data:`SUPPORTED_OPS`): Conv (any groups, strides and pads,
dilations 1), BatchNormalization (inference), Relu, Clip (0..6 as relu6, or
0.. as relu), Sigmoid, HardSigmoid, HardSwish, Mul, Add, MaxPool,
AveragePool, GlobalAveragePool, Flatten, Reshape to (N, -1), Gemm, MatMul,
Softmax, Concat (channels), Dropout/Identity (no-ops at inference),
Shape/Gather/Unsqueeze/Concat on shapes, as in ``x.view(x.size(0), -1)``,
and a zero Pad read only by convolutions (folded into their padding).
A Mul or Add by a constant is folded into the convolution or dense layer
before it when that layer feeds nothing else, and otherwise becomes a 1x1
depthwise convolution (4-D) or a diagonal dense layer (2-D);
``x * HardSigmoid(x)`` (alpha 1/6, beta 1/2) becomes one hard_swish;
a Flatten or Reshape of an (N, K) tensor is no layer. Anything else
raises :class:`UnsupportedModelError` naming the op and the node (a
BatchNormalization whose ``var + epsilon`` is not positive names the
channel too), and a constant holding a NaN or an infinity one naming the
tensor, before anything is written; so do an op of a custom domain, an
opset newer than the installed ``onnx`` knows and a single output class.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import re
import stat
from typing import Any, Mapping

import numpy as np

from model_store import fs
from model_store.errors import ConfigError, UnsupportedModelError

SUPPORTED_OPS = ("Conv", "BatchNormalization", "Relu", "Clip", "Sigmoid",
                 "HardSigmoid", "HardSwish", "Mul", "Add", "MaxPool",
                 "AveragePool", "GlobalAveragePool", "Flatten", "Reshape",
                 "Gemm", "MatMul", "Softmax", "Concat", "Dropout", "Identity",
                 "Constant", "Shape", "Gather", "Unsqueeze", "Pad")
_STANDARD_DOMAINS = ("", "ai.onnx")  # the default domain's two names
# The longest layer name made of a node's name: some exporters name nodes
# by their whole path, and a hostile file by megabytes (a spec.json of
# 20 MB, too large to load).
MAX_LAYER_NAME = 64
# The most of the file's producer_name recorded (a name of megabytes made
# a metadata.json too large to load).
MAX_PRODUCER = 100
_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid",
                "HardSwish": "hard_swish"}
# Attributes each op may carry; any other attribute is refused.
_ATTRIBUTES = {
    "Conv": {"group", "strides", "pads", "dilations", "auto_pad",
             "kernel_shape"},
    "BatchNormalization": {"epsilon", "momentum", "training_mode", "spatial"},
    "Clip": {"min", "max"},
    "HardSigmoid": {"alpha", "beta"},
    "MaxPool": {"kernel_shape", "strides", "pads", "dilations", "auto_pad",
                "ceil_mode", "storage_order"},
    "AveragePool": {"kernel_shape", "strides", "pads", "dilations",
                    "auto_pad", "ceil_mode", "count_include_pad"},
    "Flatten": {"axis"}, "Reshape": {"allowzero"},
    "Gemm": {"alpha", "beta", "transA", "transB"},
    "Softmax": {"axis"}, "Concat": {"axis"}, "Dropout": {"seed", "ratio"},
    "Constant": {"value"}, "Gather": {"axis"}, "Unsqueeze": {"axes"},
    "Pad": {"mode", "pads", "value"},
}


class _Node:
    """The node being converted, for error messages and attributes."""

    def __init__(self, node, index: int):
        import onnx

        self.proto = node
        self.op = node.op_type
        self.label = f"{node.name!r}" if node.name else f"#{index}"
        self.attrs = {a.name: onnx.helper.get_attribute_value(a)
                      for a in node.attribute}

    def fail(self, reason: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"ONNX op {self.op} (node {self.label}): {reason}")

    def attr(self, name: str, default=None):
        value = self.attrs.get(name, default)
        if not isinstance(value, bytes):
            return value
        try:  # an attribute's text is bytes in the protobuf
            return value.decode()
        except UnicodeDecodeError:
            raise self.fail(f"attribute {name} {value[:60]!r} is not UTF-8 "
                            f"text") from None


class _Converter:
    """Walks the graph once, in its (topological) order."""

    def __init__(self, model):
        import onnx

        self.opset = _default_opset(model)
        graph = onnx.shape_inference.infer_shapes(model).graph
        self.graph = graph
        self.consts = {t.name: _tensor_values(t.name, t)
                       for t in graph.initializer}
        self.shapes = {v.name: _static_shape(v.type)
                       for v in list(graph.value_info) + list(graph.input)
                       + list(graph.output)}
        self.uses = collections.Counter(
            name for node in graph.node for name in node.input if name)
        self.uses.update(o.name for o in graph.output)
        self.consumers = collections.defaultdict(list)
        for proto in graph.node:
            for name in proto.input:
                self.consumers[name].append(proto)
        self.done: set[int] = set()  # nodes already converted with another
        # Pad outputs folded into the convolutions that read them:
        # tensor -> (padded tensor, [[top, bottom], [left, right]]).
        self.pads_of: dict[str, tuple[str, list]] = {}
        self.layers: list[dict] = []
        self.weights: dict[str, np.ndarray] = {}
        self.layer_of: dict[str, str] = {}  # ONNX tensor -> our layer
        self.used_names: set[str] = {"input"}
        self.input_shape = self._graph_input()

    # -- graph input and output ---------------------------------------------
    def _graph_input(self) -> list[int]:
        import onnx

        inputs = [v for v in self.graph.input if v.name not in self.consts]
        if len(inputs) != 1:
            raise UnsupportedModelError(
                f"the ONNX graph has {len(inputs)} inputs "
                f"({fs.one_line(', '.join(v.name for v in inputs))}); an "
                f"image classifier takes one NCHW image batch")
        value = inputs[0]
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in tensor.shape.dim]
        if tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4 or \
                not all(d and d > 0 for d in dims[1:]):
            raise UnsupportedModelError(
                f"the ONNX graph input {value.name!r} must be float32 NCHW "
                f"with fixed C, H and W; it is "
                f"{onnx.TensorProto.DataType.Name(tensor.elem_type)} of shape "
                f"{['?' if d is None else d for d in dims]}")
        self.layer_of[value.name] = "input"
        self.shapes[value.name] = (None, *dims[1:])
        return dims[1:]

    def convert(self) -> dict:
        for index, proto in enumerate(self.graph.node):
            if id(proto) not in self.done:
                self._convert_node(_Node(proto, index))
            self._infer_output_shapes(proto)
        outputs = list(self.graph.output)
        if len(outputs) != 1:
            raise UnsupportedModelError(f"the ONNX graph has {len(outputs)} "
                                        f"outputs; a classifier has one")
        last = self.layer_of.get(outputs[0].name)
        if last is None or last == "input" or last != self.layers[-1]["name"]:
            raise UnsupportedModelError(
                f"the ONNX graph output {outputs[0].name!r} is not computed "
                f"by its last node")
        return {"input_shape": list(self.input_shape),
                "layers": self.layers}

    def _convert_node(self, node: _Node) -> None:
        if node.proto.domain not in _STANDARD_DOMAINS:
            raise UnsupportedModelError(
                f"custom domain {fs.one_line(node.proto.domain)} op "
                f"{fs.one_line(node.op)} (node {node.label}) is not "
                f"supported: only standard ONNX ops")
        if node.op not in SUPPORTED_OPS:
            raise node.fail(f"not supported; supported ops: "
                            f"{', '.join(SUPPORTED_OPS)}")
        unknown = set(node.attrs) - _ATTRIBUTES.get(node.op, set())
        if unknown:
            raise node.fail(f"attribute(s) {', '.join(sorted(unknown))} "
                            f"not supported")
        if node.op in _ACTIVATIONS:
            self._activation(node, _ACTIVATIONS[node.op])
        else:
            getattr(self, f"_op_{node.op}")(node)

    def _infer_output_shapes(self, proto) -> None:
        """Fills in the shapes of ``proto``'s outputs that ONNX's shape
        inference of the whole graph left unknown, from the node's input
        shapes and the constants computed here: a Reshape whose target comes
        from ``Shape`` (``x.view(x.size(0), -1)``), and the nodes after it."""
        import onnx
        from onnx import helper, numpy_helper

        outputs = [o for o in proto.output if o and o not in self.consts]
        if all(_known(self.shapes.get(o)) for o in outputs):
            return
        types, data = {}, {}
        for name in filter(None, proto.input):
            if name in self.consts:
                value = np.asarray(self.consts[name])
                data[name] = numpy_helper.from_array(value, name)
                types[name] = helper.make_tensor_type_proto(
                    helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            else:  # a computed tensor: float, as the graph input
                types[name] = helper.make_tensor_type_proto(
                    onnx.TensorProto.FLOAT, self.shapes.get(name))
        try:
            inferred = onnx.shape_inference.infer_node_outputs(
                onnx.defs.get_schema(proto.op_type, self.opset), proto, types,
                data)
        except onnx.shape_inference.InferenceError:
            return  # the nodes that need the shape say it is unknown
        for name in outputs:
            if name in inferred and _known(_static_shape(inferred[name])):
                self.shapes[name] = _static_shape(inferred[name])

    # -- helpers ------------------------------------------------------------
    def _name(self, node: _Node, suffix: str = "") -> str:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", node.proto.name).strip("_") \
            or node.op.lower()
        # Room for the number that tells names alike apart (_2000 at most).
        base = base[:MAX_LAYER_NAME - len(suffix) - 5] + suffix
        name, count = base, 1
        while name in self.used_names:
            count += 1
            name = f"{base}_{count}"
        self.used_names.add(name)
        return name

    def _add(self, node: _Node, kind: str, inputs: list[str], *,
             output: str | None = None, suffix: str = "",
             params: Mapping[str, np.ndarray] | None = None, **kwargs) -> str:
        name = self._name(node, suffix)
        layer = {"type": kind, "name": name, "inputs": inputs, **kwargs}
        self.layers.append(layer)
        for param, value in (params or {}).items():
            self.weights[f"{name}.{param}"] = np.asarray(value, np.float32)
        if output is not None:
            self.layer_of[output] = name
        return name

    def _input(self, node: _Node, position: int = 0) -> str:
        """Our layer that computes the node's ``position``-th input."""
        tensor = node.proto.input[position]
        if tensor not in self.layer_of:
            raise node.fail(f"input {tensor!r} is a constant or unknown "
                            f"tensor where a computed one is needed")
        return self.layer_of[tensor]

    def _const(self, node: _Node, position: int, what: str, *,
               ndim: int | None = None) -> np.ndarray:
        """The node's ``position``-th input, a constant (of ``ndim``
        dimensions if given: onnx's checker does not check them all)."""
        inputs = node.proto.input
        if position >= len(inputs) or inputs[position] not in self.consts:
            raise node.fail(f"{what} must be a constant (an initializer)")
        value = self.consts[inputs[position]]
        if ndim is not None and value.ndim != ndim:
            raise node.fail(f"{what} must be a {ndim}-D tensor, got shape "
                            f"{value.shape}")
        return value

    def _optional_const(self, node: _Node, position: int):
        inputs = node.proto.input
        if position >= len(inputs) or not inputs[position]:
            return None
        return self._const(node, position, f"input {position}")

    def _optional_scalar(self, node: _Node, position: int,
                         what: str) -> float | None:
        value = self._optional_const(node, position)
        if value is None:
            return None
        if value.size != 1:
            raise node.fail(f"{what} must be a scalar, got shape "
                            f"{value.shape}")
        return float(value.reshape(()))

    def _shape(self, node: _Node, tensor: str) -> tuple:
        shape = self.shapes.get(tensor)
        if not _known(shape):
            raise node.fail(f"the shape of tensor {tensor!r} is unknown")
        return shape

    def _single_output(self, node: _Node) -> str:
        outputs = [o for o in node.proto.output if o]
        if len(outputs) != 1 and node.op not in ("Dropout",):
            raise node.fail("only the first output is supported")
        if node.op == "Dropout" and any(self.uses[o] for o in outputs[1:]):
            raise node.fail("the mask output is not supported")
        return outputs[0]

    # -- ops ----------------------------------------------------------------
    def _op_Constant(self, node: _Node) -> None:
        value = node.proto.attribute[0] if node.proto.attribute else None
        if value is None or value.name != "value":
            raise node.fail("only the 'value' form is supported")
        self.consts[node.proto.output[0]] = _tensor_values(
            node.proto.output[0], value.t)

    def _op_Identity(self, node: _Node) -> None:
        """A no-op; of a constant, that constant (PyTorch's exporter writes
        an Identity of a weight used twice)."""
        source, output = node.proto.input[0], self._single_output(node)
        if source in self.consts:
            self.consts[output] = self.consts[source]
        else:
            self.layer_of[output] = self._input(node)

    _op_Dropout = _op_Identity

    def _op_Conv(self, node: _Node) -> None:
        weight = self._const(node, 1, "the weight")
        bias = self._optional_const(node, 2)
        shape = self._shape(node, node.proto.input[0])
        if len(shape) != 4 or weight.ndim != 4:
            raise node.fail(f"only 2-D convolutions of NCHW input; input "
                            f"{shape}, weight {weight.shape}")
        kernel = list(weight.shape[2:])
        if list(node.attr("kernel_shape", kernel)) != kernel:
            raise node.fail("kernel_shape differs from the weight's shape")
        if any(d != 1 for d in node.attr("dilations", [1, 1])):
            raise node.fail(f"dilations {node.attr('dilations')} (only 1)")
        strides = list(node.attr("strides", [1, 1]))
        padding = _padding(node, shape[2:], kernel, strides)
        source, extra = self.pads_of.get(node.proto.input[0],
                                         (node.proto.input[0], [[0, 0]] * 2))
        padding = [[a + b for a, b in zip(own, more)]
                   for own, more in zip(padding, extra)]
        kwargs = dict(num_filters=int(weight.shape[0]), filter_size=kernel,
                      stride=strides, padding=padding,
                      groups=int(node.attr("group", 1)),
                      bias=bias is not None, nonlinearity="identity")
        params = {"W": weight}
        if bias is not None:
            params["b"] = bias
        if source not in self.layer_of:
            raise node.fail(f"input {source!r} is a constant or unknown "
                            f"tensor where a computed one is needed")
        self._add(node, "conv2d", [self.layer_of[source]],
                  output=self._single_output(node), params=params, **kwargs)

    def _op_Pad(self, node: _Node) -> None:
        """A zero Pad of height and width that only convolutions read is
        folded into their padding (exporters write TensorFlow's "same" so)."""
        if node.attr("mode", "constant") != "constant":
            raise node.fail(f"mode={fs.one_line(node.attr('mode'))} (only "
                            f"constant)")
        if self.opset < 11:
            pads, value = node.attr("pads"), node.attr("value", 0.0)
        else:
            if len(node.proto.input) > 3 and node.proto.input[3]:
                raise node.fail("the axes input is not supported")
            pads = self._const(node, 1, "pads", ndim=1)
            value = self._optional_scalar(node, 2, "the constant value")
        pads = [int(p) for p in pads]
        value = 0.0 if value is None else float(value)
        out = self._single_output(node)
        readers = self.consumers[out]
        if (len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5))
                or min(pads) < 0 or value != 0.0 or not readers
                or any(r.op_type != "Conv" or r.input[0] != out
                       for r in readers) or self.uses[out] != len(readers)):
            raise node.fail(f"pads {pads} value {value}: only zeros around "
                            f"height and width, read by convolutions only")
        self.pads_of[out] = (node.proto.input[0],
                             [[pads[2], pads[6]], [pads[3], pads[7]]])

    def _op_BatchNormalization(self, node: _Node) -> None:
        if node.attr("training_mode", 0):
            raise node.fail("training_mode=1 (export the model for inference)")
        if not node.attr("spatial", 1):  # opsets 7 and 8
            raise node.fail("spatial=0 (only 1): statistics per activation, "
                            "not per channel")
        gamma, beta, mean, var = (self._const(node, i, what) for i, what in
                                  enumerate(("scale", "B", "mean", "var"), 1))
        # ONNX floats are float32: 1e-5 is stored as 9.99999e-6.
        epsilon = float(str(np.float32(node.attr("epsilon", 1e-5))))
        _check_normalization(node, gamma, beta, mean, var, epsilon)
        self._add(node, "batch_norm", [self._input(node)],
                  output=self._single_output(node), epsilon=epsilon,
                  params={"gamma": gamma, "beta": beta, "mean": mean,
                          "var": var})

    def _activation(self, node: _Node, nonlinearity: str) -> None:
        self._add(node, "activation", [self._input(node)],
                  output=self._single_output(node), nonlinearity=nonlinearity)

    def _op_Clip(self, node: _Node) -> None:
        if self.opset < 11:
            low, high = node.attr("min"), node.attr("max")
        else:
            low, high = (self._optional_scalar(node, 1, "min"),
                         self._optional_scalar(node, 2, "max"))
        if low == 0 and high == 6:
            self._activation(node, "relu6")
        elif low == 0 and high is None:
            self._activation(node, "relu")
        else:
            raise node.fail(f"Clip to [{low}, {high}]; only [0, 6] (relu6) "
                            f"and [0, inf) (relu)")

    def _op_HardSigmoid(self, node: _Node) -> None:
        """max(0, min(1, alpha x + beta)) = relu6(6 alpha x + 6 beta) / 6;
        ``x * HardSigmoid(x)`` with alpha 1/6, beta 1/2 is hard_swish."""
        alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
        source = self._input(node)
        swish = self._hard_swish_mul(node, alpha, beta)
        if swish is not None:
            self.done.add(id(swish))
            self._add(node, "activation", [source],
                      output=swish.output[0], nonlinearity="hard_swish")
            return
        shape = self._shape(node, node.proto.input[0])
        channels = shape[1]
        clipped = self._affine(node, source, shape, np.full(channels, 6 *
                               alpha), np.full(channels, 6 * beta), "relu6",
                               suffix="_clip")
        self._affine(node, clipped, shape, np.full(channels, 1 / 6),
                     np.zeros(channels), "identity",
                     output=self._single_output(node))

    def _hard_swish_mul(self, node: _Node, alpha: float, beta: float):
        """The Mul node that makes ``x * HardSigmoid(x)``, if there is one
        and it is the HardSigmoid's only consumer."""
        x, out = node.proto.input[0], self._single_output(node)
        users = self.consumers[out]
        if (not np.isclose(alpha, 1 / 6) or not np.isclose(beta, 0.5)
                or len(users) != 1 or self.uses[out] != 1
                or users[0].op_type != "Mul"
                or sorted(users[0].input) != sorted([x, out])):
            return None
        return users[0]

    def _affine(self, node: _Node, source: str, shape: tuple,
                scale: np.ndarray, shift: np.ndarray, nonlinearity: str, *,
                output: str | None = None, suffix: str = "") -> str:
        """Per-channel ``scale * x + shift``, as a layer of its own."""
        if len(shape) == 4:
            return self._add(node, "conv2d", [source], output=output,
                             suffix=suffix, num_filters=shape[1],
                             filter_size=1, groups=shape[1],
                             nonlinearity=nonlinearity,
                             params={"W": scale.reshape(-1, 1, 1, 1),
                                     "b": shift})
        if len(shape) == 2:
            return self._add(node, "dense", [source], output=output,
                             suffix=suffix, num_units=shape[1],
                             nonlinearity=nonlinearity,
                             params={"W": np.diag(scale), "b": shift})
        raise node.fail(f"input of shape {shape}: only 2-D or 4-D")

    def _op_Add(self, node: _Node) -> None:
        self._elementwise(node, "add")

    def _op_Mul(self, node: _Node) -> None:
        self._elementwise(node, "multiply")

    def _elementwise(self, node: _Node, kind: str) -> None:
        names = list(node.proto.input)
        output = self._single_output(node)
        consts = [n in self.consts for n in names]
        if all(consts):
            raise node.fail("both inputs are constants")
        if any(consts):
            tensor, const = (names[1], names[0]) if consts[0] else names
            self._with_constant(node, kind, tensor, self.consts[const],
                                output)
            return
        shapes = [self._shape(node, n) for n in names]
        if shapes[0] != shapes[1] and (kind == "add" or not _is_gate(
                *shapes) and not _is_gate(*shapes[::-1])):
            raise node.fail(
                f"inputs of shapes {shapes[0]} and {shapes[1]}; only equal "
                f"shapes" + ("" if kind == "add" else ", or (N, C, H, W) and "
                             "a (N, C, 1, 1) gate"))
        self._add(node, kind, [self.layer_of[n] for n in names],
                  output=output)

    def _with_constant(self, node: _Node, kind: str, tensor: str,
                       const: np.ndarray, output: str) -> None:
        shape = self._shape(node, tensor)
        values = _per_channel(const, shape)
        if values is None:
            raise node.fail(f"a constant of shape {const.shape} on an input "
                            f"of shape {shape}: only a scalar or one value "
                            f"per channel")
        source = self.layer_of.get(tensor)
        if source is None:
            raise node.fail(f"input {tensor!r} is unknown")
        producer = self.layers[-1] if self.layers else None
        if (producer is not None and producer["name"] == source
                and producer["type"] in ("conv2d", "dense")
                and producer["nonlinearity"] == "identity"
                and self.uses[tensor] == 1):
            self._fold(producer, kind, values)
            self.layer_of[output] = source
            return
        ones, zeros = np.ones(shape[1]), np.zeros(shape[1])
        scale, shift = (values, zeros) if kind == "multiply" else (ones,
                                                                   values)
        self._affine(node, source, shape, scale, shift, "identity",
                     output=output)

    def _fold(self, layer: dict, kind: str, values: np.ndarray) -> None:
        """Folds a per-channel Mul or Add into a conv2d or dense layer."""
        name = layer["name"]
        weight = self.weights[f"{name}.W"]
        bias = self.weights.get(f"{name}.b", np.zeros(len(values), np.float32))
        if kind == "multiply":
            axis = (-1, 1, 1, 1) if layer["type"] == "conv2d" else (1, -1)
            self.weights[f"{name}.W"] = (weight * values.reshape(axis)).astype(
                np.float32)
            bias = bias * values
        else:
            bias = bias + values
        layer["bias"] = True
        self.weights[f"{name}.b"] = np.asarray(bias, np.float32)

    def _pool(self, node: _Node, kind: str, **extra) -> None:
        shape = self._shape(node, node.proto.input[0])
        kernel = list(node.attr("kernel_shape", []))
        if len(shape) != 4 or len(kernel) != 2:
            raise node.fail(f"only 2-D pooling of NCHW input, got {shape}")
        if node.attr("ceil_mode", 0):
            raise node.fail("ceil_mode=1 (only 0)")
        if any(d != 1 for d in node.attr("dilations", [1, 1])):
            raise node.fail(f"dilations {node.attr('dilations')} (only 1)")
        strides = list(node.attr("strides", [1, 1]))
        self._add(node, kind, [self._input(node)],
                  output=self._single_output(node), pool_size=kernel,
                  stride=strides,
                  padding=_padding(node, shape[2:], kernel, strides), **extra)

    def _op_MaxPool(self, node: _Node) -> None:
        self._pool(node, "max_pool2d")

    def _op_AveragePool(self, node: _Node) -> None:
        self._pool(node, "avg_pool2d", count_include_pad=bool(
            node.attr("count_include_pad", 0)))

    def _op_GlobalAveragePool(self, node: _Node) -> None:
        if len(self._shape(node, node.proto.input[0])) != 4:
            raise node.fail("only NCHW input")
        self._add(node, "global_avg_pool", [self._input(node)],
                  output=self._single_output(node), keepdims=True)

    def _op_Flatten(self, node: _Node) -> None:
        if node.attr("axis", 1) != 1:
            raise node.fail(f"axis={node.attr('axis')} (only 1)")
        self._flatten(node)

    def _op_Reshape(self, node: _Node) -> None:
        if node.attr("allowzero", 0):
            raise node.fail("allowzero=1 (only 0)")
        target = [int(d) for d in self._const(node, 1, "the shape", ndim=1)]
        shape = self._shape(node, node.proto.input[0])
        features = int(np.prod(shape[1:]))
        if (len(target) != 2 or target[0] not in (0, -1)
                and target[0] != shape[0] or target[1] not in (-1, features)
                or target == [-1, -1]):
            raise node.fail(f"reshape of {shape} to {target}: only a flatten "
                            f"to (N, {features})")
        self._flatten(node)

    def _flatten(self, node: _Node) -> None:
        """(N, ...) -> (N, features); of (N, K) it is no layer at all, so
        that a Softmax followed by it still ends the network."""
        shape = self.shapes.get(node.proto.input[0])
        if shape is not None and len(shape) == 2:
            self._op_Identity(node)
        else:
            self._add(node, "flatten", [self._input(node)],
                      output=self._single_output(node))

    def _op_Gemm(self, node: _Node) -> None:
        if node.attr("transA", 0):
            raise node.fail("transA=1 (only 0)")
        weight = self._const(node, 1, "B")
        if node.attr("transB", 0):
            weight = weight.T
        bias = self._optional_const(node, 2)
        self._dense(node, weight * node.attr("alpha", 1.0), None if bias is
                    None else bias * node.attr("beta", 1.0))

    def _op_MatMul(self, node: _Node) -> None:
        self._dense(node, self._const(node, 1, "the second operand"), None)

    def _dense(self, node: _Node, weight: np.ndarray, bias) -> None:
        shape = self._shape(node, node.proto.input[0])
        if len(shape) != 2 or weight.ndim != 2 or weight.shape[0] != shape[1]:
            raise node.fail(f"input {shape} times weight {weight.shape}: only "
                            f"(N, K) x (K, M)")
        params = {"W": weight}
        if bias is not None:
            bias = np.asarray(bias).reshape(-1)
            if bias.size not in (1, weight.shape[1]):
                raise node.fail(f"bias of shape {bias.shape} for "
                                f"{weight.shape[1]} outputs")
            params["b"] = np.broadcast_to(bias, (weight.shape[1],))
        self._add(node, "dense", [self._input(node)],
                  output=self._single_output(node),
                  num_units=int(weight.shape[1]), nonlinearity="identity",
                  bias=bias is not None, params=params)

    def _op_Softmax(self, node: _Node) -> None:
        shape = self._shape(node, node.proto.input[0])
        axis = node.attr("axis", 1 if self.opset < 13 else -1)
        if len(shape) != 2 or axis not in (1, -1):
            raise node.fail(f"softmax over axis {axis} of {shape}: only the "
                            f"last axis of (N, K)")
        self._add(node, "softmax", [self._input(node)],
                  output=self._single_output(node))

    # Shape arithmetic, as exporters write ``x.view(x.size(0), -1)``: the
    # batch size is unknown here, so a Shape gives 0 for it, which Reshape
    # reads as "copy this dimension"; only constants are computed.
    def _op_Shape(self, node: _Node) -> None:
        shape = self._shape(node, node.proto.input[0])
        self.consts[self._single_output(node)] = np.array(
            [0, *shape[1:]], np.int64)

    def _op_Gather(self, node: _Node) -> None:
        data = self._const(node, 0, "the data (only shape arithmetic)")
        indices = self._const(node, 1, "the indices")
        axis = node.attr("axis", 0)
        if not -data.ndim <= axis < data.ndim:
            raise node.fail(f"axis {axis} of data of rank {data.ndim}")
        size = data.shape[axis]
        outside = indices[(indices < -size) | (indices >= size)]
        if outside.size:
            raise node.fail(f"index {int(outside.flat[0])} is out of range "
                            f"for axis {axis} of size {size} (valid: "
                            f"{-size} to {size - 1})")
        self.consts[self._single_output(node)] = np.take(data, indices,
                                                         axis=axis)

    def _op_Unsqueeze(self, node: _Node) -> None:
        data = self._const(node, 0, "the data (only shape arithmetic)")
        axes = (node.attr("axes") if self.opset < 13 else
                self._const(node, 1, "axes", ndim=1))
        value = data
        for axis in sorted(int(a) % (data.ndim + len(axes)) for a in axes):
            value = np.expand_dims(value, axis)
        self.consts[self._single_output(node)] = value

    def _op_Concat(self, node: _Node) -> None:
        if all(name in self.consts for name in node.proto.input):
            values = [np.atleast_1d(self.consts[n]) for n in node.proto.input]
            axis, rank = node.attr("axis"), values[0].ndim
            if not -rank <= axis < rank:  # onnx's checker reads an axis
                # beyond int32 cut short
                raise node.fail(f"axis {axis} of inputs of rank {rank}")
            self.consts[self._single_output(node)] = np.concatenate(
                values, axis=axis)
            return
        rank = len(self._shape(node, node.proto.input[0]))
        if node.attr("axis") not in (1, 1 - rank):
            raise node.fail(f"axis={node.attr('axis')} (only 1, channels)")
        self._add(node, "concat", [self._input(node, i) for i in
                                   range(len(node.proto.input))],
                  output=self._single_output(node))


def _static_shape(value_type) -> tuple | None:
    """The dimensions of an ONNX ``TypeProto`` (None where unknown), or
    None when even the rank is unknown."""
    tensor = value_type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None
                 for d in tensor.shape.dim)


def _tensor_values(name: str, tensor) -> np.ndarray:
    """The values of the ONNX ``TensorProto`` ``tensor`` (the tensor
    ``name``), unless its data does not fill exactly its declared shape
    (the checker refuses too little data, not too much) or it holds a NaN
    or an infinity."""
    from onnx import numpy_helper

    try:
        array = numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as error:
        raise UnsupportedModelError(
            f"the ONNX tensor {name!r} does not hold the data of its "
            f"declared shape {list(tensor.dims)} "
            f"({' '.join(str(error).split())[:200]}): export the model "
            f"again") from None
    return _finite(name, array)


def _finite(name: str, array: np.ndarray) -> np.ndarray:
    """``array``, the constant tensor ``name``, unless it holds a NaN or an
    infinity (the model would classify nothing)."""
    if np.issubdtype(array.dtype, np.floating) and \
            not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise UnsupportedModelError(
            f"the ONNX tensor {name!r} holds {bad} NaN or infinite value(s) "
            f"(of {np.size(array)}): export the model again from finite "
            f"weights")
    return array


def _check_normalization(node: _Node, gamma, beta, mean, var,
                         epsilon: float) -> None:
    """Refuses a BatchNormalization some channel of which would output NaN
    or infinity for every image: ``var + epsilon`` not positive, or a
    scale or shift beyond float32 (an epsilon of NaN included)."""
    gamma, beta, mean, var = (np.asarray(a, np.float64).reshape(-1)
                              for a in (gamma, beta, mean, var))
    if len({gamma.size, beta.size, mean.size, var.size}) != 1:
        raise node.fail(f"scale, B, mean and var of sizes {gamma.size}, "
                        f"{beta.size}, {mean.size} and {var.size}: one "
                        f"value per channel each")
    with np.errstate(all="ignore"):
        spread = var + epsilon
        scale = gamma / np.sqrt(spread)
        finite = np.isfinite(np.float32(scale)) & np.isfinite(
            np.float32(beta - mean * scale))
    bad = np.flatnonzero(~(spread > 0) | ~finite)
    if not bad.size:
        return
    c = int(bad[0])
    problem = (f"variance {var[c]:g} + epsilon {epsilon:g} is not positive"
               if not spread[c] > 0 else f"scale {gamma[c]:g} / sqrt("
               f"variance {var[c]:g} + epsilon {epsilon:g}) overflows float32")
    more = f" ({bad.size} channels are)" if bad.size > 1 else ""
    raise node.fail(f"channel {c}: {problem}{more}; export the model again "
                    f"from sound running statistics")


def _known(shape: tuple | None) -> bool:
    """Whether all but the batch dimension of ``shape`` are known."""
    return shape is not None and None not in shape[1:]


def _is_gate(gate: tuple, full: tuple) -> bool:
    """(N, C, 1, 1) scaling each channel of (N, C, H, W); not (N, C), which
    ONNX broadcasts from the right, over the width."""
    return (len(full) == 4 and len(gate) == 4 and gate[1:2] == full[1:2]
            and gate[2:] == (1, 1))


def _padding(node: _Node, size, kernel, strides) -> list:
    """ONNX pads/auto_pad as ``[[top, bottom], [left, right]]``."""
    auto = node.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        pads = list(node.attr("pads", [0, 0, 0, 0])) if auto == "NOTSET" \
            else [0, 0, 0, 0]
        if len(pads) != 4 or min(pads) < 0:
            raise node.fail(f"pads {pads}: four non-negative numbers")
        return [[pads[0], pads[2]], [pads[1], pads[3]]]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise node.fail(f"auto_pad={fs.one_line(auto)}")
    out = []
    for n, k, s in zip(size, kernel, strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        small, large = total // 2, total - total // 2
        out.append([small, large] if auto == "SAME_UPPER" else [large, small])
    return out


def _per_channel(const: np.ndarray, shape: tuple) -> np.ndarray | None:
    """A constant that broadcasts as one value per channel of ``shape``, as
    a vector of length C; None for anything else."""
    const = np.asarray(const, np.float64)
    channels = shape[1]
    if const.size == 1:
        return np.full(channels, float(const.reshape(())))
    squeezed = const.reshape([d for d in const.shape if d != 1] or [1])
    if squeezed.shape != (channels,):
        return None
    # The channel axis must line up with axis 1 under NumPy broadcasting.
    padded = (1,) * (len(shape) - const.ndim) + const.shape
    if len(padded) != len(shape) or padded[1] != channels:
        return None
    return squeezed


def _default_opset(model) -> int:
    """The model's opset of the standard ops (1 when it names none);
    UnsupportedModelError above the newest the installed ``onnx`` knows,
    whose operator schemas the import reads."""
    import onnx

    opset = max((o.version for o in model.opset_import
                 if o.domain in _STANDARD_DOMAINS), default=1)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UnsupportedModelError(
            f"the ONNX model uses opset {opset}; the highest supported is "
            f"{newest} (that of onnx {onnx.__version__}): export it with "
            f"opset {newest} or lower")
    return opset


def onnx_to_spec(model) -> tuple[dict, dict[str, np.ndarray]]:
    """An ONNX ``ModelProto`` -> (graph spec, weights keyed
    ``<layer>.<param>``). Raises :class:`UnsupportedModelError`."""
    converter = _Converter(model)
    spec = converter.convert()
    return spec, converter.weights


# Protobuf's limit for one message: a larger .onnx file is not a model,
# and is refused without being read whole.
MAX_ONNX_BYTES = 2**31 - 1


def _read_onnx(path: str):
    """(the model in the local file ``path``, with its external data, and
    the sha256 of the file's bytes)."""
    import onnx

    if fs.is_uri(path):
        raise ConfigError(f"ONNX file {fs.shown(path)}: give a local file (its "
                          f"external data, if any, is read beside it)")
    try:  # a FIFO is refused, not waited on
        data = fs.read_bytes(path, MAX_ONNX_BYTES)
    except FileNotFoundError:
        raise ConfigError(f"ONNX file {fs.shown(path)} does not exist") from None
    except fs.NotRegularError as error:
        raise ConfigError(f"ONNX file {error}: give the .onnx file") \
            from None
    except OSError as error:
        raise ConfigError(f"cannot read ONNX file {fs.shown(path)}: "
                          f"{error.strerror}") from None
    if len(data) > MAX_ONNX_BYTES:
        raise UnsupportedModelError(
            f"{fs.shown(path)} is not a valid ONNX model: it is larger than 2 GiB, "
            f"the most a protobuf message holds (a larger model keeps its "
            f"weights in external data files)")
    try:
        model = onnx.load_model_from_string(data)
        _check_utf8(model)
        # As onnx.load does, with its checks that every location stays in
        # the model's folder (no "..", absolute path or symbolic link).
        _load_external_data(model, os.path.dirname(path))
        # The shapes of inner tensors come from ONNX's shape inference
        # alone: exporters' hints for them (value_info) can be stale after
        # an edit of the graph, which strict inference refuses and plain
        # inference believes, although the graph computes.
        del model.graph.value_info[:]
        # full_check: with strict shape inference, which refuses a wrong
        # rank, type or attribute size (a shape input of floats, strides
        # of 0) naming the node, before the conversion reads them.
        onnx.checker.check_model(model, full_check=True)
    except UnsupportedModelError:  # external data: already says it all
        raise
    except Exception as error:  # protobuf and checker errors vary
        raise UnsupportedModelError(
            f"{fs.shown(path)} is not a valid ONNX model: "
            f"{fs.one_line(' '.join(str(error).split())[:300])}") from None
    return model, hashlib.sha256(data).hexdigest()


def _check_utf8(message) -> None:
    """ValueError (the model is not valid) for a string field of the ONNX
    protobuf ``message``, at any depth, that is not UTF-8: protobuf gives
    it as bytes, which onnx's checker lets through (a node name, the
    producer's; an attribute's text is bytes anyway: :meth:`_Node.attr`)."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in values:
                _check_utf8(item)
        elif field.type == FieldDescriptor.TYPE_STRING:
            for item in values:
                if isinstance(item, bytes):
                    raise ValueError(f"{field.full_name} {item[:60]!r} is "
                                     f"not UTF-8")


def _load_external_data(model, folder: str) -> None:
    """Reads into ``model`` the data of its tensors stored in external
    files of ``folder``, as ``onnx.load`` does, but only the bytes each
    tensor's shape and type declare: onnx reads from the offset to the end
    of the file when no length is given, and the length given otherwise,
    before anything compares them with the tensor (a 2 GiB file behind an
    80-byte tensor took 16 s and 6 GB). UnsupportedModelError naming the
    tensor and the file, before anything is read, for external data whose
    length (given, or to the end of the file) is not the tensor's size,
    that runs past the file's end, is no regular file or lies outside
    ``folder`` (:func:`_inside`), or for more values than a spec may
    hold."""
    from onnx.external_data_helper import (
        ExternalDataInfo,
        _get_all_tensors,
        load_external_data_for_tensor,
        uses_external_data,
    )

    from model_store.spec import MAX_PARAMETERS

    tensors = [t for t in _get_all_tensors(model) if uses_external_data(t)]
    # Every shape is checked before the values are summed: a tensor of
    # negative dimensions took the place of another's in the sum.
    sizes = [_declared_bytes(t) for t in tensors]
    values = sum(math.prod(t.dims) for t in tensors)
    if values > MAX_PARAMETERS:
        raise UnsupportedModelError(
            f"the ONNX model's external tensors declare {values:,} values, "
            f"more than the limit of {MAX_PARAMETERS:,} parameter values")
    for tensor, declared in zip(tensors, sizes):
        info = ExternalDataInfo(tensor)
        if not _inside(folder, info.location):
            raise UnsupportedModelError(
                f"the ONNX tensor {tensor.name!r} (shape "
                f"{list(tensor.dims)}, {declared:,} bytes) is stored in "
                f"{info.location!r}, outside the model's folder "
                f"{fs.shown(folder or os.curdir)}: external data is read "
                f"only from files in it")
        file = os.path.join(folder, info.location)
        what = (f"the ONNX tensor {tensor.name!r} (shape "
                f"{list(tensor.dims)}, {declared:,} bytes) stored in "
                f"{fs.shown(file)}")
        try:
            status = os.stat(file)
        except OSError as error:
            raise UnsupportedModelError(
                f"{what}: {error.strerror}; external data is read from "
                f"the model's folder") from None
        if not stat.S_ISREG(status.st_mode):
            raise UnsupportedModelError(
                f"{what}: the file is {fs.file_kind(status.st_mode)}")
        offset = info.offset or 0
        if info.length is not None and info.length != declared:
            raise UnsupportedModelError(
                f"{what}: its external data has length {info.length:,}, "
                f"not the tensor's size; export the model again")
        if info.length is None and status.st_size - offset != declared:
            raise UnsupportedModelError(
                f"{what}: the file holds {max(status.st_size - offset, 0):,} "
                f"bytes from offset {offset:,} and no length is given (the "
                f"data runs to the end), not the tensor's size; export the "
                f"model again")
        if offset + declared > status.st_size:
            raise UnsupportedModelError(
                f"{what}: the file holds {status.st_size:,} bytes, too few "
                f"from offset {offset:,}; export the model again")
        for entry in tensor.external_data:
            if entry.key == "length":
                entry.value = str(declared)
                break
        else:
            tensor.external_data.add(key="length", value=str(declared))
        if declared:
            load_external_data_for_tensor(tensor, folder)
        else:  # older onnx reads to the end of the file for a length of 0
            tensor.raw_data = b""
            tensor.data_location = tensor.DEFAULT
            del tensor.external_data[:]


def _inside(folder: str, location: str) -> bool:
    """Whether the external data ``location`` names a file in ``folder``:
    not an absolute path, not one that leaves it by ".." or by a symbolic
    link (checked before anything outside is looked at, which onnx's own
    check, when the data is read, comes after)."""
    if os.path.isabs(location) or os.path.normpath(location).split(
            os.sep)[0] == os.pardir:
        return False
    base = folder or os.curdir
    return fs.lies_in(os.path.join(base, location), base)


# ONNX element types stored several to a byte (onnx.TensorProto names).
_PACKED_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}


def _declared_bytes(tensor) -> int:
    """The bytes of the raw data of the ONNX ``tensor``'s declared shape and
    element type; UnsupportedModelError for a type without a fixed size."""
    from onnx import TensorProto, helper

    bits = next((size for name, size in _PACKED_BITS.items()
                 if getattr(TensorProto, name, None) == tensor.data_type),
                None)
    if bits is None:
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(
                tensor.data_type))
        except (KeyError, TypeError, ValueError):
            dtype = np.dtype(object)
        # ml_dtypes' bfloat16 and float8 types are of kind "V", not "f"
        bits = dtype.itemsize * 8 if dtype.kind in "biufcV" else None
    if bits is None or any(size < 0 for size in tensor.dims):
        raise UnsupportedModelError(
            f"the ONNX tensor {tensor.name!r} (shape {list(tensor.dims)}, "
            f"type {tensor.data_type}) is stored in an external file, but "
            f"has no fixed size in bytes; export the model again")
    return -(-math.prod(tensor.dims) * bits // 8)


def _read_text(path: str, what: str) -> str:
    """The text of the UTF-8 file ``path`` (``what`` names it in errors),
    without a byte-order mark, line ends read as ``\\n``; a file over
    MAX_JSON_BYTES is refused without being read whole."""
    from model_store.store import MAX_JSON_BYTES

    try:
        return fs.read_text(path, MAX_JSON_BYTES, encoding="utf-8-sig")
    except fs.TooLargeError as error:
        raise ConfigError(f"{what} {fs.shown(path)} {error}, the limit for it: give "
                          f"the right file") from None
    except fs.NotRegularError as error:
        raise ConfigError(f"{what} {error}: give a text file") from None
    except OSError as error:
        raise ConfigError(f"cannot read {what} {fs.shown(path)}: "
                          f"{error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{what} {fs.shown(path)} is not UTF-8 text (it has the byte "
            f"{error.object[error.start]:#x}): save it as UTF-8") from None


def _read_classes(path: str | None) -> list[str] | None:
    """The class names of the ``--classes`` file ``path``, one a line in
    output order, spaces around each dropped; blank lines only at the end,
    and no name twice (:func:`model_store.folders.alike`: checked before
    the model is read). None without the option."""
    from model_store.folders import alike

    if path is None:
        return None
    names = [line.strip() for line in
             _read_text(path, "the classes file").split("\n")]
    while names and not names[-1]:
        names.pop()
    if "" in names:
        raise ConfigError(f"{fs.shown(path)} line {names.index('') + 1} is blank: one "
                          f"class name per line, in output order, with no "
                          f"blank line between")
    pair = alike(names)
    if pair:
        first, second = pair
        raise ConfigError(f"{fs.shown(path)} lines {first + 1} and {second + 1} name "
                          f"one class ({names[first]!a}, {names[second]!a}):"
                          f" class names must differ")
    return names


def _class_names(names: list[str] | None, path: str | None,
                 count: int) -> list[str]:
    """``names`` (:func:`_read_classes` of ``path``) if they are ``count``;
    default: "0", "1", ..."""
    if names is None:
        return [str(i) for i in range(count)]
    if len(names) != count:
        raise ConfigError(f"{fs.shown(path)} names {len(names)} classes but the model "
                          f"has {count} outputs: one name per line, in "
                          f"output order")
    return names


PREPROCESSING_KEYS = ("color_mode", "resize", "mean", "std", "background",
                      "resize_shorter")


# The JSON type of each --preprocessing key: (what it is, check); the
# values themselves are checked by Preprocessing.
_STRING = ("a string", lambda v: isinstance(v, str))
_NUMBERS = ("a list of numbers", lambda v: isinstance(v, list) and all(
    isinstance(n, (int, float)) and not isinstance(n, bool) for n in v))
_PREPROCESSING_TYPES = {
    "color_mode": _STRING, "resize": _STRING, "mean": _NUMBERS,
    "std": _NUMBERS, "background": ("an integer", lambda v: type(v) is int),
    "resize_shorter": ("an integer or null",
                       lambda v: v is None or type(v) is int),
}


def _given_preprocessing(text: str) -> dict:
    """The ``--preprocessing`` JSON object, inline or in a UTF-8 file, once
    its keys and the JSON types of its values are right (the values are
    checked by :class:`Preprocessing`)."""
    # A file unless it is an inline object: a FIFO or a folder given as the
    # file is refused as such, not read as JSON text.
    inline = text.lstrip().startswith("{")
    if not inline and os.path.lexists(text):
        text = _read_text(text, "the preprocessing file")
    elif not inline and not text.lstrip().startswith(("[", '"')):
        raise ConfigError(f"--preprocessing {fs.shown(text)}: no such file, "
                          f"and not a JSON object ({{...}}): give the file "
                          f"or the object")
    try:
        given = json.loads(text)
    except (ValueError, RecursionError) as error:  # an integer of more
        # than 4300 digits, lists nested 100,000 deep: not only JSONDecodeError
        raise ConfigError(f"--preprocessing is not valid JSON: "
                          f"{' '.join(str(error).split())[:200]}") from None
    if not isinstance(given, dict) or set(given) - set(PREPROCESSING_KEYS):
        raise ConfigError(f"--preprocessing must be a JSON object with "
                          f"keys among {', '.join(PREPROCESSING_KEYS)}")
    for key, value in given.items():
        what, check = _PREPROCESSING_TYPES[key]
        if not check(value):
            raise ConfigError(f"--preprocessing {key} must be {what}, got "
                              f"{json.dumps(value)}")
    return given


def _preprocessing(given: dict, input_shape: list[int]) -> dict:
    """Preprocessing metadata: defaults (colour mode from the channels,
    bilinear resize to the input size, pixels scaled to [0, 1]) overridden
    by ``given`` (:func:`_given_preprocessing`)."""
    from model_store.preprocessing import Preprocessing

    channels = input_shape[0]
    values: dict[str, Any] = {"color_mode": {1: "L", 3: "RGB"}.get(
        channels), "resize": "bilinear", "mean": [0.0] * channels,
        "std": [1.0] * channels, "background": 0, "resize_shorter": None}
    values.update(given)
    if values["color_mode"] is None:
        raise ConfigError(f"the model takes {channels} channels; imgclass "
                          f"feeds 1 (L) or 3 (RGB)")
    prep = Preprocessing(input_shape=tuple(input_shape),
                         color_mode=values["color_mode"],
                         resize=values["resize"], mean=tuple(values["mean"]),
                         std=tuple(values["std"]),
                         background=values["background"],
                         resize_shorter=values["resize_shorter"])
    return prep.to_metadata()


def import_onnx(path: str, *, name: str, classes: str | None = None,
                preprocessing: str | None = None, root: str | None = None):
    """Imports an ONNX classifier as the next version of ``name``.

    Args:
        path: the ``.onnx`` file.
        name: model name in the store.
        classes: a text file with one class name per line, in output order
            (default: "0", "1", ...).
        preprocessing: JSON (inline or a file) with keys among
            :data:`PREPROCESSING_KEYS`.
        root: the store; see :func:`model_store.store.store_root`.

    Returns:
        The saved version, loaded back and verified; like a training
        without ``--promote``, it becomes ``NAME@latest`` only if it is the
        model's first version (:func:`model_store.store.save_version`).
        A softmax layer is
        appended when the graph does not end with one, so that scores are
        probabilities.

    Raises:
        UnsupportedModelError: an op, attribute or shape cannot be
            imported, or a weight is NaN or infinite.
        ConfigError: a bad option; nothing is written in either case.
    """
    from model_store.spec import build_network, set_weights
    from model_store.store import parse_ref, save_version

    parse_ref(name)
    # The options' files before the model (a 2 GiB read): their mistakes
    # cost nothing.
    class_names = _read_classes(classes)
    given = _given_preprocessing(preprocessing) if preprocessing else {}
    model, digest = _read_onnx(path)
    spec, weights = onnx_to_spec(model)
    _check_finite_weights(weights)
    network = build_network(spec, initialize=False)
    set_weights(network, weights, source=path)
    if len(network.output_shape) != 2:
        raise UnsupportedModelError(
            f"the ONNX graph's output has shape {network.output_shape}; an "
            f"image classifier outputs (N, classes)")
    if network.output_shape[1] < 2:
        raise UnsupportedModelError(
            f"the ONNX graph outputs {network.output_shape[1]} score per "
            f"image; a classifier needs at least 2 classes (export a "
            f"binary classifier with one output per class)")
    _check_not_sigmoid(model.graph)
    softmax_added = spec["layers"][-1]["type"] != "softmax"
    if softmax_added:
        spec["layers"].append({"type": "softmax", "name": _free_name(
            spec, "prob")})
        network = build_network(spec, initialize=False)
        set_weights(network, weights, source=path)
    count = network.output_shape[1]
    file_name = fs.printable(os.path.basename(path))  # valid UTF-8 JSON
    metadata = {
        "class_names": _class_names(class_names, classes, count),
        **_preprocessing(given, spec["input_shape"]),
        "description": f"imported from ONNX file {file_name}",
        "source": {"format": "onnx", "file": file_name,
                   "sha256": digest,
                   "producer": model.producer_name[:MAX_PRODUCER],
                   "opset": _default_opset(model),
                   "softmax_appended": softmax_added},
    }
    return save_version(network, name=name, metadata=metadata, root=root,
                        promote=False)[0]


# Ops that only reshape: what a graph's output is made of lies before them.
_RESHAPING_OPS = ("Flatten", "Reshape", "Identity", "Dropout")


def _check_not_sigmoid(graph) -> None:
    """UnsupportedModelError for a graph whose output a Sigmoid or a
    HardSigmoid makes (reshaped or not): its scores are independent
    per-class probabilities, which the softmax appended to logits would
    squash towards 1 / classes."""
    made_by = {output: node for node in graph.node for output in node.output}
    node = made_by.get(graph.output[0].name)
    while node is not None and node.op_type in _RESHAPING_OPS and node.input:
        node = made_by.get(node.input[0])
    if node is not None and node.op_type in ("Sigmoid", "HardSigmoid"):
        raise UnsupportedModelError(
            f"the ONNX graph ends with a {node.op_type} (node "
            f"{fs.one_line(node.name or node.output[0])!r}): per-class "
            f"probabilities, not logits; imgclass writes one probability "
            f"distribution over the classes: export the model without the "
            f"final {node.op_type} (ending with logits or a Softmax)")


def _check_finite_weights(weights: Mapping[str, np.ndarray]) -> None:
    """UnsupportedModelError for weights that came out NaN or infinite
    from finite constants and the attributes folded into them (a Gemm
    alpha of infinity, a HardSigmoid alpha of NaN): the store would refuse
    them as a training that diverged."""
    bad = sorted(key for key, array in weights.items()
                 if not np.isfinite(array).all())
    if bad:
        raise UnsupportedModelError(
            f"the ONNX graph's constants with the attributes folded into "
            f"them (e.g. Gemm alpha and beta) give NaN or infinite weights "
            f"for {', '.join(bad)}: export the model again from finite "
            f"values")


def _free_name(spec: dict, base: str) -> str:
    names = {layer["name"] for layer in spec["layers"]}
    name, count = base, 1
    while name in names:
        count += 1
        name = f"{base}_{count}"
    return name
