"""Evaluation: accuracy, per-class precision and recall, confusion matrix."""

from __future__ import annotations

import numpy as np

from model_store.store import StoredModel, update_metadata

EVAL_BATCH = 256


def predict_pixels(predictor, prep, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities for ``uint8 (N, C, H, W)`` pixels, in batches."""
    return np.concatenate([
        predictor(prep.normalize(pixels[i:i + EVAL_BATCH]))
        for i in range(0, len(pixels), EVAL_BATCH)] or [np.zeros((0, 0))])


def classification_metrics(labels: np.ndarray, predicted: np.ndarray,
                           class_names: list[str]) -> dict:
    """Accuracy, per-class precision/recall and the confusion matrix.

    ``confusion[i][j]`` counts examples of true class ``i`` predicted as
    ``j``. Precision of a class never predicted is reported as 0.
    """
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_pos = np.diag(confusion).astype(float)
    predicted_count = confusion.sum(axis=0)
    actual_count = confusion.sum(axis=1)
    precision = np.divide(true_pos, predicted_count,
                          out=np.zeros(k), where=predicted_count > 0)
    recall = np.divide(true_pos, actual_count, out=np.zeros(k),
                       where=actual_count > 0)
    return {
        "accuracy": round(float(true_pos.sum() / max(len(labels), 1)), 6),
        "n_test": int(len(labels)),
        "per_class": {
            name: {"precision": round(float(precision[i]), 6),
                   "recall": round(float(recall[i]), 6),
                   "support": int(actual_count[i])}
            for i, name in enumerate(class_names)},
        "confusion_matrix": confusion.tolist(),
    }


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


def plot_confusion(metrics: dict, path: str) -> None:
    """Writes the confusion matrix as a PNG picture (needs matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install "
                          "'imgclass[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(metrics["confusion_matrix"])
    names = list(metrics["per_class"])
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(confusion, cmap="Blues")
    ax.set(xticks=range(len(names)), yticks=range(len(names)),
           xticklabels=names, yticklabels=names, xlabel="predicted",
           ylabel="true",
           title=f"{metrics['model']}@{metrics['version']}: accuracy "
                 f"{metrics['accuracy']:.4f} (n={metrics['n_test']})")
    threshold = confusion.max() / 2
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center",
                    color="white" if confusion[i, j] > threshold else "black",
                    fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
