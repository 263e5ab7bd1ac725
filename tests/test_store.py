"""The versioned model store: round trips, integrity errors, no pickles."""

import errno
import fcntl
import hashlib
import io
import json
import math
import os
import pathlib
import pickle
import re
import shutil
import threading

import numpy as np
import pytest

from model_store import store
from model_store.compile import compile_predictor
from model_store.errors import (
    ChecksumMismatchError,
    ConfigError,
    ModelFileMissingError,
    ModelIntegrityError,
    UnknownModelError,
    WeightShapeError,
)
from model_store.spec import build_network
from tests.conftest import within

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
    rewrite_weights_file(model, buffer.getvalue())


def rewrite_weights_file(model, data: bytes):
    """Replaces weights.npz with ``data`` and fixes the checksum."""
    path = os.path.join(model.location, store.WEIGHTS_FILE)
    with open(path, "wb") as handle:
        handle.write(data)
    meta_path = os.path.join(model.location, store.METADATA_FILE)
    meta = json.load(open(meta_path))
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
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


def test_an_array_declaring_more_bytes_than_it_holds_is_damage(root, cli):
    """NumPy allocates what an .npy header declares before reading it: a
    weights.npz whose header claimed petabytes was a MemoryError traceback
    in models list, show and verify (and classify)."""
    import zipfile

    saved = save(root)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in saved.weights.items():
            member = io.BytesIO()
            if name == "conv1.W":
                np.lib.format.write_array_header_1_0(member, {
                    "descr": "<f4", "fortran_order": False,
                    "shape": (10 ** 5,) * 3})
                member.write(bytes(16))
            else:
                np.save(member, array)
            archive.writestr(f"{name}.npy", member.getvalue())
    rewrite_weights_file(saved, buffer.getvalue())
    message = ("weights.npz: array 'conv1.W.npy' declares shape (100000, "
               "100000, 100000) (4,000,000,000,000,000 bytes) but holds 16 "
               "bytes; the file is damaged")
    code, out, err = cli("--store", root, "models", "verify")
    assert (code, err) == (1, "") and "FAILED  tiny@1: " in out
    assert message in out
    code, out, _ = cli("--store", root, "models", "list")
    assert code == 0 and "BROKEN" in out
    code, _, err = cli("--store", root, "models", "show", "tiny@1")
    assert code == 2 and err.count("\n") == 1 and message in err


