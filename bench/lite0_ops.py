"""Time each fast op of an EfficientNet-Lite0-shaped network alone, at the
shapes Lite0 runs them: the stem, the fused expansion + depthwise op of each
distinct block, and the pointwise projections and head. Random weights and
inputs; one compiled function per shape; the best of --calls calls of
--images images (the predictor's chunk, 19) counts.

For A/B work on the C kernels: run it in two checkouts alternately (the
Theano cache keys on the C source, so each keeps its own modules).

    python bench/lite0_ops.py
    python bench/lite0_ops.py --images 32 --calls 20
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model_store.engine import T, function, shared  # noqa: E402
from model_store.ops import (  # noqa: E402
    ExpandDepthwiseConv2dBiasAct,
    PointwiseConv2dBiasAct,
    StemConv2dBiasAct,
)

# (input channels, expanded channels, H = W, depthwise kernel, stride,
# padding): Lite0's distinct fused blocks, in network order
EXPAND_DEPTHWISE = [
    (16, 96, 112, 3, 2, ((0, 1), (0, 1))),
    (24, 144, 56, 3, 1, ((1, 1), (1, 1))),
    (24, 144, 56, 5, 2, ((1, 2), (1, 2))),
    (40, 240, 28, 5, 1, ((2, 2), (2, 2))),
    (40, 240, 28, 3, 2, ((0, 1), (0, 1))),
    (80, 480, 14, 3, 1, ((1, 1), (1, 1))),
    (80, 480, 14, 5, 1, ((2, 2), (2, 2))),
    (112, 672, 14, 5, 1, ((2, 2), (2, 2))),
    (112, 672, 14, 5, 2, ((1, 2), (1, 2))),
    (192, 1152, 7, 5, 1, ((2, 2), (2, 2))),
    (192, 1152, 7, 3, 1, ((1, 1), (1, 1))),
]
# (input channels, output channels, H = W, residual): block 0's 1x1, the
# projections, the head
POINTWISE = [
    (32, 16, 112, False), (96, 24, 56, False), (144, 24, 56, True),
    (144, 40, 28, False), (240, 40, 28, True), (240, 80, 14, False),
    (480, 80, 14, True), (480, 112, 14, False), (672, 112, 14, True),
    (672, 192, 7, False), (1152, 192, 7, True), (1152, 320, 7, False),
    (320, 1280, 7, False),
]


def best_ms(fn, args, calls: int) -> float:
    fn(*args)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def stem_rows(images: int, calls: int, rng):
    """Lite0's stem: 3 -> 32 channels, 3x3 stride 2 at 224 x 224."""
    op = StemConv2dBiasAct(kernel=(3, 3), stride=2, padding=((0, 1), (0, 1)),
                           activation="relu6")
    x = T.tensor4("x")
    fn = function([x], op(x, shared((rng.randn(32, 3, 3, 3) / 3).astype(
        np.float32)), shared(rng.randn(32).astype(np.float32))))
    xv = rng.randn(images, 3, 224, 224).astype(np.float32)
    flop = images * 2 * 3 * 9 * 32 * 112 * 112
    ms = best_ms(fn, [xv], calls)
    yield "stem 3 -> 32 at 224x224, 3x3 s2", ms, flop / ms / 1e6


def expand_depthwise_rows(images: int, calls: int, rng):
    for c, f, size, k, stride, padding in EXPAND_DEPTHWISE:
        op = ExpandDepthwiseConv2dBiasAct(
            kernel=(k, k), stride=stride, padding=padding,
            expand_activation="relu6", activation="relu6")
        x = T.tensor4("x")
        weights = [rng.randn(f, c, 1, 1) / 4, rng.randn(f),
                   rng.randn(f, 1, k, k) / 3, rng.randn(f)]
        fn = function([x], op(x, *(shared(w.astype(np.float32))
                                   for w in weights)))
        xv = rng.randn(images, c, size, size).astype(np.float32)
        out = size // stride
        flop = images * (2 * c * f * size * size + 2 * f * k * k * out * out)
        ms = best_ms(fn, [xv], calls)
        yield (f"expand+depthwise {c} -> {f} at {size}x{size}, {k}x{k} "
               f"s{stride}", ms, flop / ms / 1e6)


def pointwise_rows(images: int, calls: int, rng):
    for c, f, size, residual in POINTWISE:
        op = PointwiseConv2dBiasAct(
            activation="relu6" if f == 1280 else "identity",
            residual=residual)
        x, r = T.tensor4("x"), T.tensor4("r")
        w = shared((rng.randn(f, c, 1, 1) / 4).astype(np.float32))
        b = shared(rng.randn(f).astype(np.float32))
        inputs = [x, r] if residual else [x]
        fn = function(inputs, op(x, w, b, *inputs[1:]))
        args = [rng.randn(images, c, size, size).astype(np.float32)]
        if residual:
            args.append(rng.randn(images, f, size, size).astype(np.float32))
        flop = images * 2 * c * f * size * size
        ms = best_ms(fn, args, calls)
        yield (f"pointwise {c} -> {f} at {size}x{size}"
               f"{' + residual' if residual else ''}", ms, flop / ms / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=19)
    parser.add_argument("--calls", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.RandomState(0)
    print(f"| op ({args.images} images per call) | ms, best of {args.calls} "
          f"| GFLOP/s |\n| --- | ---: | ---: |")
    total = 0.0
    for rows in (stem_rows, expand_depthwise_rows, pointwise_rows):
        for name, ms, gflops in rows(args.images, args.calls, rng):
            total += ms
            print(f"| {name} | {ms:.2f} | {gflops:.1f} |", flush=True)
    print(f"| all of the above | {total:.1f} | |")


if __name__ == "__main__":
    main()
