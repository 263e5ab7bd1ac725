"""The per-machine predictor cache: a second compile links the cached,
optimised function (same outputs); a corrupt, unreadable or foreign entry
is rebuilt; other weights are another entry. And Theano's compile cache
keys are the same in every process."""

import dataclasses
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from model_store import compile as C
from model_store import predictor_cache
from model_store.store import load_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder, and a count of the real compiles."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    compiled = []
    real = C._compiled

    def counting(model, embeddings):
        compiled.append(model.weights_sha256)
        return real(model, embeddings)

    monkeypatch.setattr(C, "_compiled", counting)
    return compiled


@pytest.fixture(scope="module")
def digits():
    model = load_model("digits-cnn@1")
    batch = np.random.RandomState(0).rand(
        5, *model.metadata["input_shape"]).astype(np.float32)
    return model, batch, C.compile_predictor(model)(batch)


def _entries():
    return sorted(os.listdir(predictor_cache._folder()))


def test_second_compile_uses_the_cache_and_gives_the_same_outputs(
        cache, digits):
    model, batch, want = digits
    first = C.compile_predictor(model, cached=True)
    second = C.compile_predictor(model, cached=True)
    assert cache == [model.weights_sha256]  # compiled once
    np.testing.assert_array_equal(first(batch), want)
    np.testing.assert_array_equal(second(batch), want)
    assert second.flops_per_example == first.flops_per_example
    assert len(_entries()) == 1


def test_embeddings_are_their_own_entry(cache, digits):
    model, batch, want = digits
    plain = C.compile_predictor(model, cached=True)
    with_embeddings = C.compile_predictor(model, embeddings=True,
                                          cached=True)
    again = C.compile_predictor(model, embeddings=True, cached=True)
    assert len(cache) == 2 and len(_entries()) == 2
    probs, features = again.predict(batch)
    np.testing.assert_array_equal(probs, want)
    np.testing.assert_array_equal(features,
                                  with_embeddings.predict(batch)[1])
    assert again.embedding_size == features.shape[1]
    np.testing.assert_array_equal(plain(batch), want)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty",
                                    "unpicklable", "other_key"])
def test_a_corrupt_entry_is_ignored_and_rebuilt(cache, digits, damage):
    model, batch, want = digits
    C.compile_predictor(model, cached=True)
    path = predictor_cache.entry_path(model, embeddings=False)
    with open(path, "rb") as file:
        data = file.read()
    if damage == "flip":
        middle = len(data) // 2
        data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
    elif damage == "truncate":
        data = data[:len(data) // 3]
    elif damage == "empty":
        data = b""
    else:  # a well-formed entry whose content cannot be used
        entry = ({"path": "elsewhere.pkl"} if damage == "other_key"
                 else None)
        payload = (pickle.dumps(entry) if entry else
                   b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x0b"
                   b"no_such_mod\x94\x8c\x03Cls\x94\x93\x94.")
        data = (predictor_cache._MAGIC
                + predictor_cache.hashlib.sha256(payload).hexdigest().encode()
                + b"\n" + payload)
    with open(path, "wb") as file:
        file.write(data)

    rebuilt = C.compile_predictor(model, cached=True)
    np.testing.assert_array_equal(rebuilt(batch), want)
    assert len(cache) == 2  # compiled again
    C.compile_predictor(model, cached=True)
    assert len(cache) == 2  # and the rewritten entry is good
    assert _entries() == [os.path.basename(path)]  # no temporary left


def test_a_fifo_as_the_entry_is_rebuilt_not_waited_on(cache, digits):
    """Reading the entry with open() waited for a FIFO's writer: every
    compile (each classify worker's) hung."""
    from tests.conftest import within

    model, batch, want = digits
    path = predictor_cache.entry_path(model, embeddings=False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path)
    with within(120):
        rebuilt = C.compile_predictor(model, cached=True)
    np.testing.assert_array_equal(rebuilt(batch), want)
    assert len(cache) == 1 and os.path.isfile(path)  # replaced


def test_other_weights_miss_and_replace_the_entry(cache, digits):
    model, batch, want = digits
    C.compile_predictor(model, cached=True)
    first = _entries()
    weights = dict(model.weights)
    name = next(k for k in weights if k.endswith(".W"))
    weights[name] = weights[name] * 1.5
    other = dataclasses.replace(
        model, weights=weights,
        metadata=dict(model.metadata, weights_sha256="f" * 64))
    got = C.compile_predictor(other, cached=True)(batch)
    assert cache == [model.weights_sha256, "f" * 64]
    np.testing.assert_array_equal(got, C.compile_predictor(other)(batch))
    assert not np.array_equal(got, want)
    assert len(_entries()) == 1 and _entries() != first


def test_an_unwritable_cache_still_compiles(cache, digits, tmp_path):
    model, batch, want = digits
    (tmp_path / "imgclass").write_text("a file where the folder goes")
    np.testing.assert_array_equal(
        C.compile_predictor(model, cached=True)(batch), want)


_COP_VERSION = """
from model_store.engine import T
node = T.fvector().dimshuffle("x", 0).owner
print(node.op.c_code_cache_version_apply(node))
"""


def test_theano_module_keys_do_not_depend_on_the_hash_seed():
    """Theano 1.0.5 versioned DimShuffle's C module by hash() of its source,
    so every process compiled it again (model_store.engine)."""
    versions = {subprocess.run(
        [sys.executable, "-c", _COP_VERSION], check=True, text=True,
        capture_output=True,
        env=dict(os.environ, PYTHONHASHSEED=seed)).stdout
        for seed in ("1", "2")}
    assert len(versions) == 1, versions