def _deflated_weights(saved, name, write_member):
    """saved's arrays in a deflated .npz whose member ``name``.npy (added,
    or replacing that parameter) is what ``write_member(member)`` writes."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, array in saved.weights.items():
            if key != name:
                member = io.BytesIO()
                np.save(member, array)
                archive.writestr(f"{key}.npy", member.getvalue())
        with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
            write_member(member)
    return buffer.getvalue()


def _zeros_after_header(header, megabytes):
    """A member: an .npy 1.0 header, then that many MiB of zeros."""
    def write(member):
        np.lib.format.write_array_header_1_0(member, header)
        for _ in range(megabytes):
            member.write(bytes(2 ** 20))
    return write


def _long_header(megabytes):
    """A member: an .npy 2.0 header of that many MiB (spaces)."""
    def write(member):
        member.write(np.lib.format.magic(2, 0))
        member.write((megabytes * 2 ** 20).to_bytes(4, "little"))
        for _ in range(megabytes):
            member.write(b" " * 2 ** 20)
    return write


# 400 MB of float32 zeros, deflated to under 1 MB; the header and the zip
# directory both declare the true size, so no size check catches them.
WEIGHT_BOMBS = {
    "a parameter's shape": ("out.W", _zeros_after_header(
        {"descr": "<f4", "fortran_order": False, "shape": (10 ** 8,)}, 382),
        "parameter 'out.W' has shape (100000000,) but the spec needs (48, "
        "4)"),
    "an array the spec does not name": ("extra", _zeros_after_header(
        {"descr": "<f4", "fortran_order": False, "shape": (10 ** 8,)}, 382),
        "array 'extra.npy' matches no parameter of the spec"),
    "a 100 MiB header": ("out.b", _long_header(100),
                         "array 'out.b.npy' declares a header of "
                         "104,857,600 bytes, more than the limit of 10,000"),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_BOMBS))
def test_a_deflated_weights_bomb_is_refused_before_it_is_inflated(
        root, cli, case):
    """A hostile weights.npz (checksum fixed) with a small deflated member
    that declares, consistently in its .npy header and the zip directory,
    hundreds of MB: refused from the member's header and the spec's
    shapes, before anything is inflated or allocated (it was allocated,
    then refused by its shape, or not at all for an extra array)."""
    import tracemalloc

    name, write_member, message = WEIGHT_BOMBS[case]
    saved = save(root)
    data = _deflated_weights(saved, name, write_member)
    assert len(data) < 2 ** 19
    rewrite_weights_file(saved, data)
    tracemalloc.start()
    try:
        with pytest.raises(ModelIntegrityError, match=re.escape(message)):
            store.load_model("tiny@1", root=root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2 ** 20, peak
    code, _, err = cli("--store", root, "models", "show", "tiny@1")
    assert code == 2 and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("odd, shown", [(b"st\nre", "st%0Are"),
                                         (b"st\xffre", "st%FFre")])
def test_a_store_path_with_odd_bytes_is_shown_escaped_on_one_line(
        tmp_path, cli, odd, shown):
    """A newline in --store split the error in two lines; a byte that is
    not UTF-8 showed as '\\udcff'."""
    store_path = os.path.join(str(tmp_path), os.fsdecode(odd))
    for stored in (False, True):  # missing, then holding a model
        if stored:
            save(store_path)
        ref = "tiny@7" if stored else "tiny"
        code, _, err = cli("--store", store_path, "models", "show", ref)
        assert code == 2 and err.count("\n") == 1, err
        assert f"{tmp_path}/{shown}" in err and "\\udc" not in err


def test_a_failed_save_leaves_no_version(root, monkeypatch):
    save(root)
    monkeypatch.setattr(store.os, "rename", lambda *a: (_ for _ in ()).throw(
        OSError("disk full")))
    with pytest.raises(OSError, match=f"model tiny not saved: cannot write "
                                      f"{os.path.join(root, 'tiny', '2')}: "
                                      f"disk full$"):
        save(root)
    assert [i.version for i in store.list_models(root)] == [1]
    assert sorted(os.listdir(os.path.join(root, "tiny"))) == [
        store.LOCK_FILE, "1", store.VERSIONS_FILE]


def test_shipped_default_model_verifies():
    results = store.verify()
    assert ("digits-cnn@1", None) in results
    assert all(error is None for _, error in results)


# Broken models that used to pass: each refused in one line, exit code 2 ------

def _edit_metadata(model, edit):
    path = os.path.join(model.location, store.METADATA_FILE)
    with open(path) as handle:
        meta = json.load(handle)
    text = edit(meta)
    with open(path, "w") as handle:
        handle.write(text if isinstance(text, str) else json.dumps(meta))


def _set(key, value):
    def edit(meta):
        meta[key] = value
    return edit


def _set_norm(key, value):
    def edit(meta):
        meta["normalization"][key] = value
    return edit


BROKEN_METADATA = [
    ("a list", lambda meta: json.dumps([meta]), "must hold a JSON object"),
    ("class names as a string", _set("class_names", "abcd"),
     "class_names must be a non-empty list"),
    ("duplicate class names", _set("class_names", ["a", "b", "a", "d"]),
     "class names must differ"),
    ("a non-string class name", _set("class_names", ["a", "b", 3, "d"]),
     "every class name must be a non-empty string"),
    ("a NaN mean", lambda meta: json.dumps(meta).replace(
        '"mean": [0.5]', '"mean": [NaN]'), "NaN is not a JSON number"),
    ("an infinite std", lambda meta: json.dumps(meta).replace(
        '"std": [0.25]', '"std": [1e999]'), "std must be a list of finite"),
    ("a mean beyond float", _set_norm("mean", [10 ** 400]),
     "mean must be a list of finite numbers"),
    ("an accuracy beyond float", _set("metrics", {"accuracy": 10 ** 400}),
     "metrics accuracy must be a finite number"),
    ("a non-numeric mean", _set_norm("mean", ["half"]),
     "mean must be a list of finite numbers"),
    ("a string std", _set_norm("std", "0.25"),
     "std must be a list of finite numbers"),
    ("normalization as a list", _set("normalization", [0.5, 0.25]),
     "normalization must be an object"),
    ("background 300", _set("background", 300), "background must be a gray"),
    ("background -1", _set("background", -1), "background must be a gray"),
    ("background as a string", _set("background", "7"),
     "background must be a gray"),
    ("input_shape of strings", _set("input_shape", ["1", "10", "10"]),
     "input_shape must be three positive integers"),
    ("crop as a number", _set("crop", 10), "crop must be a list of positive"),
    ("metrics as a number", _set("metrics", 5), "metrics must be an object"),
    ("training as a string", _set("training", "x"),
     "training must be an object"),
    ("accuracy as a string", _set("metrics", {"accuracy": "high"}),
     "metrics accuracy must be a finite number"),
    ("weights_source as a string", _set("weights_source", "pypi"),
     "weights_source must be an object of strings"),
    ("weights_source with a numeric sha256",
     _set("weights_source", {"format": "torch-legacy", "sha256": 5}),
     "weights_source must be an object of strings"),
]


@pytest.mark.parametrize("edit,message", [b[1:] for b in BROKEN_METADATA],
                         ids=[b[0] for b in BROKEN_METADATA])
def test_metadata_of_the_wrong_type_is_one_line_exit_2(root, cli, edit,
                                                       message):
    saved = save(root)
    _edit_metadata(saved, edit)
    for ref in ("tiny@1", saved.location):
        code, out, err = cli("--store", root, "models", "show", ref)
        assert code == 2, (ref, err)
        assert err.startswith("imgclass: error: ") and err.count("\n") == 1
        assert message in err and "Traceback" not in err


@pytest.mark.parametrize("edit", [_set("metrics", 5),
                                  _set("metrics", {"accuracy": "high"})])
def test_models_list_shows_metrics_of_the_wrong_type_as_broken(root, cli,
                                                              edit):
    _edit_metadata(save(root), edit)
    code, out, err = cli("--store", root, "models", "list")
    assert code == 0 and err == "", err
    assert "BROKEN" in out and "metrics" in out


@pytest.mark.parametrize("file", ["1/metadata.json", "1/spec.json",
                                  "aliases.json"])
def test_a_huge_json_file_is_refused_without_reading_it_whole(root, cli,
                                                              file):
    """A 6 GB sparse metadata.json took 8 GB of memory and 35 s to refuse
    as invalid JSON (a larger one exhausted the machine)."""
    save(root)
    path = os.path.join(root, "tiny", file)
    with open(path, "ab") as handle:
        handle.truncate(4 * 2**30)  # sparse: no disk used
    code, _, err = cli("--store", root, "models", "show", "tiny@1"
                       if file != "aliases.json" else "tiny@latest")
    _one_line_exit_2(code, err, "is larger than 16 MiB, the limit for a "
                                "model's JSON file")


def test_a_weights_file_larger_than_its_parameters_is_not_read_whole(root,
                                                                      cli):
    """A 6 GB sparse weights.npz took 6 GB of memory and 30 s before its
    checksum refused it."""
    save(root)
    path = os.path.join(root, "tiny", "1", store.WEIGHTS_FILE)
    os.truncate(path, 4 * 2**30)  # sparse: no disk used
    code, _, err = cli("--store", root, "models", "show", "tiny@1")
    _one_line_exit_2(code, err, "bytes the spec's parameters can take")


def test_npy_where_npz_is_expected_is_one_line_exit_2(root, cli):
    saved = save(root)
    buffer = io.BytesIO()
    np.save(buffer, saved.weights["conv1.W"])
    path = os.path.join(saved.location, store.WEIGHTS_FILE)
    open(path, "wb").write(buffer.getvalue())
    _edit_metadata(saved, _set("weights_sha256", hashlib.sha256(
        buffer.getvalue()).hexdigest()))
    code, _, err = cli("--store", root, "models", "show", "tiny@1")
    assert code == 2 and err.count("\n") == 1
    assert "is not an .npz archive" in err


@pytest.mark.parametrize("ref", ["tiny@01", "tiny@\uff11", "tiny@1.0",
                                 "tiny@+1", "tiny@1\n"])
def test_versions_are_ascii_integers_without_leading_zeros(root, cli, ref):
    save(root)
    code, _, err = cli("--store", root, "models", "show", ref)
    assert code == 2 and "invalid model version" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("folder", ["01", "\uff12", "1.5", "v2"])
def test_a_version_folder_that_is_not_an_integer_is_refused(root, cli,
                                                            folder):
    saved = save(root)
    shutil.copytree(saved.location, os.path.join(root, "tiny", folder))
    assert [i.version for i in store.list_models(root)] == [1]
    code, _, err = cli("--store", root, "models", "show", "tiny")
    assert code == 2 and err.count("\n") == 1
    assert "are not versions" in err and folder in err


def test_folders_the_store_ignores_are_named_by_list_and_failed_by_verify(
        root, cli):
    """A model copied in by hand under a name that is not a model name, as
    a version that is not a number, or as a bare version folder: list and
    verify saw nothing. list still lists the valid models and warns once
    per ignored folder on stderr; verify reports each as FAILED, exit 1.
    Hidden folders, empty ones and a model whose versions were all deleted
    (its versions.json remains) are not warned about."""
    saved = save(root)
    copies = {"my model": os.path.join(root, "my model", "1"),
              "01": os.path.join(root, "other", "01"),
              "bare": os.path.join(root, "bare")}
    for copy in copies.values():
        shutil.copytree(saved.location, copy)
    os.makedirs(os.path.join(root, ".trash", "x", "1"))
    os.makedirs(os.path.join(root, "empty"))
    os.makedirs(os.path.join(root, "gone"))
    shutil.copy(os.path.join(root, "tiny", store.VERSIONS_FILE),
                os.path.join(root, "gone"))
    why = {"my model": "not a model name (letters, digits, '.', '_' or "
                       "'-', starting with a letter or digit), so the store "
                       "ignores it: rename it",
           "01": "not a version (a positive integer up to 999999999 in "
                 "ASCII digits without leading zeros, e.g. 1), so the "
                 "store ignores it: rename it",
           "bare": f"holds a version's files (metadata.json) but no "
                   f"version folder, so the store ignores it: move them "
                   f"into {os.path.join(root, 'bare', '1')}"}
    shown = {"my model": os.path.join(root, "my model"),
             "01": copies["01"], "bare": copies["bare"]}
    code, out, err = cli("--store", root, "models", "list")
    assert code == 0 and "tiny" in out and len(out.splitlines()) == 2
    assert sorted(err.splitlines()) == sorted(
        f"imgclass: warning: {shown[k]}: {why[k]}" for k in why)
    code, out, err = cli("--store", root, "models", "verify")
    assert code == 1 and err == ""
    assert sorted(out.splitlines()) == sorted(
        [f"FAILED  {shown[k]}: {why[k]}" for k in why] + ["ok      tiny@1"])
    # The fixes suggested make them models the store sees.
    os.rename(copies["01"], os.path.join(root, "other", "1"))
    os.rename(os.path.join(root, "my model"), os.path.join(root, "mine"))
    os.makedirs(os.path.join(root, "bare2"))
    os.rename(os.path.join(root, "bare"), os.path.join(root, "bare2", "1"))
    assert store.ignored_folders(root) == []
    assert [i.ref for i in store.list_models(root)] == [
        "bare2@1", "mine@1", "other@1", "tiny@1"]


@pytest.mark.parametrize("version", ["1", 1.5, True, 0, None])
def test_a_version_folder_whose_metadata_version_is_not_an_integer(
        root, cli, version):
    saved = save(root)
    _edit_metadata(saved, _set("version", version))
    code, _, err = cli("models", "show", saved.location)
    assert code == 2 and err.count("\n") == 1
    assert "version must be a positive integer" in err


@pytest.mark.parametrize("key,value", [
    ("version", "abc"), ("version", 2), ("version", True), ("name", "other")])
def test_metadata_that_disagrees_with_its_folder_is_refused_by_name(
        root, cli, key, value):
    """Loaded by name, folder tiny/1 whose metadata says version 2 (or
    another name) would give rows another version than by path, and the
    same weights would count as two versions for --skip-done."""
    saved = save(root)
    _edit_metadata(saved, _set(key, value))
    for command in (["models", "show", "tiny@1"], ["models", "verify"]):
        code, out, err = cli("--store", root, *command)
        assert code != 0
        assert f"{key} {value!r} differs from the folder's" in out + err


# Saving checks everything before writing; names; the store itself -----------

def _onnx_file(tmp_path):
    """A 3x8x8 -> 4 classes ONNX classifier (pool, flatten, dense)."""
    import onnx

    from tests.onnx_graphs import GraphBuilder

    g = GraphBuilder(input_shape=(3, 8, 8))
    flat = g.node("Flatten", [g.node("GlobalAveragePool", ["x"])])
    out = g.node("Gemm", [flat, g.const(g.rng.randn(4, 3)),
                          g.const(np.zeros(4))], transB=1)
    path = tmp_path / "tiny.onnx"
    onnx.save(g.model(out, 2), str(path))
    return path


def _one_line_exit_2(code, err, message):
    assert code == 2, err
    assert err.startswith("imgclass: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("option,message", [
    (["--preprocessing", '{"background": 300}'],
     "background must be a gray level, an integer from 0 to 255, got 300"),
    (["--preprocessing", '{"mean": [NaN, 0, 0]}'],
     "mean must be finite, got (nan, 0, 0)"),
    # Refused as the --classes file is read, before the model is.
    (["--classes", "DUPLICATES"], "classes.txt lines 1 and 2 name one class "
                                  "('a', 'a'): class names must differ")])
def test_an_import_with_bad_metadata_writes_nothing(root, cli, tmp_path,
                                                    option, message):
    classes = tmp_path / "classes.txt"
    classes.write_text("a\na\nb\nc\n")
    option = [str(classes) if o == "DUPLICATES" else o for o in option]
    code, _, err = cli("--store", root, "models", "import", "onnx",
                       _onnx_file(tmp_path), "--name", "pp", *option)
    _one_line_exit_2(code, err, message)
    assert root not in err  # names the value given, not a file in the store
    assert not os.path.exists(root)  # not even an empty store folder


@pytest.mark.parametrize("edit,message", [
    (lambda meta: meta.update(class_names=["a", "b"]),
     "the network has 4 outputs but class_names has 2 names"),
    (lambda meta: meta.update(training={"history": [{"loss": math.inf}]}),
     "metadata training.history[0].loss is NaN or infinite"),
    (lambda meta: meta.update(resize="nearest-ish"), "resize must be one of"),
    # Written, then refused by load_model as damaged: a version that
    # fails verification was left in the store (a training that skipped
    # some 200,000 files, each named in training.skipped).
    (lambda meta: meta.update(description="x" * store.MAX_JSON_BYTES),
     "JSON file may hold (most of it is its description: make that "
     "smaller)")])
def test_save_model_refuses_metadata_that_would_not_load(root, edit,
                                                         message):
    save(root)
    metadata = dict(METADATA)
    edit(metadata)
    with pytest.raises(ConfigError, match=re.escape(message)):
        store.save_model(build_network(SPEC, seed=1), name="tiny",
                         metadata=metadata, root=root)
    assert sorted(os.listdir(os.path.join(root, "tiny"))) == [
        store.LOCK_FILE, "1", store.VERSIONS_FILE]


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_weights_that_are_not_finite_are_never_saved(root, value):
    network = build_network(SPEC, seed=0)
    param = network.input_layer.W  # out.W: "prob" is fed by "out"
    weights = param.get_value()
    weights[0, 0] = value
    param.set_value(weights)
    with pytest.raises(ConfigError, match=r"model tiny not saved: "
                                          r"parameter\(s\) out.W hold NaN "
                                          r"or infinity"):
        store.save_model(network, name="tiny", metadata=METADATA, root=root)
    assert store.list_models(root) == [] and not os.path.exists(root)


@pytest.mark.parametrize("name", ["a@2", "a/b", ".a", "-a", "a" * 101])
def test_an_invalid_name_is_refused_before_any_work(root, cli, tmp_path,
                                                    monkeypatch, name):
    with pytest.raises(ConfigError, match="invalid model name"):
        save(root, name=name)
    from model_store import onnx_import, train

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(train, "train_model", no_work)
    monkeypatch.setattr(onnx_import, "import_onnx", no_work)
    for command in (["train", "--dataset", "digits"],
                    ["models", "import", "onnx", _onnx_file(tmp_path)]):
        code, _, err = cli("--store", root, *command, f"--name={name}")
        _one_line_exit_2(code, err, "invalid model name")
    assert not os.path.exists(root)


def test_a_name_of_100_characters_is_saved(root):
    assert save(root, name="a" * 100).ref == "a" * 100 + "@1"


def test_a_store_that_is_a_file_is_refused_in_one_line(tmp_path, cli):
    path = tmp_path / "store"
    path.write_text("not a folder")
    for command in (["models", "list"], ["models", "verify"],
                    ["models", "import", "onnx", _onnx_file(tmp_path),
                     "--name", "pp"],
                    ["train", "--dataset", "digits", "--name", "pp"]):
        code, _, err = cli("--store", path, *command)
        _one_line_exit_2(code, err, f"--store {path} is a file, not a "
                                    f"folder")
    assert path.read_text() == "not a folder"


def test_a_read_only_store_is_refused_before_any_work(root, cli, tmp_path,
                                                      monkeypatch):
    save(root)
    aliases = os.path.join(root, "tiny", store.ALIASES_FILE)
    from model_store import train

    def read_only(*args, **kwargs):  # as mkdir on a read-only mount
        raise OSError(errno.EROFS, "Read-only file system")

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(store.tempfile, "mkdtemp", read_only)
    monkeypatch.setattr(train, "train_model", no_work)
    for command in (["models", "promote", "tiny@1", "--alias", "prod"],
                    ["models", "import", "onnx", _onnx_file(tmp_path),
                     "--name", "tiny"],
                    ["train", "--dataset", "digits", "--name", "tiny"]):
        code, _, err = cli("--store", root, *command)
        _one_line_exit_2(code, err, f"--store {root} is not writable: "
                                    f"{os.path.join(root, 'tiny')}: "
                                    f"Read-only file system")
    assert not os.path.exists(aliases)
    assert [i.ref for i in store.list_models(root)] == ["tiny@1"]


def test_a_store_below_a_file_is_not_writable(tmp_path, cli):
    (tmp_path / "file").write_text("x")
    below = tmp_path / "file" / "store"
    code, _, err = cli("--store", below, "train", "--dataset", "digits",
                       "--name", "pp")
    _one_line_exit_2(code, err, f"--store {below} is not writable: "
                                f"{tmp_path / 'file'}: a file, not a folder")


def test_two_saves_at_once_get_two_versions(root, monkeypatch):
    """Both saves pick version 2 and rename at the same moment: the one
    that loses takes version 3."""
    save(root)
    barrier = threading.Barrier(2, timeout=60)
    rename, first = os.rename, threading.local()

    def rename_together(source, target):
        if not getattr(first, "done", False):
            first.done = True
            barrier.wait()
        rename(source, target)

    monkeypatch.setattr(store.os, "rename", rename_together)
    results = []

    def work(seed):
        try:
            results.append(save(root, seed=seed).version)
        except Exception as error:  # noqa: BLE001 - reported below
            results.append(repr(error))

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(results, key=str) == [2, 3], results
    assert sorted(os.listdir(os.path.join(root, "tiny"))) == [
        store.LOCK_FILE, "1", "2", "3", store.VERSIONS_FILE]
    assert all(e is None for _, e in store.verify(root=root))


@pytest.mark.parametrize("text,message", [
    ('{"latest": 1,', "aliases.json is not valid JSON"),
    ('{"latest": true}', "must map alias names to version numbers"),
    ('{"latest": 7}', "has no version 7"),
    ('{"": 1}', "must map alias names to version numbers"),
    ('{"pr od": 1}', "must map alias names to version numbers"),
    ('{"latest": 1000000000}', "must map alias names to version numbers")])
def test_a_damaged_aliases_file_breaks_only_its_model(root, cli, text,
                                                      message):
    save(root, name="good")
    save(root, name="tiny")
    with open(os.path.join(root, "tiny", store.ALIASES_FILE), "w") as handle:
        handle.write(text)
    code, out, _ = cli("--store", root, "models", "list")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "BROKEN" in rows["tiny"] and "BROKEN" not in rows["good"]
    code, out, _ = cli("--store", root, "models", "list", "--json")
    rows = {r["name"]: r for r in map(json.loads, out.splitlines())}
    assert not rows["tiny"]["ok"] and message in rows["tiny"]["error"]
    assert rows["good"]["ok"] and rows["good"]["aliases"] == ["latest"]
    code, out, _ = cli("--store", root, "models", "verify")
    assert code == 1
    assert "FAILED  tiny: " in out and message in out
    assert "ok      good@1" in out and "ok      tiny@1" in out


def test_two_first_trainings_at_once_leave_the_first_version_latest(
        tmp_path, monkeypatch):
    """Two `train --name x` started together both see no version; the one
    that saves second (version 2, not promoted) must not become latest."""
    import model_store.store as store
    from model_store.store import save_version
    from tests.test_cli import save_three_class_model

    root = str(tmp_path / "store")
    real = store.list_models
    calls = []

    def list_models(where=None):  # the other training saves right after
        calls.append(where)       # this one has listed the versions
        if len(calls) == 1:
            save_three_class_model(root)
            return []
        return real(where)

    monkeypatch.setattr(store, "list_models", list_models)
    from model_store.spec import build_network
    net = build_network({"input_shape": [1, 8, 8], "layers": [
        {"type": "dense", "name": "out", "num_units": 3,
         "nonlinearity": "identity"},
        {"type": "softmax", "name": "prob"}]}, seed=1)
    metadata = {"class_names": ["a", "b", "c"], "input_shape": [1, 8, 8],
                "color_mode": "L", "resize": "bilinear",
                "normalization": {"mean": [0.0], "std": [1.0]}}
    model, promoted = save_version(net, name="three", metadata=metadata,
                                   promote=False, root=root)
    monkeypatch.undo()
    assert (model.version, promoted) == (2, False)
    assert store.load_model("three", root=root).version == 1
    assert store.load_model("three@latest", root=root).version == 1


# An import leaves latest where it was, as train does -----------------------

def test_an_import_leaves_latest_where_it_was_as_train_does(root, cli,
                                                            tmp_path):
    onnx_path = _onnx_file(tmp_path)
    for version in (1, 2):
        code, out, _ = cli("--store", root, "models", "import", "onnx",
                           onnx_path, "--name", "pp")
        assert code == 0 and f"saved pp@{version}" in out
    assert "pp@latest is still pp@1: compare them" in out
    assert store.resolve("pp", root=root).version == 1
    assert store.read_aliases("pp", root=root) == {"latest": 1}


# Version numbers are never given twice -------------------------------------

def test_a_deleted_versions_number_is_never_given_again(root):
    for seed in range(3):
        save(root, seed=seed)
    shutil.rmtree(os.path.join(root, "tiny", "3"))  # by hand: no command
    assert save(root, seed=3).version == 4
    assert [i.version for i in store.list_models(root)] == [1, 2, 4]


@pytest.mark.parametrize("alias", ["prod", "latest"])
def test_an_alias_of_a_deleted_version_fails_instead_of_moving(root, cli,
                                                               alias):
    for seed in range(3):
        save(root, seed=seed)
    assert cli("--store", root, "models", "promote", "tiny@2",
               "--alias", alias)[0] == 0
    shutil.rmtree(os.path.join(root, "tiny", "2"))
    ref = f"tiny@{alias}"
    if alias == "prod":
        assert save(root, seed=3).version == 4  # 2 is not given again
    for command in (["models", "show", ref], ["classify", "--model", ref,
                                              "--input", "samples/digits",
                                              "--output", root + "-out"]):
        code, _, err = cli("--store", root, *command)
        _one_line_exit_2(code, err, f"alias {ref} points at version 2, but "
                                    f"model 'tiny' has no version 2")
        assert f"'imgclass models promote tiny@VERSION --alias {alias}'" \
            in err
    assert cli("--store", root, "models", "promote", "tiny@3",
               "--alias", alias)[0] == 0
    assert store.resolve(ref, root=root).version == 3


# Damaged store files are refused before any work ---------------------------

DAMAGED_STORE_FILES = [
    (store.ALIASES_FILE, '{"latest": 1,', "aliases.json is not valid JSON"),
    (store.ALIASES_FILE, '{"prod": "1"}',
     "must map alias names to version numbers"),
    (store.ALIASES_FILE, '{"latest": 7}',
     "alias tiny@latest points at version 7"),
    (store.VERSIONS_FILE, '{"highest": 0}', 'must hold {"highest": N}')]


@pytest.mark.parametrize("file,text,message,stored", [
    (*damaged, stored) for damaged in DAMAGED_STORE_FILES
    for stored in (True, False)
    # A stale latest with no version left does not block: see
    # test_a_stale_latest_of_a_model_with_no_versions_left_is_replaced.
    if stored or damaged[1] != '{"latest": 7}'])
def test_a_damaged_store_file_is_refused_before_any_work(
        root, cli, tmp_path, monkeypatch, file, text, message, stored):
    """Also for a model whose versions were all deleted (stored=False)."""
    from model_store import onnx_import, train

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(train, "train_model", no_work)
    monkeypatch.setattr(onnx_import, "_read_onnx", no_work)
    save(root, name="other")
    os.makedirs(os.path.join(root, "tiny"))
    if stored:
        save(root)
    with open(os.path.join(root, "tiny", file), "w") as handle:
        handle.write(text)
    before = [i.ref for i in store.list_models(root)]
    for command in (["train", "--dataset", "digits"],
                    ["models", "import", "onnx", _onnx_file(tmp_path)]):
        code, _, err = cli("--store", root, *command, "--name", "tiny")
        _one_line_exit_2(code, err, message)
    assert [i.ref for i in store.list_models(root)] == before


# A full disk: one line, exit 1, no half-written version --------------------

def _full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk_at(monkeypatch, fail_at, when):
    """Every file the store writes counted; the ``fail_at``-th raises
    ENOSPC ``when`` "before" or "after" it is written."""
    calls = []

    def failing(write):
        def wrapper(path, data):
            calls.append(path)
            if len(calls) == fail_at and when == "before":
                _full()
            write(path, data)
            if len(calls) == fail_at:
                _full()
        return wrapper

    monkeypatch.setattr(store, "_create", failing(store._create))
    monkeypatch.setattr(store.fs, "write_atomic",
                        failing(store.fs.write_atomic))
    return calls


def _visible(root):
    """What readers of the store see, and anything left half-written."""
    folder = os.path.join(root, "pp")
    return ([i.ref for i in store.list_models(root)],
            store.resolve("pp", root=root).ref,
            store.read_aliases("pp", root=root),
            [n for n in os.listdir(folder) if n != store.LOCK_FILE
             and (n.startswith(".") or n.endswith(".tmp"))])


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_full_disk_while_importing_leaves_no_version(root, cli, tmp_path,
                                                       monkeypatch, when):
    onnx_path = _onnx_file(tmp_path)
    import_pp = ["--store", root, "models", "import", "onnx", onnx_path,
                 "--name", "pp"]
    assert cli(*import_pp)[0] == 0
    assert cli("--store", root, "models", "promote", "pp@1",
               "--alias", "prod")[0] == 0
    before = _visible(root)
    assert before[3] == []
    fail_at = 1
    while True:
        with monkeypatch.context() as patch:
            calls = _full_disk_at(patch, fail_at, when)
            code, out, err = cli(*import_pp)
        if len(calls) < fail_at:
            break  # every write has failed once
        assert code == 1, (fail_at, out, err)
        assert err.startswith("imgclass: error: model pp not saved: cannot "
                              "write ") and err.count("\n") == 1, err
        named = os.path.join(root, "pp", r"(\d+/)?" + os.path.basename(
            calls[-1]))
        assert re.search(f"write {named}: No space left on device$", err)
        assert _visible(root) == before, fail_at
        fail_at += 1
    assert fail_at == 5  # versions.json, then the version's three files
    assert code == 0, err
    code, out, _ = cli("--store", root, "models", "verify")
    assert code == 0 and out.count("ok      pp@") == 2, out


@pytest.mark.parametrize("failing", ["write_atomic", "fsync"])
def test_a_full_disk_while_promoting_changes_no_alias(root, cli,
                                                      monkeypatch, failing):
    save(root)
    path = os.path.join(root, "tiny", store.ALIASES_FILE)
    with monkeypatch.context() as patch:
        if failing == "fsync":  # the new aliases file is being written
            patch.setattr(store.fs.os, "fsync", lambda fd: _full(fd))
        else:
            _full_disk_at(patch, 1, "before")
        code, _, err = cli("--store", root, "models", "promote",
                           "tiny@1", "--alias", "prod")
    assert err == (f"imgclass: error: alias tiny@prod not set: cannot "
                   f"write {path}: No space left on device\n")
    assert code == 1
    assert sorted(os.listdir(os.path.dirname(path))) == [
        store.LOCK_FILE, "1", store.VERSIONS_FILE]  # no aliases file, nor
    # a temporary one
    assert cli("--store", root, "models", "promote", "tiny@1",
               "--alias", "prod")[0] == 0


def test_a_full_disk_after_saving_says_the_version_was_saved(root,
                                                             monkeypatch):
    save(root)
    create = store._create  # not counted: the 3rd aliases or versions file
    with monkeypatch.context() as patch:
        calls = _full_disk_at(patch, 3, "before")
        patch.setattr(store, "_create", create)
        with pytest.raises(OSError, match="^saved tiny@2, but alias "
                                          "tiny@latest not set: cannot "
                                          "write .*: No space left"):
            store.save_version(build_network(SPEC, seed=1), name="tiny",
                               metadata=METADATA, promote=True, root=root)
    assert [os.path.basename(c) for c in calls] == [
        store.ALIASES_FILE, store.VERSIONS_FILE, store.ALIASES_FILE]
    assert store.load_model("tiny@2", root=root).version == 2
    assert store.resolve("tiny", root=root).version == 1


# Promoting by path: only a folder of this store ----------------------------

def test_promote_refuses_a_version_folder_of_another_store(tmp_path, cli):
    here, other = str(tmp_path / "here"), str(tmp_path / "other")
    save(here)
    save(other, seed=1)
    elsewhere = os.path.join(other, "tiny", "1")
    code, _, err = cli("--store", here, "models", "promote", elsewhere,
                       "--alias", "prod")
    _one_line_exit_2(code, err, f"{elsewhere} is not a version folder of "
                                f"--store {here}")
    assert "give the NAME@VERSION of a version in this store" in err
    assert store.read_aliases("tiny", root=here) == {}
    own = os.path.join(here, "tiny", "1") + "/"
    code, out, _ = cli("--store", here, "models", "promote", own,
                       "--alias", "prod")
    assert code == 0 and "tiny@prod -> tiny@1" in out


# Commands say what they did ------------------------------------------------

def test_verify_of_a_name_says_which_version_it_checked(root, cli):
    save(root)
    save(root, seed=1)
    code, out, _ = cli("--store", root, "models", "verify", "tiny")
    assert code == 0 and out == "ok      tiny -> tiny@2\n"
    code, out, _ = cli("--store", root, "models", "verify", "tiny@1")
    assert code == 0 and out == "ok      tiny@1\n"


def test_base_and_spec_together_are_refused_as_not_both(root, cli):
    code, _, err = cli("--store", root, "train", "--data", root, "--name",
                       "x", "--base", "tiny", "--spec", "some.json")
    _one_line_exit_2(code, err, "give --base MODEL or --spec PATH, not both")


# Commands changing aliases or versions at once lose nothing -----------------

def _race(monkeypatch, file_name, first, second):
    """Runs ``first()``, then, while it is about to write ``file_name`` (it
    has read it), ``second()``; ``first``'s write waits until ``second`` has
    finished or is waiting on the model's lock. Returns their errors."""
    first_writing, second_moved = threading.Event(), threading.Event()
    write, flock = store.fs.write_atomic, fcntl.flock

    def held_write(path, data):
        if threading.current_thread().name == "first" and path.endswith(
                file_name) and not first_writing.is_set():
            first_writing.set()
            assert second_moved.wait(30), "second neither ran nor waited"
        write(path, data)

    def signalling_flock(fd, operation):
        if threading.current_thread().name == "second":
            second_moved.set()  # about to wait for the lock
        return flock(fd, operation)

    monkeypatch.setattr(store.fs, "write_atomic", held_write)
    monkeypatch.setattr(fcntl, "flock", signalling_flock)
    errors = []

    def run(work):
        try:
            work()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))
        finally:
            second_moved.set()

    one = threading.Thread(target=run, args=(first,), name="first")
    one.start()
    assert first_writing.wait(30)
    two = threading.Thread(target=run, args=(second,), name="second")
    two.start()
    one.join(30)
    two.join(30)
    assert not (one.is_alive() or two.is_alive())
    return errors


