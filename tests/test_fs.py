"""model_store.fs: the path and file helpers the store, the publishing step
and the watcher share."""

import json
import os

import pytest
from apache_beam.io.aws.clients.s3.messages import S3ClientError
from apache_beam.io.azure.blobstorageio import BlobStorageError
from apache_beam.io.filesystem import BeamIOError

from model_store import fs
from model_store.errors import ConfigError, StoreWriteError
from tests import client_errors as clients


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


def test_a_store_error_is_an_oserror_or_an_object_store_clients_error():
    """Matched by module and name along the MRO, without the clients'
    libraries: their subclasses too; Beam's own S3 and Azure wrappers by
    their real classes. Bugs and imgclass's own refusals are not."""
    store_errors = [
        OSError("503"), BeamIOError("Match operation failed", {}),
        clients.gcs_unavailable("GET", "gs://b/k"), clients.Forbidden("no"),
        clients.TooManyRequests("slow down"), clients.NotFound("gone"),
        clients.RetryError("Timeout of 120.0s exceeded", OSError()),
        clients.RefreshError("metadata server: 503"),
        clients.BotoClientError({"Error": {"Code": "SlowDown"}}, "GetObject"),
        clients.EndpointConnectionError(), S3ClientError("SlowDown", 503),
        clients.azure_server_busy(), BlobStorageError("busy", 503)]
    for error in store_errors:
        assert fs.is_store_error(error), repr(error)
    for error in (TypeError("x"), AttributeError("x"), KeyError("x"),
                  ValueError("x"), RuntimeError("x"), ConfigError("x"),
                  StoreWriteError("disk full")):
        assert not fs.is_store_error(error), repr(error)
    # A class of another module with a client's name is not one.
    assert not fs.is_store_error(type("ServiceUnavailable", (Exception,),
                                      {})())


def test_lies_in_resolves_links_and_never_takes_a_sibling_for_a_child(
        tmp_path):
    from model_store.fs import lies_in

    (tmp_path / "store" / "m").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "store")
    assert lies_in(str(tmp_path / "store"), str(tmp_path / "store"))
    assert lies_in(str(tmp_path / "link" / "m" / "out"),
                   str(tmp_path / "store"))
    assert not lies_in(str(tmp_path / "store2"), str(tmp_path / "store"))
    assert lies_in("gs://b/store/m/", "gs://b/store")
    assert not lies_in("gs://b/store2", "gs://b/store/")
    assert not lies_in(str(tmp_path / "store"), "gs://b" + str(tmp_path))
