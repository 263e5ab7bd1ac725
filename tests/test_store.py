"""The versioned model store: round trips, integrity errors, no pickles."""

import hashlib
import io
import json
import os
import pickle

import numpy as np
import pytest

from model_store import store
from model_store.compile import compile_predictor
from model_store.errors import (ChecksumMismatchError, ModelFileMissingError,
                                ModelIntegrityError, UnknownModelError,
                                WeightShapeError)
from model_store.spec import build_network

SPEC = {"input_shape": [1, 10, 10], "layers": [
    {"type": "conv2d", "name": "conv1", "num_filters": 3, "filter_size": 3},
    {"type": "max_pool2d", "name": "pool1", "pool_size": 2},
    {"type": "dense", "name": "out", "num_units": 4,
     "nonlinearity": "identity"},
    {"type": "softmax", "name": "prob"}]}
METADATA = {"class_names": ["a", "b", "c", "d"], "input_shape": [1, 10, 10],
            "color_mode": "L", "resize": "bilinear",
            "normalization": {"mean": [0.5], "std": [0.25]}}


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "store")


def save(root, name="tiny", seed=0):
    return store.save_model(build_network(SPEC, seed=seed), name=name,
                            metadata=METADATA, root=root)


def rewrite_weights(model, arrays):
    """Replaces weights.npz and fixes the checksum, as a careless user might."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path = os.path.join(model.location, store.WEIGHTS_FILE)
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    meta_path = os.path.join(model.location, store.METADATA_FILE)
    meta = json.load(open(meta_path))
    meta["weights_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    json.dump(meta, open(meta_path, "w"))


def test_save_load_round_trip_gives_identical_predictions(root):
    saved = save(root)
    x = np.random.RandomState(0).rand(9, 1, 10, 10).astype(np.float32)
    before = compile_predictor(saved)(x)
    loaded = store.load_model("tiny@1", root=root)
    np.testing.assert_array_equal(compile_predictor(loaded)(x), before)
    assert loaded.metadata["weights_sha256"] == hashlib.sha256(open(
        os.path.join(loaded.location, "weights.npz"), "rb").read()).hexdigest()
    assert loaded.class_names == ["a", "b", "c", "d"]
    np.testing.assert_allclose(before.sum(axis=1), 1, rtol=1e-5)


def test_versions_increase_and_latest_is_the_highest(root):
    save(root, seed=1)
    save(root, seed=2)
    assert [(i.name, i.version) for i in store.list_models(root)] == [
        ("tiny", 1), ("tiny", 2)]
    assert store.load_model("tiny", root=root).version == 2
    assert store.load_model("tiny@latest", root=root).version == 2
    assert store.load_model("tiny@1", root=root).version == 1


def test_load_by_path(root):
    saved = save(root)
    assert store.load_model(saved.location).ref == "tiny@1"


def test_unknown_model_and_version(root):
    save(root)
    with pytest.raises(UnknownModelError, match="no model named 'nope'.*tiny"):
        store.load_model("nope", root=root)
    with pytest.raises(UnknownModelError, match="has no version 7.*versions: 1"):
        store.load_model("tiny@7", root=root)
    with pytest.raises(UnknownModelError, match="invalid model version '1x'"):
        store.load_model("tiny@1x", root=root)
    with pytest.raises(UnknownModelError, match="has no alias 'x'.*promote"):
        store.load_model("tiny@x", root=root)


def test_tampered_weights_fail_the_checksum(root):
    saved = save(root)
    path = os.path.join(saved.location, "weights.npz")
    data = bytearray(open(path, "rb").read())
    data[-100] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ChecksumMismatchError) as error:
        store.load_model("tiny@1", root=root)
    assert "tiny@1" in str(error.value) and path in str(error.value)
    assert store.verify("tiny@1", root=root)[0][1] is not None


@pytest.mark.parametrize("missing", ["weights.npz", "spec.json",
                                     "metadata.json"])
def test_missing_file_is_named(root, missing):
    saved = save(root)
    os.remove(os.path.join(saved.location, missing))
    with pytest.raises(ModelFileMissingError, match=missing):
        store.load_model(saved.location if missing == "metadata.json"
                         else "tiny@1", root=root)


def test_wrong_weight_shape_names_the_layer(root):
    saved = save(root)
    arrays = dict(saved.weights)
    arrays["conv1.W"] = np.zeros((5, 1, 3, 3), np.float32)
    rewrite_weights(saved, arrays)
    with pytest.raises(WeightShapeError,
                       match=r"layer 'conv1'.*\(5, 1, 3, 3\).*\(3, 1, 3, 3\)"):
        store.load_model("tiny@1", root=root)


def test_weights_of_another_spec_are_refused(root):
    saved = save(root)
    arrays = dict(saved.weights)
    del arrays["out.b"]
    rewrite_weights(saved, arrays)
    with pytest.raises(ModelIntegrityError, match="no array for parameter"):
        store.load_model("tiny@1", root=root)


def test_a_model_never_unpickles(root, monkeypatch):
    saved = save(root)
    arrays = dict(saved.weights)
    arrays["conv1.W"] = np.array([object()], dtype=object)
    rewrite_weights(saved, arrays)

    def refuse(*args, **kwargs):
        raise AssertionError("pickle.loads was called")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    with pytest.raises(ModelIntegrityError, match="never unpickles"):
        store.load_model("tiny@1", root=root)


def test_a_failed_save_leaves_no_version(root, monkeypatch):
    save(root)
    monkeypatch.setattr(store.os, "rename", lambda *a: (_ for _ in ()).throw(
        OSError("disk full")))
    with pytest.raises(OSError):
        save(root)
    assert [i.version for i in store.list_models(root)] == [1]
    assert os.listdir(os.path.join(root, "tiny")) == ["1"]


def test_shipped_default_model_verifies():
    results = store.verify()
    assert ("digits-cnn@1", None) in results
    assert all(error is None for _, error in results)
