"""Writes a small ONNX image classifier, to try 'imgclass models import onnx'.

    python examples/tiny_onnx_classifier.py tiny.onnx

A residual CNN for RGB 32x32 input with 4 classes (random weights: it
classifies nothing useful, it shows the import): Conv+BatchNormalization+Relu,
a residual block with a depthwise convolution and Add, MaxPool,
GlobalAveragePool, Flatten, Gemm and Softmax, as PyTorch or Keras exporters
write them. Needs only the ``onnx`` package (an imgclass dependency).
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = ["circle", "square", "triangle", "star"]


def build(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.RandomState(seed)
    inits = []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32),
                                             name))
        return name

    def conv_bn_relu(x, name, c_in, c_out, k, stride=1, groups=1, relu=True):
        w = const(f"{name}.W", rng.randn(c_out, c_in // groups, k, k) * 0.3)
        nodes = [helper.make_node(
            "Conv", [x, w], [f"{name}.conv"], name=f"{name}/conv",
            kernel_shape=[k, k], strides=[stride, stride], group=groups,
            pads=[k // 2] * 4)]
        bn = [const(f"{name}.{p}", v) for p, v in (
            ("gamma", 1 + 0.1 * rng.randn(c_out)),
            ("beta", 0.1 * rng.randn(c_out)),
            ("mean", 0.1 * rng.randn(c_out)), ("var", 1 + rng.rand(c_out)))]
        nodes.append(helper.make_node(
            "BatchNormalization", [f"{name}.conv", *bn], [f"{name}.bn"],
            name=f"{name}/bn", epsilon=1e-5))
        out = f"{name}.bn"
        if relu:
            nodes.append(helper.make_node("Relu", [out], [f"{name}.relu"],
                                          name=f"{name}/relu"))
            out = f"{name}.relu"
        return nodes, out

    nodes, x = conv_bn_relu("image", "stem", 3, 16, 3, stride=2)
    more, y = conv_bn_relu(x, "dw", 16, 16, 3, groups=16)
    nodes += more
    more, y = conv_bn_relu(y, "pw", 16, 16, 1, relu=False)
    nodes += more
    nodes += [
        helper.make_node("Add", [x, y], ["res"], name="block/add"),
        helper.make_node("MaxPool", ["res"], ["pooled"], name="maxpool",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["pooled"], ["gap"],
                         name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", const("fc.W", rng.randn(4, 16)),
                                  const("fc.b", rng.randn(4))], ["logits"],
                         name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], name="softmax",
                         axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(
            "image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT,
                                       ["N", 4])], inits)
    model = helper.make_model(graph, producer_name="imgclass-example",
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/tiny_onnx_classifier.py OUT.onnx")
    onnx.save(build(), sys.argv[1])
    with open(sys.argv[1] + ".classes.txt", "w") as handle:
        handle.write("\n".join(CLASSES) + "\n")
    print(f"wrote {sys.argv[1]} and {sys.argv[1]}.classes.txt")
