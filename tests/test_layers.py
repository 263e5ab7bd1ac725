"""Every layer type against the independent NumPy references in
tests/numpy_ref.py (values), and theano.grad against finite differences
(gradients of the trainable ones)."""

import numpy as np
import pytest

from model_store import layers as L
from model_store.engine import T, floatX, function, grad
from model_store.errors import SpecError
from model_store.spec import build_network
from tests import numpy_ref as ref


def forward(layer, x, **kwargs):
    inputs = T.TensorType(floatX, (False,) * x.ndim)()
    out = L.get_output(layer, inputs, **kwargs)
    return function([inputs], out)(x.astype(floatX))


def random_params(layer, rng):
    for param in L.get_all_params(layer):
        shape = param.get_value().shape
        param.set_value(rng.normal(size=shape).astype(floatX))


def values(layer):
    return {p.name.split(".")[1]: p.get_value().astype(np.float64)
            for p in layer.params}


CONV_CASES = [
    # (input C, H, W), filters, kernel, stride, padding, groups
    ((3, 9, 8), 4, 3, 1, "valid", 1),
    ((3, 9, 8), 4, 3, 2, "valid", 1),
    ((3, 9, 8), 4, 3, 1, "same", 1),
    ((3, 9, 8), 4, 3, 2, "same", 1),       # TF: odd pixel bottom/right
    ((2, 8, 8), 2, 5, 2, "same", 2),
    ((4, 7, 10), 6, (3, 2), (1, 2), 1, 2),
    ((4, 7, 7), 4, 3, 2, [[0, 1], [2, 0]], 4),  # depthwise, explicit
    ((6, 11, 9), 6, 5, 1, "same", 6),
    ((6, 11, 9), 12, 3, 2, "same", 3),
    ((3, 9, 8), 4, (1, 3), (2, 1), [1, 2], 1),
]


@pytest.mark.parametrize("shape,filters,kernel,stride,padding,groups",
                         CONV_CASES)
def test_conv2d_matches_numpy(shape, filters, kernel, stride, padding, groups):
    rng = np.random.RandomState(1)
    net = L.Conv2DLayer(L.InputLayer((None,) + shape), filters, kernel,
                        name="c", stride=stride, padding=padding,
                        groups=groups, nonlinearity="identity")
    random_params(net, rng)
    x = rng.normal(size=(3,) + shape)
    got = forward(net, x)
    p = values(net)
    pads = ref.padding_pairs(padding, L._pair(kernel, "", ""),
                             L._pair(stride, "", ""), shape[1:])
    want = ref.conv2d(x, p["W"], p["b"], L._pair(stride, "", ""), pads,
                      groups)
    assert got.shape == want.shape == (3,) + net.output_shape[1:]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_same_padding_follows_tensorflow():
    # TensorFlow's documented examples: the odd pixel goes bottom/right.
    assert L.resolve_padding("same", (3, 3), (2, 2), (8, 7), "c") == \
        ((0, 1), (1, 1))
    assert L.resolve_padding("same", (5, 1), (2, 1), (8, 5), "c") == \
        ((1, 2), (0, 0))
    assert L.resolve_padding("same", (3, 3), (1, 1), (5, 5), "c") == \
        ((1, 1), (1, 1))
    assert L.resolve_padding("same", (1, 1), (2, 2), (8, 8), "c") == \
        ((0, 0), (0, 0))
    assert L.resolve_padding([[1, 2], [3, 0]], (3, 3), (1, 1), (5, 5),
                             "c") == ((1, 2), (3, 0))