def test_two_promotes_at_once_keep_both_aliases(root, monkeypatch):
    save(root)
    save(root, seed=1)
    errors = _race(monkeypatch, store.ALIASES_FILE,
                   lambda: store.set_alias("tiny", "prod", 2, root=root),
                   lambda: store.set_alias("tiny", "staging", 1, root=root))
    assert errors == []
    assert store.read_aliases("tiny", root=root) == {"prod": 2,
                                                     "staging": 1}


def test_a_promote_racing_an_import_leaves_latest_pinned(root, monkeypatch):
    """A store whose latest was never pinned: the save pins it at 2 before
    writing 3, while a promote of prod is writing; latest must stay."""
    save(root)
    save(root, seed=1)
    saved = []
    errors = _race(monkeypatch, store.ALIASES_FILE,
                   lambda: store.set_alias("tiny", "prod", 1, root=root),
                   lambda: saved.append(store.save_version(
                       build_network(SPEC, seed=2), name="tiny",
                       metadata=METADATA, promote=False, root=root)))
    assert errors == []
    assert [(m.version, latest) for m, latest in saved] == [(3, False)]
    assert store.read_aliases("tiny", root=root) == {"prod": 1, "latest": 2}
    assert store.resolve("tiny", root=root).version == 2


def test_the_highest_version_given_never_goes_back(root, monkeypatch):
    """Two saves record their numbers at once: the lower one, written last,
    must not replace the higher (its number could be given again)."""
    save(root)
    errors = _race(
        monkeypatch, store.VERSIONS_FILE,
        lambda: store._record_version("tiny", 5, root, "first"),
        lambda: store._record_version("tiny", 7, root, "second"))
    assert errors == []
    assert store._highest_given("tiny", root) == 7


