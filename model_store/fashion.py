"""Fashion-MNIST (Zalando, MIT licence) as Debian ships it: 60,000 training
and 10,000 test 28x28 grayscale photos of clothing in 10 classes, light
objects on a black background.

``apt-get install dataset-fashion-mnist`` puts the four IDX files (gzip) in
:data:`FASHION_DIR`. Training holds out a stratified :data:`VAL_SIZE` of the
training images to pick the best epoch; the test set is only used for the
final metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import struct
import sys
import time
import zlib
from typing import TextIO

import numpy as np

from model_store import fs
from model_store.datasets import Split
from model_store.errors import ConfigError
from model_store.preprocessing import Preprocessing

FASHION_DIR = os.environ.get("IMGCLASS_FASHION_MNIST_DIR",
                             "/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
CLASS_NAMES = ["tshirt_top", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
VAL_SIZE = 5000
MAX_SHIFT = 1  # pixels of random translation during training


def _read_idx(path: str, kind: int) -> np.ndarray:
    """An IDX file (gzip): ``kind`` 1 (labels) or 3 (images). A file that
    is not one (damaged, cut short, a FIFO) is a ConfigError."""
    try:
        data = gzip.decompress(fs.read_bytes(path))
        magic, = struct.unpack(">I", data[:4])
        if magic != 0x800 + kind:
            raise ValueError(f"not an IDX file of {kind} dimension(s)")
        dims = struct.unpack(f">{kind}I", data[4:4 + 4 * kind])
        array = np.frombuffer(data, np.uint8, offset=4 + 4 * kind)
        return array.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error, zlib.error) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(
            f"Fashion-MNIST file {fs.shown(path)} cannot be read ({reason}): "
            f"reinstall it: apt-get install --reinstall "
            f"{DEBIAN_PACKAGE}") from None


def load_fashion_split(directory: str | None = None) -> Split:
    """The official 60,000/10,000 split; images ``uint8 (N, 28, 28)``.

    Args:
        directory: where the IDX files are (default: :data:`FASHION_DIR`,
            ``$IMGCLASS_FASHION_MNIST_DIR`` or Debian's folder).

    Raises:
        ConfigError: the files are missing (names the Debian package).
    """
    directory = directory or FASHION_DIR
    files = {kind: os.path.join(directory, f"{kind}-idx{n}-ubyte.gz")
             for kind, n in (("train-images", 3), ("train-labels", 1),
                             ("t10k-images", 3), ("t10k-labels", 1))}
    missing = [path for path in files.values() if not os.path.exists(path)]
    if missing:
        raise ConfigError(f"Fashion-MNIST is not installed ({missing[0]} is "
                          f"missing): apt-get install {DEBIAN_PACKAGE}")
    read = {kind: _read_idx(path, 3 if "images" in kind else 1)
            for kind, path in files.items()}
    return Split(read["train-images"], read["train-labels"].astype(np.int32),
                 read["t10k-images"], read["t10k-labels"].astype(np.int32),
                 list(CLASS_NAMES))


def shift_and_flip(batch: np.ndarray, rng: np.random.RandomState, *,
                   fill: float = 0.0):
    """Training augmentation of a ``(N, 1, 28, 28)`` batch: a random shift
    of up to ``MAX_SHIFT`` pixels (``fill``: the normalised black) and a
    left-right flip with probability 0.5, per image."""
    out = np.empty_like(batch)
    pad = np.pad(batch, ((0, 0), (0, 0), (MAX_SHIFT,) * 2, (MAX_SHIFT,) * 2),
                 constant_values=fill)
    size = batch.shape[-1]
    for i, (dy, dx) in enumerate(rng.randint(0, 2 * MAX_SHIFT + 1,
                                             size=(len(batch), 2))):
        out[i] = pad[i, :, dy:dy + size, dx:dx + size]
        if rng.rand() < 0.5:
            out[i] = out[i, :, :, ::-1]
    return out


def train_fashion(*, name: str, spec_path: str, config, root=None,
                  promote: bool = False, stream: TextIO = sys.stderr,
                  limit: int | None = None):
    """Trains on Fashion-MNIST, evaluates on its test set, saves a version
    with the metrics and confusion matrix in its metadata.

    Args:
        limit: train on only this many training images (a quick check of
            the wiring; the model card says so).
    """
    from model_store.evaluate import evaluate_on_split
    from model_store.folder_training import epoch_reporter
    from model_store.folders import stratified_split
    from model_store.spec import build_network
    from model_store.store import save_version, update_metadata
    from model_store.train import best_epoch, fit, load_spec, spec_file_name

    spec = load_spec(spec_path)
    if spec["input_shape"] != [1, 28, 28]:
        raise ConfigError(f"Fashion-MNIST images are [1, 28, 28]; spec "
                          f"{fs.shown(spec_path)} takes {spec['input_shape']}")
    split = load_fashion_split()
    images, labels = split.train_images, split.train_labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    train, val = stratified_split(labels, min(VAL_SIZE / len(labels), 0.2))
    scaled = images[train].astype(np.float64) / 255.0
    prep = Preprocessing((1, 28, 28), "L", "bilinear",
                         (round(float(scaled.mean()), 6),),
                         (round(float(scaled.std()), 6),))
    started = time.monotonic()
    stream.write(f"training {name} on {len(train)} Fashion-MNIST images, "
                 f"validating on {len(val)}\n")
    network = build_network(spec, seed=config.seed)
    x = prep.normalize(images[:, None])
    history = fit(network, x[train], labels[train], config,
                  validation=(x[val], labels[val]),
                  report=epoch_reporter(stream, config.epochs),
                  augment=functools.partial(
                      shift_and_flip, fill=float(prep.normalize(
                          np.zeros((1, 1, 28, 28), np.uint8))[0, 0, 0, 0]))
                  if config.augment_copies else None)
    metadata = dict(
        prep.to_metadata(), class_names=list(CLASS_NAMES),
        description="CNN for Fashion-MNIST: 28x28 grayscale photos of "
                    "clothing, light objects on a black background",
        training={"dataset": "fashion-mnist", "spec":
                  spec_file_name(spec_path), "n_train": int(len(train)),
                  "n_val": int(len(val)), "augment": f"shift <= {MAX_SHIFT} px, flip"
                  if config.augment_copies else None,
                  "settings": dataclasses.asdict(config), "history": history,
                  "best_epoch": best_epoch(history)["epoch"],
                  "seconds": round(time.monotonic() - started, 1)})
    model, _ = save_version(network, name=name, metadata=metadata,
                            root=root, promote=promote)
    metrics = evaluate_on_split(model, split)
    metrics["dataset"] = "fashion-mnist test set (10,000)"
    return update_metadata(model, metrics={
        k: metrics[k] for k in ("accuracy", "n_test", "dataset", "per_class",
                                "confusion_matrix")})
