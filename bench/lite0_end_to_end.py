"""EfficientNet-Lite0 end to end: ``imgclass classify --model
efficientnet-lite0`` over photos, as a command (process start and compiling
included), in process, with one worker process per core and with one
worker thread per core.

The corpus: JPEGs (quality 90) whose longer side is drawn from 256 to 1024
pixels, each a random crop of one of scikit-image's photographs resized to
that size (cached in bench/corpus/lite0-<n>/). Every image goes through the
model's own preprocessing: JPEG draft to no less than 256 on the shorter side,
bicubic resize, centre crop 224. The reference is the same stored model's
compiled predictor alone at the same batch size (32), measured in this
process before and after the runs (the better figure counts, as does the
faster of ``--repeat`` runs of each command). bench/lite0_predictor.py
compares the predictor with onnxruntime.

    python bench/lite0_end_to_end.py              # 2,000 photos
    python bench/lite0_end_to_end.py --count 200  # a quick figure
    python bench/lite0_end_to_end.py --count 10000 --repeat 1  # longer runs

Results go to bench/results/lite0_end_to_end.json and .md, or with another
``--count`` to lite0_end_to_end_<count>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as suite  # noqa: E402  (bench/run.py: shared runners, machine)

#: Images per predictor call, in the pipeline and alone.
BATCH = 32

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left",
          "hubble_deep_field", "immunohistochemistry", "retina"]


def make_corpus(n: int, seed: int = 0) -> str:
    """``n`` photos, longer side 256-1024 px; cached by ``n``."""
    from PIL import Image
    from skimage import data

    folder = os.path.join(suite.CORPUS, f"lite0-{n}")
    if os.path.isdir(folder) and len(os.listdir(folder)) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    data_dir = os.path.dirname(data.__file__)
    photos = []
    for name in PHOTOS:
        loader = getattr(data, name, None)
        array = loader() if loader else Image.open(
            os.path.join(data_dir, f"{name}.png")).convert("RGB")
        photos.append(np.asarray(array)[..., :3].astype(np.uint8))
    rng = np.random.RandomState(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch = rng.randint(min(h, w) // 2, h + 1)
        cw = rng.randint(min(h, w) // 2, w + 1)
        y, x = rng.randint(h - ch + 1), rng.randint(w - cw + 1)
        image = Image.fromarray(photo[y:y + ch, x:x + cw])
        longer = rng.randint(256, 1025)
        scale = longer / max(ch, cw)
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        image.resize(size, Image.Resampling.BICUBIC).save(
            os.path.join(folder, f"{i:06d}.jpg"), quality=90)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000,
                        help="photos in the corpus (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each command; the fastest counts "
                             "(default: %(default)s)")
    args = parser.parse_args()
    folder = make_corpus(args.count)
    cores = os.cpu_count() or 1
    machine = suite.machine()
    results = {"machine": machine, "images": args.count,
               "repeat": args.repeat,
               "date": datetime.datetime.now(datetime.timezone.utc)
               .isoformat(timespec="seconds"), "runs": [],
               # Other processes on a shared machine slow every figure.
               "load_average_before": round(os.getloadavg()[0], 2),
               "theano_cache_entries": suite.theano_cache_entries()}
    alone = [_predictor_alone(machine)]
    work = tempfile.mkdtemp(prefix="lite0-bench-")
    try:
        for name, extra in [
                ("in process", []),
                (f"{cores} worker processes",
                 ["--direct_running_mode=multi_processing",
                  f"--direct_num_workers={cores}"]),
                (f"{cores} worker threads",
                 ["--direct_running_mode=multi_threading",
                  f"--direct_num_workers={cores}"])]:
            output = os.path.join(work, name.replace(" ", "-"))
            args_ = suite.classify_args(folder, output, [
                "--model", "efficientnet-lite0", "--batch-size", str(BATCH),
                # --overwrite: the repeats write to the same folder.
                "--overwrite", *extra])
            results["runs"].append(suite.run_command(
                name, args_, args.count, repeat=args.repeat))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    alone.append(_predictor_alone(machine))
    results["predictor_alone"] = max(alone,
                                     key=lambda r: r["images_per_s"])
    results["predictor_alone"]["all_images_per_s"] = [
        r["images_per_s"] for r in alone]
    reference = results["predictor_alone"]["images_per_s"]
    for run in results["runs"]:
        run["ratio_to_predictor"] = round(run["images_per_s"] / reference, 2)
        if run.get("pipeline_seconds"):
            # The rate classify reports: its run without process start-up.
            run["pipeline_images_per_s"] = round(
                args.count / run["pipeline_seconds"], 1)
            run["pipeline_ratio_to_predictor"] = round(
                run["pipeline_images_per_s"] / reference, 2)
    os.makedirs(suite.RESULTS, exist_ok=True)
    # The figure is over 2,000 photos; other sizes keep their own.
    base = os.path.join(suite.RESULTS, "lite0_end_to_end" + (
        "" if args.count == 2000 else f"_{args.count}"))
    with open(base + ".json", "w") as handle:
        json.dump(results, handle, indent=2)
    with open(base + ".md", "w") as handle:
        handle.write(markdown(results))
    print(markdown(results))


def _predictor_alone(machine: dict) -> dict:
    """Lite0's compiled predictor alone at batch ``BATCH``: as many calls
    as the corpus has batches, the best of 3 rounds."""
    figure = suite.predictor_alone(machine["peak_gflops"], batch=BATCH,
                                   repeats=8, rounds=3,
                                   model="efficientnet-lite0")
    print(f"  predictor alone, batch {BATCH}: {figure['images_per_s']} "
          f"img/s", flush=True)
    return figure


def markdown(results: dict) -> str:
    lines = [f"EfficientNet-Lite0, `imgclass classify` end to end over "
             f"{results['images']:,} photos (longer side 256-1024 px), "
             f"process start and compiling included; {results['date']}, "
             f"{results['machine'].get('cores')} cores, 1-minute load "
             f"average {results['load_average_before']} before the runs, "
             f"{results['theano_cache_entries']} modules in the Theano "
             f"cache.", "",
             "| run | seconds | images/s | / predictor alone | start-up "
             "excluded: images/s | / predictor alone | peak RSS |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in results["runs"]:
        lines.append(f"| {run['name']} | {run['seconds']} | "
                     f"{run['images_per_s']} | {run['ratio_to_predictor']}x "
                     f"| {run.get('pipeline_images_per_s', '-')} | "
                     f"{run.get('pipeline_ratio_to_predictor', '-')}x "
                     f"| {run['peak_rss_mb']} MB |")
    alone = results["predictor_alone"]
    lines += ["", f"Predictor alone (the same stored model, batch "
                  f"{alone['batch']}, in this process before and after the "
                  f"runs): {alone['images_per_s']} images/s (of "
                  f"{alone['all_images_per_s']}), {alone['gflops']} "
                  f"GFLOP/s. Each command ran {results['repeat']} times; "
                  f"the fastest counts. \"Start-up excluded\" divides by "
                  f"the pipeline time the command's summary reports: the "
                  f"Beam pipeline's run, after imports, loading the model "
                  f"and building the pipeline, before publishing."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
