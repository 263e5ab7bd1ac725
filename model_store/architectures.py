"""Specs of well-known image classifiers, as Python functions returning dicts.

Each returns a graph spec (see :mod:`model_store.spec`) with the layers named
after the usual PyTorch checkpoint keys with dots replaced (names cannot hold
dots): ResNet's ``layer1.0.conv1`` is ``layer1_0_conv1``; the inverted
residual networks use ``stem``, ``b{N}_expand``, ``b{N}_dw``,
``b{N}_project`` (each with a ``_bn``), ``b{N}_add``, ``head``, ``pool``,
``fc`` and ``prob``. Convolutions before a batch norm have no bias.
"""

from __future__ import annotations

# (expand ratio, kernel, stride, output channels, repeats) per stage.
EFFICIENTNET_LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2),
                             (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
                             (6, 3, 1, 320, 1))
MOBILENET_V2_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 3, 2, 32, 3),
                       (6, 3, 2, 64, 4), (6, 3, 1, 96, 3), (6, 3, 2, 160, 3),
                       (6, 3, 1, 320, 1))


class _Graph:
    """Collects layers; ``inputs`` is written only where it is not the
    previous layer."""

    def __init__(self, input_shape):
        self.input_shape = list(input_shape)
        self.layers: list[dict] = []
        self.last = "input"

    def add(self, kind: str, name: str, inputs=None, **kwargs) -> str:
        layer = {"type": kind, "name": name}
        if inputs is not None and list(inputs) != [self.last]:
            layer["inputs"] = list(inputs)
        layer.update(kwargs)
        self.layers.append(layer)
        self.last = name
        return name

    def conv_bn(self, name: str, filters: int, kernel: int, *, stride=1,
                padding="valid", groups=1, epsilon: float,
                activation: str | None, inputs=None, bn_name=None) -> str:
        """conv2d without bias, batch_norm, and an optional activation."""
        self.add("conv2d", name, inputs, num_filters=filters,
                 filter_size=kernel, stride=stride, padding=padding,
                 groups=groups, bias=False, nonlinearity="identity")
        out = self.add("batch_norm", bn_name or f"{name}_bn", epsilon=epsilon)
        if activation:
            out = self.add("activation", f"{name}_{activation}",
                           nonlinearity=activation)
        return out

    def spec(self) -> dict:
        return {"input_shape": self.input_shape, "layers": self.layers}


def _inverted_residual_net(stages, *, input_size: int, num_classes: int,
                           padding, epsilon: float, dropout: float) -> dict:
    """Stem, MBConv blocks (ReLU6, no squeeze-and-excitation), head."""
    g = _Graph((3, input_size, input_size))

    def pad(kernel):
        return padding if padding == "same" else kernel // 2

    channels = 32
    g.conv_bn("stem", channels, 3, stride=2, padding=pad(3), epsilon=epsilon,
              activation="relu6")
    block = 0
    for expand, kernel, stride, out, repeats in stages:
        for repeat in range(repeats):
            step = stride if repeat == 0 else 1
            block_input, name = g.last, f"b{block}"
            hidden = channels * expand
            if expand != 1:
                g.conv_bn(f"{name}_expand", hidden, 1, epsilon=epsilon,
                          activation="relu6")
            g.conv_bn(f"{name}_dw", hidden, kernel, stride=step,
                      padding=pad(kernel), groups=hidden, epsilon=epsilon,
                      activation="relu6")
            g.conv_bn(f"{name}_project", out, 1, epsilon=epsilon,
                      activation=None)
            if step == 1 and channels == out:
                g.add("add", f"{name}_add", [block_input, g.last])
            channels = out
            block += 1
    g.conv_bn("head", 1280, 1, epsilon=epsilon, activation="relu6")
    g.add("global_avg_pool", "pool")
    if dropout:
        g.add("dropout", "dropout", p=dropout)
    g.add("dense", "fc", num_units=num_classes, nonlinearity="identity")
    g.add("softmax", "prob")
    return g.spec()


def efficientnet_lite0(*, num_classes: int = 1000, input_size: int = 224,
                       padding="same") -> dict:
    """EfficientNet-Lite0 (Tan and Le 2019; the Lite variant: ReLU6, no
    squeeze-and-excitation, fixed stem and head): 4.65M parameters.

    Args:
        num_classes: outputs of ``fc``.
        input_size: height and width of the RGB input.
        padding: ``"same"`` (TensorFlow's rule, as Google's checkpoints) or
            ``"symmetric"`` (``kernel // 2`` on every side, as PyTorch).
    """
    return _inverted_residual_net(EFFICIENTNET_LITE0_STAGES,
                                  input_size=input_size,
                                  num_classes=num_classes, padding=padding,
                                  epsilon=1e-3, dropout=0.0)


def mobilenet_v2(*, num_classes: int = 1000, input_size: int = 224) -> dict:
    """MobileNetV2 (Sandler et al. 2018), width 1.0, as torchvision builds
    it (symmetric padding, BN epsilon 1e-5, dropout 0.2): 3.50M parameters."""
    return _inverted_residual_net(MOBILENET_V2_STAGES, input_size=input_size,
                                  num_classes=num_classes, padding="symmetric",
                                  epsilon=1e-5, dropout=0.2)


def resnet(depth: int, *, num_classes: int = 1000,
           input_size: int = 224) -> dict:
    """ResNet-18/34/50/101/152 (He et al. 2016) as torchvision builds it
    (stride in the bottleneck's 3x3 convolution, BN epsilon 1e-5)."""
    blocks, bottleneck = {18: ((2, 2, 2, 2), False),
                          34: ((3, 4, 6, 3), False),
                          50: ((3, 4, 6, 3), True),
                          101: ((3, 4, 23, 3), True),
                          152: ((3, 8, 36, 3), True)}[depth]
    g = _Graph((3, input_size, input_size))
    g.conv_bn("conv1", 64, 7, stride=2, padding=3, epsilon=1e-5,
              activation="relu", bn_name="bn1")
    g.add("max_pool2d", "maxpool", pool_size=3, stride=2, padding=1)
    channels = 64
    for stage, count in enumerate(blocks):
        width = 64 * 2 ** stage
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            channels = _resnet_block(g, f"layer{stage + 1}_{index}", channels,
                                     width, stride, bottleneck)
    g.add("global_avg_pool", "avgpool")
    g.add("dense", "fc", num_units=num_classes, nonlinearity="identity")
    g.add("softmax", "prob")
    return g.spec()


def _resnet_block(g: _Graph, name: str, channels: int, width: int,
                  stride: int, bottleneck: bool) -> int:
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block;
    returns its output channels."""
    block_input = g.last
    out = width * 4 if bottleneck else width
    convs = ([(width, 1, 1, 0), (width, 3, stride, 1), (out, 1, 1, 0)]
             if bottleneck else [(width, 3, stride, 1), (out, 3, 1, 1)])
    for number, (filters, kernel, step, pad) in enumerate(convs, 1):
        last = number == len(convs)
        g.conv_bn(f"{name}_conv{number}", filters, kernel, stride=step,
                  padding=pad, epsilon=1e-5,
                  activation=None if last else "relu",
                  bn_name=f"{name}_bn{number}")
    residual = g.last
    shortcut = block_input
    if stride != 1 or channels != out:
        shortcut = g.conv_bn(f"{name}_downsample_0", out, 1, stride=stride,
                             epsilon=1e-5, activation=None,
                             inputs=[block_input],
                             bn_name=f"{name}_downsample_1")
    g.add("add", f"{name}_add", [shortcut, residual])
    g.add("activation", f"{name}_relu", nonlinearity="relu")
    return out
