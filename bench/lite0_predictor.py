"""EfficientNet-Lite0-shaped predictor: plain Theano, Theano with
model_store/ops, and onnxruntime (1 and 2 threads), same random weights.

BN is taken as already folded (every convolution has a bias). Architecture:
stem 3x3 s2 32 + ReLU6; MBConv blocks (expand ratio, kernel, stride, out,
repeats) below, each expand 1x1 + ReLU6 (ratio != 1), depthwise kxk TF-same +
ReLU6, project 1x1 linear, residual add when stride 1 and in == out; head 1x1
1280 + ReLU6; global average pool; dense 1000; softmax.

The engines run interleaved in rounds (a shared machine's speed drifts), the
best round counts. Writes bench/results/lite0_latest.{json,md} and, with
--profile, Theano's per-op profiles (bench/results/lite0_profile_*.txt).

    python bench/lite0_predictor.py                  # batches 1 16 32 64
    python bench/lite0_predictor.py --batches 32 --skip-plain
    python bench/lite0_predictor.py --profile
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, ROOT)

BLOCKS = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2),
          (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
          (6, 3, 1, 320, 1)]
SIZE, CLASSES = 224, 1000


def tf_same(size: int, k: int, s: int) -> tuple:
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return (total // 2, total - total // 2)


def lite0(seed: int = 0) -> list[dict]:
    """The network as a list of layer dicts with float32 weights.

    Conv: ``{"kind": "conv", W, b, stride, padding, groups, act, out_hw,
    residual_from}`` where residual_from is the index of the layer whose
    output is added (the block input) or None; then "pool" and "dense".
    Weights are He-scaled so activations stay in ReLU6's working range.
    """
    rng = np.random.RandomState(seed)
    layers, hw, channels = [], SIZE, 3

    def conv(f, k, s, groups, act, residual_from=None):
        nonlocal hw, channels
        per_group = channels // groups
        fan_in = per_group * k * k
        w = (rng.randn(f, per_group, k, k) * np.sqrt(2.0 / fan_in)
             ).astype(np.float32)
        b = (rng.randn(f) * 0.1).astype(np.float32)
        pad = tf_same(hw, k, s)
        hw = (hw + sum(pad) - k) // s + 1
        layers.append(dict(kind="conv", W=w, b=b, stride=s,
                           padding=(pad, pad), groups=groups, act=act,
                           in_channels=channels, out_hw=hw,
                           residual_from=residual_from))
        channels = f

    conv(32, 3, 2, 1, "relu6")
    for ratio, k, stride, out, repeats in BLOCKS:
        for r in range(repeats):
            s = stride if r == 0 else 1
            block_input = len(layers) - 1
            residual = s == 1 and channels == out
            if ratio != 1:
                conv(channels * ratio, 1, 1, 1, "relu6")
            conv(channels, k, s, channels, "relu6")
            conv(out, 1, 1, 1, "identity",
                 block_input if residual else None)
    conv(1280, 1, 1, 1, "relu6")
    layers.append(dict(kind="dense",
                       W=(rng.randn(channels, CLASSES)
                          * np.sqrt(1.0 / channels)).astype(np.float32),
                       b=(rng.randn(CLASSES) * 0.1).astype(np.float32)))
    return layers


def flops_per_image(layers: list[dict]) -> int:
    """Multiply-adds x 2 of the convolutions and the dense layer."""
    total = 0
    for layer in layers:
        w = layer["W"]
        if layer["kind"] == "conv":
            total += 2 * w.size * layer["out_hw"] ** 2
        else:
            total += 2 * w.size
    return total


def activation_floats(layers: list[dict]) -> int:
    """Floats the convolutions write per image."""
    return sum(layer["W"].shape[0] * layer["out_hw"] ** 2
               for layer in layers if layer["kind"] == "conv")


def theano_graph(layers: list[dict], fast: bool):
    """(input, logits, probs) of the Theano graph: plain ops, or model_store
    ops wherever they apply, as a stored model's predictor uses them."""
    from model_store.engine import T, conv2d, shared
    from model_store.ops import fast_conv2d_bias_act, fast_dense_bias_act

    x = T.tensor4("images", dtype="float32")
    outputs, h, hw, channels = [], x, SIZE, 3
    for layer in layers:
        if layer["kind"] == "dense":
            pooled = h.mean(axis=(2, 3))
            w, b = shared(layer["W"]), shared(layer["b"])
            logits = fast_dense_bias_act(pooled, w, b, activation="identity") \
                if fast else None
            if logits is None:
                logits = T.dot(pooled, w) + b
            return x, logits, T.nnet.softmax(logits)
        w, b = shared(layer["W"]), shared(layer["b"])
        out = None
        if fast:
            out = fast_conv2d_bias_act(
                h, w, b, input_shape=(channels, hw, hw),
                stride=layer["stride"], padding=layer["padding"],
                groups=layer["groups"], activation=layer["act"])
        if out is None:
            out = conv2d(h, w, input_shape=(None, channels, hw, hw),
                         filter_shape=layer["W"].shape,
                         border_mode=layer["padding"],
                         subsample=(layer["stride"],) * 2,
                         num_groups=layer["groups"], filter_flip=False)
            out = out + b.dimshuffle("x", 0, "x", "x")
            if layer["act"] == "relu6":
                out = T.minimum(T.maximum(out, 0), 6)
        if layer["residual_from"] is not None:
            out = out + outputs[layer["residual_from"]]
        outputs.append(out)
        h, hw, channels = out, layer["out_hw"], layer["W"].shape[0]
    raise ValueError("the network has no dense layer")


