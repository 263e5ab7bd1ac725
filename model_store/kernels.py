"""Inference kernels: the Theano expressions a compiled predictor is built of.

:func:`conv2d` is the one place a 2-D convolution is expressed (the
``conv2d`` layer uses it for training and the plain forward pass);
:func:`conv2d_bias_act` is a convolution with its bias and nonlinearity, the
unit a predictor is made of once batch normalisation is folded in
(:mod:`model_store.compile`). These are plain Theano: ``CorrMM`` handles
groups (depthwise is ``groups == channels``), strides and asymmetric zero
padding in one op.
"""

from __future__ import annotations

from model_store import nonlinearities
from model_store.engine import T
from model_store.engine import conv2d as _theano_conv2d

Padding = tuple  # ((top, bottom), (left, right))


def conv2d(x, W, *, input_shape, stride, padding: Padding, groups: int):
    """Cross-correlation of ``x`` (N, C, H, W) with ``W`` (F, C/groups, kh, kw).

    Args:
        x: symbolic 4-D input.
        W: Theano shared variable holding the filters.
        input_shape: ``(C, H, W)``, optionally with a leading batch size or
            ``None``.
        stride: ``(sh, sw)``.
        padding: ``((top, bottom), (left, right))`` zero padding.
        groups: number of channel groups.
    """
    filter_shape = tuple(W.get_value(borrow=True).shape)
    return _theano_conv2d(
        x, W, input_shape=(None,) + tuple(input_shape[-3:]),
        filter_shape=filter_shape, border_mode=_border_mode(padding),
        subsample=tuple(stride), filter_flip=False, num_groups=groups)


def conv2d_bias_act(x, W, b, *, input_shape, stride, padding: Padding,
                    groups: int, activation: str):
    """``activation(conv2d(x, W) + b)``; see :func:`conv2d` for the
    arguments. ``b`` is a shared vector of ``F`` biases and ``activation`` a
    name from :mod:`model_store.nonlinearities`.

    Inference only: where one applies (depthwise and dense convolutions
    with the same stride on both axes and an identity/relu/relu6
    activation), a fast C op of :mod:`model_store.ops` computes it all in
    one pass; other convolutions are plain Theano."""
    from model_store.ops import fast_conv2d_bias_act

    fast = fast_conv2d_bias_act(x, W, b, input_shape=input_shape,
                                stride=stride, padding=padding, groups=groups,
                                activation=activation)
    if fast is not None:
        return fast
    out = conv2d(x, W, input_shape=input_shape, stride=stride,
                 padding=padding, groups=groups)
    return nonlinearities.get(activation)(out + b.dimshuffle("x", 0, "x", "x"))


def dense_bias_act(x, W, b, *, activation: str):
    """``activation(x.flatten(2) @ W + b)`` with ``W`` of shape (in, out).

    Inference only: with a float32 input and an identity/relu/relu6
    activation, :class:`model_store.ops.DenseBiasAct` computes it in one
    op, its columns split over the cores; otherwise plain Theano."""
    from model_store.ops import fast_dense_bias_act

    if x.ndim > 2:
        x = x.flatten(2)
    fast = fast_dense_bias_act(x, W, b, activation=activation)
    if fast is not None:
        return fast
    return nonlinearities.get(activation)(T.dot(x, W) + b.dimshuffle("x", 0))


def _border_mode(padding: Padding):
    (top, bottom), (left, right) = padding
    if top == bottom and left == right:
        return (int(top), int(left))
    return ((int(top), int(bottom)), (int(left), int(right)))
