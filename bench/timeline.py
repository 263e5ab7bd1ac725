"""Where an in-process ``imgclass classify`` run spends its wall time.

Runs the command in this process with timestamps around each decoded batch
(``DecodeBatchFn.process``), each predictor call (``Predictor.predict``) and
each prediction batch (``PredictBatchesFn.process``), then prints, from the
process start: when the first batch started, the total and median per batch
of each, and the median gap between a batch's decoding and its network call
(stacking, normalising, Beam's hand-over).

    python bench/timeline.py --input bench/corpus/lite0-2000 \\
        --output /tmp/out --model efficientnet-lite0 --batch-size 32
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time

STARTED = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _timed(owner, name: str, label: str, spans: list, generator: bool):
    """Wraps ``owner.name`` to append ``(label, start, end)`` to spans."""
    original = getattr(owner, name)

    @functools.wraps(original)  # Beam reads process's DoFn parameters
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        if generator:  # a DoFn's process: time it until its outputs exist
            result = list(result)
        spans.append((label, start - STARTED, time.perf_counter() - STARTED))
        return result

    setattr(owner, name, wrapper)


def report(spans: list) -> str:
    lines = []
    for label in ("decode", "network", "predict batch"):
        mine = [(a, b) for kind, a, b in spans if kind == label]
        if not mine:
            continue
        lengths = [b - a for a, b in mine]
        lines.append(f"{label:14s} {len(mine):4d} calls, total "
                     f"{sum(lengths):6.2f} s, median "
                     f"{1000 * statistics.median(lengths):6.1f} ms, first "
                     f"at {mine[0][0]:.2f} s, last done at {mine[-1][1]:.2f} "
                     f"s")
    decoded = [b for kind, _, b in spans if kind == "decode"]
    network = [a for kind, a, _ in spans if kind == "network"]
    gaps = [start - max(d for d in decoded if d <= start)
            for start in network if any(d <= start for d in decoded)]
    if gaps:
        lines.append(f"decode -> network gap: median "
                     f"{1000 * statistics.median(gaps):.1f} ms")
    lines.append(f"process: {time.perf_counter() - STARTED:.2f} s")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from model_store.compile import Predictor
    from pipeline.cli import main as cli
    from transforms.decode import DecodeBatchFn
    from transforms.predict import PredictBatchesFn

    spans: list = []
    _timed(DecodeBatchFn, "process", "decode", spans, generator=True)
    _timed(PredictBatchesFn, "process", "predict batch", spans,
           generator=True)
    _timed(Predictor, "predict", "network", spans, generator=False)
    code = cli(["classify", *argv])
    print(report(spans), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
