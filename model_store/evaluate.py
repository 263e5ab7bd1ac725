"""Evaluation: accuracy, per-class precision, recall and F1, confusion
matrix (scikit-learn's metrics), most confident mistakes."""

from __future__ import annotations

import dataclasses
import errno
import os

import numpy as np

from model_store.errors import ConfigError
from model_store.fs import NotRegularError, open_regular, printable, shown
from model_store.store import StoredModel, update_metadata

EVAL_BATCH = 256
MISTAKES_SHOWN = 10
PLOT_COUNTS_UP_TO = 30  # classes whose --plot shows the count in each cell


def predict_pixels(predictor, prep, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities for ``uint8 (N, C, H, W)`` pixels, in batches."""
    return np.concatenate([
        predictor(prep.normalize(pixels[i:i + EVAL_BATCH]))
        for i in range(0, len(pixels), EVAL_BATCH)] or [np.zeros((0, 0))])


def classification_metrics(labels: np.ndarray, predicted: np.ndarray,
                           class_names: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix,
    computed by scikit-learn.

    ``confusion[i][j]`` counts examples of true class ``i`` predicted as
    ``j``. Precision of a class never predicted is reported as 0.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    ids = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=ids, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(labels, predicted))
                          if len(labels) else 0.0, 6),
        "n_test": int(len(labels)),
        "per_class": {
            name: {"precision": round(float(precision[i]), 6),
                   "recall": round(float(recall[i]), 6),
                   "f1": round(float(f1[i]), 6),
                   "support": int(support[i])}
            for i, name in enumerate(class_names)},
        "confusion_matrix": confusion_matrix(
            labels, predicted, labels=ids).tolist(),
    }


def confident_mistakes(paths: list[str], labels: np.ndarray,
                       probs: np.ndarray, class_names: list[str], *,
                       limit: int = MISTAKES_SHOWN) -> list[dict]:
    """The wrong predictions the model was surest of, surest first."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:limit]
    return [{"path": paths[i], "true": class_names[labels[i]],
             "predicted": class_names[predicted[i]],
             "confidence": round(float(probs[i, predicted[i]]), 6)}
            for i in order]


def evaluate_on_folder(model: StoredModel, data: str, *, predictor=None,
                       max_pixels: int | None = None) -> dict:
    """Evaluates ``model`` on a labelled image folder (one sub-folder per
    class, named as the model's classes).

    Raises:
        ConfigError: a class folder names no class of the model, or no file
            is usable.
    """
    from model_store.compile import compile_predictor
    from model_store.folders import align_classes, load_pixels, scan_folder

    prep = model.preprocessing
    dataset = align_classes(scan_folder(data), model.class_names,
                            what=f"--data for {model.ref}")
    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    # Decoded and predicted a batch at a time: the pixels of every file at
    # once took 7.5 GB for ImageNet's 50,000 validation images.
    parts, kept, broken = [], [], []
    for start in range(0, len(dataset.files), EVAL_BATCH):
        pixels, decoded, failed = load_pixels(dataset.subset(range(
            start, min(start + EVAL_BATCH, len(dataset.files)))), prep,
            **kwargs)
        broken += failed
        if decoded.files:  # compiled once some file is usable
            predictor = predictor or compile_predictor(model)
            parts.append(predict_pixels(predictor, prep, pixels))
            kept += decoded.files
    if not kept:
        first = (f"; the first: {shown(broken[0][0])}: {broken[0][1]}"
                 if broken else "")
        raise ConfigError(f"--data {shown(data)} has no usable image: "
                          f"{len(broken)} file(s) could not be read or "
                          f"decoded{first}")
    dataset = dataclasses.replace(dataset, files=kept)
    probs = np.concatenate(parts)
    paths = [printable(f.path) for f in dataset.files]  # valid UTF-8 JSON
    metrics = classification_metrics(dataset.labels, probs.argmax(axis=1),
                                     model.class_names)
    metrics.update(model=model.name, version=model.version,
                   dataset=printable(dataset.root),
                   mistakes=confident_mistakes(paths, dataset.labels, probs,
                                               model.class_names),
                   broken=[{"path": printable(p), "error": e}
                           for p, e in broken])
    return metrics


def evaluate_on_split(model: StoredModel, split, *,
                      predictor=None) -> dict:
    """Evaluates ``model`` on the held-out digits; returns the metrics.

    Args:
        model: the model.
        split: a :class:`~model_store.datasets.Split`.
        predictor: a compiled predictor of ``model``, to avoid compiling
            again.
    """
    from model_store.compile import compile_predictor
    from model_store.datasets import plain_pixels
    from model_store.folders import listed

    if [str(c) for c in model.class_names] != [str(c) for c in
                                               split.class_names]:
        raise ConfigError(
            f"{model.ref} classifies {listed(map(str, model.class_names))}, "
            f"not the dataset's {listed(map(str, split.class_names))}: "
            f"evaluate it on labelled folders of its classes with --data")
    prep = model.preprocessing
    predictor = predictor or compile_predictor(model)
    probs = predict_pixels(predictor, prep,
                           plain_pixels(split.test_images, prep))
    metrics = classification_metrics(split.test_labels, probs.argmax(axis=1),
                                     model.class_names)
    metrics.update(model=model.name, version=model.version,
                   dataset="digits (held-out 20%)")
    return metrics


def record_metrics(model: StoredModel, metrics: dict) -> StoredModel:
    """Stores the headline metrics in the model's metadata."""
    return update_metadata(model, metrics={
        k: metrics[k] for k in ("accuracy", "n_test", "dataset")})


def check_plot_path(path: str) -> str:
    """The file ``--plot path`` will write (``path``, with ``.png`` added
    when it has no extension, as matplotlib does), refused before any work
    when it could not be written: matplotlib missing, a folder that does
    not exist, a path that is a folder, an extension matplotlib cannot
    write, or a file the system will not let us open for writing
    (ConfigError, one line)."""
    matplotlib = _matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    extension = os.path.splitext(path)[1][1:].lower()
    if extension and extension not in kinds:
        raise ConfigError(f"--plot {path!r}: matplotlib cannot write "
                          f".{extension} files; use one of "
                          f"{', '.join('.' + k for k in sorted(kinds))}")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError(f"--plot {path!r} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise ConfigError(f"--plot {path!r}: the folder {folder!r} does not "
                          f"exist")
    if os.path.exists(path) and not os.path.isfile(path):
        raise _not_regular(path)  # /dev/null: not taken as /dev/null.png
    target = path if extension else \
        f"{path}.{matplotlib.rcParams['savefig.format']}"
    _check_writable(target)
    return target


def _check_writable(path: str) -> None:
    """Opens ``path`` for appending (so an existing file is left as it is)
    without waiting (:func:`model_store.fs.open_regular`: a FIFO must not
    block), and removes it again if that created it; ConfigError unless it
    is a new path or a regular file (a FIFO, device or socket is refused)."""
    existed = os.path.lexists(path)
    try:
        fd, _ = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as error:
        # ENXIO: a FIFO or socket, which cannot be opened without a reader
        if isinstance(error, NotRegularError) or error.errno == errno.ENXIO:
            raise _not_regular(path) from None
        raise ConfigError(f"--plot {path!r} cannot be written: "
                          f"{error.strerror}") from None
    os.close(fd)
    if not existed:
        os.remove(path)


def _not_regular(path: str) -> ConfigError:
    return ConfigError(f"--plot {path!r} is not a regular file (a FIFO, "
                       f"device or socket); give the name of a new or "
                       f"regular file")


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install "
                          "'imgclass[plot]'") from None
    return matplotlib


