"""Layers against independent NumPy references, and a gradient check."""

import numpy as np
import pytest

from model_store import layers as L
from model_store.engine import T, floatX, function, grad
from model_store.errors import SpecError
from model_store.spec import build_network


def numpy_correlate(x, w, b, stride=(1, 1), pad=(0, 0)):
    """Plain-loop 2-D cross-correlation, NCHW input, OIHW weights."""
    x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    n, _, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride[0] + 1, (wd - kw) // stride[1] + 1
    out = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride[0]:i * stride[0] + kh,
                      j * stride[1]:j * stride[1] + kw]
            out[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3],
                                                          [1, 2, 3]))
    return out + b[None, :, None, None]


def numpy_max_pool(x, size, stride):
    n, c, h, w = x.shape
    oh, ow = (h - size[0]) // stride[0] + 1, (w - size[1]) // stride[1] + 1
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = x[:, :, i * stride[0]:i * stride[0] + size[0],
                                j * stride[1]:j * stride[1] + size[1]
                                ].max(axis=(2, 3))
    return out


def numpy_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def forward(layer, x, **kwargs):
    inputs = T.TensorType(floatX, (False,) * x.ndim)()
    out = L.get_output(layer, inputs, **kwargs)
    return function([inputs], out)(x.astype(floatX))


def random_params(layer, rng):
    for param in L.get_all_params(layer):
        shape = param.get_value().shape
        param.set_value(rng.normal(size=shape).astype(floatX))


@pytest.mark.parametrize("stride,pad", [(1, "valid"), (2, "valid"),
                                        (1, "same"), ((1, 2), 1)])
def test_conv2d_matches_numpy(stride, pad):
    rng = np.random.RandomState(1)
    net = L.Conv2DLayer(L.InputLayer((None, 3, 9, 8)), 4, (3, 3), name="c",
                        stride=stride, pad=pad, nonlinearity="identity")
    random_params(net, rng)
    x = rng.normal(size=(5, 3, 9, 8))
    got = forward(net, x)
    want = numpy_correlate(x, net.W.get_value(), net.b.get_value(),
                           net.stride, net.pad)
    assert got.shape == want.shape == (5,) + net.output_shape[1:]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv2d_relu_applies_after_bias():
    rng = np.random.RandomState(2)
    net = L.Conv2DLayer(L.InputLayer((None, 1, 6, 6)), 2, 3, name="c")
    random_params(net, rng)
    x = rng.normal(size=(3, 1, 6, 6))
    want = np.maximum(numpy_correlate(x, net.W.get_value(),
                                      net.b.get_value()), 0)
    np.testing.assert_allclose(forward(net, x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size,stride", [(2, None), (3, None), (3, 2)])
def test_max_pool_matches_numpy(size, stride):
    rng = np.random.RandomState(3)
    net = L.MaxPool2DLayer(L.InputLayer((None, 2, 11, 10)), size, name="p",
                           stride=stride)
    x = rng.normal(size=(4, 2, 11, 10))
    got = forward(net, x)
    want = numpy_max_pool(x, net.pool_size, net.stride)
    assert got.shape == want.shape == (4,) + net.output_shape[1:]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_dense_flattens_and_matches_numpy():
    rng = np.random.RandomState(4)
    net = L.DenseLayer(L.InputLayer((None, 2, 3, 4)), 7, name="d",
                       nonlinearity="identity")
    random_params(net, rng)
    x = rng.normal(size=(6, 2, 3, 4))
    want = x.reshape(6, -1) @ net.W.get_value() + net.b.get_value()
    np.testing.assert_allclose(forward(net, x), want, rtol=1e-4, atol=1e-4)


def test_softmax_matches_numpy_and_is_stable():
    net = L.SoftmaxLayer(L.InputLayer((None, 5)), name="s")
    z = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [1000.0, 0.0, -1000.0, 1.0, 2.0]])
    got = forward(net, z)
    np.testing.assert_allclose(got, numpy_softmax(z), rtol=1e-5, atol=1e-7)
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


def test_gradient_matches_finite_differences():
    """theano.grad of a tiny conv net's loss against central differences."""
    rng = np.random.RandomState(5)
    spec = {"input_shape": [1, 6, 6], "layers": [
        {"type": "conv2d", "name": "c", "num_filters": 2, "filter_size": 3,
         "nonlinearity": "identity"},
        {"type": "max_pool2d", "name": "p", "pool_size": 2},
        {"type": "dense", "name": "d", "num_units": 3,
         "nonlinearity": "identity"},
        {"type": "softmax", "name": "s"}]}
    net = build_network(spec, seed=3)
    x_val = rng.normal(size=(4, 1, 6, 6)).astype(floatX)
    y_val = np.array([0, 1, 2, 1], dtype=np.int32)
    x, y = T.tensor4(dtype=floatX), T.ivector()
    loss = T.nnet.categorical_crossentropy(L.get_output(net, x), y).mean()
    params = L.get_all_params(net)
    loss_fn = function([x, y], loss)
    grad_fn = function([x, y], grad(loss, params))
    analytic = grad_fn(x_val, y_val)
    eps = 1e-3
    for param, g in zip(params, analytic):
        value = param.get_value()
        for index in list(np.ndindex(value.shape))[:12]:
            bumped = value.copy()
            bumped[index] += eps
            param.set_value(bumped)
            up = float(loss_fn(x_val, y_val))
            bumped[index] -= 2 * eps
            param.set_value(bumped)
            down = float(loss_fn(x_val, y_val))
            param.set_value(value)
            numeric = (up - down) / (2 * eps)
            assert numeric == pytest.approx(float(g[index]), rel=3e-2,
                                            abs=2e-3), (param.name, index)


@pytest.mark.parametrize("layer_spec,message", [
    ({"type": "conv3d", "name": "x"}, "unknown type 'conv3d'"),
    ({"type": "conv2d", "name": "c", "num_filters": 0, "filter_size": 3},
     "num_filters must be an integer >= 1, got 0"),
    ({"type": "conv2d", "name": "c", "num_filters": 2, "filter_size": 3,
      "nonlinearity": "tanh"}, "unknown nonlinearity 'tanh'"),
    ({"type": "dense", "name": "d", "units": 3}, "unknown arguments ['units']"),
    ({"type": "conv2d", "name": "c", "num_filters": 2, "filter_size": 40},
     "too small for filter_size"),
])
def test_invalid_specs_name_the_problem(layer_spec, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[")
                       .replace("]", r"\]").replace("(", r"\(")):
        build_network({"input_shape": [1, 8, 8], "layers": [layer_spec]})
