"""Incremental nightly runs with --skip-done: exactly once, across reruns,
killed runs and interrupted publishing."""

import json
import os
import shutil
import time

import pyarrow.parquet as pq
import pytest

from model_store.errors import ConfigError
from model_store.store import DEFAULT_ROOT, load_model, save_model
from pipeline import outputs
from pipeline.cli import main
from tests.conftest import write_bad_files, write_digits


def predicted_paths(output):
    return pq.read_table(os.path.join(output, "predictions")).column(
        "path").to_pylist()


def manifest(output):
    return json.load(open(os.path.join(output, "_manifest.json")))


def classify(folder, output, *extra):
    return main(["classify", "--input", folder, "--output", output,
                 "--skip-done", *extra])


def test_three_nights_with_new_files_classify_only_the_new_ones(tmp_path,
                                                                split):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    night1 = write_digits(os.path.join(folder, "n1"), split, 20, seed=1)
    assert classify(folder, output) == 0
    assert manifest(output)["counts"]["predicted"] == 20

    night2 = write_digits(os.path.join(folder, "n2"), split, 10, seed=2)
    assert classify(folder, output) == 0
    counts = manifest(output)["counts"]
    assert (counts["matched"], counts["predicted"], counts["skipped"]) == (
        30, 10, 20)

    skipped = pq.read_table(os.path.join(output, "_skipped"))
    assert sorted(skipped.column("path").to_pylist()) == sorted(night1)
    assert set(skipped.column("reason").to_pylist()) == {"done"}
    # Nothing reads _skipped/ back (README: delete old files as you like).
    shutil.rmtree(os.path.join(output, "_skipped"))

    night3 = write_digits(os.path.join(folder, "n3"), split, 5, seed=3)
    bad = write_bad_files(os.path.join(folder, "n3bad"))
    assert classify(folder, output) == 0
    counts = manifest(output)["counts"]
    assert (counts["matched"], counts["predicted"], counts["failed"],
            counts["skipped"]) == (35 + len(bad), 5, len(bad), 30)

    paths = predicted_paths(output)
    assert sorted(paths) == sorted({**night1, **night2, **night3})
    assert len(os.listdir(os.path.join(output, "_runs"))) == 3
    skipped = pq.read_table(os.path.join(output, "_skipped"))
    assert sorted(skipped.column("path").to_pylist()) == sorted(
        {**night1, **night2})


def test_running_the_same_night_twice_adds_no_rows(tmp_path, split):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(folder, split, 15)
    write_bad_files(os.path.join(folder, "bad"))
    assert classify(folder, output) == 0
    assert classify(folder, output) == 0
    counts = manifest(output)["counts"]
    assert (counts["predicted"], counts["failed"]) == (0, 0)
    assert counts["skipped"] == counts["matched"]
    paths = predicted_paths(output)
    assert len(paths) == len(set(paths)) == 15
    errors = pq.read_table(os.path.join(output, "errors"))
    assert errors.num_rows == len(set(errors.column("path").to_pylist()))


def test_a_changed_file_is_classified_again(tmp_path, split):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    truth = write_digits(folder, split, 5, nested=False)
    assert classify(folder, output) == 0
    changed = sorted(truth)[0]
    with open(changed, "ab") as handle:
        handle.write(b"\0")  # new size and modification time
    assert classify(folder, output) == 0
    assert manifest(output)["counts"]["predicted"] == 1
    assert predicted_paths(output).count(changed) == 2