def test_the_store_lock_taken_again_in_one_thread_does_not_wait(tmp_path):
    path = str(tmp_path / "model" / store.LOCK_FILE)
    done = threading.Event()

    def nested():
        with store.fs.locked(path), store.fs.locked(path):
            done.set()

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    assert done.wait(10), "a nested lock waited on itself"


# Promote moves an alias only to a version that loads ------------------------

def _flip_a_weights_byte(model):
    path = os.path.join(model.location, store.WEIGHTS_FILE)
    data = bytearray(open(path, "rb").read())
    data[-100] ^= 0xFF
    open(path, "wb").write(bytes(data))
    return "tiny@2", "has sha256"


def _rename_the_folder(model):
    os.rename(model.location, os.path.join(root_of(model), "5"))
    return "tiny@5", "version 2 differs from the folder's 5"


def root_of(model):
    return os.path.dirname(model.location)


@pytest.mark.parametrize("damage", [_flip_a_weights_byte, _rename_the_folder])
@pytest.mark.parametrize("alias", ["prod", "latest"])
def test_promote_refuses_a_version_that_would_not_load(root, cli, damage,
                                                       alias):
    save(root)
    assert cli("--store", root, "models", "promote", "tiny@1",
               "--alias", alias)[0] == 0
    ref, message = damage(save(root, seed=1))
    before = store.read_aliases("tiny", root=root)
    code, out, err = cli("--store", root, "models", "promote", ref,
                         "--alias", alias)
    _one_line_exit_2(code, err, f"alias tiny@{alias} not moved: ")
    assert message in err and out == ""
    assert store.read_aliases("tiny", root=root) == before == {alias: 1}