def plot_confusion(metrics: dict, path: str) -> None:
    """Writes the confusion matrix as a picture to ``path`` (the file
    :func:`check_plot_path` returned; needs matplotlib)."""
    matplotlib = _matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(metrics["confusion_matrix"])
    names = list(metrics["per_class"])
    # Class names are plain text: matplotlib took "$...$" in one for
    # mathematics, and an unbalanced "$" or "\frac{" raised a traceback
    # after the metrics were printed.
    with matplotlib.rc_context({"text.parse_math": False}):
        fig, ax = plt.subplots(figsize=(6, 5))
        image = ax.imshow(confusion, cmap="Blues")
        ax.set(xticks=range(len(names)), yticks=range(len(names)),
               xticklabels=names, yticklabels=names, xlabel="predicted",
               ylabel="true",
               title=f"{metrics['model']}@{metrics['version']}: accuracy "
                     f"{metrics['accuracy']:.4f} (n={metrics['n_test']})")
        threshold = confusion.max() / 2
        # A count per cell is a text to lay out: 150 classes took 13 s,
        # ImageNet's 1,000 would take many minutes for unreadable digits.
        counted = len(names) if len(names) <= PLOT_COUNTS_UP_TO else 0
        for i in range(counted):
            for j in range(counted):
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center",
                        color="white" if confusion[i, j] > threshold else "black",
                        fontsize=8)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        try:
            fig.savefig(path, dpi=100)
        except OSError as error:  # a full disk, a folder removed meanwhile
            raise ConfigError(f"--plot {path!r} could not be written: "
                              f"{error.strerror or error}") from None
        finally:
            plt.close(fig)
