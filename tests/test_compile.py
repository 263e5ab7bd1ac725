"""The compiled predictor folds batch norm and fuses activations, and gives
what the unfolded graph and the NumPy reference give."""

import os

import numpy as np

from model_store import compile as C
from model_store import layers as L
from model_store.engine import T, floatX, function, theano
from model_store.spec import build_network
from tests import numpy_ref as ref

SPEC = {"input_shape": [3, 9, 9], "layers": [
    {"type": "conv2d", "name": "stem", "num_filters": 8, "filter_size": 3,
     "stride": 2, "padding": "same", "bias": False,
     "nonlinearity": "identity"},
    {"type": "batch_norm", "name": "stem_bn"},
    {"type": "activation", "name": "stem_act", "nonlinearity": "relu6"},
    {"type": "conv2d", "name": "dw", "num_filters": 8, "filter_size": 3,
     "padding": "same", "groups": 8, "bias": False,
     "nonlinearity": "identity"},
    {"type": "batch_norm", "name": "dw_bn"},
    {"type": "activation", "name": "dw_act", "nonlinearity": "hard_swish"},
    {"type": "global_avg_pool", "name": "squeeze", "keepdims": True},
    {"type": "conv2d", "name": "excite", "num_filters": 8, "filter_size": 1,
     "nonlinearity": "sigmoid"},
    {"type": "multiply", "name": "se", "inputs": ["dw_act", "excite"]},
    {"type": "conv2d", "name": "project", "num_filters": 8, "filter_size": 1,
     "nonlinearity": "identity"},
    {"type": "batch_norm", "name": "project_bn"},
    {"type": "add", "name": "res", "inputs": ["stem_act", "project_bn"]},
    # A conv read twice: its batch norm cannot be folded.
    {"type": "conv2d", "name": "shared", "num_filters": 8, "filter_size": 1,
     "nonlinearity": "identity"},
    {"type": "batch_norm", "name": "shared_bn"},
    {"type": "add", "name": "res2", "inputs": ["shared", "shared_bn"]},
    # A batch norm after a ReLU convolution: not foldable either.
    {"type": "conv2d", "name": "relu_conv", "num_filters": 6,
     "filter_size": 2, "stride": 2, "padding": [[0, 1], [1, 0]]},
    {"type": "batch_norm", "name": "after_relu"},
    {"type": "flatten", "name": "flat"},
    {"type": "dense", "name": "fc", "num_units": 5, "bias": False,
     "nonlinearity": "identity"},
    {"type": "batch_norm", "name": "fc_bn"},
    {"type": "activation", "name": "prob", "nonlinearity": "softmax"}]}


def randomised(spec):
    net = build_network(spec, seed=1)
    rng = np.random.RandomState(2)
    for param in L.get_all_params(net):
        shape = param.get_value().shape
        if param.name.endswith(".var"):
            value = rng.uniform(0.3, 2.0, size=shape)
        elif param.name.endswith(".gamma"):
            value = rng.uniform(0.5, 1.5, size=shape)
        else:
            value = rng.normal(0, 0.5, size=shape)
        param.set_value(value.astype(floatX))
    return net