# Whole-store verify checks every alias --------------------------------------

def test_verify_reports_each_alias_of_a_deleted_version(root, cli):
    for seed in range(3):
        save(root, seed=seed)
    for ref, alias in (("tiny@2", "prod"), ("tiny@3", "staging")):
        assert cli("--store", root, "models", "promote", ref,
                   "--alias", alias)[0] == 0
    shutil.rmtree(os.path.join(root, "tiny", "2"))
    code, out, _ = cli("--store", root, "models", "verify")
    assert code == 1
    assert "FAILED  tiny@prod: alias tiny@prod points at version 2" in out
    assert "FAILED  tiny@staging" not in out and "FAILED  tiny:" not in out
    assert out.count("FAILED") == 1 and "ok      tiny@3" in out


def test_verify_reports_the_aliases_of_a_model_with_no_versions_left(
        root, cli):
    save(root, name="other")
    save(root)
    assert cli("--store", root, "models", "promote", "tiny@1",
               "--alias", "prod")[0] == 0
    assert cli("--store", root, "models", "promote", "tiny@1")[0] == 0
    shutil.rmtree(os.path.join(root, "tiny", "1"))
    code, out, _ = cli("--store", root, "models", "verify")
    assert code == 1, out
    assert "FAILED  tiny: alias tiny@latest points at version 1" in out
    assert "FAILED  tiny@prod: alias tiny@prod points at version 1" in out
    assert "ok      other@1" in out
    shutil.rmtree(os.path.join(root, "other"))
    code, out, _ = cli("--store", root, "models", "verify")
    assert code == 1 and "no models to verify" not in out


