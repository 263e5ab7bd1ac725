"""Start-up: wall and CPU seconds of whole ``imgclass classify`` runs over
the 39 sample files, and of compiling predictors in fresh processes.

    python bench/startup.py [--runs 5] [--compile MODEL ...]

Each run is a new process (what a user, a ``watch`` window or a worker
pays). Wall time depends on the machine's load (printed); CPU time (user +
system, children included) much less. "After the summary" is the wall time
minus the "done in" of the run's summary line: the process's exit. ``--compile`` times
``compile_predictor`` in fresh processes, uncached and then from this
machine's predictor cache (model_store/predictor_cache.py).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_COMPILE = """
import sys, time
from model_store.store import load_model
from model_store.compile import compile_predictor
model = load_model(sys.argv[1])
started = time.perf_counter()
if sys.argv[2] == "cached":
    compile_predictor(model, cached=True)
else:
    compile_predictor(model)
print(time.perf_counter() - started)
"""


def _timed(command: list[str]) -> tuple[float, float, float]:
    """``(wall, cpu, after)`` seconds of one process and its children;
    ``after``: from the summary's "done in" to the process's end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, check=True, cwd=ROOT, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    done_in = re.search(r" done in ([0-9.]+)s ", result.stderr)
    return wall, (after.ru_utime - before.ru_utime
                  + after.ru_stime - before.ru_stime), (
        wall - float(done_in.group(1)) if done_in else math.nan)


def classify_runs(runs: int) -> None:
    walls, cpus, afters = [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as out:
            wall, cpu, after = _timed([
                sys.executable, "-m", "pipeline.cli", "classify", "--input",
                "samples/digits", "--output", os.path.join(out, "run")])
        walls.append(wall)
        cpus.append(cpu)
        afters.append(after)
    print(f"classify 39 files: wall best {min(walls):.2f} s "
          f"(all {', '.join(f'{w:.1f}' for w in walls)}), "
          f"CPU best {min(cpus):.2f} s, after the summary "
          f"{', '.join(f'{a:.2f}' for a in afters)} s; "
          f"load {os.getloadavg()[0]:.1f}")


def compile_runs(model: str, runs: int) -> None:
    for mode in ("uncached", "cached"):
        seconds = []
        for _ in range(runs):
            result = subprocess.run(
                [sys.executable, "-c", _COMPILE, model, mode], check=True,
                cwd=ROOT, capture_output=True, text=True)
            seconds.append(float(result.stdout.split()[-1]))
        print(f"{model} compile {mode}: best {min(seconds):.2f} s "
              f"(all {', '.join(f'{s:.2f}' for s in seconds)}); "
              f"load {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compile", nargs="*", default=[], metavar="MODEL")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from run import theano_cache_entries

    print(f"uptime load: {os.getloadavg()}; {theano_cache_entries()} "
          f"modules in the Theano cache")
    for model in args.compile:
        compile_runs(model, args.runs)
    if not args.compile:
        classify_runs(args.runs)


if __name__ == "__main__":
    main()