def onnx_model(layers: list[dict]):
    """The same network as an ONNX graph (opset 13), outputs logits, probs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, names = [], [], []
    current = "images"
    for i, layer in enumerate(layers):
        w_name, b_name = f"w{i}", f"b{i}"
        inits += [numpy_helper.from_array(layer["W"], w_name),
                  numpy_helper.from_array(layer["b"], b_name)]
        if layer["kind"] == "dense":
            nodes += [helper.make_node("GlobalAveragePool", [current], ["gap"]),
                      helper.make_node("Flatten", ["gap"], ["flat"]),
                      helper.make_node("Gemm", ["flat", w_name, b_name],
                                       ["logits"]),
                      helper.make_node("Softmax", ["logits"], ["probs"],
                                       axis=1)]
            break
        (pt, pb), (pl, pr) = layer["padding"]
        k = layer["W"].shape[2]
        out = f"conv{i}"
        nodes.append(helper.make_node(
            "Conv", [current, w_name, b_name], [out], kernel_shape=[k, k],
            strides=[layer["stride"]] * 2, pads=[pt, pl, pb, pr],
            group=layer["groups"]))
        if layer["act"] == "relu6":
            nodes.append(helper.make_node("Clip", [out, "zero", "six"],
                                          [out + "_act"]))
            out += "_act"
        if layer["residual_from"] is not None:
            nodes.append(helper.make_node(
                "Add", [out, names[layer["residual_from"]]], [out + "_add"]))
            out += "_add"
        names.append(out)
        current = out
    inits += [numpy_helper.from_array(np.float32(0), "zero"),
              numpy_helper.from_array(np.float32(6), "six")]
    graph = helper.make_graph(
        nodes, "lite0",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["N", CLASSES]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT,
                                       ["N", CLASSES])],
        inits)
    model = helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def onnx_session(model, threads: int, spinning: bool = True):
    """An onnxruntime session; ``spinning=False`` stops idle pool threads
    from spinning (like OMP_WAIT_POLICY=PASSIVE on our side), which is
    faster on a machine shared with other work."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "0")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"images": batch})


