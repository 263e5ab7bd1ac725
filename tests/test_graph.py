"""Networks as graphs: the walk, shared subgraphs, the shipped digits model
against a NumPy forward pass, and the architectures the layers must express."""

import numpy as np
import pytest

from model_store import architectures
from model_store import layers as L
from model_store.compile import compile_predictor
from model_store.engine import T, floatX, function, theano
from model_store.errors import SpecError
from model_store.spec import build_network
from model_store.store import load_model
from tests import numpy_ref as ref

DIAMOND = {"input_shape": [2, 6, 6], "layers": [
    {"type": "conv2d", "name": "stem", "num_filters": 3, "filter_size": 3,
     "padding": "same"},
    {"type": "conv2d", "name": "left", "num_filters": 3, "filter_size": 1,
     "nonlinearity": "identity"},
    {"type": "conv2d", "name": "right", "num_filters": 3, "filter_size": 3,
     "padding": 1, "inputs": ["stem"]},
    {"type": "add", "name": "join", "inputs": ["left", "right", "stem"]},
    {"type": "concat", "name": "cat", "inputs": ["join", "input"]},
    {"type": "global_avg_pool", "name": "pool"},
    {"type": "dense", "name": "fc", "num_units": 4,
     "nonlinearity": "identity"},
    {"type": "softmax", "name": "prob"}]}


def test_walk_visits_each_layer_once_after_its_inputs():
    net = build_network(DIAMOND)
    order = [layer.name for layer in L.get_all_layers(net)]
    assert sorted(order) == sorted(["input"] + [s["name"] for s in
                                                DIAMOND["layers"]])
    for layer in L.get_all_layers(net):
        for parent in layer.input_layers:
            assert order.index(parent.name) < order.index(layer.name)
    assert net.output_shape == (None, 4)
    assert L.count_params(net) == (3 * 2 * 9 + 3) + (3 * 3 + 3) + (
        3 * 3 * 9 + 3) + (5 * 4 + 4)


def test_a_shared_layer_is_computed_once():
    """``stem`` feeds three layers; its convolution appears once in the
    graph get_output builds (before any Theano optimisation)."""
    net = build_network(DIAMOND)
    x = T.tensor4(dtype=floatX)
    out = L.get_output(net, x, deterministic=True)
    convs = [node for node in theano.gof.graph.io_toposort([x], [out])
             if "Conv" in type(node.op).__name__]
    assert len(convs) == 3


def test_diamond_matches_numpy():
    rng = np.random.RandomState(0)
    net = build_network(DIAMOND, seed=1)
    for param in L.get_all_params(net):
        param.set_value(rng.normal(size=param.get_value().shape
                                   ).astype(floatX))
    x = rng.normal(size=(3, 2, 6, 6))
    images = T.tensor4(dtype=floatX)
    got = function([images], L.get_output(net, images))(x.astype(floatX))
    want = ref.forward(DIAMOND, L.get_param_values(net), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_shipped_digits_model_matches_a_numpy_forward_pass(split):
    """digits-cnn@1, stored before specs were graphs, loads unchanged and
    predicts what a plain NumPy forward pass of its weights predicts."""
    model = load_model("digits-cnn@1")
    assert "inputs" not in str(model.spec)
    prep = model.preprocessing
    from model_store.datasets import augmented_pixels
    pixels = augmented_pixels(split.test_images[:40], prep, copies=1, seed=0)
    x = prep.normalize(pixels)
    got = compile_predictor(model)(x)
    want = ref.forward(model.spec, model.weights, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))
    assert (want.argmax(axis=1) == split.test_labels[:40]).mean() > 0.9


@pytest.mark.parametrize("builder,params", [
    (lambda: architectures.resnet(18, input_size=64), 11_689_512),
    (lambda: architectures.resnet(50, input_size=64), 25_557_032),
    (lambda: architectures.mobilenet_v2(input_size=64), 3_504_872),
    (lambda: architectures.efficientnet_lite0(input_size=64), 4_652_008),
])
def test_architectures_have_the_published_parameter_counts(builder, params):
    """Trainable parameters as the papers / torchvision / timm count them
    (batch norm's running statistics are buffers, not parameters)."""
    net = build_network(builder())
    assert L.count_params(net, trainable=True) == params
    assert net.output_shape == (None, 1000)


def test_efficientnet_lite0_structure():
    spec = architectures.efficientnet_lite0()
    net = build_network(spec)
    by_name = {layer.name: layer for layer in L.get_all_layers(net)}
    assert by_name["stem"].output_shape == (None, 32, 112, 112)
    assert by_name["stem"].padding == ((0, 1), (0, 1))  # TF same, stride 2
    strided = sorted(int(n[1:-3]) for n, layer in by_name.items()
                     if n.endswith("_dw") and layer.stride == (2, 2))
    assert strided == [1, 3, 5, 11]
    adds = [n for n in by_name if n.endswith("_add")]
    assert len(adds) == 9 and "b0_add" not in adds and "b15_add" not in adds
    assert "b0_expand" not in by_name and "b1_expand" in by_name
    assert by_name["b4_dw"].groups == 240 and by_name["b4_dw"].filter_size \
        == (5, 5)
    assert all(layer.epsilon == 1e-3 for layer in by_name.values()
               if isinstance(layer, L.BatchNormLayer))
    assert by_name["head_relu6"].output_shape == (None, 1280, 7, 7)
    assert abs(L.count_flops(net) / 2e6 - 385) < 15  # ~0.4 GMAC published


