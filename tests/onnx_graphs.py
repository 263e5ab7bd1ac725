"""Small ONNX graphs built with onnx.helper, one per supported op, for the
import tests (compared with onnxruntime)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


class GraphBuilder:
    """Collects nodes and initializers; ``rng`` draws the weights."""

    def __init__(self, input_shape=(3, 9, 10), seed=0, opset=OPSET):
        self.rng = np.random.RandomState(seed)
        self.input_shape = tuple(input_shape)
        self.nodes, self.inits, self.opset = [], [], opset
        self.count = 0

    def const(self, array, name=None, dtype=np.float32) -> str:
        self.count += 1
        name = name or f"c{self.count}"
        self.inits.append(numpy_helper.from_array(
            np.asarray(array, dtype), name))
        return name

    def node(self, op, inputs, name=None, **attrs) -> str:
        self.count += 1
        out = f"t{self.count}"
        self.nodes.append(helper.make_node(op, list(inputs), [out],
                                           name=name or f"{op}_{self.count}",
                                           **attrs))
        return out

    def model(self, output: str, output_rank: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "test",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                           ["N", *self.input_shape])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT,
                                           [None] * output_rank)],
            self.inits)
        custom = sorted({n.domain for n in self.nodes} - {""})
        model = helper.make_model(graph, opset_imports=[
            helper.make_opsetid("", self.opset),
            *(helper.make_opsetid(domain, 1) for domain in custom)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def _conv(g, x, c_in, c_out, k, **attrs):
    w = g.const(g.rng.randn(c_out, c_in // attrs.get("group", 1), k, k) * 0.3)
    b = g.const(g.rng.randn(c_out) * 0.1)
    return g.node("Conv", [x, w, b], kernel_shape=[k, k], **attrs)


def _flat(g, x):
    return g.node("Flatten", [g.node("GlobalAveragePool", [x])])


def view_flatten(g, x="x", batch_index=0, gather_name=None,
                 unsqueeze_axes=(0,)):
    """``x.view(x.size(0), -1)`` as PyTorch exports it (the batch size
    gathered at ``batch_index`` of the shape: 0, or -4 of 4-D; the
    Unsqueeze, named 'u', by ``unsqueeze_axes``)."""
    batch = g.node("Gather", [g.node("Shape", [x]),
                              g.const(batch_index, dtype=np.int64)],
                   name=gather_name, axis=0)
    batch = g.node("Unsqueeze", [batch, g.const(unsqueeze_axes,
                                                dtype=np.int64)], name="u")
    target = g.node("Concat", [batch, g.const([-1], dtype=np.int64)], axis=0)
    return g.node("Reshape", [x, target])


def single_op_graphs() -> dict:
    """name -> (model, output rank): each supported op alone (with the
    least around it that makes a valid graph)."""
    graphs = {}

    def add(name, build, rank=4, input_shape=(3, 9, 10), opset=OPSET):
        g = GraphBuilder(input_shape, seed=len(graphs), opset=opset)
        graphs[name] = (g.model(build(g), rank), rank)

    add("conv_stride2_asymmetric_pads", lambda g: _conv(
        g, "x", 3, 8, 3, strides=[2, 2], pads=[0, 1, 1, 2]))
    add("conv_depthwise", lambda g: _conv(g, "x", 3, 3, 3, group=3,
                                          pads=[1, 1, 1, 1]))
    add("conv_groups_2", lambda g: _conv(g, "x", 4, 6, 3, group=2),
        input_shape=(4, 8, 8))
    add("conv_same_upper", lambda g: _conv(g, "x", 3, 5, 3, strides=[2, 2],
                                           auto_pad="SAME_UPPER"))
    add("conv_same_lower", lambda g: _conv(g, "x", 3, 5, 4,
                                           auto_pad="SAME_LOWER"))
    add("pad_then_conv", lambda g: _conv(g, g.node("Pad", [
        "x", g.const([0, 0, 0, 1, 0, 0, 1, 2], dtype=np.int64)]), 3, 4, 3,
        strides=[2, 2], pads=[1, 0, 0, 0]))
    add("conv_no_bias", lambda g: g.node("Conv", ["x", g.const(
        g.rng.randn(4, 3, 1, 1))]))
    add("batch_norm", lambda g: g.node("BatchNormalization", [
        "x", g.const(1 + g.rng.rand(3)), g.const(g.rng.randn(3)),
        g.const(g.rng.randn(3)), g.const(0.5 + g.rng.rand(3))],
        epsilon=1e-3))
    for op in ("Relu", "Sigmoid", "HardSwish"):  # HardSwish: opset 14
        add(op.lower(), lambda g, op=op: g.node(op, [g.node("Mul", [
            "x", g.const(4.0)])]), opset=14)
    add("hard_sigmoid_default", lambda g: g.node("HardSigmoid", [
        g.node("Mul", ["x", g.const(4.0)])]))
    add("hard_sigmoid_mobilenet", lambda g: g.node(
        "HardSigmoid", [g.node("Mul", ["x", g.const(4.0)])],
        alpha=1 / 6, beta=0.5))
    add("hard_sigmoid_times_input", lambda g: g.node("Mul", [
        "x", g.node("HardSigmoid", ["x"], alpha=1 / 6, beta=0.5)]))
    add("clip_relu6", lambda g: g.node("Clip", [
        g.node("Mul", ["x", g.const(5.0)]), g.const(0.0), g.const(6.0)]))
    add("clip_relu6_opset10", lambda g: g.node("Clip", [
        g.node("Mul", ["x", g.const(5.0)])], min=0.0, max=6.0), opset=10)
    add("mul_two_tensors", lambda g: g.node("Mul", [
        "x", g.node("Sigmoid", ["x"])]))
    add("mul_gate", lambda g: g.node("Mul", [
        "x", g.node("Sigmoid", [g.node("GlobalAveragePool", ["x"])])]))
    add("mul_per_channel_constant", lambda g: g.node("Mul", [
        "x", g.const(g.rng.randn(3, 1, 1))]))
    add("add_two_tensors", lambda g: g.node("Add", [
        g.node("Relu", ["x"]), "x"]))
    add("add_constant_after_conv", lambda g: g.node("Add", [
        g.node("Conv", ["x", g.const(g.rng.randn(4, 3, 1, 1))]),
        g.const(g.rng.randn(1, 4, 1, 1))]))
    add("max_pool", lambda g: g.node("MaxPool", ["x"], kernel_shape=[3, 3],
                                     strides=[2, 2], pads=[1, 1, 1, 1]))
    add("average_pool", lambda g: g.node(
        "AveragePool", ["x"], kernel_shape=[3, 3], strides=[2, 2],
        pads=[1, 1, 1, 1]))
    add("average_pool_count_pad", lambda g: g.node(
        "AveragePool", ["x"], kernel_shape=[2, 3], strides=[1, 2],
        pads=[1, 0, 1, 1], count_include_pad=1))
    add("global_average_pool", lambda g: g.node("GlobalAveragePool", ["x"]))
    add("flatten", lambda g: g.node("Flatten", ["x"]), rank=2)
    add("reshape_flatten", lambda g: g.node("Reshape", [
        "x", g.const([0, -1], dtype=np.int64)]), rank=2)
    add("view_flatten", view_flatten, rank=2)
    add("gemm", lambda g: g.node("Gemm", [
        _flat(g, "x"), g.const(g.rng.randn(5, 3)), g.const(g.rng.randn(5))],
        transB=1, alpha=0.5, beta=2.0), rank=2)
    add("matmul_add", lambda g: g.node("Add", [
        g.node("MatMul", [_flat(g, "x"), g.const(g.rng.randn(3, 5))]),
        g.const(g.rng.randn(5))]), rank=2)
    add("softmax", lambda g: g.node("Softmax", [g.node("Gemm", [
        _flat(g, "x"), g.const(g.rng.randn(3, 5) * 3)])], axis=-1), rank=2)
    add("concat", lambda g: g.node("Concat", [
        "x", g.node("Relu", ["x"])], axis=1))
    # PyTorch's exporter writes an Identity of a weight used twice.
    add("identity_of_a_weight", lambda g: g.node("Conv", [
        "x", g.node("Identity", [g.const(g.rng.randn(4, 3, 3, 3))])]))
    return graphs