def measured_peak(threads: int = 2, n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of a large sgemm through the engine's OpenBLAS: what this
    machine delivers to a good kernel now, next to the nominal peak."""
    from model_store.engine import T, function

    a = T.matrix("a", dtype="float32")
    fn = function([a], T.dot(a, a))
    x = np.random.RandomState(0).rand(n, n).astype(np.float32)
    fn(x)
    best = min(_seconds(lambda: fn(x)) for _ in range(rounds))
    return 2 * n ** 3 / best / 1e9


def _seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def compile_theano(layers, fast: bool, profile: bool = False,
                   keep_buffers: bool = False):
    """(predict, logits function, compile seconds). ``keep_buffers``: Theano's
    allow_gc=False, so intermediate arrays are kept between calls and the ops
    write into them again instead of faulting in fresh pages every call."""
    from model_store.engine import function, theano

    x, logits, probs = theano_graph(layers, fast)
    mode = None
    if keep_buffers:
        mode = theano.compile.get_default_mode().clone(
            link_kwargs={"allow_gc": False})
    started = time.perf_counter()
    predict = function([x], probs, profile=profile, mode=mode)
    compile_s = time.perf_counter() - started
    return predict, function([x], logits), compile_s


def run_profiles(layers: list[dict], calls: int = 3) -> None:
    """Theano's per-op profiles: both graphs at batch 16 (one call per
    batch), and the fast graph at batch 2 (the chunk size run_in_chunks
    picks for this network)."""
    os.makedirs(RESULTS, exist_ok=True)
    for fast, name, batch in ((False, "plain", 16), (True, "fast", 16),
                              (True, "fast", 2)):
        x = np.random.RandomState(1).rand(batch, 3, SIZE, SIZE).astype(
            np.float32)
        predict, _, _ = compile_theano(layers, fast, profile=True)
        for _ in range(calls + 1):
            predict(x)
        text = io.StringIO()
        predict.profile.summary(file=text, n_ops_to_print=12,
                                n_apply_to_print=15)
        path = os.path.join(RESULTS, f"lite0_profile_{name}_b{batch}.txt")
        with open(path, "w") as handle:
            handle.write(f"# Lite0-shaped predictor, {name} Theano, batch "
                         f"{batch}, {calls + 1} calls (first included), "
                         f"load {os.getloadavg()}\n")
            handle.write(text.getvalue())
        print(f"  profile: {path}", flush=True)


def main() -> None:
    args = parse_args()
    sys.path.insert(0, HERE)
    from run import machine

    info = machine()
    layers = lite0()
    flops = flops_per_image(layers)
    print(f"machine: {info['cores']} cores, {info['cpu']}, "
          f"{info['vector_unit']}, nominal peak {info['peak_gflops']} "
          f"GFLOP/s; load {os.getloadavg()}", flush=True)
    print(f"network: {flops / 1e9:.3f} GFLOP per image", flush=True)
    if args.profile:
        run_profiles(layers)
        return
    engines, compile_seconds, fast_logits, ort2 = build_engines(layers, args)
    peak = measured_peak()
    print(f"compile seconds: {compile_seconds}; measured sgemm peak "
          f"{peak:.1f} GFLOP/s (2 threads)", flush=True)
    rel = logits_difference(fast_logits, ort2)
    results = {"date": datetime.datetime.now(datetime.timezone.utc)
               .isoformat(timespec="seconds"), "machine": info,
               "measured_sgemm_peak_gflops": round(peak, 1),
               "gflop_per_image": round(flops / 1e9, 4),
               "compile_seconds": {k: round(v, 1)
                                   for k, v in compile_seconds.items()},
               "logits_max_rel_diff": rel, "load_before": os.getloadavg(),
               "batches": {}}
    for batch in args.batches:
        x = np.random.RandomState(batch).rand(batch, 3, SIZE, SIZE).astype(
            np.float32)
        results["batches"][batch] = time_batch(engines, x, args, flops,
                                               info["peak_gflops"])
    results["load_after"] = os.getloadavg()
    write(results)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+",
                        default=[1, 16, 32, 64])
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds; the best counts")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="minimum time per engine per round")
    parser.add_argument("--skip-plain", action="store_true",
                        help="leave out the (slow) plain Theano graph")
    parser.add_argument("--keep-buffers", action="store_true",
                        help="add the fast graph compiled with allow_gc=False")
    parser.add_argument("--profile", action="store_true",
                        help="write Theano's per-op profiles at batch 16")
    return parser.parse_args()


def build_engines(layers, args):
    """The engines timed, by name (``batch -> outputs``); ``(engines,
    compile seconds by name, the fast graph's logits function, the
    2-thread onnxruntime session)``."""
    from model_store.ops.running import chunk_size, run_in_chunks

    engines, compile_seconds = {}, {}
    if not args.skip_plain:
        plain, _, compile_seconds["theano plain"] = compile_theano(layers,
                                                                   False)
        engines["theano plain"] = plain
    fast, fast_logits, compile_seconds["theano fast ops"] = compile_theano(
        layers, True)
    engines["theano fast ops"] = fast
    chunk = chunk_size(4 * activation_floats(layers))
    engines[f"theano fast ops, chunks of {chunk}"] = \
        lambda b: run_in_chunks(fast, b, chunk)
    if args.keep_buffers:
        engines["theano fast ops, allow_gc=False"], _, _ = compile_theano(
            layers, True, keep_buffers=True)
    model = onnx_model(layers)
    ort1, ort2 = onnx_session(model, 1), onnx_session(model, 2)
    ort2_passive = onnx_session(model, 2, spinning=False)
    engines["onnxruntime 1 thread"] = lambda b: ort1(b)[1]
    engines["onnxruntime 2 threads"] = lambda b: ort2(b)[1]
    engines["onnxruntime 2 threads, no spinning"] = \
        lambda b: ort2_passive(b)[1]
    return engines, compile_seconds, fast_logits, ort2


def logits_difference(fast_logits, ort2) -> float:
    """The fast graph's logits against onnxruntime's, on 4 random images:
    the largest difference relative to onnxruntime's largest logit."""
    check = np.random.RandomState(2).rand(4, 3, SIZE, SIZE).astype(np.float32)
    ours, theirs = fast_logits(check), ort2(check)[0]
    rel = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    print(f"logits, fast ops vs onnxruntime: max relative difference "
          f"{rel:.2e} (must be <= 1e-4)", flush=True)
    return rel


