"""Specs whose sizes would exhaust memory are refused from their shapes,
before any weight is allocated, with one line and exit code 2."""

import json
import os
import shutil
import tracemalloc

import pytest

from model_store import spec as S
from model_store.errors import ImgclassError, SpecError
from model_store.store import DEFAULT_ROOT, load_model

DIGITS = json.load(open(os.path.join(DEFAULT_ROOT, "digits-cnn", "1",
                                     "spec.json")))


def with_dense_units(units):
    spec = json.loads(json.dumps(DIGITS))
    spec["layers"][4]["num_units"] = units
    return spec


def huge_input():
    return {"input_shape": [1, 100000, 100000], "layers": [
        {"type": "conv2d", "name": "c", "num_filters": 10, "filter_size": 3},
        {"type": "global_avg_pool", "name": "pool"},
        {"type": "softmax", "name": "prob"}]}


def many_layers(count=100_000):
    return {"input_shape": [1, 4, 4], "layers": [
        {"type": "activation", "name": f"a{i}", "nonlinearity": "relu"}
        for i in range(count)]}


HOSTILE = {
    "dense of 10^9 units": (json.dumps(with_dense_units(10 ** 9)),
                            "parameter values, more than the limit of "
                            "500,000,000"),
    "input 100000^2": (json.dumps(huge_input()),
                       "values per image, more than the limit of "
                       "250,000,000"),
    "100k layers": (json.dumps(many_layers()),
                    "100,000 layers, more than the limit of 2,000"),
    # Under MAX_LAYERS, but Theano fuses the chain into one operation:
    # 366 s and 7 GB to compile (QA), where the limit reports it at once.
    "1,994-layer activation chain": (
        json.dumps(many_layers(1_994)),
        "spec layer 'a16' ends a chain of more than 16 elementwise layers"),
    "100k-deep nesting": ('{"input_shape": [1, 32, 32], "layers": '
                          + "[" * 100_000 + "]" * 100_000 + "}",
                          "nests JSON too deeply"),
    "100k-deep argument": (json.dumps(DIGITS).replace(
        '"filter_size": 3', '"filter_size": ' + "[" * 100_000 + "3"
        + "]" * 100_000, 1), "nests JSON too deeply"),
}


@pytest.fixture
def hostile_model(tmp_path):
    """A copy of digits-cnn@1 whose spec.json is replaced."""
    def make(text):
        folder = tmp_path / "store" / "digits-cnn" / "1"
        shutil.copytree(os.path.join(DEFAULT_ROOT, "digits-cnn", "1"),
                        folder)
        (folder / "spec.json").write_text(text)
        return str(folder)
    return make


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_specs_are_refused_before_allocating(hostile_model, case):
    text, message = HOSTILE[case]
    folder = hostile_model(text)
    tracemalloc.start()
    try:
        with pytest.raises(ImgclassError, match=message):
            load_model(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20, peak  # the spec text and the layer objects


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_specs_exit_2_with_one_line(cli, hostile_model, tmp_path,
                                           case):
    text, message = HOSTILE[case]
    folder = hostile_model(text)
    images = tmp_path / "images"
    images.mkdir()
    code, out, err = cli("classify", "--model", folder, "--input", images,
                         "--output", tmp_path / "out", "--allow-empty")
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    code, _, err = cli("models", "show", folder)
    assert code == 2 and message in err and len(err.splitlines()) == 1
    # verify reports the model as failed (exit 1, one line per model).
    code, out, _ = cli("models", "verify", folder)
    assert code == 1 and out.startswith("FAILED") and message in out
    assert len(out.strip().splitlines()) == 1


def test_the_limits_leave_room_for_real_networks():
    from model_store import architectures
    from model_store import layers as L
    net = S.build_network(architectures.resnet(50))
    assert L.count_params(net) < S.MAX_PARAMETERS / 10
    assert L.count_activations(net) < S.MAX_ACTIVATIONS / 4
    S.build_network(conv_chain(S.MAX_LAYERS))
    with pytest.raises(SpecError, match="2,001 layers"):
        S.validate_spec(conv_chain(S.MAX_LAYERS + 1))
    # The deepest networks written here (their longest elementwise chain:
    # 3 layers) are well within the limits.
    for spec in (architectures.resnet(152), architectures.mobilenet_v2(),
                 architectures.efficientnet_lite0()):
        S.validate_spec(spec)
    assert len(architectures.resnet(152)["layers"]) < S.MAX_LAYERS / 3


def conv_chain(count):
    return {"input_shape": [1, 4, 4], "layers": [
        {"type": "conv2d", "name": f"c{i}", "num_filters": 1,
         "filter_size": 1} for i in range(count)]}


def test_elementwise_chains_are_limited_where_theano_would_fuse_them():
    """Theano fuses a chain of elementwise layers (each the only reader of
    the one before) into one operation, in time and memory quadratic in its
    length: an activation chain of 1,000 layers took 69 s and 1.7 GB to
    compile. A chain is refused past MAX_ELEMENTWISE_CHAIN layers; a layer
    of another kind, or one read by two layers, ends it."""
    limit = S.MAX_ELEMENTWISE_CHAIN
    S.validate_spec(many_layers(limit))
    with pytest.raises(SpecError, match=f"'a{limit}' ends a chain of more "
                                        f"than {limit} elementwise"):
        S.validate_spec(many_layers(limit + 1))
    layers = many_layers(limit)["layers"] + [
        {"type": "conv2d", "name": "c", "num_filters": 1, "filter_size": 1}
    ] + many_layers(limit)["layers"]
    for i, layer in enumerate(layers[limit + 1:]):
        layer["name"] = f"b{i}"
    S.validate_spec({"input_shape": [1, 4, 4], "layers": layers})
    # Residual blocks: the input of each add is read twice.
    blocks = [{"type": "activation", "name": "r0", "nonlinearity": "relu"}]
    for i in range(1, 3 * limit):
        blocks += [{"type": "batch_norm", "name": f"n{i}",
                    "inputs": [f"r{i - 1}"]},
                   {"type": "add", "name": f"r{i}",
                    "inputs": [f"r{i - 1}", f"n{i}"]}]
    S.validate_spec({"input_shape": [1, 4, 4], "layers": blocks})
