"""Transfer learning against training from scratch, on few images.

An image folder of the first ``--per-class`` Fashion-MNIST training images
of each class, upscaled to 224x224 PNG files (EfficientNet-Lite0's input),
and a test folder of the first ``--test-per-class`` test images of each
class. Trains ``--base efficientnet-lite0`` and ``--spec fashion-cnn.json``
on the same files with ``imgclass train --data``, evaluates both with
``imgclass evaluate --data`` and prints one JSON line with the accuracies.

    .venv/bin/python bench/fashion_transfer.py [--per-class 100]

Needs ``apt-get install dataset-fashion-mnist``. Takes minutes: the backbone
computes the features of every file once (about 10 images/s on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from model_store.fashion import CLASS_NAMES, load_fashion_split  # noqa: E402
from pipeline.cli import main  # noqa: E402


def write_folder(root, images, labels, per_class, size=224):
    counts = dict.fromkeys(range(10), 0)
    for n, (pixels, label) in enumerate(zip(images, labels)):
        if counts[int(label)] >= per_class:
            continue
        counts[int(label)] += 1
        folder = os.path.join(root, CLASS_NAMES[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(pixels, "L").resize(
            (size, size), Image.Resampling.BICUBIC).save(
                os.path.join(folder, f"{n:05d}.png"))


def run(*args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"imgclass {' '.join(map(str, args))}: exit {code}")
    return out.getvalue()


def main_bench() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    split = load_fashion_split()
    work = tempfile.mkdtemp(prefix="fashion-transfer-")
    train, test, store = (os.path.join(work, n)
                          for n in ("train", "test", "store"))
    write_folder(train, split.train_images, split.train_labels,
                 args.per_class)
    write_folder(test, split.test_images, split.test_labels,
                 args.test_per_class)
    results = {"per_class": args.per_class,
               "test_images": 10 * args.test_per_class}
    spec = os.path.join(ROOT, "model_store", "specs", "fashion-cnn.json")
    for name, options in (
            ("lite0", ["--base", "efficientnet-lite0"]),
            ("scratch", ["--spec", spec, "--epochs", str(args.epochs)])):
        started = time.monotonic()
        run("--store", store, "train", "--data", train, "--name", name,
            *options)
        results[f"{name}_train_seconds"] = round(time.monotonic() - started)
        metrics = json.loads(run("--store", store, "evaluate", "--model",
                                 name, "--data", test, "--json"))
        results[f"{name}_test_accuracy"] = metrics["accuracy"]
    print(json.dumps(results))


if __name__ == "__main__":
    main_bench()
