"""--emit-embeddings: the model's penultimate features, computed by the same
Theano call as the probabilities, against a NumPy forward pass."""

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from model_store.compile import compile_predictor
from model_store.datasets import digit_image
from model_store.errors import ModelIntegrityError
from model_store.images import decode_image
from model_store.store import DEFAULT_ROOT, load_model
from pipeline.cli import main
from tests import numpy_ref


def numpy_features(model, x):
    """digits-cnn up to fc1 (its penultimate features), in NumPy."""
    w = model.weights
    relu = lambda z: np.maximum(z, 0)  # noqa: E731
    h = relu(numpy_ref.conv2d(x, w["conv1.W"], w["conv1.b"]))
    h = numpy_ref.pool2d(h, (2, 2), (2, 2))
    h = relu(numpy_ref.conv2d(h, w["conv2.W"], w["conv2.b"]))
    h = numpy_ref.pool2d(h, (2, 2), (2, 2)).reshape(len(x), -1)
    return relu(h @ w["fc1.W"] + w["fc1.b"])


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model():
    return load_model("digits-cnn@1")


def test_one_call_returns_probabilities_and_penultimate_features(model,
                                                                 split):
    predictor = compile_predictor(model, embeddings=True)
    assert len(predictor._fn.maker.fgraph.outputs) == 2  # one Theano call
    prep = model.preprocessing
    batch = prep([digit_image(image, 32, Image.Resampling.BICUBIC)
                  for image in split.test_images[:6]])
    probs, embeddings = predictor.predict(batch)
    assert predictor.embedding_size == 256 and embeddings.shape == (6, 256)
    expected = numpy_features(model, batch.astype(np.float64))
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-4)
    w = model.weights
    np.testing.assert_allclose(
        probs, softmax(expected @ w["fc2.W"] + w["fc2.b"]), atol=1e-5)
    np.testing.assert_array_equal(predictor(batch), probs)
    empty = predictor.predict(batch[:0])
    assert empty[0].shape == (0, 10) and empty[1].shape == (0, 256)


def test_the_metadata_names_the_embedding_layer(model, tmp_path):
    store = str(tmp_path / "store")
    shutil.copytree(DEFAULT_ROOT, store)
    folder = os.path.join(store, "digits-cnn", "1")
    path = os.path.join(folder, "metadata.json")
    metadata = json.load(open(path))
    metadata["embedding_layer"] = "pool2"
    json.dump(metadata, open(path, "w"))
    assert compile_predictor(load_model("digits-cnn@1", root=store),
                             embeddings=True).embedding_size == 64 * 6 * 6
    metadata["embedding_layer"] = "fc9"  # damaged: refused on loading
    json.dump(metadata, open(path, "w"))
    with pytest.raises(ModelIntegrityError,
                       match="metadata.json: embedding layer 'fc9' is not "
                             "in the network"):
        load_model("digits-cnn@1", root=store)


def test_a_model_naming_a_missing_embedding_layer_fails_verification(
        tmp_path, capsys):
    """A metadata "embedding_layer" the network lacks is damage: ``models
    verify`` reports it (exit 1), and a run stops in the driver (exit 2,
    one line, no output folder), not in every worker after it started."""
    store = str(tmp_path / "store")
    shutil.copytree(DEFAULT_ROOT, store)
    path = os.path.join(store, "digits-cnn", "1", "metadata.json")
    metadata = json.load(open(path))
    metadata["embedding_layer"] = "fc9"
    json.dump(metadata, open(path, "w"))
    why = (f"{path}: embedding layer 'fc9' is not in the network (layers: "
           f"input, conv1, pool1, conv2, pool2, fc1, drop1, fc2, prob)")
    assert main(["--store", store, "models", "verify"]) == 1
    assert why in capsys.readouterr().out
    output = tmp_path / "out"
    assert main(["--store", store, "classify", "--input", "samples/digits",
                 "--output", str(output), "--emit-embeddings"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"imgclass: error: {why}"]
    assert not output.exists()


def test_the_column_holds_the_features_and_finds_re_encoded_images(
        tmp_path, split, model):
    folder, output = tmp_path / "in", str(tmp_path / "out")
    folder.mkdir()
    # Ten different digits, each saved as PNG and as JPEG.
    picked = [int(np.flatnonzero(split.test_labels == d)[0])
              for d in range(10)]
    for n, index in enumerate(picked):
        image = digit_image(split.test_images[index], 48,
                            Image.Resampling.BICUBIC)
        image.save(folder / f"d{n}.png")
        image.save(folder / f"d{n}.jpg", quality=80)
    assert main(["classify", "--input", str(folder), "--output", output,
                 "--emit-embeddings", "-q"]) == 0
    table = pq.read_table(os.path.join(output, "predictions")).sort_by(
        "path")
    assert table.schema.field("embedding").type.value_type.bit_width == 32
    paths = table.column("path").to_pylist()
    embeddings = np.array(table.column("embedding").to_pylist())
    assert embeddings.shape == (20, 256)

    prep = model.preprocessing
    pixels = np.stack([prep.to_pixels(decode_image(
        open(p, "rb").read(), mode=prep.color_mode,
        target_size=prep.size).image) for p in paths])
    expected = numpy_features(model, prep.normalize(pixels)
                              .astype(np.float64))
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-4)

    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1)
    nearest = [paths[i] for i in similarity.argmax(axis=1)]
    assert [os.path.splitext(p)[0] for p in nearest] == [
        os.path.splitext(p)[0] for p in paths]