def test_folded_predictor_matches_unfolded_graph_and_numpy():
    net = randomised(SPEC)
    x = np.random.RandomState(3).normal(size=(4, 3, 9, 9))
    images = T.tensor4(dtype=floatX)
    (folded,) = C.inference_outputs(net, images, [net])
    unfolded = L.get_output(net, images, deterministic=True)
    got, plain = function([images], [folded, unfolded])(x.astype(floatX))
    want = ref.forward(SPEC, L.get_param_values(net), x)
    np.testing.assert_allclose(plain, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # What was folded: no statistics of a folded batch norm are read.
    read = {v.name for v in theano.gof.graph.inputs([folded])
            if v.name and "." in v.name}
    layers_read = {name.split(".")[0] for name in read}
    assert layers_read >= {"shared_bn", "after_relu"}
    assert not layers_read & {"stem_bn", "dw_bn", "project_bn", "fc_bn"}


def test_fusion_plan_groups():
    plan = {f.base.name: (f.batch_norm and f.batch_norm.name, f.activation,
                          f.last.name)
            for f in C.fusion_plan(build_network(SPEC))}
    assert plan == {
        "stem": ("stem_bn", "relu6", "stem_act"),
        "dw": ("dw_bn", "hard_swish", "dw_act"),
        "excite": (None, "sigmoid", "excite"),
        "project": ("project_bn", "identity", "project_bn"),
        "shared": (None, "identity", "shared"),
        "relu_conv": (None, "relu", "relu_conv"),
        "fc": ("fc_bn", "softmax", "prob"),
    }


def test_stored_batch_norm_model_round_trips_into_the_folded_predictor(
        tmp_path, cli):
    """Running statistics are saved with the weights (they are parameters,
    not trainable ones), and the predictor compiled from the store gives
    the NumPy reference's probabilities."""
    from model_store.compile import compile_predictor
    from model_store.store import load_model, save_model
    net = randomised(SPEC)
    metadata = {"class_names": list("abcde"), "input_shape": [3, 9, 9],
                "color_mode": "RGB", "resize": "bilinear",
                "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    saved = save_model(net, name="tiny-bn", metadata=metadata,
                       root=str(tmp_path))
    assert {"stem_bn.mean", "stem_bn.var", "fc_bn.gamma"} <= set(
        saved.weights)
    model = load_model("tiny-bn", root=str(tmp_path))
    x = np.random.RandomState(4).normal(size=(3, 3, 9, 9))
    got = compile_predictor(model)(x.astype(floatX))
    want = ref.forward(SPEC, L.get_param_values(net), x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    code, out, _ = cli("--store", tmp_path, "models", "show", "tiny-bn")
    assert code == 0
    shown = {line.split()[0]: line for line in out.splitlines()
             if "Layer " in line}
    assert shown["res"].endswith("<- stem_act, project_bn")
    assert "<-" not in shown["stem_bn"]


def test_one_predictor_serves_many_threads_each_its_own_answer():
    """Runners call one worker's predictor from several threads (bundles
    in parallel): every call returns what it returns alone, never rows of
    another thread's batch."""
    import concurrent.futures

    from model_store.store import load_model

    predictor = C.compile_predictor(load_model("digits-cnn"), cached=True)
    rng = np.random.RandomState(3)
    batches = [rng.rand(16, *predictor.input_shape).astype(floatX)
               for _ in range(8)]
    alone = [predictor(batch) for batch in batches]

    def calls(i):
        return [predictor(batches[i]) for _ in range(25)]

    with concurrent.futures.ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(calls, range(len(batches))))
    for expected, got in zip(alone, results):
        for probs in got:
            np.testing.assert_array_equal(probs, expected)


def test_digits_cnn_predictor_pools_in_its_convolutions_and_training_keeps_plain_ops():
    """digits-cnn's predictor runs each conv2d + max_pool2d pair as one
    DenseConv2dBiasAct that pools; its training graph (the forward pass
    and the gradients of a loss) has none of the inference-only ops, only
    Theano's convolution and pooling; the predictor's probabilities are
    the training graph's deterministic ones, and the NumPy reference's."""
    import json

    from model_store.compile import compile_predictor
    from model_store.ops import DenseConv2dBiasAct
    from model_store.ops.base import InferenceOp
    from model_store.store import load_model

    stored = load_model("digits-cnn")
    predictor = compile_predictor(stored)
    kinds = [node.op for node in predictor._fn.maker.fgraph.toposort()]
    assert [op.pool for op in kinds if isinstance(op, DenseConv2dBiasAct)] \
        == [(2, 2, 2, 2)] * 2
    assert not [op for op in kinds if type(op).__name__ in ("Pool", "CorrMM")]

    network = stored.build()
    images, labels = T.tensor4(dtype=floatX), T.ivector()
    loss = T.nnet.categorical_crossentropy(
        L.get_output(network, images), labels).mean()
    gradients = theano.grad(loss, L.get_all_params(network, trainable=True))
    train = function([images, labels], [loss] + gradients)
    plain = function([images], L.get_output(network, images,
                                            deterministic=True))
    for fn in (train, plain):
        names = {type(node.op).__name__ for node in fn.maker.fgraph.toposort()}
        assert not [node for node in fn.maker.fgraph.toposort()
                    if isinstance(node.op, InferenceOp)], names
        assert "Pool" in names and "CorrMM" in names, names

    x = np.random.RandomState(4).normal(size=(6, 1, 32, 32)).astype(floatX)
    outputs = train(x, np.arange(6, dtype=np.int32))
    assert all(np.isfinite(g).all() for g in outputs)
    with open(os.path.join(stored.location, "spec.json")) as handle:
        spec = json.load(handle)
    want = ref.forward(spec, L.get_param_values(network), x)
    np.testing.assert_allclose(plain(x), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(predictor(x), want, rtol=1e-4, atol=1e-6)


def test_a_predictor_without_a_linked_blas_runs_the_plain_ops(tmp_path):
    """With Theano's ``blas.ldflags`` empty (no scipy-openblas32, or a
    user's THEANO_FLAGS), Theano's sgemm_ goes through NumPy's C API, which
    needs the GIL the BLAS ops release: digits-cnn's predictor then keeps
    Theano's convolution and dot (no op that calls sgemm_ without the
    GIL) and gives the NumPy reference's probabilities, instead of
    aborting the process."""
    import json
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import json
        import numpy as np
        from model_store import layers as L
        from model_store.compile import compile_predictor
        from model_store.engine import theano
        from model_store.store import load_model
        assert theano.config.blas.ldflags == ""
        stored = load_model("digits-cnn")
        predictor = compile_predictor(stored)
        x = np.random.RandomState(4).normal(size=(6, 1, 32, 32))
        np.save("x.npy", x)
        np.save("got.npy", predictor(x.astype("float32")))
        np.savez("weights.npz", **L.get_param_values(stored.build()))
        print("uses_blas:", sorted({type(n.op).__name__ for n in
              predictor._fn.maker.fgraph.toposort()
              if getattr(n.op, "uses_blas", False)}))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = str(tmp_path)
    # What the engine configures without scipy-openblas32: no BLAS, and
    # OpenMP off (Theano's CorrMM calls sgemm_ in OpenMP threads).
    flags = os.environ.get("THEANO_FLAGS", "")
    ours = "blas.ldflags=,openmp=False"
    env = dict(os.environ, PYTHONPATH=root,
               THEANO_FLAGS=f"{flags},{ours}" if flags else ours)
    done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "uses_blas: []" in done.stdout.splitlines()
    from model_store.store import load_model

    stored = load_model("digits-cnn")
    with open(os.path.join(stored.location, "spec.json")) as handle:
        spec = json.load(handle)
    weights = dict(np.load(os.path.join(work, "weights.npz")))
    x = np.load(os.path.join(work, "x.npy"))
    want = ref.forward(spec, weights, x)
    np.testing.assert_allclose(np.load(os.path.join(work, "got.npy")), want,
                               rtol=1e-4, atol=1e-6)
