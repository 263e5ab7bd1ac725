"""model_store.fs: the path and file helpers the store, the publishing step
and the watcher share."""

import json
import os

import pytest

from model_store import fs


def test_uris_are_told_from_local_paths_by_their_scheme():
    assert fs.is_uri("gs://bucket/models") and fs.is_uri("s3://b/k")
    # A local name may hold "://" further in; only a leading scheme counts.
    assert not fs.is_uri("/data/a://b") and not fs.is_uri("relative/path")


def test_local_paths_join_split_and_match(tmp_path):
    folder = fs.join(str(tmp_path), "runs")
    assert folder == os.path.join(str(tmp_path), "runs")
    assert fs.split(folder + "/") == (str(tmp_path), "runs")
    assert fs.basename(fs.join(folder, "b.json")) == "b.json"
    for name in ("b.json", "a.json", "c.txt"):
        fs.create(fs.join(folder, name), b"{}")
    assert fs.match(fs.join(folder, "*.json")) == [
        fs.join(folder, "a.json"), fs.join(folder, "b.json")]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(
        tmp_path, monkeypatch):
    path = str(tmp_path / "out" / "_manifest.json")
    fs.write_atomic(path, fs.json_bytes({"run": 1}))

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fs.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        fs.write_atomic(path, fs.json_bytes({"run": 2}))
    with open(path) as handle:
        assert json.load(handle) == {"run": 1}
    assert os.listdir(tmp_path / "out") == ["_manifest.json"]


def test_json_is_indented_with_one_final_newline():
    assert fs.json_bytes({"b": 1, "a": [2]}, sort_keys=True) == (
        b'{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n')
