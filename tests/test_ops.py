"""The fast inference ops (model_store/ops) against plain NumPy references."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from model_store.engine import T, function, grad, pool_2d, shared
from model_store.ops import (
    DenseBiasAct,
    DenseConv2dBiasAct,
    DepthwiseConv2dBiasAct,
    ExpandDepthwiseConv2dBiasAct,
    PointwiseConv2dBiasAct,
    fast_conv2d_bias_act,
)
from tests.conftest import run_tests_compiled_for

ACT = {"identity": lambda v: v, "relu": lambda v: np.maximum(v, 0),
       "relu6": lambda v: np.clip(v, 0, 6)}


def numpy_grouped_conv(x, w, b, stride, padding, groups, activation):
    """float64 cross-correlation with explicit ((t, b), (l, r)) zero padding."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), *padding))
    n, c, h, wd = x.shape
    f, per_group, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, f, oh, ow))
    per_out = f // groups
    for g in range(groups):
        xs = x[:, g * per_group:(g + 1) * per_group]
        ws = w[g * per_out:(g + 1) * per_out].astype(np.float64)
        for ky in range(kh):
            for kx in range(kw):
                patch = xs[:, :, ky:ky + stride * (oh - 1) + 1:stride,
                           kx:kx + stride * (ow - 1) + 1:stride]
                out[:, g * per_out:(g + 1) * per_out] += np.einsum(
                    "nchw,fc->nfhw", patch, ws[:, :, ky, kx])
    return ACT[activation](out + b[None, :, None, None])


