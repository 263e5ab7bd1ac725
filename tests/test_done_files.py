"""What ``imgclass watch`` keeps of the ledger between windows
(``pipeline.done_files``): the same answers as a set of ``(path, size,
mtime)`` keys of the model version, in 16 bytes per file."""

from __future__ import annotations

import io
import random
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import FileMetadata

from pipeline.done_files import DoneFiles
from tests.object_store import Bucket
from transforms import schema

MODEL = types.SimpleNamespace(name="digits-cnn", version=2)


def ledger_table(rows) -> pa.Table:
    """Ledger rows ``(path, size, mtime, model_name, model_version)``."""
    columns = list(zip(*rows)) if rows else [[]] * 5
    return pa.Table.from_pydict({
        "path": list(columns[0]), "size": list(columns[1]),
        "mtime": list(columns[2]), "model_name": list(columns[3]),
        "model_version": list(columns[4]),
        "run_id": ["r"] * len(rows), "sha256": [None] * len(rows),
        "retried_stage": [None] * len(rows)}, schema=schema.LEDGER)


def write_ledger(path, rows) -> str:
    pq.write_table(ledger_table(rows), path)
    return str(path)


def random_keys(rng, n):
    return [(f"/in/{rng.randrange(10**6)}/caf%E9 {i}.jpg",
             rng.randrange(1, 10**7), rng.randrange(10**9) + rng.random())
            for i in range(n)]


def listed(keys):
    return [FileMetadata(p, s, t) for p, s, t in keys]


def test_only_the_same_path_size_and_time_of_the_same_model_version_is_done(
        tmp_path):
    done_rows = [("/in/a.jpg", 10, 100.5, "digits-cnn", "2"),
                 ("/in/b.jpg", 20, 200.0, "digits-cnn", "2"),
                 ("/in/c.jpg", 30, 300.0, "digits-cnn", "1"),   # older version
                 ("/in/d.jpg", 40, 400.0, "fashion-cnn", "2"),  # other model
                 ("/in/e%E9.jpg", 50, 0.0, "digits-cnn", "2")]
    done = DoneFiles()
    done.add_ledger([write_ledger(tmp_path / "l.parquet", done_rows)], MODEL)
    files = listed([("/in/a.jpg", 10, 100.5),   # done
                    ("/in/b.jpg", 21, 200.0),   # rewritten: new size
                    ("/in/b.jpg", 20, 200.25),  # touched: new time
                    ("/in/c.jpg", 30, 300.0),
                    ("/in/d.jpg", 40, 400.0),
                    ("/in/e%E9.jpg", 50, -0.0),  # done: the same time
                    ("/in/f.jpg", 10, 100.5)])  # another file, same size/time
    assert [(m.path, m.size_in_bytes, m.last_updated_in_seconds)
            for m in done.new(files)] == [
        ("/in/b.jpg", 21, 200.0), ("/in/b.jpg", 20, 200.25),
        ("/in/c.jpg", 30, 300.0), ("/in/d.jpg", 40, 400.0),
        ("/in/f.jpg", 10, 100.5)]
    assert len(done) == 3


def test_windows_added_one_at_a_time_give_the_answers_of_a_set(tmp_path):
    """Ledger files read at start (many keys at once) and a window's ledger
    file at a time (a few, inserted), repeats included, against a plain
    Python set."""
    rng = random.Random(7)
    start = random_keys(rng, 3000)
    windows = [random_keys(rng, rng.randrange(0, 40)) for _ in range(30)]
    windows[3] += start[:5]  # a key that is already there
    done = DoneFiles()
    done.add_ledger([write_ledger(tmp_path / "start.parquet", [
        (*key, "digits-cnn", "2") for key in start])], MODEL)
    reference = set(start)
    for n, keys in enumerate(windows):
        done.add_ledger([write_ledger(tmp_path / f"w{n}.parquet", [
            (*key, "digits-cnn", "2") for key in keys])], MODEL)
        reference |= set(keys)
        assert len(done) == len(reference)
    probe = start[::7] + [k for w in windows for k in w] + random_keys(
        rng, 500) + [(p, s + 1, t) for p, s, t in start[:50]]
    assert {(m.path, m.size_in_bytes, m.last_updated_in_seconds)
            for m in done.new(listed(probe))} == set(probe) - reference
    done.clear()
    assert len(done) == 0 and len(done.new(listed(probe))) == len(probe)


@pytest.mark.parametrize("files", [0, 1, 3])
def test_ledger_files_on_an_object_store_are_read(files):
    objects, keys = {}, []
    rng = random.Random(files)
    for n in range(files):
        part = random_keys(rng, 100)
        keys += part
        buffer = io.BytesIO()
        pq.write_table(ledger_table([(*k, "digits-cnn", "2") for k in part]),
                       buffer)
        objects[f"memstore://b/out/_ledger/{n}.parquet"] = buffer.getvalue()
    Bucket.reset(objects)
    done = DoneFiles()
    done.add_ledger(sorted(objects), MODEL)
    assert len(done) == len(keys)
    assert done.new(listed(keys)) == []
    assert done.nbytes == 16 * len(keys)