def test_models_list_shows_a_model_with_only_aliases_left(root, cli):
    """Its versions all deleted, a model whose aliases.json remains was
    missing from the list, though its aliases dangle (models verify fails
    them)."""
    save(root)
    for alias in ("prod", "latest"):
        assert cli("--store", root, "models", "promote", "tiny@1",
                   "--alias", alias)[0] == 0
    shutil.rmtree(os.path.join(root, "tiny", "1"))
    note = "no versions; aliases: latest -> 1 (missing), prod -> 1 (missing)"
    code, out, _ = cli("--store", root, "models", "list")
    assert code == 0
    assert out.splitlines()[1].split(None, 4) == [
        "tiny", "-", "-", "latest,prod", note]
    save(root, name="other")
    code, out, _ = cli("--store", root, "models", "list", "--json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"name": "other", "version": 1, "ok": True,
         "location": os.path.join(root, "other", "1"), "accuracy": None,
         "created_at": store.load_model("other", root=root).metadata[
             "created_at"], "classes": 4, "aliases": ["latest"]},
        {"name": "tiny", "version": None, "ok": False,
         "location": os.path.join(root, "tiny"), "error": note,
         "aliases": ["latest", "prod"]}]
    with open(os.path.join(root, "tiny", store.ALIASES_FILE), "w") as handle:
        handle.write("[]")
    code, out, _ = cli("--store", root, "models", "list")
    assert out.splitlines()[2].split(None, 4)[:4] == [
        "tiny", "-", "BROKEN", "-"]
    assert "aliases.json must hold a JSON object" in out