def time_batch(engines: dict, x: np.ndarray, args, flops: int,
               peak: float) -> dict:
    """Best images/s (wall) and least CPU ms per image (all threads of this
    process) of each engine over interleaved rounds. On a shared machine the
    wall figure depends on how much of the cores the engine got; the CPU
    time per image much less (it still grows with cache contention, and an
    engine that spins while it waits pays for it)."""
    best = {name: 0.0 for name in engines}
    cpu = {name: float("inf") for name in engines}
    for call in engines.values():
        call(x)  # warm-up
    for _ in range(args.rounds):
        for name, call in engines.items():
            calls, started, cpu0 = 0, time.perf_counter(), time.process_time()
            while True:
                call(x)
                calls += 1
                spent = time.perf_counter() - started
                if spent >= args.seconds or (name == "theano plain"
                                             and calls >= 1):
                    break
            images = len(x) * calls
            best[name] = max(best[name], images / spent)
            cpu[name] = min(cpu[name],
                            (time.process_time() - cpu0) / images * 1e3)
    row = {}
    for name, rate in best.items():
        gflops = rate * flops / 1e9
        row[name] = {"images_per_s": round(rate, 1),
                     "gflops": round(gflops, 1),
                     "fraction_of_peak": round(gflops / peak, 3),
                     "cpu_ms_per_image": round(cpu[name], 1)}
    # The better of onnxruntime's two 2-thread set-ups is the reference.
    ort2 = max(best["onnxruntime 2 threads"],
               best["onnxruntime 2 threads, no spinning"])
    ort2_cpu = min(cpu["onnxruntime 2 threads"],
                   cpu["onnxruntime 2 threads, no spinning"])
    chunked = next(n for n in best if n.startswith("theano fast ops, chunks"))
    row["ratio_fast_vs_ort2"] = round(best["theano fast ops"] / ort2, 3)
    row["ratio_chunked_vs_ort2"] = round(best[chunked] / ort2, 3)
    row["ratio_cpu_chunked_vs_ort2"] = round(ort2_cpu / cpu[chunked], 3)
    print(f"batch {len(x)}: " + ", ".join(
        f"{n} {r['images_per_s']} img/s ({r['cpu_ms_per_image']} CPU ms)"
        for n, r in row.items() if isinstance(r, dict))
        + f"; fast/ort2 = {row['ratio_fast_vs_ort2']}, chunked/ort2 = "
          f"{row['ratio_chunked_vs_ort2']}, by CPU time "
          f"{row['ratio_cpu_chunked_vs_ort2']}; load "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    return row


def write(results: dict) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "lite0_latest.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    m = results["machine"]
    names = [n for n in next(iter(results["batches"].values()))
             if not n.startswith("ratio")]
    lines = [f"Lite0-shaped predictor, {results['date']}, {m['cores']} cores "
             f"of {m['cpu']} ({m['vector_unit']}, nominal peak "
             f"{m['peak_gflops']} GFLOP/s; a 2048^3 sgemm measured "
             f"{results['measured_sgemm_peak_gflops']}), "
             f"{results['gflop_per_image']} GFLOP per image, load "
             f"{results['load_before'][0]:.2f} -> "
             f"{results['load_after'][0]:.2f}. Images/s (GFLOP/s, % of "
             f"nominal peak; CPU ms per image), best of interleaved rounds. "
             f"Ratios against the better onnxruntime 2-thread set-up.", "",
             "| batch | " + " | ".join(names)
             + " | fast / ort2 | chunked / ort2 | chunked / ort2 by CPU "
               "time |",
             "| ---: |" + " ---: |" * (len(names) + 3)]
    for batch, row in results["batches"].items():
        cells = [f"{row[n]['images_per_s']} ({row[n]['gflops']}, "
                 f"{100 * row[n]['fraction_of_peak']:.1f}%; "
                 f"{row[n]['cpu_ms_per_image']})" for n in names]
        lines.append(f"| {batch} | " + " | ".join(cells)
                     + f" | {row['ratio_fast_vs_ort2']} | "
                       f"{row['ratio_chunked_vs_ort2']} | "
                       f"{row['ratio_cpu_chunked_vs_ort2']} |")
    lines += ["", f"Fast-ops logits vs onnxruntime: max relative difference "
                  f"{results['logits_max_rel_diff']:.1e}. Compile seconds: "
                  f"{results['compile_seconds']}.", ""]
    text = "\n".join(lines)
    with open(os.path.join(RESULTS, "lite0_latest.md"), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
