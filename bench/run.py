"""The benchmark suite: the pipeline against the machine and a baseline.

One run, one machine, every figure a ratio against something measured in the
same run:

1. a corpus of 256x256 JPEG photographs, random crops of the photographs
   scikit-image ships (cached in bench/corpus/);
2. floors: a plain single-process Pillow loop (full decode, grayscale,
   resize to 32x32) in images/s per core, and the compiled predictor alone at
   batch 256 in images/s and GFLOP/s against this machine's peak;
3. the baseline: Beam's RunInference with a plain ModelHandler and
   per-element full-decode preprocessing (bench/baseline.py);
4. ``imgclass classify`` end to end, as a command (process start included),
   in-process and with one worker process per core;
5. peak memory (RSS of the command and its children) of every command, and
   with --scale a 100,000-image point;
6. bench/results/latest.json, latest.md and latest.png (quick_latest.* for
   another corpus size, --quick's).

    python bench/run.py --quick          # 2,000 images, under a minute
    python bench/run.py                  # 20,000 images, a few minutes
    python bench/run.py --scale          # plus the 100,000-image point
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")
RESULTS = os.path.join(HERE, "results")
FULL_IMAGES, QUICK_IMAGES = 20000, 2000  # make bench, make bench-quick
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "coins",
          "moon", "immunohistochemistry", "grass", "gravel", "brick",
          "retina", "hubble_deep_field"]


def make_corpus(n: int) -> str:
    """``n`` 256x256 JPEGs (quality 90), random crops; cached by ``n``."""
    from PIL import Image
    from skimage import data

    folder = os.path.join(CORPUS, str(n))
    if os.path.isdir(folder) and len(os.listdir(folder)) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    photos = [np.asarray(getattr(data, name)()) for name in PHOTOS]
    photos = [p for p in photos if min(p.shape[:2]) >= 256]
    rng = np.random.RandomState(0)
    for i in range(n):
        photo = photos[i % len(photos)]
        y = rng.randint(photo.shape[0] - 255)
        x = rng.randint(photo.shape[1] - 255)
        crop = photo[y:y + 256, x:x + 256]
        if crop.dtype != np.uint8:
            crop = (crop * 255).astype(np.uint8) if crop.max() <= 1 else \
                crop.astype(np.uint8)
        Image.fromarray(crop).save(os.path.join(folder, f"{i:06d}.jpg"),
                                   quality=90)
    return folder


def machine() -> dict:
    """Cores, clock and the FP32 FLOPs per cycle of the vector unit."""
    info = {"cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    flags, mhz, model, vendor, family = set(), None, "", "", 0
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = set(value.split())
            elif key == "cpu MHz" and mhz is None:
                mhz = float(value)
            elif key == "model name" and not model:
                model = value.strip()
            elif key == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key == "cpu family" and not family:
                family = int(value)
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as h:
            mhz = int(h.read()) / 1000.0
    except OSError:
        pass
    # FP32 FLOPs per cycle: two FMA units per core, 2 FLOPs per lane. AMD
    # Zen 4 (family 25) runs AVX-512 on 256-bit units, so its peak is AVX2's.
    if "avx512f" in flags and not (vendor == "AuthenticAMD"
                                   and family == 25):
        per_cycle, unit = 64, "AVX-512 FMA"
    elif "avx512f" in flags:
        per_cycle, unit = 32, "AVX-512 on 256-bit FMA units (Zen 4)"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, unit = 32, "AVX2 FMA"
    elif "avx" in flags:
        per_cycle, unit = 16, "AVX"
    else:
        per_cycle, unit = 8, "SSE"
    info.update(cpu=model, mhz=mhz, vector_unit=unit,
                flops_per_cycle=per_cycle,
                peak_gflops=round(info["cores"] * mhz / 1000 * per_cycle, 1))
    return info


class PeakRss:
    """Samples the RSS of a process and its children every 20 ms.

    Listing the children walks all of ``/proc`` (about 1 ms), so the list
    is refreshed every 10th sample: at every sample, that cost the
    measured command about 5% of a core (0.9 CPU s over a 17 s run)."""

    def __init__(self, pid: int):
        import psutil
        self._process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil
        procs, sample = [self._process], 0
        while not self._stop.is_set():
            try:
                if sample % 10 == 0:
                    procs = [self._process] + self._process.children(
                        recursive=True)
                total = 0
                for proc in procs:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:  # a worker that has exited
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            sample += 1
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def theano_cache_entries() -> int:
    """Compiled modules in this user's Theano cache. Every process reads
    all their keys when it first compiles or links a function (0.77 s for
    784 entries here), so start-up depends on it (bench/README.md)."""
    from model_store.cache import cache_dir

    root = os.path.join(cache_dir(), "theano")
    return sum(files.count("key.pkl") for _, _, files in os.walk(root))


def run_command(name: str, args: list[str], images: int,
                repeat: int = 1) -> dict:
    """Runs a command ``repeat`` times; the fastest run's wall time (process
    start included) and peak RSS, as this shared machine's speed varies."""
    runs = [_run_once(name, args, images) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["seconds"])
    best["all_seconds"] = [r["seconds"] for r in runs]
    return best