def test_models_list_shows_a_deleted_version_that_an_alias_still_names(
        root, cli):
    for seed in range(2):
        save(root, seed=seed)
    assert cli("--store", root, "models", "promote", "tiny@1",
               "--alias", "prod")[0] == 0
    shutil.rmtree(os.path.join(root, "tiny", "1"))
    code, out, _ = cli("--store", root, "models", "list")
    assert code == 0
    assert [line.split(None, 4)[:4] for line in out.splitlines()[1:]] == [
        ["tiny", "1", "-", "prod"], ["tiny", "2", "-", "latest"]]
    assert out.splitlines()[1].endswith(
        "missing: deleted, but aliases still name it")
    code, out, _ = cli("--store", root, "models", "list", "--json")
    first = json.loads(out.splitlines()[0])
    assert first == {"name": "tiny", "version": 1, "ok": False,
                     "location": os.path.join(root, "tiny", "1"),
                     "error": "missing: deleted, but aliases still name it",
                     "aliases": ["prod"]}


def test_a_stale_latest_of_a_model_with_no_versions_left_is_replaced(
        root, cli, tmp_path):
    """Decision: with no version left, a latest naming a deleted version
    does not block saving; the new (first) version becomes latest, under a
    number above the deleted ones."""
    for seed in range(2):
        save(root, seed=seed)
    assert cli("--store", root, "models", "promote", "tiny@2")[0] == 0
    for version in ("1", "2"):
        shutil.rmtree(os.path.join(root, "tiny", version))
    code, out, err = cli("--store", root, "models", "import", "onnx",
                         _onnx_file(tmp_path), "--name", "tiny")
    assert code == 0, err
    assert "saved tiny@3" in out and "tiny@latest is now tiny@3" in out
    assert store.read_aliases("tiny", root=root) == {"latest": 3}
    assert cli("--store", root, "models", "verify")[0] == 0


