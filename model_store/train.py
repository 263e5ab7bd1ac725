"""Training a network from a spec with ``theano.grad`` and mini-batches."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable, TextIO

import numpy as np

from model_store import fs
from model_store import layers as L
from model_store.datasets import DATASETS
from model_store.engine import T, floatX, function, shared
from model_store.errors import ConfigError, SpecError
from model_store.preprocessing import Preprocessing
from model_store.spec import build_network, check_probabilities, validate_spec
from model_store.train_config import TrainConfig  # Theano-free, for --help
from model_store.updates import OPTIMIZERS

SPECS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "specs")


def load_spec(path: str) -> dict:
    """Reads a JSON network spec and checks its structure and that it ends
    in a softmax (SpecError naming the file), before any training work."""
    spec = _read_spec(path)
    try:
        check_probabilities(validate_spec(spec))
        return spec
    except SpecError as error:
        raise SpecError(f"spec file {fs.shown(path)}: {error}") from None


def spec_file_name(path: str) -> str:
    """The spec file's name as messages show it and the metadata records
    it (valid UTF-8: a byte that is not, or a control character, %XX)."""
    return fs.shown(os.path.basename(path))


def _read_spec(path: str):
    from model_store.store import MAX_JSON_BYTES

    try:  # a FIFO is refused, not waited on; a 6 GB file not read whole
        return json.loads(fs.read_text(path, MAX_JSON_BYTES))
    except FileNotFoundError:
        raise ConfigError(f"spec file {fs.shown(path)} does not exist") from None
    except fs.TooLargeError as error:
        raise ConfigError(f"spec file {fs.shown(path)} {error}, the limit for a "
                          f"spec file: give the network spec's JSON file") \
            from None
    except fs.NotRegularError as error:
        raise ConfigError(f"--spec {error}: give the spec's JSON file") \
            from None
    except OSError as error:
        raise ConfigError(f"cannot read spec file {fs.shown(path)}: "
                          f"{error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"spec file {fs.shown(path)} is not UTF-8 text (a JSON "
                          f"network spec)") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"spec file {fs.shown(path)} is not valid JSON: {error}") \
            from None
    except RecursionError:
        raise ConfigError(f"spec file {fs.shown(path)} nests JSON too deeply to be a "
                          f"network spec") from None


def fit(network, inputs: np.ndarray, labels: np.ndarray, config: TrainConfig,
        *, progress: Callable[[int, int, int, float, float], None]
        | None = None, validation: tuple | None = None,
        report: Callable[[dict, float], None] | None = None,
        augment: Callable | None = None, frozen_statistics: bool = False,
        clock: Callable[[], float] = time.monotonic) -> list[dict]:
    """Trains ``network`` in place.

    Args:
        network: output layer; its output must be class probabilities.
        inputs: ``float32 (N, ...)`` preprocessed examples (images
            ``(N, C, H, W)``, or feature vectors ``(N, D)``).
        labels: ``int (N,)`` class ids.
        config: the settings.
        progress: called as ``(epoch, done, total, loss, accuracy)`` after
            every batch.
        validation: ``(inputs, labels)``: accuracy measured after every
            epoch (dropout off); at the end the network holds the weights
            of the epoch with the best validation accuracy (the earliest
            on ties).
        report: called as ``(history row, training images per second)``
            after every epoch.
        augment: ``(batch, rng) -> batch``, applied to every training
            batch (a fresh random change each time; the seed's
            ``RandomState``).
        frozen_statistics: train in inference mode: batch norm uses and
            keeps its running statistics, dropout is off (fine-tuning).
        clock: seconds, for the images/s figure.

    Returns:
        One ``{"epoch", "loss", "accuracy"[, "val_accuracy"]}`` dict per
        epoch.
    """
    step, learning_rate = _training_step(network, inputs.ndim, config,
                                         frozen_statistics)
    score = _predicted_class(network, inputs.ndim) \
        if validation is not None else None
    rng = np.random.RandomState(config.seed)
    labels = labels.astype(np.int32)
    history, best = [], (-1.0, None)
    for epoch in range(1, config.epochs + 1):
        started = clock()
        learning_rate.set_value(np.asarray(config.lr_at(epoch), floatX))
        row = _train_epoch(step, inputs, labels, config, epoch, rng,
                           augment=augment, progress=progress)
        rate = len(inputs) / max(clock() - started, 1e-9)
        if score is not None:
            row["val_accuracy"] = round(_accuracy(score, *validation), 5)
            if row["val_accuracy"] > best[0]:
                best = (row["val_accuracy"], L.get_param_values(network))
        history.append(row)
        if report:
            report(row, rate)
    if best[1] is not None:
        _set_param_values(network, best[1])
    return history


def _training_step(network, ndim: int, config: TrainConfig,
                   frozen_statistics: bool):
    """The compiled update ``(x, y) -> (loss, accuracy)`` and the shared
    learning rate it reads."""
    x = T.TensorType(floatX, (False,) * ndim)("x")
    y = T.ivector("y")
    # Batch normalisation's running statistics move with every step, next
    # to the optimiser's updates of the trainable parameters.
    probs, statistics = L.get_output_and_updates(
        network, x, deterministic=frozen_statistics)
    loss = T.nnet.categorical_crossentropy(probs, y).mean()
    accuracy = T.mean(T.eq(T.argmax(probs, axis=1), y), dtype=floatX)
    params = L.get_all_params(network, trainable=True)
    learning_rate = shared(np.asarray(config.lr, floatX))
    updates = OPTIMIZERS[config.optimizer](
        loss, params, learning_rate=learning_rate)
    updates.update(statistics)
    return function([x, y], [loss, accuracy], updates=updates), learning_rate


def _predicted_class(network, ndim: int):
    """The compiled ``x -> predicted class ids`` (dropout off); -1, no
    class, where the probabilities are not finite (a diverged epoch: the
    argmax of NaN is class 0, which scored as right on class 0's images)."""
    x = T.TensorType(floatX, (False,) * ndim)("x")
    probs = L.get_output(network, x, deterministic=True)
    finite = T.all(T.eq(probs, probs) & T.lt(abs(probs), np.inf), axis=1)
    return function([x], T.switch(finite, T.argmax(probs, axis=1), -1))


def _train_epoch(step, inputs: np.ndarray, labels: np.ndarray,
                 config: TrainConfig, epoch: int, rng, *, augment,
                 progress) -> dict:
    """One pass in a random order; the epoch's history row (without
    validation)."""
    order = rng.permutation(len(inputs))
    total_loss = total_correct = seen = 0.0
    for start in range(0, len(order), config.batch_size):
        batch = order[start:start + config.batch_size]
        batch_x = inputs[batch]
        if augment is not None:
            batch_x = augment(batch_x, rng)
        batch_loss, batch_acc = step(batch_x, labels[batch])
        seen += len(batch)
        total_loss += float(batch_loss) * len(batch)
        total_correct += float(batch_acc) * len(batch)
        if progress:
            progress(epoch, int(seen), len(order), total_loss / seen,
                     total_correct / seen)
    loss = total_loss / seen
    # A diverged epoch's loss is recorded as null (JSON has no NaN); the
    # weights kept are still the best validated epoch's.
    return {"epoch": epoch,
            "loss": round(loss, 5) if np.isfinite(loss) else None,
            "accuracy": round(total_correct / seen, 5)}


def _set_param_values(network, values: dict) -> None:
    for param in L.get_all_params(network):
        param.set_value(values[param.name])


def _accuracy(score, inputs: np.ndarray, labels: np.ndarray) -> float:
    predicted = np.concatenate([score(inputs[i:i + 256])
                                for i in range(0, len(inputs), 256)])
    return float(np.mean(predicted == labels))


def best_epoch(history: list[dict]) -> dict:
    """The history row whose weights :func:`fit` kept (validation)."""
    return max(history, key=lambda row: (row["val_accuracy"], -row["epoch"]))


class ProgressBar:
    """A one-line progress bar with loss and accuracy, on a terminal; one line
    per epoch otherwise (logs, CI)."""

    def __init__(self, epochs: int, stream: TextIO = sys.stderr):
        self.epochs = epochs
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()

    def __call__(self, epoch, done, total, loss, accuracy):
        width = 30
        filled = int(width * done / total)
        line = (f"epoch {epoch}/{self.epochs} [{'#' * filled}"
                f"{'.' * (width - filled)}] {done}/{total} loss {loss:.4f} "
                f"acc {accuracy:.4f} {time.monotonic() - self.started:.0f}s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done == total else ""))
            self.stream.flush()
        elif done == total:
            self.stream.write(line + "\n")


def digits_training_set(prep: Preprocessing, config: TrainConfig):
    """Augmented digits training set plus the pixel statistics used for
    normalisation: ``(pixels uint8, labels, split, mean, std)``, where
    ``split`` is the :func:`~model_store.datasets.load_digits_split` the
    pixels were augmented from (its test half is evaluated after training)."""
    from model_store.datasets import augmented_pixels, load_digits_split

    split = load_digits_split()
    pixels = augmented_pixels(split.train_images, prep,
                              copies=config.augment_copies, seed=config.seed)
    labels = np.tile(split.train_labels, config.augment_copies)
    scaled = pixels.astype(np.float64) / 255.0
    mean = scaled.mean(axis=(0, 2, 3))
    std = scaled.std(axis=(0, 2, 3))
    return pixels, labels, split, mean, std


def train_model(*, dataset: str, name: str, spec_path: str,
                config: TrainConfig, root: str | None = None,
                promote: bool = False, stream: TextIO = sys.stderr):
    """Trains on a named dataset, evaluates, and saves a new version.

    Returns:
        The saved :class:`~model_store.store.StoredModel`.
    """
    from model_store.evaluate import evaluate_on_split, record_metrics
    from model_store.store import save_version

    if dataset != "digits":
        raise ConfigError(f"train_model trains on the digits; --dataset "
                          f"must be one of {', '.join(DATASETS)}, "
                          f"got {dataset!r}")
    if config.augment_copies < 1:
        raise ConfigError("--augment-copies must be at least 1 for the "
                          "digits (they are rendered as files that way)")
    spec = load_spec(spec_path)
    network = build_network(spec, seed=config.seed)
    channels = spec["input_shape"][0]
    if channels != 1:
        raise ConfigError(f"the digits dataset is grayscale; spec "
                          f"{fs.shown(spec_path)} takes {channels} channels")
    # Statistics come from the augmented pixels, so build them with a neutral
    # normalisation first, then record the measured mean and std.
    neutral = Preprocessing(tuple(spec["input_shape"]), "L", "bilinear",
                            (0.0,), (1.0,))
    started = time.monotonic()
    pixels, labels, split, mean, std = digits_training_set(neutral, config)
    prep = dataclasses.replace(neutral, mean=(round(float(mean[0]), 6),),
                               std=(round(float(std[0]), 6),))
    stream.write(f"training {name} on {len(pixels)} augmented images "
                 f"({len(split.train_images)} digits x "
                 f"{config.augment_copies})\n")
    history = fit(network, prep.normalize(pixels), labels, config,
                  progress=ProgressBar(config.epochs, stream))
    metadata = dict(prep.to_metadata(), class_names=split.class_names,
                    description="CNN for the UCI handwritten digits: light "
                                "strokes on a dark background",
                    training={
                        "dataset": dataset, "spec": spec_file_name(spec_path),
                        "n_train": int(len(split.train_images)),
                        "n_train_augmented": int(len(pixels)),
                        "settings": dataclasses.asdict(config),
                        "history": history,
                        "seconds": round(time.monotonic() - started, 1)})
    model, _ = save_version(network, name=name, metadata=metadata,
                            root=root, promote=promote)
    return record_metrics(model, evaluate_on_split(model, split))