def _run_once(name: str, args: list[str], images: int) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    started = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd=ROOT)
    rss = PeakRss(process.pid)
    _, err = process.communicate()
    seconds = time.perf_counter() - started
    peak = rss.stop()
    if process.returncode != 0:
        raise RuntimeError(f"{name} failed ({process.returncode}): "
                           f"{err.decode()[-2000:]}")
    result = {"name": name, "images": images, "seconds": round(seconds, 2),
              "images_per_s": round(images / seconds, 1),
              "peak_rss_mb": round(peak / 2 ** 20, 1)}
    # classify's summary line: "... (start-up 2.1s, pipeline 14.2s) ...".
    summary = re.search(rb"start-up ([0-9.]+)s, pipeline ([0-9.]+)s", err)
    if summary:
        result["startup_seconds"] = float(summary.group(1))
        result["pipeline_seconds"] = float(summary.group(2))
    print(f"  {name}: {result['seconds']} s, {result['images_per_s']} "
          f"img/s, peak RSS {result['peak_rss_mb']} MB", flush=True)
    return result


def plain_loop(folder: str, limit: int, rounds: int = 3) -> dict:
    """Single-process Pillow: full decode, grayscale, resize to 32x32; the
    best of ``rounds`` passes."""
    from PIL import Image

    files = sorted(os.listdir(folder))[:limit]
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                image = Image.open(io.BytesIO(handle.read())).convert("L")
            image.resize((32, 32), Image.Resampling.BILINEAR)
        timings.append(time.perf_counter() - started)
    seconds = min(timings)
    return {"images": len(files), "seconds": round(seconds, 3),
            "images_per_s_per_core": round(len(files) / seconds, 1)}


def predictor_alone(peak_gflops: float, batch: int = 256,
                    repeats: int = 10, rounds: int = 5,
                    model: str = "digits-cnn") -> dict:
    """The compiled predictor of a shipped ``model`` on one batch; the best
    of ``rounds`` rounds of ``repeats`` calls, as this shared machine's
    speed varies run to run."""
    from model_store.compile import compile_predictor
    from model_store.store import load_model

    predictor = compile_predictor(load_model(model), cached=True)
    x = np.random.RandomState(0).rand(batch, *predictor.input_shape).astype(
        np.float32)
    predictor(x)
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeats):
            predictor(x)
        timings.append((time.perf_counter() - started) / repeats)
    seconds = min(timings)
    gflops = predictor.flops_per_example * batch / seconds / 1e9
    return {"batch": batch, "images_per_s": round(batch / seconds, 1),
            "mflop_per_image": round(predictor.flops_per_example / 1e6, 2),
            "gflops": round(gflops, 1),
            "fraction_of_peak": round(gflops / peak_gflops, 3)}


def classify_args(folder: str, output: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "classify", "--input",
            folder, "--output", output, *extra]