# A store (or model folder) behind a broken symbolic link --------------------

@pytest.mark.parametrize("where,link_to,message", [
    ("store", "/nonexistent/nas/models", "points at /nonexistent/nas/models, "
                                         "which does not exist"),
    ("store", "store", "loops"),
    ("store/tiny", "/nonexistent/nas/tiny", "points at /nonexistent/nas/"
                                            "tiny, which does not exist")])
def test_a_broken_symlink_store_is_refused_before_any_work(
        tmp_path, cli, monkeypatch, where, link_to, message):
    from model_store import onnx_import, train

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(train, "train_model", no_work)
    monkeypatch.setattr(onnx_import, "_read_onnx", no_work)
    root = tmp_path / "store"
    link = tmp_path / where
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(link_to)
    for command in (["train", "--dataset", "digits"],
                    ["models", "import", "onnx", _onnx_file(tmp_path)]):
        code, _, err = cli("--store", root, *command, "--name", "tiny")
        _one_line_exit_2(code, err, f"--store {root} cannot be used: {link} "
                                    f"is a symbolic link that {message}")
    if where == "store":
        code, _, err = cli("--store", root, "models", "list")
        _one_line_exit_2(code, err, f"{link} is a symbolic link that "
                                    f"{message}")


# Version numbers are bounded ----------------------------------------------

@pytest.mark.parametrize("digits", ["1000000000", "9" * 4301])
def test_a_version_over_the_maximum_is_one_line_exit_2(root, cli, digits):
    save(root)
    ref = f"tiny@{digits}"
    for command in (["models", "show", ref], ["models", "verify", ref],
                    ["models", "promote", ref, "--alias", "prod"],
                    ["classify", "--model", ref, "--input", "samples/digits",
                     "--output", root + "-out"]):
        code, _, err = cli("--store", root, *command)
        _one_line_exit_2(code, err, f"versions go up to {store.MAX_VERSION}")
        assert len(err) < 300


@pytest.mark.parametrize("file,record,message", [
    (store.ALIASES_FILE, {"prod": 10 ** 300},
     "must map alias names to version numbers"),
    (store.ALIASES_FILE, {"latest": store.MAX_VERSION + 1},
     "must map alias names to version numbers"),
    (store.VERSIONS_FILE, {"highest": 10 ** 300},
     'must hold {"highest": N}'),
    (store.VERSIONS_FILE, {"highest": store.MAX_VERSION},
     f"model tiny has used every version number up to "
     f"{store.MAX_VERSION}")])
def test_a_version_over_the_maximum_in_a_store_file_is_refused(
        root, cli, tmp_path, monkeypatch, file, record, message):
    from model_store import onnx_import, train

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(train, "train_model", no_work)
    monkeypatch.setattr(onnx_import, "_read_onnx", no_work)
    save(root)
    path = os.path.join(root, "tiny", file)
    with open(path, "w") as handle:
        json.dump(record, handle)
    before = open(path).read()
    for command in (["train", "--dataset", "digits"],
                    ["models", "import", "onnx", _onnx_file(tmp_path)]):
        code, _, err = cli("--store", root, *command, "--name", "tiny")
        _one_line_exit_2(code, err, message)
    assert open(path).read() == before
    assert [i.ref for i in store.list_models(root)] == ["tiny@1"]
    if record != {"highest": store.MAX_VERSION}:
        code, out, _ = cli("--store", root, "models", "verify")
        assert code == 1 and message in out


def test_a_version_folder_over_the_maximum_is_not_a_version(root, cli):
    saved = save(root)
    shutil.copytree(saved.location, os.path.join(root, "tiny", "1" * 12))
    assert [i.version for i in store.list_models(root)] == [1]
    code, _, err = cli("--store", root, "models", "show", "tiny")
    _one_line_exit_2(code, err, f"are not versions (positive integers up "
                                f"to {store.MAX_VERSION}")


# Special files where the store expects its files ---------------------------


@pytest.mark.parametrize("file", [store.ALIASES_FILE, store.VERSIONS_FILE,
                                  os.path.join("1", store.METADATA_FILE)])
def test_a_fifo_where_a_store_file_is_expected_is_reported(root, cli, file):
    save(root, name="good")
    save(root)
    path = os.path.join(root, "tiny", file)
    if os.path.exists(path):
        os.remove(path)
    os.mkfifo(path)
    message = f"{path} is a FIFO, not a regular file"
    with within(20):
        code, out, _ = cli("--store", root, "models", "list")
        assert code == 0
        rows = {line.split()[0]: line for line in out.splitlines()[1:]}
        if file != store.VERSIONS_FILE:  # list does not read that one
            assert "BROKEN" in rows["tiny"] and "BROKEN" not in rows["good"]
        code, out, _ = cli("--store", root, "models", "verify")
        assert code == 1 and message in out and "ok      good@1" in out
        code, _, err = cli("--store", root, "models", "show", "tiny")
        if file != store.VERSIONS_FILE:  # show reads no versions file
            _one_line_exit_2(code, err, message)


@pytest.mark.parametrize("arguments", [
    {"ref": 5}, {"ref": None}, {"ref": "digits-cnn", "root": 5},
    {"ref": "digits-cnn", "root": pathlib.Path("models")}])
def test_load_model_refuses_references_that_are_not_strings(arguments):
    """They were TypeErrors from a regular expression."""
    from model_store.errors import ConfigError
    name = "root" if "root" in arguments else "ref"
    with pytest.raises(ConfigError, match=f"^{name} must be a string"):
        store.load_model(arguments.pop("ref"), **arguments)