def test_conv2d_without_bias_and_old_pad_key():
    rng = np.random.RandomState(2)
    net = L.Conv2DLayer(L.InputLayer((None, 2, 6, 6)), 3, 3, name="c",
                        pad="same", bias=False)
    assert [p.name for p in net.params] == ["c.W"]
    random_params(net, rng)
    x = rng.normal(size=(2, 2, 6, 6))
    want = np.maximum(ref.conv2d(x, values(net)["W"], None,
                                 padding=((1, 1), (1, 1))), 0)
    np.testing.assert_allclose(forward(net, x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(ref.NONLINEARITIES))
def test_nonlinearities_match_numpy(name):
    net = L.ActivationLayer(L.InputLayer((None, 9)), name, name="a")
    x = np.array([[-9.0, -3.5, -3.0, -0.5, 0.0, 0.7, 3.0, 5.9, 8.0],
                  [-1.0, 1.0, 2.0, 3.0, 4.0, 6.0, 6.5, -6.0, 0.1]])
    np.testing.assert_allclose(forward(net, x), ref.NONLINEARITIES[name](x),
                               rtol=1e-5, atol=1e-6)


POOL_CASES = [
    # size, stride, padding, count_include_pad
    (2, None, 0, False),
    (3, None, 0, False),
    (3, 2, 0, False),
    (3, 2, 1, False),
    (3, 2, 1, True),
    (3, 1, [[0, 2], [1, 0]], False),
    ((2, 3), (1, 2), [1, 0], False),
    (3, 2, "same", False),
]


@pytest.mark.parametrize("size,stride,padding,include", POOL_CASES)
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pooling_matches_numpy(mode, size, stride, padding, include):
    rng = np.random.RandomState(3)
    shape = (None, 2, 11, 10)
    if mode == "max":
        net = L.MaxPool2DLayer(L.InputLayer(shape), size, name="p",
                               stride=stride, padding=padding)
    else:
        net = L.AvgPool2DLayer(L.InputLayer(shape), size, name="p",
                               stride=stride, padding=padding,
                               count_include_pad=include)
    x = rng.normal(size=(4, 2, 11, 10)) - 3  # negative: padding must not win
    got = forward(net, x)
    want = ref.pool2d(x, net.pool_size, net.stride,
                      ref.padding_pairs(padding, net.pool_size, net.stride,
                                        (11, 10)), mode, include)
    assert got.shape == want.shape == (4,) + net.output_shape[1:]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_dense_flattens_and_matches_numpy():
    rng = np.random.RandomState(4)
    net = L.DenseLayer(L.InputLayer((None, 2, 3, 4)), 7, name="d",
                       nonlinearity="identity")
    random_params(net, rng)
    x = rng.normal(size=(6, 2, 3, 4))
    want = x.reshape(6, -1) @ net.W.get_value() + net.b.get_value()
    np.testing.assert_allclose(forward(net, x), want, rtol=1e-4, atol=1e-4)
    no_bias = L.DenseLayer(L.InputLayer((None, 5)), 3, name="d", bias=False,
                           nonlinearity="swish")
    random_params(no_bias, rng)
    x = rng.normal(size=(4, 5))
    np.testing.assert_allclose(
        forward(no_bias, x),
        ref.NONLINEARITIES["swish"](x @ no_bias.W.get_value()), rtol=1e-4,
        atol=1e-5)


@pytest.mark.parametrize("shape", [(None, 3, 5, 4), (None, 6)])
def test_batch_norm_training_and_inference_match_numpy(shape):
    rng = np.random.RandomState(5)
    net = L.BatchNormLayer(L.InputLayer(shape), name="bn", epsilon=1e-3,
                           momentum=0.9)
    random_params(net, rng)
    net.var.set_value(rng.uniform(0.5, 2.0, size=shape[1]).astype(floatX))
    x = rng.normal(2.0, 3.0, size=(8,) + shape[1:])
    p = values(net)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    # Inference: the running statistics.
    np.testing.assert_allclose(
        forward(net, x, deterministic=True),
        ref.batch_norm(x, p["gamma"], p["beta"], p["mean"], p["var"], 1e-3),
        rtol=1e-4, atol=1e-4)
    # Training: the batch's statistics, and running ones move towards them.
    inputs = T.TensorType(floatX, (False,) * len(shape))()
    out, updates = L.get_output_and_updates(net, inputs)
    step = function([inputs], out, updates=updates)
    np.testing.assert_allclose(
        step(x.astype(floatX)),
        ref.batch_norm(x, p["gamma"], p["beta"], x.mean(axis=axes),
                       x.var(axis=axes), 1e-3), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(net.mean.get_value(),
                               0.9 * p["mean"] + 0.1 * x.mean(axis=axes),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.var.get_value(),
                               0.9 * p["var"] + 0.1 * x.var(axis=axes),
                               rtol=1e-5, atol=1e-5)
    assert L.get_all_params(net, trainable=True) == [net.gamma, net.beta]
    assert L.get_output_and_updates(net, inputs, deterministic=True)[1] == {}


def test_merge_layers_match_numpy():
    rng = np.random.RandomState(6)
    a = L.InputLayer((None, 4, 3, 5))
    b = L.ActivationLayer(a, "sigmoid", name="s")
    gate = L.GlobalAvgPoolLayer(b, name="g")
    gate4 = L.GlobalAvgPoolLayer(a, name="g4", keepdims=True)
    assert gate.output_shape == (None, 4) and gate4.output_shape == (
        None, 4, 1, 1)
    net = L.ConcatLayer([
        L.AddLayer([a, b, a], name="add"),
        L.MultiplyLayer([a, gate], name="se"),
        L.MultiplyLayer([gate4, b], name="se4"),
        L.MultiplyLayer([a, b], name="mul")], name="cat")
    flat = L.FlattenLayer(net, name="f")
    assert net.output_shape == (None, 16, 3, 5)
    assert flat.output_shape == (None, 16 * 15)
    x = rng.normal(size=(2, 4, 3, 5))
    s = ref.sigmoid(x)
    g = s.mean(axis=(2, 3))[:, :, None, None]
    g4 = x.mean(axis=(2, 3), keepdims=True)
    want = np.concatenate([2 * x + s, x * g, g4 * s, x * s], axis=1)
    np.testing.assert_allclose(forward(flat, x), want.reshape(2, -1),
                               rtol=1e-5, atol=1e-6)


def test_softmax_matches_numpy_and_is_stable():
    net = L.SoftmaxLayer(L.InputLayer((None, 5)), name="s")
    z = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [1000.0, 0.0, -1000.0, 1.0, 2.0]])
    got = forward(net, z)
    np.testing.assert_allclose(got, ref.softmax(z), rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(got))


