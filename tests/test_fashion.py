"""Fashion-MNIST as Debian installs it (.ci/run installs
dataset-fashion-mnist); the loader, the augmentation and the training
wiring. The full training run is 'make train-fashion', not a test."""

import gzip
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from model_store import fashion, store
from model_store.errors import ConfigError

INSTALLED = os.path.exists(os.path.join(fashion.FASHION_DIR,
                                        "t10k-labels-idx1-ubyte.gz"))
needs_data = pytest.mark.skipif(
    not INSTALLED, reason=f"Fashion-MNIST is not installed in "
                          f"{fashion.FASHION_DIR}: apt-get install "
                          f"{fashion.DEBIAN_PACKAGE} (CI does)")


@needs_data
def test_loader_reads_the_official_split():
    split = fashion.load_fashion_split()
    assert split.train_images.shape == (60000, 28, 28)
    assert split.test_images.shape == (10000, 28, 28)
    assert split.train_images.dtype == np.uint8
    assert np.bincount(split.train_labels).tolist() == [6000] * 10
    assert np.bincount(split.test_labels).tolist() == [1000] * 10
    # Independent read of the first test label, as the IDX format says.
    with gzip.open(os.path.join(fashion.FASHION_DIR,
                                "t10k-labels-idx1-ubyte.gz")) as handle:
        assert handle.read()[8] == split.test_labels[0]


def test_missing_files_name_the_debian_package(tmp_path, cli,
                                               monkeypatch):
    with pytest.raises(ConfigError, match="apt-get install "
                                          "dataset-fashion-mnist"):
        fashion.load_fashion_split(str(tmp_path))
    monkeypatch.setattr(fashion, "FASHION_DIR", str(tmp_path))
    code, _, err = cli("--store", tmp_path / "s", "train", "--dataset",
                       "fashion-mnist", "--name", "f")
    assert code == 2 and err.count("\n") == 1
    assert "dataset-fashion-mnist" in err


def test_shift_and_flip_moves_whole_images():
    rng = np.random.RandomState(0)
    batch = rng.rand(20, 1, 28, 28).astype(np.float32)
    out = fashion.shift_and_flip(batch, np.random.RandomState(1), fill=-1.0)
    again = fashion.shift_and_flip(batch, np.random.RandomState(1), fill=-1.0)
    np.testing.assert_array_equal(out, again)
    m = fashion.MAX_SHIFT
    for image, got in zip(batch, out):
        padded = np.pad(image, ((0, 0), (m, m), (m, m)), constant_values=-1)
        candidates = [padded[:, dy:dy + 28, dx:dx + 28][:, :, ::step]
                      for dy in range(2 * m + 1) for dx in range(2 * m + 1)
                      for step in (1, -1)]
        assert any(np.array_equal(got, c) for c in candidates)


@needs_data
def test_training_wiring_stores_test_metrics_and_confusion(tmp_path, cli):
    spec = {"input_shape": [1, 28, 28], "layers": [
        {"type": "conv2d", "name": "c", "num_filters": 4, "filter_size": 3,
         "stride": 2},
        {"type": "dense", "name": "o", "num_units": 10,
         "nonlinearity": "identity"},
        {"type": "softmax", "name": "s"}]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    root = str(tmp_path / "store")
    code, out, err = cli("--store", root, "train", "--dataset",
                         "fashion-mnist", "--name", "f", "--spec", path,
                         "--limit", "1000", "--epochs", "2", "--lr", "0.01")
    assert code == 0, err
    model = store.load_model("f", root=root)
    metrics = model.metadata["metrics"]
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 10000
    assert confusion.sum(axis=1).tolist() == [1000] * 10
    assert metrics["accuracy"] == pytest.approx(
        np.trace(confusion) / 10000, abs=1e-6)
    assert metrics["accuracy"] > 0.5  # well above chance after 2 epochs
    assert model.class_names == fashion.CLASS_NAMES
    assert len(model.metadata["training"]["history"]) == 2
    code, out, err = cli("--store", root, "evaluate", "--model", "f",
                         "--dataset", "fashion-mnist", "--json")
    assert code == 0, err
    assert json.loads(out)["confusion_matrix"] == metrics["confusion_matrix"]


SHIPPED = "fashion-cnn@1"


@pytest.fixture(scope="module")
def shipped():
    return store.load_model(SHIPPED)


def test_shipped_model_reaches_the_target_on_the_test_set(shipped):
    """fashion-cnn@1 as shipped: its recorded test metrics (10,000 images)
    meet the 0.93 target, and its confusion matrix is the test set's."""
    metrics = shipped.metadata["metrics"]
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.sum(axis=1).tolist() == [1000] * 10
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / 10000)
    assert metrics["accuracy"] >= 0.93
    assert shipped.metadata["training"]["seconds"] < 30 * 60


@needs_data
@pytest.mark.parametrize("extension,quality", [("png", None), ("jpg", 90)])
def test_shipped_model_classifies_test_files_as_its_evaluation(
        shipped, extension, quality, tmp_path, cli):
    """The 10,000 test images saved as files (PNG, or JPEG at quality 90)
    and classified by the pipeline: the accuracy read back from the Parquet
    output is within 0.01 of the evaluation's on the same images, and every
    file has exactly one prediction. (At Pillow's default JPEG quality, 75,
    28x28 images lose about 0.01: README, Fashion-MNIST.)"""
    from PIL import Image

    from model_store.datasets import Split
    from model_store.evaluate import evaluate_on_split

    split = fashion.load_fashion_split()
    folder = tmp_path / "test"
    folder.mkdir()
    for i, (pixels, label) in enumerate(zip(split.test_images,
                                            split.test_labels)):
        Image.fromarray(pixels, "L").save(
            folder / f"{i:05d}_{label}.{extension}",
            **({"quality": quality} if quality else {}))
    output = tmp_path / "out"
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--model", SHIPPED, "-q")
    assert code == 0, err
    rows = pq.read_table(output / "predictions",
                         columns=["path", "class_id"]).to_pylist()
    assert len(rows) == len({row["path"] for row in rows}) == 10000
    truth = [int(os.path.basename(row["path"]).split("_")[1].split(".")[0])
             for row in rows]
    files = np.mean([row["class_id"] == label
                     for row, label in zip(rows, truth)])
    evaluated = evaluate_on_split(shipped, Split(
        None, None, split.test_images, split.test_labels,
        fashion.CLASS_NAMES))["accuracy"]
    print(f"{extension}: files {files:.4f}, evaluation {evaluated:.4f}")
    assert evaluated == pytest.approx(shipped.metadata["metrics"]["accuracy"])
    assert abs(files - evaluated) <= 0.01