def test_a_new_model_version_reclassifies_everything(tmp_path, split):
    store = str(tmp_path / "store")
    shutil.copytree(DEFAULT_ROOT, store)
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(folder, split, 8)
    common = ["--store", store, "classify", "--input", folder, "--output",
              output, "--skip-done"]
    assert main(common + ["--model", "digits-cnn@1"]) == 0
    v1 = load_model("digits-cnn@1", root=store)
    metadata = {k: v for k, v in v1.metadata.items()
                if k in ("class_names", "input_shape", "color_mode", "resize",
                         "normalization", "background")}
    save_model(v1.build(), name="digits-cnn", metadata=metadata, root=store)
    assert main(common + ["--model", "digits-cnn@1"]) == 0
    assert manifest(output)["counts"]["predicted"] == 0
    assert main(common) == 0  # latest is now version 2
    counts = manifest(output)["counts"]
    assert (counts["predicted"], counts["skipped"]) == (8, 0)
    assert manifest(output)["model"]["version"] == "2"


def test_interrupted_publishing_is_finished_by_the_next_run(
        tmp_path, split, monkeypatch):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(folder, split, 12)
    real_move = outputs._move

    def crash_after_first(sources, destinations):
        real_move(sources[:1], destinations[:1])
        raise SystemExit("power cut while publishing")

    monkeypatch.setattr(outputs, "_move", crash_after_first)
    with pytest.raises(SystemExit):
        classify(folder, output)
    monkeypatch.setattr(outputs, "_move", real_move)
    assert not os.path.exists(os.path.join(output, "_SUCCESS"))

    assert classify(folder, output) == 0  # recovers, then skips everything
    paths = predicted_paths(output)
    assert len(paths) == len(set(paths)) == 12
    assert manifest(output)["counts"]["skipped"] == 12
    assert len(os.listdir(os.path.join(output, "_runs"))) == 2


def test_a_killed_run_can_be_rerun_as_if_it_ran_once(tmp_path, split,
                                                     kill_mid_run):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    truth = write_digits(folder, split, 40, seed=9)
    assert classify(folder, output) == 0
    for n in range(1, 5):
        truth.update(write_digits(os.path.join(folder, f"late{n}"), split,
                                  300, seed=10 + n))
    kill_mid_run(output, "--input", folder, "--skip-done", "--batch-size", 16)
    assert sorted(predicted_paths(output)) == sorted(
        p for p in truth if "/late" not in p)

    assert classify(folder, output) == 0
    paths = predicted_paths(output)
    assert len(paths) == len(set(paths))
    assert sorted(paths) == sorted(truth)


def test_content_mode_skips_rewritten_but_unchanged_files(tmp_path, split):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    truth = write_digits(folder, split, 6, nested=False)
    assert classify(folder, output, "--skip-done-by", "content") == 0
    touched, changed, *_ = sorted(truth)
    later = time.time() + 100
    os.utime(touched, (later, later))  # rewritten as it was: same bytes
    data = bytearray(open(changed, "rb").read())
    data[-3] ^= 0xFF  # same size, other bytes
    open(changed, "wb").write(bytes(data))
    os.utime(changed, (later - 50, later - 50))

    assert classify(folder, output, "--skip-done-by", "content") == 0
    counts = manifest(output)["counts"]
    assert (counts["skipped"], counts["predicted"] + counts["failed"]) == (
        5, 1)
    ledger = pq.read_table(os.path.join(output, "_ledger"))
    assert all(len(d) == 64 for d in ledger.column("sha256").to_pylist())

    # By size and time, the touched file counts as new.
    os.utime(touched, (later + 10, later + 10))
    assert classify(folder, output) == 0
    assert manifest(output)["counts"]["skipped"] == 5