def tf_same(size, k, s):
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return (total // 2, total - total // 2)


def geometry(kernel, stride, rule, size):
    """``(kh, kw, ((top, bottom), (left, right)))`` from a test case's
    kernel (an int or a pair) and padding rule ("same", "valid" or the
    padding itself) for an input of ``size``."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    if rule == "same":
        return kh, kw, (tf_same(size[0], kh, stride),
                        tf_same(size[1], kw, stride))
    if rule == "valid":
        return kh, kw, ((0, 0), (0, 0))
    return kh, kw, rule


def run_fast(x, w, b, *, stride, padding, groups, activation):
    xs = T.tensor4("x")
    out = fast_conv2d_bias_act(
        xs, shared(w), shared(b), input_shape=x.shape[1:], stride=stride,
        padding=padding, groups=groups, activation=activation)
    assert out is not None
    return function([xs], out)(x)


def rand(rng, *shape):
    # Spread so that relu6 clips at both ends.
    return (rng.randn(*shape) * 3).astype(np.float32)


# (kernel, stride, padding rule, activation, input H x W)
DEPTHWISE = [
    (3, 1, "same", "relu6", (7, 9)),
    (3, 2, "same", "relu", (7, 9)),      # TF same: (1, 1) rows, (1, 1) cols
    (3, 2, "same", "relu6", (8, 10)),    # TF same: (0, 1), (0, 1)
    (5, 2, "same", "identity", (9, 12)),  # TF same: (2, 2), (1, 2)
    (5, 1, "valid", "relu6", (7, 9)),
    (3, 1, ((2, 0), (0, 1)), "identity", (5, 6)),
    ((2, 4), 3, ((1, 0), (3, 2)), "relu", (8, 11)),  # generic kernel/stride
    # tiles of 8 rows for rows wider than 32 columns (AVX-512), 4 up to 32
    (3, 1, "same", "relu6", (21, 33)),
    (5, 2, "same", "relu", (70, 75)),
    (5, 1, "same", "relu6", (13, 32)),
    # padded planes over 32 KB go in bands of output rows (Lite0's 112 x 112;
    # the last band partial, bottom padding rows in it)
    (3, 1, "same", "relu6", (112, 112)),
    (3, 2, "same", "relu", (97, 111)),
]


@pytest.mark.parametrize("kernel,stride,rule,activation,size", DEPTHWISE)
@pytest.mark.parametrize("batch", [1, 5])
def test_depthwise_matches_numpy(kernel, stride, rule, activation, size,
                                 batch):
    rng = np.random.RandomState(batch)
    kh, kw, padding = geometry(kernel, stride, rule, size)
    channels = 3
    x = rand(rng, batch, channels, *size)
    w = rand(rng, channels, 1, kh, kw)
    b = rand(rng, channels)
    got = run_fast(x, w, b, stride=stride, padding=padding, groups=channels,
                   activation=activation)
    want = numpy_grouped_conv(x, w, b, stride, padding, channels, activation)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# The stem op's cases (2 to 4 input channels): (input channels, kernel,
# stride, padding rule, activation, input H x W). Outputs wider than 8 with
# a 3x3 or 5x5 kernel take the kernel that computes 8 filters at once with
# AVX-512, 4 with AVX2 (its last 16-column tile partly outside the row:
# widths 11, 23, 19, 33); the others go filter by filter. 9 filters:
# blocks of 8 or 4 and one left over.
STEM = [
    (3, 3, 2, "same", "relu6", (7, 9)),
    (2, 5, 1, "same", "relu", (6, 11)),
    (4, (2, 3), 2, ((0, 1), (2, 0)), "identity", (9, 8)),
    (3, 3, 2, "same", "relu6", (37, 45)),
    (3, 5, 2, "valid", "identity", (30, 41)),
    (2, 3, 1, "same", "relu", (20, 33)),
]


# (input channels, kernel, stride, padding rule, activation, input H x W):
# dense convolutions of 1 or more than 4 input channels (digits-cnn's two,
# an imported VGG-style 3x3), strides 1-3, TF-same and asymmetric padding,
# odd sizes, a padding wider than the kernel's reach on one side.
DENSE_CONV = [
    (1, 3, 1, "valid", "relu", (32, 32)),     # digits-cnn's conv1
    (32, 3, 1, "valid", "relu", (15, 15)),    # and its conv2
    (6, 3, 2, "same", "relu6", (17, 19)),
    (5, 5, 1, "same", "identity", (9, 12)),
    (8, (2, 3), 3, ((1, 0), (2, 1)), "relu", (10, 11)),
    (1, 3, 2, ((0, 2), (3, 0)), "identity", (7, 5)),
    # a stride larger than the kernel (input pixels no window reads),
    # padding larger than the kernel (output rows and columns of bias only)
    (5, 2, 3, ((0, 1), (1, 0)), "relu", (11, 10)),
    (6, 2, 1, ((3, 4), (5, 2)), "relu6", (5, 4)),
    (7, 1, 4, ((2, 2), (2, 2)), "identity", (9, 9)),
]


def numpy_max_pool(x, window, stride):
    """Max over windows wholly inside each plane."""
    (ph, pw), (sh, sw) = window, stride
    n, c, h, w = x.shape
    hp, wp = (h - ph) // sh + 1, (w - pw) // sw + 1
    out = np.full((n, c, hp, wp), -np.inf)
    for a in range(ph):
        for bb in range(pw):
            out = np.maximum(out, x[:, :, a:a + sh * (hp - 1) + 1:sh,
                                    bb:bb + sw * (wp - 1) + 1:sw])
    return out


@pytest.mark.parametrize("channels,kernel,stride,rule,activation,size",
                         STEM + DENSE_CONV)
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_dense_convolution_matches_numpy(channels, kernel, stride, rule,
                                         activation, size, batch):
    """The stem op (2 to 4 input channels) and DenseConv2dBiasAct (the
    others)."""
    rng = np.random.RandomState(batch + channels)
    kh, kw, padding = geometry(kernel, stride, rule, size)
    x = rand(rng, batch, channels, *size)
    w = rand(rng, 9, channels, kh, kw) / np.sqrt(channels)
    b = rand(rng, 9)
    got = run_fast(x, w, b, stride=stride, padding=padding, groups=1,
                   activation=activation)
    want = numpy_grouped_conv(x, w, b, stride, padding, 1, activation)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# (window, stride, input H x W of the pooling): digits-cnn's 2x2 over odd
# planes (the last row and column dropped), overlapping 3x3 windows every
# 2, a window as large as the plane, a non-square window and stride.
POOLS = [((2, 2), (2, 2), (13, 13)), ((3, 3), (2, 2), (12, 11)),
         ((5, 4), (1, 1), (5, 4)), ((2, 3), (3, 1), (10, 9))]


def _relu_conv_then_max_pool(x, w, b, padding, window, stride):
    """A compiled predictor graph: a 3x3 relu conv2d layer of ``w`` and
    ``b`` (stride 1) on images shaped as ``x``, then max_pool2d."""
    xs = T.tensor4("x")
    conv = fast_conv2d_bias_act(xs, shared(w), shared(b),
                                input_shape=x.shape[1:], stride=1,
                                padding=padding, groups=1,
                                activation="relu")
    return function([xs], pool_2d(conv, ws=window, stride=stride,
                                  ignore_border=True, mode="max"))


@pytest.mark.parametrize("window,stride,size", POOLS)
@pytest.mark.parametrize("batch", [1, 5])
def test_max_pooling_of_a_dense_conv_is_folded_into_it(window, stride, size,
                                                       batch):
    """A predictor's conv2d layer followed by max_pool2d (no padding) runs
    one op: the unpooled planes never go through memory."""
    rng = np.random.RandomState(batch)
    x = rand(rng, batch, 5, size[0] + 2, size[1] + 2)
    w = rand(rng, 9, 5, 3, 3) / 3
    b = rand(rng, 9)
    fn = _relu_conv_then_max_pool(x, w, b, ((0, 0), (0, 0)), window, stride)
    assert [node.op for node in fn.maker.fgraph.toposort()] == [
        DenseConv2dBiasAct(kernel=(3, 3), stride=1, padding=((0, 0), (0, 0)),
                           activation="relu", pool=window + stride)]
    want = numpy_max_pool(numpy_grouped_conv(
        x, w, b, 1, ((0, 0), (0, 0)), 1, "relu"), window, stride)
    got = fn(x)
    assert got.shape == want.shape == (batch, 9, *((np.subtract(
        size, window)) // stride + 1))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", ["read elsewhere", "padded", "border kept",
                                  "average"])
def test_a_pooling_that_cannot_be_folded_stays_theanos(case):
    """The fold applies only when the pooling is all that reads the
    convolution and it pools whole windows without padding; otherwise
    Theano's Pool runs, and the results are the same."""
    rng = np.random.RandomState(2)
    x = rand(rng, 2, 5, 9, 9)
    w, b = rand(rng, 4, 5, 3, 3) / 3, rand(rng, 4)
    xs = T.tensor4("x")
    conv = fast_conv2d_bias_act(xs, shared(w), shared(b), input_shape=(5, 9, 9),
                                stride=1, padding=((0, 0), (0, 0)), groups=1,
                                activation="identity")
    # conv: 7x7 planes
    kwargs = dict(ws=(2, 2), stride=(2, 2), ignore_border=True, mode="max")
    if case == "padded":
        kwargs["pad"] = (1, 1)
    elif case == "border kept":
        kwargs["ignore_border"] = False
    elif case == "average":
        kwargs["mode"] = "average_exc_pad"
    outputs = [pool_2d(conv, **kwargs)]
    if case == "read elsewhere":
        outputs.append(conv)
    fn = function([xs], outputs)
    ops = [node.op for node in fn.maker.fgraph.toposort()]
    assert DenseConv2dBiasAct(kernel=(3, 3), stride=1,
                              padding=((0, 0), (0, 0)),
                              activation="identity") in ops
    assert any(type(op).__name__ == "Pool" for op in ops)
    plain = function([xs], pool_2d(T.as_tensor_variable(numpy_grouped_conv(
        x, w, b, 1, ((0, 0), (0, 0)), 1, "identity").astype(np.float32)),
        **kwargs), on_unused_input="ignore")
    np.testing.assert_allclose(fn(x)[0], plain(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("groups,kernel,stride,activation", [
    ("depthwise", 3, 1, "relu6"), ("depthwise", 5, 2, "relu"),
    ("depthwise", 3, 2, "identity"), ("stem", 3, 2, "relu6"),
    ("stem", 5, 1, "relu"), ("pointwise", 1, 1, "relu6"),
    ("pointwise", 1, 1, "identity"), ("dense", 3, 1, "relu"),
    ("dense", 3, 2, "relu6")])
def test_a_nan_input_gives_nan_where_numpy_does(groups, kernel, stride,
                                                activation):
    """Activations propagate NaN (NumPy's maximum and clip do): a broken
    input or weight shows as NaN in the outputs it reaches, not as 0."""
    rng = np.random.RandomState(11)
    channels = {"depthwise": 4, "stem": 3, "pointwise": 6, "dense": 6}[groups]
    x = rand(rng, 2, channels, 20, 37)
    x[1, 0, 9, 17] = np.nan
    filters = 7 if groups != "depthwise" else channels
    w = rand(rng, filters, 1 if groups == "depthwise" else channels, kernel,
             kernel)
    b = rand(rng, filters)
    padding = ((kernel // 2, kernel // 2),) * 2
    g = channels if groups == "depthwise" else 1
    got = run_fast(x, w, b, stride=stride, padding=padding, groups=g,
                   activation=activation)
    want = numpy_grouped_conv(x, w, b, stride, padding, g, activation)
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("window,stride", [((2, 2), (2, 2)),
                                           ((3, 3), (2, 2)), ((2, 3), (3, 1))])
def test_a_nan_in_a_folded_max_pooling_window_matches_numpy(window, stride):
    """A NaN in any cell of a pooling window makes that window's maximum
    NaN, as NumPy's maximum does (and the unfolded ops before the
    pooling), wherever the NaN lies in the window: the not-finite check
    of the predictions then sees it."""
    rng = np.random.RandomState(5)
    x = rand(rng, 2, 5, 14, 15)
    # NaN pixels, each reaching the 3x3 block of cells around it: windows
    # with NaN in their first cell, and others with NaN only in later ones.
    x[0, 2, 3, 4] = x[0, 1, 6, 9] = x[1, 0, 10, 13] = x[1, 4, 1, 1] = np.nan
    w, b = rand(rng, 4, 5, 3, 3), rand(rng, 4)
    fn = _relu_conv_then_max_pool(x, w, b, ((1, 1), (1, 1)), window, stride)
    assert [type(node.op) for node in fn.maker.fgraph.toposort()] == [
        DenseConv2dBiasAct]
    want = numpy_max_pool(numpy_grouped_conv(
        x, w, b, 1, ((1, 1), (1, 1)), 1, "relu"), window, stride)
    got = fn(x)
    assert np.isnan(want).sum() > 4 * 2  # several windows, each filter
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# (batch, input H x W, input channels, output channels): C up to 128 runs
# the direct kernel (40 x 41 with 100 outputs: in 3 tiles of columns), more
# runs sgemm, per image or, for several images of up to 64 pixels, over the
# images' columns side by side. Odd batches of larger planes: two threads'
# even shares of the columns meet inside an image.
POINTWISE = [(1, (7, 9), 6, 10), (4, (3, 5), 6, 10), (2, (40, 41), 6, 10),
             (2, (40, 41), 20, 100), (1, (7, 9), 130, 10),
             (3, (5, 7), 130, 10), (3, (40, 41), 20, 100),
             (3, (9, 11), 130, 10)]


@pytest.mark.parametrize("activation", ["identity", "relu", "relu6"])
@pytest.mark.parametrize("batch,size,inputs,outputs", POINTWISE)
def test_pointwise_matches_numpy(activation, batch, size, inputs, outputs):
    rng = np.random.RandomState(len(activation))
    x = rand(rng, batch, inputs, *size)
    w = rand(rng, outputs, inputs, 1, 1) / (3 * np.sqrt(inputs / 6))
    b = rand(rng, outputs)
    got = run_fast(x, w, b, stride=1, padding=((0, 0), (0, 0)), groups=1,
                   activation=activation)
    want = numpy_grouped_conv(x, w, b, 1, ((0, 0), (0, 0)), 1, activation)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("batch,size,inputs,outputs", POINTWISE[2:])
def test_residual_add_is_fused_into_pointwise_and_matches_numpy(
        batch, size, inputs, outputs):
    rng = np.random.RandomState(3)
    x = rand(rng, batch, inputs, *size)
    r = rand(rng, batch, outputs, *size)
    w = rand(rng, outputs, inputs, 1, 1) / np.sqrt(inputs / 6)
    b = rand(rng, outputs)
    xs, rs = T.tensor4("x"), T.tensor4("r")
    out = fast_conv2d_bias_act(
        xs, shared(w), shared(b), input_shape=(inputs, *size), stride=1,
        padding=((0, 0), (0, 0)), groups=1, activation="relu6") + rs
    fn = function([xs, rs], out)
    ops = [node.op for node in fn.maker.fgraph.toposort()]
    assert ops == [PointwiseConv2dBiasAct(activation="relu6", residual=True)]
    want = numpy_grouped_conv(x, w, b, 1, ((0, 0), (0, 0)), 1, "relu6") + r
    np.testing.assert_allclose(fn(x, r), want, rtol=1e-5, atol=1e-4)


# (depthwise kernel, stride, padding rule, activations, input H x W, batch,
# input channels, expanded channels)
EXPAND_DEPTHWISE = [
    (3, 1, "same", ("relu6", "relu6"), (7, 9), 1, 5, 12),
    (3, 2, "same", ("relu", "relu6"), (8, 10), 64, 5, 6),
    (5, 2, "same", ("relu6", "identity"), (9, 12), 1, 5, 20),
    (5, 1, "valid", ("identity", "relu"), (7, 9), 3, 5, 9),
    (3, 1, ((2, 0), (0, 1)), ("relu6", "relu6"), (5, 6), 2, 5, 16),
    ((2, 4), 3, ((1, 0), (3, 2)), ("relu", "relu"), (8, 11), 2, 5, 10),
    # several blocks of channels per image, the last one partial: 70
    # channels in 2 blocks when 2 threads share one image; 24 channels of
    # 112 x 113 in blocks of 16
    (3, 2, "same", ("relu6", "relu6"), (40, 41), 1, 5, 70),
    (3, 1, "same", ("relu6", "relu6"), (112, 113), 2, 5, 24),
    (3, 2, "same", ("relu6", "relu6"), (112, 112), 2, 16, 24),  # block 1
    # an odd batch: two threads' even shares of the planes meet inside an
    # image (and inside a block of 16 channels; sgemm per image below)
    (3, 2, "same", ("relu6", "relu6"), (112, 112), 3, 16, 24),
    (3, 1, "same", ("relu6", "relu6"), (9, 11), 3, 130, 20),
    # the direct expansion's column tiles: full tiles, single vectors and a
    # last partial vector (420 pixels), only a partial vector (15), at its
    # largest number of inputs (128); above it, sgemm: over several images'
    # columns side by side for planes of up to 64 pixels (63, 49), else per
    # image (one image; 72 pixels)
    (3, 2, "same", ("relu6", "relu6"), (20, 21), 2, 16, 22),
    (3, 1, "same", ("identity", "relu6"), (3, 5), 1, 24, 7),
    (5, 1, "same", ("relu6", "identity"), (6, 7), 3, 128, 9),
    (3, 1, "same", ("relu6", "relu6"), (7, 9), 2, 130, 12),
    (3, 2, "same", ("relu", "relu6"), (7, 7), 3, 129, 20),
    (3, 1, "same", ("relu6", "relu6"), (7, 9), 1, 130, 12),
    (5, 1, "same", ("relu6", "identity"), (8, 9), 2, 130, 12),
]


def run_expand_depthwise(x, we, be, wd, bd, *, stride, padding, activations):
    """The two convolutions as built for a predictor, and the ops the
    compiled graph runs."""
    xs = T.tensor4("x")
    expanded = fast_conv2d_bias_act(
        xs, shared(we), shared(be), input_shape=x.shape[1:], stride=1,
        padding=((0, 0), (0, 0)), groups=1, activation=activations[0])
    out = fast_conv2d_bias_act(
        expanded, shared(wd), shared(bd),
        input_shape=(we.shape[0], *x.shape[2:]), stride=stride,
        padding=padding, groups=we.shape[0], activation=activations[1])
    fn = function([xs], out)
    return fn(x), [node.op for node in fn.maker.fgraph.toposort()]


@pytest.mark.parametrize(
    "kernel,stride,rule,activations,size,batch,inputs,channels",
    EXPAND_DEPTHWISE)
def test_expansion_fused_with_depthwise_matches_numpy(
        kernel, stride, rule, activations, size, batch, inputs, channels):
    """A 1x1 expansion that feeds only a depthwise convolution runs as one
    op, with the result of the two convolutions one after the other."""
    rng = np.random.RandomState(channels + batch)
    kh, kw, padding = geometry(kernel, stride, rule, size)
    x = rand(rng, batch, inputs, *size)
    we = rand(rng, channels, inputs, 1, 1) / (3 * np.sqrt(inputs / 5))
    be = rand(rng, channels)
    wd, bd = rand(rng, channels, 1, kh, kw) / 3, rand(rng, channels)
    got, ops = run_expand_depthwise(x, we, be, wd, bd, stride=stride,
                                    padding=padding, activations=activations)
    assert ops == [ExpandDepthwiseConv2dBiasAct(
        kernel=(kh, kw), stride=stride, padding=padding,
        expand_activation=activations[0], activation=activations[1])]
    expanded = numpy_grouped_conv(x, we, be, 1, ((0, 0), (0, 0)), 1,
                                  activations[0])
    want = numpy_grouped_conv(expanded, wd, bd, stride, padding, channels,
                              activations[1])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_an_expansion_read_elsewhere_is_not_fused():
    """When the expanded tensor is also an output (or feeds another layer),
    it must exist whole: the two ops stay separate."""
    rng = np.random.RandomState(5)
    x = rand(rng, 2, 6, 6, 7)
    we, be = rand(rng, 8, 6, 1, 1), rand(rng, 8)
    wd, bd = rand(rng, 8, 1, 3, 3), rand(rng, 8)
    xs = T.tensor4("x")
    expanded = fast_conv2d_bias_act(
        xs, shared(we), shared(be), input_shape=(6, 6, 7), stride=1,
        padding=((0, 0), (0, 0)), groups=1, activation="relu6")
    out = fast_conv2d_bias_act(
        expanded, shared(wd), shared(bd), input_shape=(8, 6, 7), stride=1,
        padding=((1, 1), (1, 1)), groups=8, activation="relu6")
    fn = function([xs], [out, expanded])
    kinds = sorted(type(node.op).__name__
                   for node in fn.maker.fgraph.toposort())
    assert kinds == ["DepthwiseConv2dBiasAct", "PointwiseConv2dBiasAct"]
    got, got_expanded = fn(x)
    want_expanded = numpy_grouped_conv(x, we, be, 1, ((0, 0), (0, 0)), 1,
                                       "relu6")
    np.testing.assert_allclose(got_expanded, want_expanded, rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(got, numpy_grouped_conv(
        want_expanded, wd, bd, 1, ((1, 1), (1, 1)), 8, "relu6"),
        rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kwargs", [
    dict(shape=(4, 8, 3, 3), groups=1, stride=1, activation="swish"),
    dict(shape=(4, 8, 3, 3), groups=1, stride=(1, 2), activation="relu"),
    dict(shape=(4, 1, 3, 3), groups=4, stride=1, activation="swish"),
    dict(shape=(8, 1, 3, 3), groups=4, stride=1, activation="relu"),  # x2
    dict(shape=(4, 2, 3, 3), groups=2, stride=1, activation="relu"),
    dict(shape=(4, 1, 3, 3), groups=4, stride=(1, 2), activation="relu"),
])
def test_no_fast_op_for_other_convolutions(kwargs):
    shape = kwargs.pop("shape")
    w = shared(np.zeros(shape, np.float32))
    b = shared(np.zeros(shape[0], np.float32))
    kwargs.setdefault("input_shape", (shape[1] * kwargs["groups"], 8, 8))
    assert fast_conv2d_bias_act(T.tensor4("x"), w, b,
                                padding=((0, 0), (0, 0)), **kwargs) is None


# (batch, inputs, outputs): columns split over the threads in blocks of 16
# (1000 outputs: 2 blocks of 512 and 488; 20: 16 and 4; 10: one block),
# one input, none (every output is act(b))
DENSE = [(1, 1280, 1000), (3, 37, 20), (64, 256, 10), (2, 1, 17), (2, 0, 5)]


@pytest.mark.parametrize("activation", ["identity", "relu", "relu6"])
@pytest.mark.parametrize("batch,inputs,outputs", DENSE)
def test_dense_matches_numpy(activation, batch, inputs, outputs):
    """A predictor's dense layer (kernels.dense_bias_act) runs one op whose
    output is act(x @ W + b)."""
    from model_store.kernels import dense_bias_act

    rng = np.random.RandomState(batch + inputs)
    x = rand(rng, batch, inputs) / 3
    w = rand(rng, inputs, outputs) / max(1, np.sqrt(inputs))
    b = rand(rng, outputs)
    xs = T.matrix("x", dtype="float32")
    fn = function([xs], dense_bias_act(xs, shared(w), shared(b),
                                       activation=activation))
    assert [node.op for node in fn.maker.fgraph.toposort()] == [
        DenseBiasAct(activation=activation)]
    want = ACT[activation](x.astype(np.float64) @ w + b)
    np.testing.assert_allclose(fn(x), want, rtol=1e-5, atol=1e-4)


def test_ops_are_inference_only():
    x = T.tensor4("x")
    w = shared(np.ones((2, 1, 3, 3), np.float32))
    b = shared(np.zeros(2, np.float32))
    out = DepthwiseConv2dBiasAct(kernel=(3, 3), stride=1,
                                 padding=((1, 1), (1, 1)),
                                 activation="relu")(x, w, b)
    with pytest.raises(NotImplementedError, match="inference-only"):
        grad(out.sum(), w)


def test_depthwise_rejects_weights_of_another_shape():
    x = T.tensor4("x")
    w = shared(np.ones((3, 1, 3, 3), np.float32))
    b = shared(np.zeros(3, np.float32))
    fn = function([x], DepthwiseConv2dBiasAct(
        kernel=(3, 3), stride=1, padding=((1, 1), (1, 1)),
        activation="relu")(x, w, b))
    with pytest.raises(ValueError, match="needs W"):
        fn(np.ones((1, 2, 5, 5), np.float32))


# (op, what cannot be allocated): the contiguous copy of a non-contiguous
# input (every op's C template), or DenseConv2dBiasAct's per-thread im2col
# buffer.
OUT_OF_MEMORY = [("DenseConv2dBiasAct", "input copy"),
                 ("DepthwiseConv2dBiasAct", "input copy"),
                 ("StemConv2dBiasAct", "input copy"),
                 ("PointwiseConv2dBiasAct", "input copy"),
                 ("ExpandDepthwiseConv2dBiasAct", "input copy"),
                 ("DenseBiasAct", "input copy"),
                 ("DenseConv2dBiasAct", "column buffer")]


@pytest.mark.parametrize("op,what", OUT_OF_MEMORY)
def test_an_op_that_cannot_allocate_raises_memory_error(op, what):
    """Out of memory inside a fast op is a MemoryError that leaves the
    function usable, not a crash of the worker: run in a process whose
    address space is limited just before the call."""
    script = textwrap.dedent(f"""
        import re, resource
        import numpy as np
        from model_store.engine import T, function, shared
        from model_store.ops import fast_conv2d_bias_act, fast_dense_bias_act
        op, what = "{op}", "{what}"

        def ones(*shape):
            return shared(np.ones(shape, np.float32))

        def conv(x, c, f, k, groups, size):
            return fast_conv2d_bias_act(
                x, ones(f, c // groups, k, k), ones(f), input_shape=(c,) + size,
                stride=1, padding=((k // 2, k // 2),) * 2, groups=groups,
                activation="relu")

        if op == "DenseBiasAct":  # the copy: 64 MB
            x, k = T.matrix("x"), 8192
            out = fast_dense_bias_act(x, ones(k, 8), ones(8), activation="relu")
            small, shape = np.ones((2, k), np.float32), (2048, k)
        else:  # the copy: 96 MB and more; the columns: 9 x 32 MB per thread
            x = T.tensor4("x")
            c = 3 if op == "StemConv2dBiasAct" else 8
            size = (1024, 1024) if what == "column buffer" else (2048, 2048)
            f, k, groups = {{"DepthwiseConv2dBiasAct": (c, 3, c),
                             "PointwiseConv2dBiasAct": (2, 1, 1)}}.get(
                op, (2, 3, 1))
            if op == "ExpandDepthwiseConv2dBiasAct":
                out = conv(conv(x, c, 16, 1, 1, size), 16, 16, 3, 16, size)
            else:
                out = conv(x, c, f, k, groups, size)
            small, shape = np.ones((2, c, 4, 4), np.float32), (2, c) + size
        fn = function([x], out)
        ops = [type(node.op).__name__ for node in fn.maker.fgraph.toposort()]
        assert ops == [op], ops
        want = fn(small).copy()  # compiled, its threads started
        if what == "input copy":  # every other column: a copy is made
            big = np.empty(shape[:-1] + (2 * shape[-1],), np.float32)[..., ::2]
        else:
            big = np.empty(shape, np.float32)
        size = int(re.search(r"VmSize:\\s+(\\d+)",
                             open("/proc/self/status").read()).group(1))
        limit = size * 1024 + (40 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        try:
            fn(big)
            print("result: no error")
        except MemoryError:
            print("result: MemoryError")
        resource.setrlimit(resource.RLIMIT_AS,
                           (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert np.array_equal(fn(small), want)
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], cwd=root,
                          env=dict(os.environ, PYTHONPATH=root),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [line for line in done.stdout.splitlines()
            if line.startswith("result:")] == ["result: MemoryError"]


def test_second_process_compiles_nothing(tmp_path):
    """The compiled modules live in Theano's cache: with an empty cache the
    first process runs g++, a second process building the same graph runs it
    zero times. (About 20-40 s: with an empty cache the first process also
    builds Theano's own lazylinker module.)"""
    script = textwrap.dedent("""
        import numpy as np
        from model_store.engine import T, function, shared
        from theano.gof import cmodule
        from model_store.ops import fast_conv2d_bias_act
        calls = []
        original = cmodule.GCC_compiler.compile_str
        def counting(*args, **kwargs):
            calls.append(kwargs.get("module_name", args[:1]))
            return original(*args, **kwargs)
        cmodule.GCC_compiler.compile_str = staticmethod(counting)
        x = T.tensor4("x")
        w = shared(np.ones((8, 1, 3, 3), np.float32))
        w2 = shared(np.ones((8, 8, 1, 1), np.float32))
        b, b2 = shared(np.zeros(8, np.float32)), shared(np.zeros(8, np.float32))
        y = fast_conv2d_bias_act(x, w, b, input_shape=(8, 8, 8), stride=2,
                                 padding=((0, 1), (0, 1)), groups=8,
                                 activation="relu6")
        z = fast_conv2d_bias_act(y, w2, b2, input_shape=(8, 4, 4), stride=1,
                                 padding=((0, 0), (0, 0)), groups=1,
                                 activation="identity")
        function([x], z)(np.ones((2, 8, 8, 8), np.float32))
        print(len(calls))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1",
               THEANO_FLAGS=f"base_compiledir={tmp_path}")

    def compiles():
        done = subprocess.run([sys.executable, "-c", script], env=env,
                              cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return int(done.stdout.split()[-1])

    assert compiles() >= 2  # at least the two ops' modules
    assert compiles() == 0


def test_ops_compiled_without_avx512_match_numpy(tmp_path):
    """Compiled for a CPU without AVX-512 (Haswell: AVX2 and FMA), the
    kernels use 8-float vectors, plain copies for partial vectors and 4-row
    depthwise tiles; this file's NumPy-reference tests pass with that code
    too, run in a process that compiles every module afresh for Haswell."""
    passed = run_tests_compiled_for("haswell", "test_ops.py", "matches_numpy",
                                    tmp_path)
    assert passed >= 50
    keys = [path.read_bytes() for path in tmp_path.rglob("key.pkl")]
    ours = [key for key in keys if b"imgclass" in key or b"-march" in key]
    assert ours and all(b"-march=haswell" in key for key in ours)
    assert not any(b"avx512" in key for key in keys)


def test_chunked_run_equals_one_call_and_small_networks_get_one_chunk():
    from model_store.ops.running import chunk_size, run_in_chunks

    rng = np.random.RandomState(4)
    x = rand(rng, 7, 3, 9, 9)
    w, b = rand(rng, 3, 1, 3, 3), rand(rng, 3)
    xs = T.tensor4("x")
    fn = function([xs], fast_conv2d_bias_act(
        xs, shared(w), shared(b), input_shape=(3, 9, 9), stride=1,
        padding=((1, 1), (1, 1)), groups=3, activation="relu6"))
    calls = []

    def counted(batch):
        calls.append(len(batch))
        return fn(batch)

    np.testing.assert_array_equal(run_in_chunks(counted, x, 3), fn(x))
    assert calls == [3, 3, 1]
    assert chunk_size(26 * 2 ** 20, budget=64 * 2 ** 20) == 2  # Lite0-sized
    assert chunk_size(100 * 2 ** 20, budget=64 * 2 ** 20) == 1
    assert chunk_size(200 * 2 ** 10, budget=64 * 2 ** 20) >= 256  # digits


def test_editing_an_op_or_its_c_template_changes_the_cache_version(
        tmp_path, monkeypatch):
    """Compiled modules are found by the ops' cache version: it must change
    when a C file or a Python ``c_code`` template changes, or a process
    would load a module compiled from the old code."""
    import shutil

    from model_store.ops import base

    copy = tmp_path / "ops"
    shutil.copytree(os.path.dirname(base.__file__), copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(base, "_C_DIR", str(copy / "c"))
    digests = [base._sources_digest()]
    for edited in (copy / "depthwise.py", copy / "c" / "expand.c"):
        edited.write_text(edited.read_text() + "\n/* edited */\n"
                          if edited.suffix == ".c"
                          else edited.read_text() + "\n# edited\n")
        digests.append(base._sources_digest())
    assert len(set(digests)) == 3
