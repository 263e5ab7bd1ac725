"""'imgclass models import onnx': each supported op against onnxruntime, a
small residual network through the command line, and refusals."""

import importlib.util
import json
import os

import numpy as np
import onnx
import onnxruntime
import pyarrow.parquet as pq
import pytest

from model_store.compile import compile_predictor
from model_store.onnx_import import onnx_to_spec
from model_store.store import StoredModel, list_models, load_model
from tests.conftest import traced_peak, within
from tests.onnx_graphs import GraphBuilder, single_op_graphs, view_flatten

GRAPHS = single_op_graphs()
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples", "tiny_onnx_classifier.py")


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def in_memory_predictor(model: onnx.ModelProto):
    spec, weights = onnx_to_spec(model)
    stored = StoredModel("onnx-test", 1, "<memory>",
                         {"input_shape": spec["input_shape"],
                          "class_names": []}, spec, weights)
    return compile_predictor(stored)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_each_op_matches_onnxruntime(name):
    model, _ = GRAPHS[name]
    shape = [d.dim_value for d in
             model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.RandomState(1).randn(3, *shape).astype(np.float32)
    want = run_onnxruntime(model, x)
    got = in_memory_predictor(model)(x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _example():
    spec = importlib.util.spec_from_file_location("tiny_onnx", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_residual_network_imported_by_the_cli(cli, tmp_path):
    """The README's example: write the file, import it with class names and
    preprocessing, verify, and predict like onnxruntime."""
    example = _example()
    path = str(tmp_path / "tiny.onnx")
    onnx.save(example.build(), path)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(example.CLASSES) + "\n")
    store = str(tmp_path / "store")
    code, out, err = cli("--store", store, "models", "import", "onnx", path,
                         "--name", "tiny", "--classes", classes,
                         "--preprocessing",
                         '{"resize": "bicubic", "mean": [0.5, 0.5, 0.5], '
                         '"std": [0.25, 0.25, 0.25]}')
    assert code == 0, err
    assert "saved tiny@1" in out
    model = load_model("tiny", root=store)
    assert model.class_names == example.CLASSES
    assert model.metadata["resize"] == "bicubic"
    assert model.metadata["normalization"]["std"] == [0.25] * 3
    assert model.metadata["source"]["format"] == "onnx"
    assert not model.metadata["source"]["softmax_appended"]
    x = np.random.RandomState(2).randn(4, 3, 32, 32).astype(np.float32)
    np.testing.assert_allclose(compile_predictor(model)(x),
                               run_onnxruntime(onnx.load(path), x),
                               rtol=1e-4, atol=1e-6)
    code, out, _ = cli("--store", store, "models", "verify")
    assert code == 0 and "ok      tiny@1" in out
    # Importing again makes version 2.
    code, out, _ = cli("--store", store, "models", "import", "onnx", path,
                       "--name", "tiny")
    assert code == 0 and "saved tiny@2" in out
    assert load_model("tiny@2", root=store).class_names == ["0", "1", "2",
                                                            "3"]


def test_logits_output_gets_a_softmax(tmp_path):
    from model_store.onnx_import import import_onnx

    g = GraphBuilder((3, 8, 8))
    flat = g.node("Flatten", [g.node("GlobalAveragePool", ["x"])])
    logits = g.node("Gemm", [flat, g.const(g.rng.randn(3, 5) * 4)])
    model = g.model(logits, 2)
    path = str(tmp_path / "logits.onnx")
    onnx.save(model, path)
    stored = import_onnx(path, name="logits", root=str(tmp_path / "store"))
    assert stored.metadata["source"]["softmax_appended"]
    x = np.random.RandomState(3).randn(2, 3, 8, 8).astype(np.float32)
    want = run_onnxruntime(model, x)
    want = np.exp(want - want.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(compile_predictor(stored)(x), want,
                               rtol=1e-4, atol=1e-6)


def test_classify_writes_probabilities_for_a_graph_ending_in_logits(
        cli, tmp_path):
    """Large logits (a graph without a softmax): the softmax appended at
    import makes every confidence classify writes a probability, and the
    top-k scores of a row sum to at most 1."""
    g = GraphBuilder((1, 8, 8), seed=8)
    logits = g.node("Gemm", [g.node("Flatten", ["x"]),
                             g.const(g.rng.randn(64, 4) * 5)])
    stored = _import_via_cli(cli, tmp_path, g.model(logits, 2))
    assert stored.metadata["source"]["softmax_appended"]
    code, _, err = cli("--store", tmp_path / "store", "classify", "-q",
                       "--model", "m", "--input", "samples/digits/more",
                       "--output", tmp_path / "out", "--top-k", "3")
    assert code == 0, err
    rows = pq.read_table(str(tmp_path / "out" / "predictions")).to_pylist()
    assert len(rows) == 7
    assert all(0 <= row["confidence"] <= 1 for row in rows)
    assert all(sum(e["score"] for e in row["top_k"]) <= 1 + 1e-5
               for row in rows)


def _import_via_cli(cli, tmp_path, model, *options):
    """Saves ``model``, imports it with the command line; the stored
    version."""
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    store = str(tmp_path / "store")
    code, _, err = cli("--store", store, "models", "import", "onnx", path,
                       "--name", "m", *options)
    assert code == 0, err
    return load_model("m", root=store)


@pytest.mark.parametrize("reshape", ["Reshape", "Flatten"])
def test_softmax_followed_by_a_no_op_reshape_is_not_applied_twice(
        cli, tmp_path, reshape):
    """Softmax, then a Reshape or Flatten that keeps (N, C): the graph ends
    with probabilities, and the import gives onnxruntime's."""
    g = GraphBuilder((3, 4, 4), seed=5)
    logits = g.node("Gemm", [g.node("Flatten", ["x"]),
                             g.const(g.rng.randn(48, 5))])
    probabilities = g.node("Softmax", [logits], axis=1)
    extra = [g.const([0, -1], dtype=np.int64)] if reshape == "Reshape" else []
    model = g.model(g.node(reshape, [probabilities, *extra]), 2)
    _assert_ends_in_softmax_like_onnxruntime(
        _import_via_cli(cli, tmp_path, model), model, (6, 3, 4, 4))


def _assert_ends_in_softmax_like_onnxruntime(stored, model, shape):
    """The import kept the graph's own softmax (none appended) and gives
    onnxruntime's probabilities on random inputs of ``shape``."""
    assert not stored.metadata["source"]["softmax_appended"]
    x = np.random.RandomState(4).randn(*shape).astype(np.float32)
    np.testing.assert_allclose(compile_predictor(stored)(x),
                               run_onnxruntime(model, x), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("between", [[], ["Relu"], ["Dropout", "Relu"]])
def test_pytorch_view_then_gemm_matches_onnxruntime(cli, tmp_path, between):
    """conv -> x.view(x.size(0), -1) (Shape, Gather, Unsqueeze, Concat,
    Reshape) -> [ops that keep the shape] -> Gemm -> Softmax, as PyTorch
    exports a CNN: ONNX's shape inference cannot tell the Reshape's output
    shape, the import works it out."""
    g = GraphBuilder((3, 7, 7), seed=6)
    conv = g.node("Conv", ["x", g.const(g.rng.randn(4, 3, 3, 3)),
                           g.const(g.rng.randn(4))], kernel_shape=[3, 3],
                  strides=[2, 2])
    flat = view_flatten(g, g.node("Relu", [conv]))
    for op in between:
        flat = g.node(op, [flat])
    logits = g.node("Gemm", [flat, g.const(g.rng.randn(6, 36) * 0.3),
                             g.const(g.rng.randn(6))], transB=1)
    model = g.model(g.node("Softmax", [logits], axis=1), 2)
    _assert_ends_in_softmax_like_onnxruntime(
        _import_via_cli(cli, tmp_path, model), model, (4, 3, 7, 7))


def test_negative_gather_index_counts_from_the_end(cli, tmp_path):
    """Gather at index -4 of a 4-D shape is the batch size, as at 0: the
    view imports and predicts like onnxruntime."""
    g = GraphBuilder((3, 4, 4), seed=7)
    logits = g.node("Gemm", [view_flatten(g, batch_index=-4),
                             g.const(g.rng.randn(48, 5))])
    model = g.model(g.node("Softmax", [logits], axis=1), 2)
    _assert_ends_in_softmax_like_onnxruntime(
        _import_via_cli(cli, tmp_path, model), model, (2, 3, 4, 4))


def _batch_norm(g, *, var, gamma=(1, 1, 1), epsilon=1e-5):
    """A BatchNormalization 'bn' of the input with these statistics."""
    return g.node("BatchNormalization", [
        "x", g.const(gamma), g.const(np.zeros(3)), g.const(np.zeros(3)),
        g.const(var)], name="bn", epsilon=epsilon)


def _refused(builder):
    g = GraphBuilder((3, 8, 8))
    out, rank = builder(g)
    return g.model(out, rank)


REFUSALS = {
    "custom_domain_op": (lambda g: (g.node("Relu", ["x"], name="act1",
                                           domain="com.example"), 4),
                         "custom domain com.example op Relu (node 'act1') "
                         "is not supported"),
    "single_class": (lambda g: (g.node("Gemm", [
        g.node("Flatten", [g.node("GlobalAveragePool", ["x"])]),
        g.const(np.ones((3, 1)))]), 2),
        "the ONNX graph outputs 1 score per image; a classifier needs at "
        "least 2 classes"),
    # Independent per-class probabilities: a softmax appended to them
    # squashed them towards 1/classes (0.99 and four 0.05 came out 0.39 and
    # 0.15).
    "sigmoid_output": (lambda g: (g.node("Sigmoid", [g.node("Gemm", [
        g.node("Flatten", [g.node("GlobalAveragePool", ["x"])]),
        g.const(np.ones((3, 5)))])], name="sig"), 2),
        "the ONNX graph ends with a Sigmoid (node 'sig'): per-class "
        "probabilities, not logits"),
    # The same from a HardSigmoid, and through an op that only reshapes.
    "hard_sigmoid_output": (lambda g: (g.node("Identity", [g.node(
        "HardSigmoid", [g.node("Gemm", [
            g.node("Flatten", [g.node("GlobalAveragePool", ["x"])]),
            g.const(np.ones((3, 5)))])], name="hs")]), 2),
        "the ONNX graph ends with a HardSigmoid (node 'hs'): per-class "
        "probabilities, not logits"),
    "unsupported_op": (lambda g: (g.node("LeakyRelu", ["x"], name="act1"),
                                  4), "ONNX op LeakyRelu (node 'act1'): not "
                                      "supported"),
    "clip_0_1": (lambda g: (g.node("Clip", ["x", g.const(0.0),
                                            g.const(1.0)], name="clip"), 4),
                 "ONNX op Clip (node 'clip'): Clip to [0.0, 1.0]"),
    "dilated_conv": (lambda g: (g.node("Conv", [
        "x", g.const(np.ones((2, 3, 3, 3)))], name="c", dilations=[2, 2]),
        4), "ONNX op Conv (node 'c'): dilations [2, 2] (only 1)"),
    "ceil_mode": (lambda g: (g.node("MaxPool", ["x"], name="p",
                                    kernel_shape=[3, 3], ceil_mode=1), 4),
                  "ONNX op MaxPool (node 'p'): ceil_mode=1"),
    "reshape_not_flatten": (lambda g: (g.node("Reshape", [
        "x", g.const([0, 3, -1], dtype=np.int64)], name="r"), 3),
        "ONNX op Reshape (node 'r'): reshape of"),
    "spatial_constant": (lambda g: (g.node("Mul", [
        "x", g.const(np.ones((1, 1, 8, 8)))], name="m"), 4),
        "ONNX op Mul (node 'm'): a constant of shape (1, 1, 8, 8)"),
    "softmax_of_4d": (lambda g: (g.node("Softmax", ["x"], name="s"), 4),
                      "ONNX op Softmax (node 's'): softmax over axis"),
    "pad_reflect": (lambda g: (g.node("Conv", [g.node("Pad", [
        "x", g.const([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)],
        name="pad", mode="reflect"), g.const(np.ones((2, 3, 3, 3)))]), 4),
        "ONNX op Pad (node 'pad'): mode=reflect (only constant)"),
    "pad_read_by_relu": (lambda g: (g.node("Relu", [g.node("Pad", [
        "x", g.const([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)],
        name="pad")]), 4), "ONNX op Pad (node 'pad'): pads"),
    "shape_as_data": (lambda g: (g.node("Add", ["x", g.node(
        "Gather", ["x", g.const(0, dtype=np.int64)], name="g")]), 4),
        "ONNX op Gather (node 'g'): the data (only shape arithmetic) must "
        "be a constant"),
    "gather_index_past_the_end": (lambda g: (view_flatten(
        g, batch_index=4, gather_name="g"), 2),
        "ONNX op Gather (node 'g'): index 4 is out of range for axis 0 of "
        "size 4 (valid: -4 to 3)"),
    "gather_index_before_the_start": (lambda g: (view_flatten(
        g, batch_index=-5, gather_name="g"), 2),
        "ONNX op Gather (node 'g'): index -5 is out of range"),
    "batch_norm_negative_variance": (lambda g: (_batch_norm(
        g, var=[1, -1, 1]), 4), "ONNX op BatchNormalization (node 'bn'): "
        "channel 1: variance -1 + epsilon 1e-05 is not positive"),
    "batch_norm_variance_cancelling_epsilon": (lambda g: (_batch_norm(
        g, var=[1, 1, -1e-3], epsilon=1e-3), 4),
        "ONNX op BatchNormalization (node 'bn'): channel 2: variance -0.001 "
        "+ epsilon 0.001 is not positive"),
    "batch_norm_scale_beyond_float32": (lambda g: (_batch_norm(
        g, var=[1e-30, 1e-30, 1], gamma=[1e30, 1e30, 1], epsilon=0.0), 4),
        "ONNX op BatchNormalization (node 'bn'): channel 0: scale 1e+30 / "
        "sqrt(variance 1e-30 + epsilon 0) overflows float32 (2 channels "
        "are)"),
    "nan_weight": (lambda g: (g.node("Conv", ["x", g.const(np.where(
        np.arange(54).reshape(2, 3, 3, 3) % 7, 1.0, np.nan), "conv1.W")]),
        4), "the ONNX tensor 'conv1.W' holds 8 NaN or infinite value(s) "
            "(of 54): export the model again from finite weights"),
    # Constants of the wrong rank (onnx's checker lets them through) were
    # NumPy tracebacks (exit 1).
    "clip_min_not_a_scalar": (lambda g: (g.node("Clip", [
        "x", g.const([0.0, 0.0]), g.const([6.0, 6.0])], name="clip"), 4),
        "ONNX op Clip (node 'clip'): min must be a scalar, got shape (2,)"),
    "pad_value_not_a_scalar": (lambda g: (g.node("Conv", [g.node("Pad", [
        "x", g.const([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64),
        g.const(np.zeros(0))], name="pad"), g.const(np.ones((2, 3, 3, 3)))]),
        4), "ONNX op Pad (node 'pad'): the constant value must be a scalar, "
            "got shape (0,)"),
    "reshape_to_a_2d_shape": (lambda g: (g.node("Reshape", [
        "x", g.const([[0, -1]], dtype=np.int64)], name="r"), 2),
        "ONNX op Reshape (node 'r'): the shape must be a 1-D tensor, got "
        "shape (1, 2)"),
    "unsqueeze_by_scalar_axes": (lambda g: (view_flatten(
        g, unsqueeze_axes=0), 2), "ONNX op Unsqueeze (node 'u'): axes must "
                                  "be a 1-D tensor, got shape ()"),
    # What onnx's full check (strict shape inference) refuses.
    "concat_of_shapes_on_a_missing_axis": (lambda g: (g.node("Reshape", [
        "x", g.node("Concat", [g.const([0], dtype=np.int64), g.const(
            [-1], dtype=np.int64)], name="cat", axis=5)]), 2),
        "(op_type:Concat, node name: cat): [ShapeInferenceError] axis must "
        "be in [-rank, rank-1]"),
    # An axis beyond int32, which onnx's checker reads cut short (in
    # range), was a NumPy traceback (exit 1).
    "concat_of_shapes_on_an_axis_beyond_int32": (lambda g: (g.node(
        "Reshape", ["x", g.node("Concat", [g.const([0], dtype=np.int64),
                                           g.const([-1], dtype=np.int64)],
                                name="cat", axis=2**62)]), 2),
        "ONNX op Concat (node 'cat'): axis 4611686018427387904 of inputs of "
        "rank 1"),
    "infinite_gemm_alpha": (lambda g: (g.node("Gemm", [
        g.node("Flatten", [g.node("GlobalAveragePool", ["x"])]),
        g.const(np.ones((3, 2)))], name="fc", alpha=float("inf")), 2),
        "the ONNX graph's constants with the attributes folded into them "
        "(e.g. Gemm alpha and beta) give NaN or infinite weights for "
        "fc.W"),
    "infinite_constant_node": (lambda g: (g.node("Mul", ["x", g.node(
        "Constant", [], value=onnx.numpy_helper.from_array(np.array(
            [1, np.inf, 1], np.float32).reshape(3, 1, 1)))]), 4),
        "the ONNX tensor 't1' holds 1 NaN or infinite value(s) (of 3)"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unsupported_graph_exits_2_and_writes_nothing(cli, tmp_path, case):
    builder, message = REFUSALS[case]
    _assert_refused(cli, tmp_path, _refused(builder), message)


CONTROL_CHARACTERS = {
    "a custom domain": (lambda g: (g.node("Relu", ["x"], name="r", domain=
                                          "com.ex\nample\x1b[31m"), 4),
                        "custom domain com.ex%0Aample%1B[31m op Relu"),
    "a custom op": (lambda g: (g.node("Re\nlu", ["x"], name="r",
                                      domain="com.example"), 4),
                    "custom domain com.example op Re%0Alu (node 'r')"),
    "an auto_pad": (lambda g: (g.node("Conv", ["x", g.const(np.ones((
        2, 3, 3, 3)))], name="c", auto_pad="SAME\nX"), 4),
        "ONNX op Conv (node 'c'): auto_pad=SAME%0AX"),
    "a Pad mode": (lambda g: (g.node("Conv", [g.node("Pad", [
        "x", g.const([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)],
        name="pad", mode="refl\nect"), g.const(np.ones((2, 3, 3, 3)))]), 4),
        "ONNX op Pad (node 'pad'): mode=refl%0Aect (only constant)"),
}


@pytest.mark.parametrize("case", sorted(CONTROL_CHARACTERS))
def test_control_characters_of_the_model_file_do_not_split_the_error_line(
        cli, tmp_path, case):
    """A domain, an op type or a string attribute holding a newline (or a
    terminal escape) was printed as it is: the one line of error became
    two (names of nodes and tensors were already shown escaped)."""
    builder, message = CONTROL_CHARACTERS[case]
    _assert_refused(cli, tmp_path, _refused(builder), message)


def test_a_terminal_escape_in_onnxs_own_error_is_shown_escaped(cli,
                                                               tmp_path):
    """onnx's checker names the node as the file does: its whitespace was
    joined into one line, but a terminal escape (ESC) went to the
    terminal as it was."""
    model = _refused(lambda g: (g.node("Reshape", [
        "x", g.node("Concat", [g.const([0], dtype=np.int64), g.const(
            [-1], dtype=np.int64)], name="c\x1b[2Jat", axis=5)]), 2))
    _assert_refused(cli, tmp_path, model, "node name: c%1B[2Jat")


def test_control_characters_of_input_names_do_not_split_the_error_line(
        cli, tmp_path):
    model = _refused(lambda g: (g.node("Relu", ["x"]), 4))
    model.graph.input.append(onnx.helper.make_tensor_value_info(
        "evil\nname", onnx.TensorProto.FLOAT, [1, 3, 8, 8]))
    _assert_refused(cli, tmp_path, model, "the ONNX graph has 2 inputs (x, "
                                          "evil%0Aname)")


def test_a_mul_by_an_n_by_c_tensor_is_not_taken_for_a_channel_gate(
        cli, tmp_path):
    """ONNX broadcasts a (N, C) tensor against (N, C, H, W) from the right,
    over the width: it is no channel gate. It was imported as one, and
    classified unlike onnxruntime (by 0.7 here); only a (N, C, 1, 1) gate
    is one."""
    g = GraphBuilder((3, 1, 3))
    gate = g.node("Sigmoid", [g.node("Flatten", [
        g.node("GlobalAveragePool", ["x"])])])
    model = g.model(g.node("Mul", ["x", gate], name="m"), 4)
    _assert_refused(cli, tmp_path, model, "ONNX op Mul (node 'm'): inputs "
                                          "of shapes (None, 3, 1, 3) and "
                                          "(None, 3); only equal shapes")


def test_a_batch_normalization_over_each_activation_is_refused(cli,
                                                               tmp_path):
    """spatial=0 (opsets 7 and 8: statistics per activation, not per
    channel) was imported as per channel: statistics of one value per
    channel made a model onnxruntime refuses, of (C, H, W) values a
    message about weight shapes."""
    g = GraphBuilder((3, 8, 8), opset=7)
    stats = [g.const(np.ones(3)) for _ in range(4)]
    x = g.node("BatchNormalization", ["x", *stats], name="bn", spatial=0)
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    model = g.model(g.node("Gemm", [flat, g.const(np.ones((3, 4))),
                                    g.const(np.zeros(4))]), 2)
    _assert_refused(cli, tmp_path, model, "ONNX op BatchNormalization (node "
                                          "'bn'): spatial=0 (only 1)")


def test_opset_newer_than_the_onnx_package_knows_is_refused(cli, tmp_path):
    """Opset 99: the ops' meaning may have changed; the message names the
    newest opset the installed onnx package (and so the import) reads."""
    newest = onnx.defs.onnx_opset_version()
    g = GraphBuilder((3, 8, 8), opset=99)
    model = g.model(g.node("Relu", ["x"]), 4)
    _assert_refused(cli, tmp_path, model,
                    f"the ONNX model uses opset 99; the highest supported is "
                    f"{newest}")


def _assert_refused(cli, tmp_path, model, message, *options):
    """Importing ``model`` (with ``options``) exits 2 with ``message`` in
    one line, and writes nothing to the store."""
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    store = tmp_path / "store"
    code, out, err = cli("--store", store, "models", "import", "onnx", path,
                         "--name", "m", *options)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list_models(str(store)) == []
    assert not store.exists() or os.listdir(store) == []


@pytest.mark.parametrize("field", ["node name", "producer name",
                                   "attribute"])
def test_text_of_a_model_file_that_is_not_utf8_is_refused_in_one_line(
        cli, tmp_path, field):
    """protobuf gives a string field that is not UTF-8 as bytes, which
    onnx's checker let through: a node name made a TypeError traceback
    (exit 1), a producer name one when the metadata was written, an
    auto_pad a UnicodeDecodeError."""
    g = GraphBuilder((3, 8, 8))
    conv = g.node("Conv", ["x", g.const(np.ones((2, 3, 3, 3)))],
                  name="nodeAAAA", auto_pad="SAME_UPPAAAA")
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [conv])])
    model = g.model(g.node("Gemm", [flat, g.const(np.ones((2, 4)))]), 2)
    model.producer_name = "prodAAAA"
    marker = {"node name": b"nodeAAAA", "producer name": b"prodAAAA",
              "attribute": b"SAME_UPPAAAA"}[field]
    data = model.SerializeToString()
    assert data.count(marker) == 1
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(marker, marker[:-4] + b"\xff\xfeAA"))
    store = tmp_path / "store"
    code, _, err = cli("--store", store, "models", "import", "onnx", path,
                       "--name", "m")
    assert code == 2 and err.count("\n") == 1, err
    assert {"node name": f"{path} is not a valid ONNX model: "
                         f"onnx.NodeProto.name b'node\\xff\\xfeAA' is not "
                         f"UTF-8",
            "producer name": f"{path} is not a valid ONNX model: "
                             f"onnx.ModelProto.producer_name",
            "attribute": "ONNX op Conv (node 'nodeAAAA'): attribute auto_pad "
                         "b'SAME_UPP\\xff\\xfeAA' is not UTF-8 text"}[field] in err
    assert list_models(str(store)) == []


@pytest.mark.parametrize("extra", [b"\0" * 4, b"\0" * 2],
                         ids=["one value more", "half a value more"])
def test_an_initializer_holding_more_data_than_its_shape_is_refused(
        cli, tmp_path, extra):
    """onnx's checker refuses too little data, not too much: NumPy's
    reshape was a traceback (exit 1)."""
    g = GraphBuilder((3, 8, 8))
    model = g.model(g.node("Conv", ["x", g.const(np.ones((2, 3, 3, 3)),
                                                 "conv1.W")]), 4)
    model.graph.initializer[0].raw_data += extra
    _assert_refused(cli, tmp_path, model,
                    "the ONNX tensor 'conv1.W' does not hold the data of "
                    "its declared shape [2, 3, 3, 3]")


def _external_weight_model(folder, *, offset, length, size, before=b""):
    """A small classifier whose Gemm weight 'fc.W' (shape [4, 5], 80 bytes)
    is stored in ``folder``/weights.bin after ``before``, with that offset
    and length (None: none given); the file is then made ``size`` bytes
    long (sparse: no disk used). Returns the model and the weight."""
    from onnx.external_data_helper import set_external_data

    g = GraphBuilder((3, 8, 8))
    x = g.node("Conv", ["x", g.const(g.rng.randn(4, 3, 3, 3), "conv.W")])
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    model = g.model(g.node("Gemm", [x, g.const(g.rng.randn(4, 5), "fc.W")]),
                    2)
    tensor = next(t for t in model.graph.initializer if t.name == "fc.W")
    weight = onnx.numpy_helper.to_array(tensor)
    data = folder / "weights.bin"
    data.write_bytes(before + tensor.raw_data)
    os.truncate(data, size)
    set_external_data(tensor, "weights.bin", offset=offset, length=length)
    tensor.ClearField("raw_data")
    return model, weight


EXTERNAL = 2 ** 29  # a sparse 512 MiB file: onnx read it all, then refused
BAD_EXTERNAL_DATA = {
    "a big file, no length": (dict(offset=None, length=None, size=EXTERNAL),
                              "the file holds 536,870,912 bytes from offset "
                              "0 and no length is given"),
    "a length past the tensor": (dict(offset=0, length=EXTERNAL,
                                      size=EXTERNAL),
                                 "its external data has length 536,870,912, "
                                 "not the tensor's size"),
    "an offset past the file": (dict(offset=EXTERNAL, length=80, size=1024),
                                "the file holds 1,024 bytes, too few from "
                                "offset 536,870,912"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXTERNAL_DATA))
def test_external_data_that_does_not_fit_its_tensor_is_refused_unread(
        cli, tmp_path, case):
    """onnx read an external tensor's data whole (to the end of the file
    without a length, or the length given) before anything compared it
    with the tensor's shape: a 2 GiB file behind 80 bytes of weights took
    16 s and 6 GB. Refused from the sizes alone, in one line naming the
    tensor and the file."""
    options, message = BAD_EXTERNAL_DATA[case]
    model, _ = _external_weight_model(tmp_path, **options)
    _, peak = traced_peak(
        lambda: _assert_refused(cli, tmp_path, model, message))
    assert peak < 64 * 2 ** 20, peak
    _, _, err = cli("--store", tmp_path / "store", "models", "import",
                    "onnx", tmp_path / "m.onnx", "--name", "m")
    assert (f"the ONNX tensor 'fc.W' (shape [4, 5], 80 bytes) stored in "
            f"{tmp_path / 'weights.bin'}: ") in err


def test_external_tensors_of_negative_dimensions_do_not_lift_the_limit(
        cli, tmp_path, monkeypatch):
    """The values of external tensors were summed before any shape was
    checked: a tensor of dimensions [-1, N] cancelled one of [N], whose
    data (512 MiB here, any size in a hostile file) was then read whole,
    before the other was refused."""
    import model_store.spec

    monkeypatch.setattr(model_store.spec, "MAX_PARAMETERS", 1000)
    model, _ = _external_weight_model(tmp_path, offset=None, length=None,
                                      size=80)
    values = EXTERNAL // 4
    with open(tmp_path / "big.bin", "wb") as handle:
        handle.truncate(EXTERNAL)
    (tmp_path / "negative.bin").write_bytes(b"")
    for name, dims in (("big", [values]), ("negative", [-1, values])):
        tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT,
                                  dims=dims,
                                  data_location=onnx.TensorProto.EXTERNAL)
        tensor.external_data.add(key="location", value=f"{name}.bin")
        model.graph.initializer.append(tensor)
    _, peak = traced_peak(lambda: _assert_refused(
        cli, tmp_path, model, "the ONNX tensor 'negative' (shape [-1, "
        "134217728], type 1) is stored in an external file, but has no "
        "fixed size in bytes"))
    assert peak < 64 * 2 ** 20, peak


@pytest.mark.parametrize("location", ["../secret.bin", "ABSOLUTE",
                                      "link.bin", "linked/secret.bin"])
def test_external_data_outside_the_models_folder_is_refused_unlooked_at(
        cli, tmp_path, location):
    """A location outside the model's folder (a "..", an absolute path, a
    symbolic link to a file or a folder outside) was looked up before
    onnx's check: its size was reported ("the file holds 7 bytes"), with
    "export the model again" for a fix, of any file on the machine."""
    folder = tmp_path / "model"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"secret!")
    (folder / "link.bin").symlink_to(secret)
    (folder / "linked").symlink_to(tmp_path)
    model, _ = _external_weight_model(folder, offset=None, length=None,
                                      size=80)
    tensor = next(t for t in model.graph.initializer if t.name == "fc.W")
    where = str(secret) if location == "ABSOLUTE" else location
    next(e for e in tensor.external_data if e.key == "location").value = where
    _assert_refused(cli, folder, model,
                    f"the ONNX tensor 'fc.W' (shape [4, 5], 80 bytes) is "
                    f"stored in {where!r}, outside the model's folder "
                    f"{folder}: external data is read only from files in it")
    _, _, err = cli("--store", folder / "store", "models", "import", "onnx",
                    folder / "m.onnx", "--name", "m")
    assert "7 bytes" not in err


def test_an_external_tensor_of_a_two_byte_float_is_sized_not_refused_unsized(
        cli, tmp_path):
    """bfloat16 (an ml_dtypes type of NumPy kind "V") has 2 bytes a value:
    it was refused as having "no fixed size in bytes", with "export the
    model again" for a fix; its data is read and the model is refused for
    what it is."""
    model, _ = _external_weight_model(tmp_path, offset=None, length=None,
                                      size=40)
    tensor = next(t for t in model.graph.initializer if t.name == "fc.W")
    tensor.data_type = onnx.TensorProto.BFLOAT16
    onnx.save(model, str(tmp_path / "m.onnx"))
    code, _, err = cli("--store", tmp_path / "store", "models", "import",
                       "onnx", tmp_path / "m.onnx", "--name", "m")
    assert code == 2 and err.count("\n") == 1, err
    assert "no fixed size" not in err and "BFLOAT16" in err.upper(), err


def test_external_data_is_read_from_its_offset_for_its_length(cli, tmp_path):
    """One file shared by tensors (as onnx writes it): only the tensor's
    own 80 bytes are read, from its offset, whatever follows them."""
    model, weight = _external_weight_model(
        tmp_path, offset=1024, length=80, size=EXTERNAL,
        before=b"\xff" * 1024)
    stored = _import_via_cli(cli, tmp_path, model)
    assert [array.tolist() for array in stored.weights.values()
            if array.shape == (4, 5)] == [weight.tolist()]


@pytest.mark.parametrize("given", ["FILE", "--classes", "--preprocessing"])
def test_a_fifo_given_as_a_file_to_read_is_refused_without_waiting(
        cli, tmp_path, given):
    """open() of a FIFO waits for a writer: the import hung for ever."""
    path = tmp_path / "m.onnx"
    onnx.save(_example().build(), str(path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    args = {"FILE": [fifo, "--name", "m"],
            "--classes": [path, "--name", "m", "--classes", fifo],
            "--preprocessing": [path, "--name", "m", "--preprocessing",
                                fifo]}[given]
    store = tmp_path / "store"
    with within(20):
        code, _, err = cli("--store", store, "models", "import", "onnx",
                           *args)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{fifo} is a FIFO, not a regular file" in err
    assert not store.exists() or os.listdir(store) == []



@pytest.mark.parametrize("given", ["--classes", "--preprocessing"])
def test_an_options_file_over_the_json_limit_is_refused_unread(
        cli, tmp_path, monkeypatch, given):
    """A 6 GB sparse --classes or --preprocessing file was read whole after
    the ONNX file (12 GB of memory, 20-26 s), then refused for what it
    held. Refused from its first 16 MiB now (1 GiB here), before the
    model is read."""
    from model_store import onnx_import

    def read_onnx(path):
        raise AssertionError("the ONNX file was read first")

    monkeypatch.setattr(onnx_import, "_read_onnx", read_onnx)
    big = tmp_path / "big.json"
    with open(big, "wb") as handle:
        handle.truncate(2**30)
    store = tmp_path / "store"
    (code, _, err), peak = traced_peak(lambda: cli(
        "--store", store, "models", "import", "onnx", tmp_path / "m.onnx",
        "--name", "m", given, big))
    assert peak < 64 * 2**20, peak
    assert code == 2
    assert err.splitlines() == [
        f"imgclass: error: the {given[2:]} file {big} is larger than 16 "
        f"MiB, the limit for it: give the right file"]
    assert not store.exists() or os.listdir(store) == []

def test_an_onnx_file_over_protobufs_limit_is_refused_unparsed(
        cli, tmp_path, monkeypatch):
    """A 6 GB (sparse) file took 6 GB of memory and 25 s to fail parsing;
    protobuf holds at most 2 GiB (the limit is lowered here)."""
    from model_store import onnx_import

    monkeypatch.setattr(onnx_import, "MAX_ONNX_BYTES", 1000)
    path = tmp_path / "big.onnx"
    onnx.save(_example().build(), str(path))
    assert path.stat().st_size > 1000
    store = tmp_path / "store"
    code, _, err = cli("--store", store, "models", "import", "onnx", path,
                       "--name", "m")
    assert code == 2 and err.count("\n") == 1, err
    assert "larger than 2 GiB, the most a protobuf message holds" in err
    assert not store.exists() or os.listdir(store) == []


def test_bad_inputs_exit_2(cli, tmp_path):
    store = tmp_path / "store"
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all \x00\xff" * 10)
    code, _, err = cli("--store", store, "models", "import", "onnx", junk,
                       "--name", "m")
    assert code == 2 and "is not a valid ONNX model" in err
    code, _, err = cli("--store", store, "models", "import", "onnx",
                       tmp_path / "missing.onnx", "--name", "m")
    assert code == 2 and "does not exist" in err
    # A graph whose height is not fixed.
    g = GraphBuilder((3, 8, 8))
    model = g.model(g.node("Relu", ["x"]), 4)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param = "H"
    onnx.save(model, str(tmp_path / "dynamic.onnx"))
    code, _, err = cli("--store", store, "models", "import", "onnx",
                       tmp_path / "dynamic.onnx", "--name", "m")
    assert code == 2 and "with fixed C, H and W" in err
    assert list_models(str(store)) == []


def test_option_mistakes_exit_2_and_write_nothing(cli, tmp_path):
    example = _example()
    path = str(tmp_path / "tiny.onnx")
    onnx.save(example.build(), path)
    store = tmp_path / "store"
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café\nb\nc\nd\n".encode("latin-1"))
    blank = tmp_path / "blank.txt"
    blank.write_text("a\nb\n\nc\nd\n")
    latin1_json = tmp_path / "prep.json"
    latin1_json.write_bytes('{"resize": "café"}'.encode("latin-1"))
    for options, message in [
            (["--classes", classes], "names 2 classes but the model has 4"),
            (["--classes", latin1], f"the classes file {latin1} is not UTF-8 "
                                    f"text (it has the byte 0xe9)"),
            (["--classes", blank], f"{blank} line 3 is blank"),
            (["--preprocessing", "{bad json"], "not valid JSON"),
            # A mistyped file name was "not valid JSON: Expecting value".
            (["--preprocessing", tmp_path / "mistyped.json"],
             f"--preprocessing {tmp_path / 'mistyped.json'}: no such file, "
             f"and not a JSON object"),
            (["--preprocessing", '{"gamma": 2}'], "keys among"),
            (["--preprocessing", '{"color_mode": "L"}'], "does not fit"),
            (["--preprocessing", '{"background": "x"}'],
             '--preprocessing background must be an integer, got "x"'),
            (["--preprocessing", '{"background": 1.7}'],
             "--preprocessing background must be an integer, got 1.7"),
            (["--preprocessing", '{"background": 256}'],
             "background must be a gray level"),
            (["--preprocessing", '{"mean": null}'],
             "--preprocessing mean must be a list of numbers, got null"),
            (["--preprocessing", '{"resize": ["bicubic"]}'],
             "--preprocessing resize must be a string"),
            (["--preprocessing", '{"std": [NaN, 1, 1]}'],
             "std must be positive and finite"),
            (["--preprocessing", latin1_json],
             "the preprocessing file"),
            (["--name", "bad name!"], "invalid model name")]:
        code, _, err = cli("--store", store, "models", "import", "onnx",
                           path, "--name", "tiny", *options)
        assert code == 2 and message in err, (options, err)
        assert len(err.strip().splitlines()) == 1, err
    assert list_models(str(store)) == []
    assert not store.exists() or os.listdir(store) == []


@pytest.mark.parametrize("names, lines", [
    ("a\nb\na\nc\n", "lines 1 and 3 name one class ('a', 'a')"),
    ("a\ncaf\u00e9\ncafe\u0301\nd\n",
     "lines 2 and 3 name one class ('caf\\xe9', 'cafe\\u0301')"),
])
def test_a_classes_file_naming_a_class_twice_is_refused_before_the_model(
        cli, tmp_path, names, lines):
    """A name given twice was refused by the store after the model (up to
    2 GiB) was read and converted, without naming the file or the lines;
    'café' written in NFC and in NFD was taken as two classes that print
    the same."""
    classes = tmp_path / "classes.txt"
    classes.write_text(names, encoding="utf-8")
    code, _, err = cli("--store", tmp_path / "store", "models", "import",
                       "onnx", tmp_path / "not-read.onnx", "--name", "m",
                       "--classes", classes)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{classes} {lines}: class names must differ" in err


@pytest.mark.parametrize("given", [
    '{"mean": [1e308, 0, 0]}', '{"std": [1e39, 1, 1]}',
    '{"mean": [1e38, 0, 0], "std": [0.001, 1, 1]}'])
def test_a_normalization_float32_cannot_hold_is_refused(cli, tmp_path, given):
    """Finite in Python, not in the float32 the network runs in: a mean of
    1e308 made every input -inf (classify failed every file on NaN), a std
    of 1e39 made every input 0; the model was saved all the same."""
    _assert_refused(cli, tmp_path, _example().build(),
                    "mean and std must keep (x / 255 - mean) / std finite in "
                    "float32", "--preprocessing", given)


@pytest.mark.parametrize("given, message", [
    ('{"mean": [1' + "0" * 400 + ', 0, 0]}', "mean must be finite"),
    ('{"std": [1' + "0" * 400 + ', 1, 1]}', "std must be positive and finite"),
    ('{"background": 1' + "0" * 5000 + '}', "--preprocessing is not valid JSON"),
    ('{"mean": ' + "[" * 100000 + "]" * 100000 + '}',
     "--preprocessing is not valid JSON"),
], ids=["mean beyond float", "std beyond float", "integer of 5001 digits",
        "nested too deeply"])
def test_a_preprocessing_number_python_cannot_convert_is_refused_in_one_line(
        cli, tmp_path, given, message):
    """An integer beyond float's range was an OverflowError traceback, one
    of more than 4300 digits or lists nested 100,000 deep a ValueError or
    RecursionError traceback from json (exit 1)."""
    _assert_refused(cli, tmp_path, _example().build(), message,
                    "--preprocessing", given)


def test_class_names_too_many_for_a_metadata_file_are_refused_unwritten(
        cli, tmp_path, monkeypatch):
    """A classes file under the 16 MiB limit (11.5 MiB: 100,000 names of
    38 CJK characters, escaped as \\uXXXX and indented in the JSON) made a
    metadata.json of 23 MiB: the version was written, then failed to load
    back ("larger than 16 MiB ... it is damaged"), and stayed in the store
    as latest, BROKEN. Refused before anything is written now (the limit
    is lowered here)."""
    from model_store import store as store_module

    monkeypatch.setattr(store_module, "MAX_JSON_BYTES", 8192)
    g = GraphBuilder((3, 8, 8))
    flat = g.node("Flatten", [g.node("GlobalAveragePool", ["x"])])
    model = g.model(g.node("Gemm", [flat, g.const(np.ones((3, 40)))]), 2)
    classes = tmp_path / "classes.txt"
    name = "\u6f22" * 38
    classes.write_text("".join(f"{name}{i:02d}\n" for i in range(40)),
                       encoding="utf-8")
    assert classes.stat().st_size < 8192
    _assert_refused(cli, tmp_path, model, "its metadata.json would be",
                    "--classes", classes)


def _named_convs(count, length):
    """A classifier of ``count`` 1x1 convolutions whose node names are
    ``length`` characters long."""
    g = GraphBuilder((3, 8, 8))
    x = "x"
    for i in range(count):
        x = g.node("Conv", [x, g.const(np.eye(3).reshape(3, 3, 1, 1))],
                   name=f"{i}_".ljust(length, "n"))
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    return g.model(g.node("Gemm", [flat, g.const(np.ones((3, 4)))]), 2)


def test_a_spec_too_large_for_a_json_file_is_refused_unwritten(
        cli, tmp_path, monkeypatch):
    """200 convolutions named by 50,000 characters each made a spec.json
    of 20 MB: the version was written, then failed to load back ("larger
    than 16 MiB ... it is damaged") and stayed in the store as latest,
    BROKEN. Refused before anything is written now (the limit is lowered
    here)."""
    from model_store import store as store_module

    monkeypatch.setattr(store_module, "MAX_JSON_BYTES", 8192)
    _assert_refused(cli, tmp_path, _named_convs(40, 100),
                    "its spec.json would be")


def test_layers_of_nodes_with_very_long_names_get_short_names(cli, tmp_path):
    """A layer was named by its node's whole name (50,000 characters:
    a 20 MB spec.json, and weights.npz as large for its keys)."""
    stored = _import_via_cli(cli, tmp_path, _named_convs(3, 50000))
    names = [layer["name"] for layer in stored.spec["layers"]]
    assert max(map(len, names)) <= 64 and len(set(names)) == len(names)
    assert names[:3] == ["0_" + "n" * 57, "1_" + "n" * 57, "2_" + "n" * 57]


def test_a_long_producer_name_is_recorded_cut_short(cli, tmp_path):
    """The file's producer_name was recorded whole: one of 17 MiB made the
    import fail, blaming the class names for the metadata's size."""
    model = _named_convs(1, 10)
    model.producer_name = "exporter " * (2 * 2**20)
    stored = _import_via_cli(cli, tmp_path, model)
    assert stored.metadata["source"]["producer"] == ("exporter " * 12)[:100]


def test_a_file_name_that_is_not_utf8_is_recorded_escaped(cli, tmp_path):
    """The metadata held the name's lone surrogate ('\\udce9'), which
    strict JSON readers refuse; it is written %XX, as paths are."""
    path = os.path.join(os.fsencode(tmp_path), b"caf\xe9.onnx")
    onnx.save(_example().build(), os.fsdecode(path))
    store = tmp_path / "store"
    code, _, err = cli("--store", store, "models", "import", "onnx",
                       os.fsdecode(path), "--name", "m")
    assert code == 0, err
    raw = (store / "m" / "1" / "metadata.json").read_bytes()
    metadata = json.loads(raw.decode("utf-8"))
    assert metadata["source"]["file"] == "caf%E9.onnx"
    assert metadata["description"] == "imported from ONNX file caf%E9.onnx"
    json.dumps(metadata, ensure_ascii=False).encode("utf-8")  # no surrogate


def test_classes_file_with_bom_crlf_and_final_blank_lines(cli, tmp_path):
    """A classes file saved by a Windows editor (UTF-8 with a byte-order
    mark, CRLF line ends) and ending in blank lines names the classes."""
    example = _example()
    classes = tmp_path / "classes.txt"
    classes.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(
        example.CLASSES).encode() + b"\r\n\r\n")
    stored = _import_via_cli(cli, tmp_path, example.build(), "--classes",
                             classes)
    assert stored.class_names == example.CLASSES


def test_efficientnet_lite0_round_trip(tmp_path, lite0_photos,
                                       lite0_reference,
                                       lite0_logits_predictor):
    """Lite0 exported to ONNX from the shipped weights: onnxruntime agrees
    with the NumPy reference, and the file imported back predicts what the
    shipped model predicts."""
    from model_store import lite0
    from model_store.onnx_import import import_onnx
    from tests.conftest import lite0_inputs
    from tests.lite0_reference import softmax
    from tests.spec_to_onnx import export

    shipped = load_model("efficientnet-lite0")
    path = str(tmp_path / "lite0.onnx")
    onnx.save(export(shipped.spec, shipped.weights), path)
    paths = sorted(lite0_reference)
    x = lite0_inputs(paths, lite0.PREPROCESSING)
    want = softmax(np.stack([lite0_reference[p] for p in paths]))
    np.testing.assert_allclose(run_onnxruntime(onnx.load(path), x), want,
                               atol=2e-5)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(shipped.class_names) + "\n")
    imported = import_onnx(
        path, name="lite0-from-onnx", classes=str(classes),
        preprocessing='{"resize": "bicubic", "resize_shorter": 256, '
                      '"mean": [0.498039, 0.498039, 0.498039], '
                      '"std": [0.501961, 0.501961, 0.501961]}',
        root=str(tmp_path / "store"))
    assert imported.class_names == shipped.class_names
    got = compile_predictor(imported)(x)
    np.testing.assert_allclose(got, softmax(lite0_logits_predictor(x)),
                               atol=1e-5)
    assert [list(np.argsort(-row)[:5]) for row in got] == \
        [list(np.argsort(-row)[:5]) for row in want]


def test_hard_sigmoid_times_input_becomes_one_hard_swish():
    """Older exporters write hard-swish as x * HardSigmoid(x): one layer."""
    spec, weights = onnx_to_spec(GRAPHS["hard_sigmoid_times_input"][0])
    assert [(layer["type"], layer.get("nonlinearity"))
            for layer in spec["layers"]] == [("activation", "hard_swish")]
    assert weights == {}


def test_a_stale_shape_hint_for_an_inner_tensor_does_not_stop_an_import(
        cli, tmp_path):
    """Exporters record shapes of intermediate tensors (value_info) that
    later edits of the graph can leave stale; the graph still computes, as
    onnxruntime shows, so the import's strict check ignores those hints."""
    g = GraphBuilder((3, 6, 6), seed=7)
    hidden = g.node("Relu", [g.node("Conv", ["x", g.const(
        g.rng.randn(4, 3, 3, 3))], kernel_shape=[3, 3])])
    logits = g.node("Gemm", [g.node("Flatten", [hidden]),
                             g.const(g.rng.randn(64, 5))])
    model = g.model(g.node("Softmax", [logits], axis=1), 2)
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(
        hidden, onnx.TensorProto.FLOAT, ["N", 4, 5, 5]))  # it is 4 x 4
    with pytest.raises(Exception, match="ShapeInferenceError"):
        onnx.checker.check_model(model, full_check=True)
    _assert_ends_in_softmax_like_onnxruntime(
        _import_via_cli(cli, tmp_path, model), model, (2, 3, 6, 6))
