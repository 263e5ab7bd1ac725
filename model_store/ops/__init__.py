"""Fast Theano C ops for inference graphs (predictors).

``fast_conv2d_bias_act`` has the signature of
``model_store.kernels.conv2d_bias_act`` and returns the graph built from these
ops when one applies (depthwise convolution, 1x1 stride-1 dense convolution,
a dense convolution of an input with 2 to 4 channels such as an RGB stem, or
any other dense convolution (im2col and sgemm per image), with an
identity/relu/relu6 activation, float32, the same stride on both axes), else
None (grouped convolutions, other activations; the ops that call BLAS when
Theano links none, see ``blas_linked``): the
caller then builds the plain Theano graph; ``fast_dense_bias_act`` does the
same for ``model_store.kernels.dense_bias_act`` (a dense layer). The ops are
inference-only (their ``grad`` raises), so training graphs keep the plain
ops.

Importing this package also registers the graph rewrites of ``fusion.py``:
a residual ``add`` folded into the pointwise op that feeds it, an expansion
fused with the depthwise convolution it feeds, and a max pooling folded
into the dense convolution it reads.
"""

from __future__ import annotations

import numpy as np

from model_store.engine import T, theano
from model_store.ops import fusion  # noqa: F401  (registers the rewrites)
from model_store.ops.base import ACTIVATIONS
from model_store.ops.conv import DenseConv2dBiasAct
from model_store.ops.dense import DenseBiasAct
from model_store.ops.depthwise import DepthwiseConv2dBiasAct, StemConv2dBiasAct
from model_store.ops.expand import ExpandDepthwiseConv2dBiasAct
from model_store.ops.pointwise import PointwiseConv2dBiasAct

__all__ = ["ACTIVATIONS", "DenseBiasAct", "DenseConv2dBiasAct",
           "DepthwiseConv2dBiasAct",
           "ExpandDepthwiseConv2dBiasAct", "PointwiseConv2dBiasAct",
           "StemConv2dBiasAct", "fast_conv2d_bias_act", "fast_dense_bias_act"]

#: Input channels for which a dense convolution uses the stem op (others use
#: ``DenseConv2dBiasAct``).
STEM_CHANNELS = range(2, 5)


def blas_linked() -> bool:
    """Whether Theano links a BLAS library (``blas.ldflags``). Without one,
    Theano's ``sgemm_`` is its fallback through NumPy's C API, which needs
    the GIL: the ops that call it with the GIL released (``uses_blas``:
    pointwise, dense, dense convolution, expansion) would abort the
    process, so they are not used and the plain Theano graph runs."""
    return bool(theano.config.blas.ldflags)


def _square_stride(stride):
    """The common stride of both axes, or None if they differ."""
    if isinstance(stride, (tuple, list)):
        return int(stride[0]) if len(stride) == 2 and stride[0] == stride[1] \
            else None
    return int(stride)


def fast_conv2d_bias_act(x, W, b, *, input_shape, stride, padding, groups,
                         activation):
    """``act(conv2d(x, W, groups) + b)`` with a fast op, or None.

    Args:
        x: 4-D float32 Theano variable (N, C, H, W).
        W, b: Theano shared variables, W (F, C/groups, kh, kw), b (F,) or None.
        input_shape: (C, H, W) (or (N, C, H, W)) of x.
        stride: int or (sh, sw); padding ((top, bottom), (left, right)).
        groups: int; activation: a nonlinearity name.
    """
    weights = W.get_value(borrow=True)
    step = _square_stride(stride)
    if (activation not in ACTIVATIONS or step is None or x.ndim != 4
            or x.dtype != "float32" or weights.dtype != np.float32
            or weights.ndim != 4 or (b is not None and b.dtype != "float32")):
        return None
    filters, per_group, kh, kw = weights.shape
    channels = int(input_shape[-3])
    if b is None:
        b = T.constant(np.zeros(filters, np.float32))
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
    if groups == channels == filters and per_group == 1:
        op = DepthwiseConv2dBiasAct(kernel=(kh, kw), stride=step,
                                    padding=padding, activation=activation)
        return op(x, W, b)
    if groups == 1 and per_group == channels in STEM_CHANNELS:
        op = StemConv2dBiasAct(kernel=(kh, kw), stride=step, padding=padding,
                               activation=activation)
        return op(x, W, b)
    if not blas_linked():
        return None
    if (groups == 1 and (kh, kw) == (1, 1) and step == 1
            and padding == ((0, 0), (0, 0)) and per_group == channels):
        return PointwiseConv2dBiasAct(activation=activation)(x, W, b)
    if groups == 1 and per_group == channels:
        op = DenseConv2dBiasAct(kernel=(kh, kw), stride=step, padding=padding,
                                activation=activation)
        return op(x, W, b)
    return None


def fast_dense_bias_act(x, W, b, *, activation):
    """``act(x @ W + b)`` with :class:`DenseBiasAct`, or None (the caller
    builds the plain graph) for other dtypes or activations, or when
    Theano links no BLAS (:func:`blas_linked`).

    Args:
        x: 2-D float32 Theano variable (M, K).
        W, b: Theano shared variables, W (K, N), b (N,).
        activation: a nonlinearity name.
    """
    weights = W.get_value(borrow=True)
    if (not blas_linked() or activation not in ACTIVATIONS or x.ndim != 2
            or x.dtype != "float32"
            or weights.dtype != np.float32 or weights.ndim != 2
            or b.dtype != "float32"):
        return None
    return DenseBiasAct(activation=activation)(x, W, b)