@pytest.mark.parametrize("by", ["content", "mtime"])
def test_skip_done_by_needs_skip_done(tmp_path, split, capsys, by):
    """Also the default, given: the user meant --skip-done and would
    otherwise get every file classified again without a word."""
    folder = str(tmp_path / "bucket")
    write_digits(folder, split, 2, nested=False)
    assert main(["classify", "--input", folder, "--output",
                 str(tmp_path / "out"), "--skip-done-by", by]) == 2
    assert "--skip-done-by only applies with --skip-done" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_failed_files_are_retried_per_stage(tmp_path, split, monkeypatch):
    """Issue 12, item 2: a read error (transient) is retried by the next
    --skip-done run; a decode error of an unchanged file only with
    --retry-errors; the manifest counts the retried files."""
    from transforms import files

    folder, output = tmp_path / "bucket", str(tmp_path / "out")
    good = write_digits(str(folder), split, 3, nested=False)
    flaky = write_digits(str(folder / "nfs"), split, 1, seed=5, nested=False)
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 99)
    flaky_path, corrupt = next(iter(flaky)), str(folder / "corrupt.png")
    real_open = os.open

    def hiccup(path, *args, **kwargs):  # night 1: the share is not mounted
        if path == flaky_path:
            raise OSError(5, "Input/output error", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", hiccup)
    assert classify(str(folder), output) == 0
    monkeypatch.undo()
    errors = pq.read_table(os.path.join(output, "errors")).to_pylist()
    assert {(r["path"], r["stage"]) for r in errors} == {
        (flaky_path, "read"), (corrupt, "decode")}

    def night(*extra):
        assert classify(str(folder), output, *extra) == 0
        counts = manifest(output)["counts"]
        run = manifest(output)["run_id"]
        rows = {kind: [r["path"] for r in pq.read_table(
            os.path.join(output, kind)).to_pylist() if r["run_id"] == run]
            for kind in ("predictions", "errors")}
        assert counts["matched"] == counts["predicted"] + counts["failed"] \
            + counts["skipped"] == len(good) + 2
        return counts, rows

    counts, rows = night()
    assert rows == {"predictions": [flaky_path], "errors": []}
    assert (counts["retried"], counts["retried_by_stage"]) == (1, {"read": 1})
    assert counts["skipped"] == len(good) + 1  # the corrupt file stays done

    counts, rows = night()
    assert rows == {"predictions": [], "errors": []}
    assert counts["retried"] == 0

    counts, rows = night("--retry-errors")
    assert rows == {"predictions": [], "errors": [corrupt]}
    assert counts["retried_by_stage"] == {"decode": 1}
    ledger = pq.read_table(os.path.join(output, "_ledger")).to_pylist()
    assert sorted(r["retried_stage"] for r in ledger
                  if r["retried_stage"]) == ["decode", "read"]


def test_retry_errors_needs_skip_done(tmp_path, cli):
    folder = tmp_path / "in"
    folder.mkdir()
    code, _, err = cli("classify", "--input", folder, "--output",
                       tmp_path / "out", "--retry-errors")
    assert code == 2 and "--retry-errors only applies with --skip-done" in err


def test_content_mode_takes_a_path_mode_ledger_as_done(tmp_path, split, cli):
    """D4: ledger rows without a sha256 (a path-mode run wrote them, error
    rows included) count as done in content mode when path, size and
    modification time match; a changed file is classified again."""
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    truth = write_digits(folder, split, 5, nested=False)
    bad = write_bad_files(os.path.join(folder, "bad"))

    def night(*extra):
        code, out, err = cli("classify", "--input", folder, "--output",
                             output, "--skip-done", "--summary-json", "-q",
                             *extra)
        assert code == 0, err
        return json.loads(out)

    first = night()  # by path, size and modification time: no sha256
    assert first["counts"]["predicted"] + first["counts"]["failed"] == \
        first["counts"]["matched"] == len(truth) + len(bad)
    second = night("--skip-done-by", "content")
    counts = second["counts"]
    assert counts["predicted"] + counts["failed"] == 0
    assert counts["skipped"] == counts["matched"] == first["counts"][
        "matched"]

    changed = sorted(truth)[0]
    data = bytearray(open(changed, "rb").read())
    data[-3] ^= 0xFF
    open(changed, "wb").write(bytes(data))
    later = time.time() + 100
    os.utime(changed, (later, later))
    third = night("--skip-done-by", "content")
    assert (third["counts"]["predicted"] + third["counts"]["failed"],
            third["counts"]["skipped"]) == (1, third["counts"]["matched"] - 1)
    rows = pq.read_table(os.path.join(output, "predictions")).to_pylist() \
        + pq.read_table(os.path.join(output, "errors")).to_pylist()
    by_run = {run["run_id"]: sorted(r["path"] for r in rows
                                    if r["run_id"] == run["run_id"])
              for run in (first, second, third)}
    assert by_run[second["run_id"]] == [] and by_run[third["run_id"]] == [
        changed]
    assert sorted(by_run[first["run_id"]]) == sorted({**truth, **bad})


@pytest.mark.parametrize("kind", ["_ledger", "errors"])
def test_a_damaged_ledger_or_error_file_is_one_line_naming_it(
        tmp_path, split, cli, kind):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(folder, split, 3, nested=False)
    write_bad_files(os.path.join(folder, "bad"))  # an error file too
    assert cli("classify", "--input", folder, "--output", output,
               "-q")[0] == 0
    (damaged,) = (outputs.ledger_files(output) if kind == "_ledger"
                  else outputs.error_files(output))
    os.truncate(damaged, 20)
    for extra in (["-q"], []):
        code, _, err = cli("classify", "--input", folder, "--output", output,
                           "--skip-done", *extra)
        assert code == 2
        (line,) = err.splitlines()
        assert line.startswith(
            f"imgclass: error: output {output!r}: {kind} file {damaged} is "
            f"damaged (Parquet magic bytes not found")
        assert line.endswith("restore it from a backup, or replace the "
                             "earlier runs with --overwrite instead of "
                             "--skip-done")
    assert not os.path.exists(os.path.join(output, "_staging"))


def test_a_fifo_in_place_of_a_ledger_file_is_refused_without_waiting(
        tmp_path, split, cli):
    """Opening a FIFO waits for a writer that never comes (the run hung,
    deaf to SIGTERM, inside pyarrow); it is refused instead."""
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(folder, split, 3, nested=False)
    assert cli("classify", "--input", folder, "--output", output,
               "-q")[0] == 0
    fifo = os.path.join(output, "_ledger", "zz.parquet")
    os.mkfifo(fifo)
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--skip-done", "-q")
    assert code == 2
    (line,) = err.splitlines()
    assert f"_ledger file {fifo} is damaged ({fifo} is a FIFO, not a " \
           f"regular file)" in line


def _ledger_objects(store, files, rows):
    """``files`` ledger files of ``rows`` rows each, and two error files,
    in ``store`` below ``memstore://b/out``: ``{path: bytes}``."""
    import io

    import numpy as np
    import pyarrow as pa

    from transforms import schema

    rng = np.random.default_rng(0)
    objects = {}
    for n in range(files):
        table = pa.Table.from_pydict({
            "path": [f"gs://in/{n}/{i}.jpg" for i in range(rows)],
            "size": rng.integers(1, 10**6, rows),
            "mtime": rng.random(rows) * 1e9,
            "model_name": ["digits-cnn"] * rows,
            "model_version": ["1"] * rows,
            "run_id": [f"run-{n}"] * rows,
            "sha256": [rng.bytes(32).hex() for _ in range(rows)],
            "retried_stage": [None] * rows}, schema=schema.LEDGER)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        objects[f"memstore://b/out/_ledger/part-{n:03d}.parquet"] = \
            buffer.getvalue()
    for n in range(2):
        table = pa.Table.from_pydict(
            {name: [None] * rows for name in schema.ERRORS.names},
            schema=schema.ERRORS)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        objects[f"memstore://b/out/errors/run_date=2026-11-2{n}/"
                f"part-{n}.parquet"] = buffer.getvalue()
    store.reset(objects)
    return objects


def test_on_object_stores_done_files_are_checked_by_footer_several_at_once():
    """A nightly output on GCS or S3 gathers thousands of ledger files:
    --skip-done checks each one's footer before any work, several at once,
    never downloading the files; counting rows and reading one column
    read only what they need too."""
    from tests.object_store import Bucket

    objects = _ledger_objects(Bucket, files=12, rows=20000)
    total = sum(map(len, objects.values()))
    Bucket.open_together = True
    outputs.check_done_files("memstore://b/out")
    assert Bucket.most_open > 1
    assert Bucket.bytes_read < total / 10, (Bucket.bytes_read, total)

    ledger = outputs.ledger_files("memstore://b/out")
    assert len(ledger) == 12
    Bucket.reset(objects)
    assert outputs.count_rows(ledger) == sum(
        pq.read_metadata(pa_reader(objects[p])).num_rows for p in ledger)
    assert Bucket.bytes_read < total / 10
    Bucket.reset(objects)
    runs = outputs.read_table(ledger, ["run_id"]).column("run_id")
    assert runs.to_pylist() == [f"run-{n}" for n in range(12)
                                for _ in range(20000)]
    assert Bucket.bytes_read < total / 4


def test_on_object_stores_a_damaged_done_file_is_named():
    from tests.object_store import Bucket

    objects = _ledger_objects(Bucket, files=5, rows=10)
    damaged = "memstore://b/out/_ledger/part-003.parquet"
    objects[damaged] = objects[damaged][:-20]
    Bucket.reset(objects)
    with pytest.raises(ConfigError, match=f"_ledger file {damaged} is "
                                          f"damaged"):
        outputs.check_done_files("memstore://b/out")


def test_on_object_stores_a_read_that_fails_is_not_taken_for_damage(
        monkeypatch):
    """A 503 on a ranged read of a footer, after the object opened, says
    nothing of the file: it is raised (the run fails, exit 1), not told as
    damage (exit 2, with advice to restore the file or replace the runs)."""
    from tests import object_store
    from tests.object_store import Bucket

    _ledger_objects(Bucket, files=3, rows=10)

    def readinto(self, buffer):  # the object opened; its reads fail
        raise OSError(5, "503 Service Unavailable")

    monkeypatch.setattr(object_store._Reader, "readinto", readinto)
    with pytest.raises(OSError, match="503 Service Unavailable") as raised:
        outputs.check_done_files("memstore://b/out")
    assert not isinstance(raised.value, ConfigError)


def pa_reader(data):
    import pyarrow as pa
    return pa.BufferReader(data)


def test_nightly_runs_to_an_object_store_publish_once_and_leave_no_staging(
        monkeypatch, cli):
    """Three --skip-done runs of the samples into memstore:// (objects, no
    folders: a folder's path deletes nothing, as on GCS and S3): each file
    once in the outputs, read back with pyarrow; no run left pending in
    _staging (every later run would complete it again, and the ledger
    would never be merged)."""
    import io

    from pipeline import ledger
    from tests.object_store import Bucket

    monkeypatch.setattr(ledger, "COMPACT_FILES", 2)
    samples = os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "samples", "digits")
    Bucket.reset({})
    output = "memstore://b/out"
    for _ in range(3):
        code, _, err = cli("classify", "--input", samples, "--output",
                           output, "--skip-done", "-q")
        assert code == 0, err
    names = sorted(Bucket.objects)
    assert not [n for n in names if "/_staging/" in n], names

    def rows(kind):
        return sorted(path for name in names
                      if name.startswith(f"{output}/{kind}/")
                      and name.endswith(".parquet")
                      for path in pq.read_table(io.BytesIO(
                          Bucket.objects[name])).column("path").to_pylist())

    matched = sorted(os.path.join(folder, name)
                     for folder, _, files in os.walk(samples)
                     for name in files)
    assert sorted(rows("predictions") + rows("errors")) == matched
    ledger_files = [n for n in names if n.startswith(f"{output}/_ledger/")]
    assert len(ledger_files) == 2  # 2 runs' merged at the 3rd, and the 3rd's
    assert rows("_ledger") == matched
