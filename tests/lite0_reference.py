"""An independent float64 NumPy forward pass of EfficientNet-Lite0.

Written from the architecture's description, not from our spec or layers:
it reads the PyTorch checkpoint's own parameter names (through the
restricted unpickler), keeps batch norm as a separate step (not folded),
pads by TensorFlow's "same" rule and uses ReLU6. Used by the tests as the
reference for the Theano predictor, the pipeline and the ONNX round trip.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-3
# Blocks 1, 3, 5 and 11 (from 0) halve the resolution; the others keep it.
STRIDE_TWO_BLOCKS = {1, 3, 5, 11}
NUM_BLOCKS = 16


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's rule: the extra pixel goes after (bottom/right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _patches(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, Ho, Wo, k, k) views of the padded input."""
    n, c, h, w = x.shape
    (top, bottom), (left, right) = (same_padding(h, kernel, stride),
                                    same_padding(w, kernel, stride))
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho, wo = (x.shape[2] - kernel) // stride + 1, (x.shape[3] - kernel) \
        // stride + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, shape=(n, c, ho, wo, kernel, kernel),
        strides=(s[0], s[1], s[2] * stride, s[3] * stride, s[2], s[3]))


def conv(x: np.ndarray, weight: np.ndarray, stride: int = 1) -> np.ndarray:
    """Dense convolution (cross-correlation), "same" padding, no bias."""
    weight = weight.astype(np.float64)
    if weight.shape[2:] == (1, 1) and stride == 1:
        return np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x,
                         optimize=True)
    return np.einsum("nchwij,ocij->nohw",
                     _patches(x, weight.shape[2], stride), weight,
                     optimize=True)


def depthwise(x: np.ndarray, weight: np.ndarray, stride: int) -> np.ndarray:
    """One kxk filter per channel: a sum over the kernel's offsets."""
    weight = weight.astype(np.float64)[:, 0]
    patches = _patches(x, weight.shape[-1], stride)
    out = np.zeros(patches.shape[:4])
    for i in range(weight.shape[1]):
        for j in range(weight.shape[2]):
            out += patches[..., i, j] * weight[None, :, i, j, None, None]
    return out


def batch_norm(x: np.ndarray, state, prefix: str) -> np.ndarray:
    shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
    get = lambda name: state[f"{prefix}.{name}"].astype(  # noqa: E731
        np.float64).reshape(shape)
    return (x - get("running_mean")) / np.sqrt(
        get("running_var") + EPSILON) * get("weight") + get("bias")


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def forward(state, images: np.ndarray) -> np.ndarray:
    """Normalised ``(N, 3, 224, 224)`` images -> logits ``(N, 1000)``."""
    x = np.asarray(images, np.float64)
    x = relu6(batch_norm(conv(x, state["_conv_stem.weight"], 2), state,
                         "_bn0"))
    for index in range(NUM_BLOCKS):
        block = f"_blocks.{index}"
        stride = 2 if index in STRIDE_TWO_BLOCKS else 1
        inputs = x
        if f"{block}._expand_conv.weight" in state:
            x = relu6(batch_norm(
                conv(x, state[f"{block}._expand_conv.weight"]), state,
                f"{block}._bn0"))
        x = relu6(batch_norm(depthwise(
            x, state[f"{block}._depthwise_conv.weight"], stride), state,
            f"{block}._bn1"))
        x = batch_norm(conv(x, state[f"{block}._project_conv.weight"]), state,
                       f"{block}._bn2")
        if stride == 1 and x.shape == inputs.shape:
            x = x + inputs
    x = relu6(batch_norm(conv(x, state["_conv_head.weight"]), state, "_bn1"))
    x = x.mean(axis=(2, 3))
    return x @ state["_fc.weight"].astype(np.float64).T + state["_fc.bias"]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