@pytest.mark.parametrize("builder", [
    lambda: architectures.resnet(18, num_classes=5, input_size=40),
    lambda: architectures.efficientnet_lite0(num_classes=5, input_size=40),
])
def test_small_architectures_match_numpy(builder):
    """Random weights (batch norm statistics too), float32 Theano against the
    float64 NumPy reference. (Lite0's 143 layers take ~10 s to compile: the
    one check that the whole architecture computes what it should.)"""
    spec = builder()
    net = build_network(spec, seed=2)
    rng = np.random.RandomState(3)
    for param in L.get_all_params(net):
        value = param.get_value()
        if param.name.endswith((".var", ".gamma")):
            value = rng.uniform(0.5, 1.5, size=value.shape)
        elif param.name.endswith((".mean", ".beta", ".b")):
            value = rng.normal(0, 0.1, size=value.shape)
        param.set_value(value.astype(floatX))
    x = rng.normal(size=(2, 3, 40, 40))
    images = T.tensor4(dtype=floatX)
    got = function([images], L.get_output(net, images, deterministic=True))(
        x.astype(floatX))
    want = ref.forward(spec, L.get_param_values(net), x)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_every_layer_must_feed_the_output():
    spec = {"input_shape": [1, 4, 4], "layers": [
        {"type": "flatten", "name": "f"},
        {"type": "dense", "name": "dead", "num_units": 2},
        {"type": "dense", "name": "out", "num_units": 2, "inputs": ["f"]}]}
    with pytest.raises(SpecError, match="'dead' feed nothing"):
        build_network(spec)


def test_readme_spec_example_builds_and_lists_every_layer_type():
    import json
    import os
    import re

    from model_store.spec import LAYER_TYPES
    readme = open(os.path.join(os.path.dirname(__file__), "..",
                               "README.md")).read()
    section = readme[readme.index("To add an architecture"):]
    example = json.loads(re.search(r"```json\n(.*?)```", section,
                                   re.S).group(1))
    net = build_network(example)
    assert net.output_shape == (None, 10)
    table = section[:section.index("Nonlinearities:")]
    assert {kind for kind in LAYER_TYPES if f"`{kind}`" in table} == set(
        LAYER_TYPES)


def test_deep_networks_compile_whatever_the_recursion_limit():
    """Theano recurses a frame or more per node (a chain of ~300 layers
    failed to compile under Python's default limit of 1,000). The engine
    gives it room while it works and restores the limit afterwards, so
    deep nesting elsewhere (hostile JSON) still stops early. Simulated here
    with a low limit and a short chain, to stay fast."""
    import sys
    spec = {"input_shape": [1, 3, 3], "layers": [
        {"type": "conv2d", "name": f"c{i}", "num_filters": 1,
         "filter_size": 1, "nonlinearity": "relu"} for i in range(60)]}
    net = build_network(spec)
    x = T.tensor4(dtype=floatX)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(150)
    try:
        predict = function([x], L.get_output(net, x))
        assert sys.getrecursionlimit() == 150
    finally:
        sys.setrecursionlimit(old)
    assert predict(np.ones((2, 1, 3, 3), floatX)).shape == (2, 1, 3, 3)


def test_weights_given_to_an_uninitialised_network_are_kept():
    """Loading builds the network without random weights
    (``initialize=False``) and then sets the stored ones: the result
    computes what a randomly initialised network given the same weights
    does, and a later initialisation pass leaves them alone."""
    from model_store.spec import set_weights

    weights = L.get_param_values(build_network(DIAMOND, seed=7))
    empty = build_network(DIAMOND, initialize=False)
    assert all(p.get_value().size == 0 for p in L.get_all_params(empty))
    set_weights(empty, weights, source="test")
    L.initialize_params(empty, np.random.RandomState(0))  # nothing pending
    other = build_network(DIAMOND, seed=3)
    set_weights(other, weights, source="test")
    x = np.random.RandomState(1).rand(2, 2, 6, 6).astype(floatX)
    outputs = []
    for net in (empty, other):
        v = T.tensor4(dtype=floatX)
        outputs.append(function([v], L.get_output(
            net, v, deterministic=True))(x))
    for name, value in L.get_param_values(empty).items():
        np.testing.assert_array_equal(value, weights[name])
    np.testing.assert_array_equal(outputs[0], outputs[1])