def main() -> None:
    args = _parse_args()
    n = args.images or (QUICK_IMAGES if args.quick else FULL_IMAGES)
    repeat = args.repeat or (1 if args.quick else 2)
    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu']}, {info['mhz']} MHz, "
          f"{info['vector_unit']}: peak {info['peak_gflops']} GFLOP/s",
          flush=True)
    print(f"corpus: {n} JPEGs", flush=True)
    folder = make_corpus(n)
    results = {"machine": info, "images": n, "repeat": repeat,
               "date": datetime.datetime.now(datetime.timezone.utc)
               .isoformat(timespec="seconds"), "runs": []}
    results["plain_loop"] = plain_loop(folder, min(n, 4000))
    print(f"  plain Pillow loop: {results['plain_loop']}", flush=True)
    results["predictor"] = predictor_alone(info["peak_gflops"])
    print(f"  predictor alone: {results['predictor']}", flush=True)
    scratch = tempfile.mkdtemp(prefix="imgclass-bench-")
    try:
        _pipeline_runs(results, folder, scratch, args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    summarize(results)
    _write_results(results)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 images instead of 20,000")
    parser.add_argument("--images", type=int, help="corpus size")
    parser.add_argument("--scale", action="store_true",
                        help="add a 100,000-image point (time and memory)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs of each command, the fastest counts "
                             "(default: 1 with --quick, else 2)")
    return parser.parse_args()


def _pipeline_runs(results: dict, folder: str, scratch: str,
                   args: argparse.Namespace) -> None:
    """The baseline and imgclass's local modes as commands, into
    ``results["runs"]`` (and ``results["scaling"]`` with ``--scale``)."""
    n, repeat = results["images"], results["repeat"]
    cores = os.cpu_count() or 1
    if not args.skip_baseline:
        results["runs"].append(run_command(
            "baseline RunInference", [
                sys.executable, os.path.join(HERE, "baseline.py"),
                "--input", os.path.join(folder, "*.jpg"),
                "--output", os.path.join(scratch, "baseline", "out")],
            n, repeat))
    modes = {"classify in-process": [],
             f"classify multi-processing x{cores}": [
                 "--direct_running_mode=multi_processing",
                 f"--direct_num_workers={cores}"]}
    for name, extra in modes.items():
        # --overwrite: the repeats write to the same folder.
        results["runs"].append(run_command(
            name, classify_args(folder, os.path.join(
                scratch, name.replace(" ", "_")), extra + [
                    "--overwrite"]), n, repeat))
    if args.scale:
        big = make_corpus(100000)
        results["scaling"] = []
        for name, extra in modes.items():
            small = next(r for r in results["runs"] if r["name"] == name)
            results["scaling"].append({"mode": name, "small": small,
                                       "large": run_command(
                f"{name} (100k)", classify_args(
                    big, os.path.join(scratch, "scale"), extra),
                100000)})
            shutil.rmtree(os.path.join(scratch, "scale"),
                          ignore_errors=True)


def _write_results(results: dict) -> None:
    """bench/results/latest.{json,md,png} for a run over the 20,000 images
    (``quick_latest.*`` for another size, so that ``--quick`` leaves the
    full run's files as they are), and the table on stdout."""
    os.makedirs(RESULTS, exist_ok=True)
    name = "latest" if results["images"] == FULL_IMAGES else "quick_latest"
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as handle:
        handle.write(markdown(results))
    chart(results, os.path.join(RESULTS, f"{name}.png"))
    print(markdown(results))


def summarize(results: dict) -> None:
    """Adds the ratios the targets are stated in."""
    runs = {r["name"]: r for r in results["runs"]}
    best = max((r for r in results["runs"] if r["name"].startswith(
        "classify")), key=lambda r: r["images_per_s"])
    ratios = {"best_mode": best["name"],
              "vs_plain_loop_per_core": round(
                  best["images_per_s"]
                  / results["plain_loop"]["images_per_s_per_core"], 2),
              "predictor_fraction_of_peak":
                  results["predictor"]["fraction_of_peak"]}
    if "baseline RunInference" in runs:
        ratios["vs_baseline"] = round(
            best["images_per_s"]
            / runs["baseline RunInference"]["images_per_s"], 2)
    for point in results.get("scaling", []):
        small, big = point["small"], point["large"]
        key = point["mode"].replace("classify ", "").replace(" ", "_")
        ratios[f"rss_growth_20k_to_100k_{key}"] = round(
            big["peak_rss_mb"] / small["peak_rss_mb"] - 1, 3)
        ratios[f"time_per_image_100k_vs_20k_{key}"] = round(
            (big["seconds"] / big["images"])
            / (small["seconds"] / small["images"]), 3)
    results["ratios"] = ratios


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Benchmark of {results['images']} images, {results['date']}, "
             f"on {m['cores']} cores of {m['cpu']} ({m['mhz']:.0f} MHz, "
             f"{m['vector_unit']}, peak {m['peak_gflops']} GFLOP/s).", "",
             "| run | seconds | images/s | peak RSS (MB) |",
             "| --- | ---: | ---: | ---: |"]
    for r in results["runs"] + [p["large"] for p in results.get("scaling",
                                                                   [])]:
        lines.append(f"| {r['name']} ({r['images']} images) | {r['seconds']}"
                     f" | {r['images_per_s']} | {r['peak_rss_mb']} |")
    p, loop = results["predictor"], results["plain_loop"]
    lines += ["", f"Plain Pillow loop (full decode, grayscale, resize), one "
                  f"core: {loop['images_per_s_per_core']} images/s.",
              f"Predictor alone, batch {p['batch']}: {p['images_per_s']} "
              f"images/s, {p['gflops']} GFLOP/s = "
              f"{100 * p['fraction_of_peak']:.1f}% of peak.", "",
              "| ratio | value | target |", "| --- | ---: | ---: |"]
    r = results["ratios"]
    targets = {"vs_baseline": ">= 3", "vs_plain_loop_per_core": ">= 1.5",
               "predictor_fraction_of_peak": ">= 0.25",
               "rss_growth_20k_to_100k": "< 0.20",
               "time_per_image_100k_vs_20k": "~ 1 (linear)"}
    for key, value in r.items():
        target = next((t for k, t in targets.items() if key.startswith(k)),
                      None)
        if target:
            lines.append(f"| {key} | {value} | {target} |")
    lines.append(f"\nBest mode: {r['best_mode']}.\n")
    return "\n".join(lines)


def chart(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"] + [p["large"] for p in results.get("scaling", [])]
    names = [r["name"].replace("classify ", "classify\n") for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.barh(names, [r["images_per_s"] for r in runs], color="#4c72b0")
    left.axvline(results["plain_loop"]["images_per_s_per_core"], color="k",
                 linestyle="--", label="plain Pillow loop, 1 core")
    left.set_xlabel("images/s (wall time, process start included)")
    left.legend(loc="lower right", fontsize=8)
    right.barh(names, [r["peak_rss_mb"] for r in runs], color="#dd8452")
    right.set_xlabel("peak RSS, MB (process and children)")
    right.set_yticks([])
    fig.suptitle(f"{results['images']} JPEGs 256x256, "
                 f"{results['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
