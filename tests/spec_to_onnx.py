"""Writes a stored model as an ONNX graph, the way exporters do: explicit
pads, BatchNormalization kept, ReLU6 as Clip(0, 6), Gemm for dense layers.
Covers the layer types of EfficientNet-Lite0; for the round-trip tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _same(size, kernel, stride):
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pads(layer, size):
    """ONNX pads [top, left, bottom, right] and the output size."""
    k, s = layer["filter_size"], layer.get("stride", 1)
    padding = layer.get("padding", "valid")
    if padding == "same":
        (t, b), (l_, r) = _same(size[0], k, s), _same(size[1], k, s)
    elif padding == "valid":
        t = b = l_ = r = 0
    else:
        raise ValueError(f"padding {padding!r} not covered here")
    out = tuple((n + p + q - k) // s + 1 for n, p, q in
                zip(size, (t, l_), (b, r)))
    return [t, l_, b, r], out


def export(spec: dict, weights: dict, *, opset: int = 13) -> onnx.ModelProto:
    nodes, inits = [], []
    size = tuple(spec["input_shape"][1:])
    sizes = {"input": size}

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32),
                                             name))
        return name

    previous = "input"
    for layer in spec["layers"]:
        name, kind = layer["name"], layer["type"]
        inputs = layer.get("inputs", [previous])
        x = inputs[0]
        if kind == "conv2d":
            pads, sizes[name] = _pads(layer, sizes[x])
            args = [x, const(f"{name}.W", weights[f"{name}.W"])]
            if layer.get("bias", True):
                args.append(const(f"{name}.b", weights[f"{name}.b"]))
            k, s = layer["filter_size"], layer.get("stride", 1)
            nodes.append(helper.make_node(
                "Conv", args, [name], name=name, kernel_shape=[k, k],
                strides=[s, s], pads=pads, group=layer.get("groups", 1)))
            assert layer["nonlinearity"] == "identity"
        elif kind == "batch_norm":
            sizes[name] = sizes[x]
            nodes.append(helper.make_node(
                "BatchNormalization", [x] + [const(f"{name}.{p}", weights[
                    f"{name}.{p}"]) for p in ("gamma", "beta", "mean", "var")],
                [name], name=name, epsilon=layer.get("epsilon", 1e-3)))
        elif kind == "activation" and layer["nonlinearity"] == "relu6":
            sizes[name] = sizes[x]
            nodes.append(helper.make_node(
                "Clip", [x, const(f"{name}.min", 0.0),
                         const(f"{name}.max", 6.0)], [name], name=name))
        elif kind == "add":
            sizes[name] = sizes[x]
            nodes.append(helper.make_node("Add", inputs, [name], name=name))
        elif kind == "global_avg_pool":
            sizes[name] = None
            nodes.append(helper.make_node("GlobalAveragePool", [x],
                                          [f"{name}_4d"], name=f"{name}_4d"))
            nodes.append(helper.make_node("Flatten", [f"{name}_4d"], [name],
                                          name=name))
        elif kind == "dense":
            sizes[name] = None
            nodes.append(helper.make_node(
                "Gemm", [x, const(f"{name}.W", weights[f"{name}.W"]),
                         const(f"{name}.b", weights[f"{name}.b"])], [name],
                name=name))
            assert layer["nonlinearity"] == "identity"
        elif kind == "softmax":
            sizes[name] = None
            nodes.append(helper.make_node("Softmax", [x], [name], name=name,
                                          axis=-1))
        else:
            raise ValueError(f"layer type {kind} not covered here")
        previous = name
    classes = weights[f"{spec['layers'][-2]['name']}.W"].shape[1]
    graph = helper.make_graph(
        nodes, "exported",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                       ["N", *spec["input_shape"]])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT,
                                       ["N", classes])], inits)
    model = helper.make_model(graph, producer_name="imgclass-tests",
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