def test_dropout_is_identity_when_deterministic_and_drops_when_training():
    net = L.DropoutLayer(L.InputLayer((None, 1000)), 0.3, name="drop")
    x = np.ones((20, 1000))
    np.testing.assert_array_equal(forward(net, x, deterministic=True), x)
    trained = forward(net, x)
    dropped = np.mean(trained == 0)
    assert 0.27 < dropped < 0.33
    # Kept units are scaled so that the expected value is unchanged.
    np.testing.assert_allclose(trained[trained != 0], 1 / 0.7, rtol=1e-5)


def test_any_batch_size_and_params_found_by_walking_the_graph():
    spec = {"input_shape": [1, 12, 12], "layers": [
        {"type": "conv2d", "name": "c1", "num_filters": 4, "filter_size": 3},
        {"type": "max_pool2d", "name": "p1", "pool_size": 2},
        {"type": "dense", "name": "d1", "num_units": 6},
        {"type": "dropout", "name": "drop", "p": 0.5},
        {"type": "dense", "name": "d2", "num_units": 3,
         "nonlinearity": "identity"},
        {"type": "softmax", "name": "out"}]}
    net = build_network(spec)
    names = [p.name for p in L.get_all_params(net)]
    assert names == ["c1.W", "c1.b", "d1.W", "d1.b", "d2.W", "d2.b"]
    assert net.output_shape == (None, 3)
    x = T.tensor4(dtype=floatX)
    predict = function([x], L.get_output(net, x, deterministic=True))
    for batch in (1, 7, 64):
        probs = predict(np.random.rand(batch, 1, 12, 12).astype(floatX))
        assert probs.shape == (batch, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    # FLOPs: conv 2*4*10*10*9, dense 2*(4*5*5)*6 and 2*6*3.
    assert L.count_flops(net) == 2 * 4 * 100 * 9 + 2 * 100 * 6 + 2 * 6 * 3


def check_gradients(spec, x_val, *, seed=3, samples=8):
    """theano.grad of a loss over a spec's output against central
    differences, for up to ``samples`` entries of every trainable param."""
    rng = np.random.RandomState(seed)
    net = build_network(spec, seed=seed)
    for param in L.get_all_params(net):  # off the symmetric initial values
        value = param.get_value()
        param.set_value((value + 0.3 * rng.normal(size=value.shape)
                         ).astype(floatX))
    x = T.TensorType(floatX, (False,) * x_val.ndim)()
    out = L.get_output(net, x)
    weights = rng.normal(size=(1,) + net.output_shape[1:]).astype(floatX)
    loss = (out * weights).mean()
    params = L.get_all_params(net, trainable=True)
    loss_fn = function([x], loss)
    analytic = function([x], grad(loss, params))(x_val)
    eps = 1e-2
    for param, g in zip(params, analytic):
        value = param.get_value()
        indices = list(np.ndindex(value.shape))
        for pick in rng.permutation(len(indices))[:samples]:
            index = indices[pick]
            bumped = value.copy()
            bumped[index] += eps
            param.set_value(bumped)
            up = float(loss_fn(x_val))
            bumped[index] -= 2 * eps
            param.set_value(bumped)
            down = float(loss_fn(x_val))
            param.set_value(value)
            numeric = (up - down) / (2 * eps)
            assert numeric == pytest.approx(float(g[index]), rel=5e-2,
                                            abs=2e-3), (param.name, index)


def test_gradients_of_conv_dense_softmax_match_finite_differences():
    spec = {"input_shape": [2, 7, 6], "layers": [
        {"type": "conv2d", "name": "c", "num_filters": 4, "filter_size": 3,
         "stride": 2, "padding": "same", "nonlinearity": "swish"},
        {"type": "conv2d", "name": "dw", "num_filters": 4, "filter_size": 3,
         "padding": [[0, 1], [1, 0]], "groups": 4,
         "nonlinearity": "hard_swish"},
        {"type": "conv2d", "name": "g2", "num_filters": 2, "filter_size": 1,
         "groups": 2, "nonlinearity": "sigmoid"},
        {"type": "max_pool2d", "name": "p", "pool_size": 2, "padding": 1},
        {"type": "dense", "name": "d", "num_units": 3,
         "nonlinearity": "identity"},
        {"type": "softmax", "name": "s"}]}
    x = np.random.RandomState(0).normal(size=(3, 2, 7, 6)).astype(floatX)
    check_gradients(spec, x)


def test_gradients_of_batch_norm_and_merges_match_finite_differences():
    spec = {"input_shape": [3, 5, 5], "layers": [
        {"type": "conv2d", "name": "c", "num_filters": 4, "filter_size": 3,
         "padding": 1, "bias": False, "nonlinearity": "identity"},
        {"type": "batch_norm", "name": "bn"},
        {"type": "activation", "name": "act", "nonlinearity": "relu6"},
        {"type": "global_avg_pool", "name": "squeeze"},
        {"type": "dense", "name": "excite", "num_units": 4,
         "nonlinearity": "sigmoid"},
        {"type": "multiply", "name": "se", "inputs": ["act", "excite"]},
        {"type": "add", "name": "res", "inputs": ["se", "bn"]},
        {"type": "avg_pool2d", "name": "ap", "pool_size": 3, "stride": 2,
         "padding": 1},
        {"type": "concat", "name": "cat", "inputs": ["ap", "ap"]},
        {"type": "flatten", "name": "f"},
        {"type": "batch_norm", "name": "bn2"},
        {"type": "dense", "name": "d", "num_units": 2,
         "nonlinearity": "identity"}]}
    x = np.random.RandomState(1).normal(size=(4, 3, 5, 5)).astype(floatX)
    check_gradients(spec, x)


@pytest.mark.parametrize("layer_spec,message", [
    ({"type": "conv3d", "name": "x"}, "unknown type 'conv3d'"),
    ({"type": "conv2d", "name": "c", "num_filters": 0, "filter_size": 3},
     "num_filters must be an integer >= 1, got 0"),
    ({"type": "conv2d", "name": "c", "num_filters": 2, "filter_size": 3,
      "nonlinearity": "tanh"}, "unknown nonlinearity 'tanh'"),
    ({"type": "dense", "name": "d", "units": 3}, "unknown arguments ['units']"),
    ({"type": "conv2d", "name": "c", "num_filters": 2, "filter_size": 40},
     "too small for filter_size"),
    ({"type": "conv2d", "name": "c", "num_filters": 3, "filter_size": 3,
      "groups": 2}, "groups=2 must divide the 1 input channels"),
    ({"type": "conv2d", "name": "c", "num_filters": 3, "filter_size": 3,
      "padding": "full"}, "padding must be 'valid', 'same'"),
    ({"type": "conv2d", "name": "c", "num_filters": 3, "filter_size": 3,
      "padding": 1, "pad": 1}, "not both"),
    ({"type": "conv2d", "name": "c", "num_filters": 3, "filter_size": 3,
      "nonlinearity": "softmax"}, "softmax needs a 2-D"),
    ({"type": "max_pool2d", "name": "p", "pool_size": 2, "padding": 2},
     "must be smaller than pool_size"),
    ({"type": "batch_norm", "name": "b", "momentum": 1.0},
     "momentum must be a number in [0, 1)"),
    ({"type": "batch_norm", "name": "b", "epsilon": 0},
     "epsilon must be a number in (0, inf)"),
    ({"type": "add", "name": "a"}, "AddLayer needs at least 2 inputs, got 1"),
    ({"type": "dense", "name": "a", "num_units": 2, "inputs": ["nope"]},
     "'inputs' must be a non-empty list of names of earlier layers"),
    ({"type": "activation", "name": "input", "nonlinearity": "relu"},
     "duplicate name 'input'"),
])
def test_invalid_specs_name_the_problem(layer_spec, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[")
                       .replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        build_network({"input_shape": [1, 8, 8], "layers": [layer_spec]})
