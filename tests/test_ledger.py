"""The ledger stays a few files: many small ledger files are merged into one
with the same rows, and a kill, a write error or a torn write at any step
of the merge loses no row and, once the next run has finished the merge,
leaves each row once."""

import collections
import glob
import io
import json
import os
import shutil
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model_store.fs import is_uri
from pipeline import ledger, outputs, run
from tests.conftest import write_digits
from tests.test_publishing import (
    ROOTS,
    Faults,
    Killed,
    faults_of,
    files_below,
    new_output,
    put_bytes,
    read_bytes,
    stage_run,
)
from transforms import schema


def write_ledgers(output, files, rows=3, *, old=False, first=0):
    """``files`` ledger files as published runs leave them, of runs
    ``first``, ``first + 1``... (``old``: as an earlier release wrote them,
    without sha256 and retried_stage)."""
    folder = f"{output}/{outputs.LEDGER_DIR}"
    for n in range(first, first + files):
        run_id = f"20260101T{n:06d}Z-{n:08x}"
        table = pa.Table.from_pylist(
            [{"path": f"/in/{n}/{i}.jpg", "size": 100 + i, "mtime": n + 0.5,
              "model_name": "digits-cnn", "model_version": "1",
              "run_id": run_id, "sha256": f"{n:x}{i}" if i % 2 else None,
              "retried_stage": "read" if i == 1 else None}
             for i in range(rows)], schema=schema.LEDGER)
        if old:
            table = table.drop(["sha256", "retried_stage"])
        sink = io.BytesIO()
        pq.write_table(table, sink)
        put_bytes(f"{folder}/part-{run_id}-00000-of-00001.parquet",
                  sink.getvalue())


def ledger_rows(output):
    """Every ledger row, with repeats, as an outside reader (pyarrow's
    dataset over the folder, or over the objects below it) sees them."""
    if is_uri(output):  # pyarrow's discovery skips "_" and "."
        table = pa.concat_tables(
            pq.read_table(io.BytesIO(read_bytes(path)))
            for path in files_below(f"{output}/{outputs.LEDGER_DIR}",
                                    ".parquet")
            if not os.path.basename(path).startswith(("_", ".")))
    else:
        table = pq.read_table(os.path.join(output, outputs.LEDGER_DIR))
    return collections.Counter(tuple(sorted(r.items()))
                               for r in table.to_pylist())


def ledger_names(output):
    return sorted(os.listdir(os.path.join(output, outputs.LEDGER_DIR)))


def test_many_small_ledger_files_become_one_with_the_same_rows(tmp_path):
    output = str(tmp_path / "out")
    write_ledgers(output, ledger.COMPACT_FILES + 6)
    before = ledger_rows(output)
    assert ledger.compact(output) == ledger.COMPACT_FILES + 6
    (merged,) = ledger_names(output)
    assert merged.startswith("compacted-") and merged.endswith(".parquet")
    assert ledger_rows(output) == before
    assert sum(before.values()) == 3 * (ledger.COMPACT_FILES + 6)
    # What --skip-done reads: the file names, then their rows.
    assert outputs.count_rows(outputs.ledger_files(output)) == \
        sum(before.values())
    assert ledger.compact(output) == 0  # one file: nothing more to do


def test_fewer_small_files_than_the_threshold_are_left_as_they_are(tmp_path):
    output = str(tmp_path / "out")
    write_ledgers(output, ledger.COMPACT_FILES - 1)
    names = ledger_names(output)
    assert ledger.compact(output) == 0
    assert ledger_names(output) == names


def test_large_ledger_files_are_left_and_groups_stay_bounded(tmp_path,
                                                            monkeypatch):
    output = str(tmp_path / "out")
    write_ledgers(output, 70, rows=40)
    sizes = {p: os.path.getsize(p) for p in outputs.ledger_files(output)}
    big = sorted(sizes)[:3]
    for path in big:  # three files of a big run, written after the others
        table = pq.read_table(path)
        pq.write_table(pa.concat_tables([table] * 200), path)
    monkeypatch.setattr(ledger, "SMALL_BYTES", max(sizes.values()) + 1)
    monkeypatch.setattr(ledger, "GROUP_BYTES", 20 * max(sizes.values()))
    before = ledger_rows(output)
    assert ledger.compact(output) == 67
    names = ledger_names(output)
    assert all(os.path.basename(p) in names for p in big)
    merged = [n for n in names if n.startswith("compacted-")]
    assert len(merged) == 4  # 67 files in groups of at most 20
    assert ledger_rows(output) == before


def test_an_older_ledger_without_the_newer_columns_is_merged_with_nulls(
        tmp_path):
    output = str(tmp_path / "out")
    write_ledgers(output, ledger.COMPACT_FILES, old=True)
    paths = sorted(r for f in outputs.ledger_files(output)
                   for r in pq.read_table(f).column("path").to_pylist())
    ledger.compact(output)
    (merged,) = outputs.ledger_files(output)
    table = pq.read_table(merged)
    assert table.schema.remove_metadata() == schema.LEDGER
    assert sorted(table.column("path").to_pylist()) == paths
    assert table.column("sha256").null_count == table.num_rows


def test_no_merge_while_a_publishing_is_pending(tmp_path):
    output = str(tmp_path / "out")
    write_ledgers(output, ledger.COMPACT_FILES)
    paths, staged, manifest = stage_run(output, "20260301T000000Z-pending",
                                        predicted=["p1"], failed=[])
    outputs._write_file(os.path.join(paths.staging, outputs.PUBLISH),
                        outputs._record_bytes({"moves": [], "deletes": [],
                                               "manifest": manifest}))
    names = ledger_names(output)
    assert ledger.compact(output) == 0
    assert ledger_names(output) == names


# --- a fault at every step --------------------------------------------------

FILES = 8


def prepared(output, monkeypatch):
    """A ledger of FILES small files, merged (with the threshold lowered to
    keep the cases few) in two groups."""
    monkeypatch.setattr(ledger, "COMPACT_FILES", FILES - 2)
    write_ledgers(output, FILES)
    size = max(len(read_bytes(p)) for p in outputs.ledger_files(output))
    monkeypatch.setattr(ledger, "GROUP_BYTES", size * (FILES // 2))


def compaction_steps(root):
    with tempfile.TemporaryDirectory() as folder, \
            pytest.MonkeyPatch.context() as monkeypatch:
        output = new_output(root, folder)
        prepared(output, monkeypatch)
        faults = Faults(monkeypatch, output)
        ledger.compact(output)
        return faults.steps


STEPS = {root: compaction_steps(root) for root in ROOTS}
# The faults publishing is tried with (tests/test_publishing.py): a kill
# before and after each step; an error before each (a full disk, a refused
# move or delete); a torn write (local) or a rename stopped between its
# copy and its delete (object store).
CASES = [(root, index, label, when, fault)
         for root in ROOTS
         for index, label in enumerate(STEPS[root])
         for when, fault in faults_of(root, label)]


@pytest.mark.parametrize("root", ROOTS)
def test_the_merge_writes_aside_moves_into_place_then_deletes_its_sources(
        root):
    steps = STEPS[root]
    kinds = [label.split(":")[0] for label in steps]
    group = ["write", "move"] + ["delete"] * (FILES // 2)
    assert kinds == group * 2
    assert steps[0].startswith("write:_ledger/_compacting-")
    assert steps[1].startswith("move:_ledger/compacted-")


@pytest.mark.parametrize("root,index,label,when,fault", CASES,
                         ids=[f"{r}-{i:02d}-{label.split(':')[0]}-{w}-{f}"
                              for r, i, label, w, f in CASES])
def test_a_fault_at_any_step_of_a_merge_loses_no_row_and_the_next_run_ends_it(
        tmp_path, monkeypatch, root, index, label, when, fault):
    output = new_output(root, str(tmp_path))
    prepared(output, monkeypatch)
    before = ledger_rows(output)
    with pytest.MonkeyPatch.context() as faulty:
        Faults(faulty, output, at=index, when=when, fault=fault)
        with pytest.raises((OSError, Killed)):
            ledger.compact(output)
    # Meanwhile (before the next run): every row is there, some twice; the
    # files --skip-done reads all have a footer.
    assert set(ledger_rows(output)) == set(before)
    outputs.check_done_files(output)

    # The next run ends the merge: each row once, nothing left aside.
    ledger.compact(output)
    assert ledger_rows(output) == before
    assert not [p for p in files_below(f"{output}/_ledger", "")
                if os.path.basename(p).startswith("_")]


def test_a_damaged_merged_file_is_named_and_nothing_is_deleted(tmp_path):
    output = str(tmp_path / "out")
    write_ledgers(output, ledger.COMPACT_FILES)
    ledger.compact(output)
    (merged,) = outputs.ledger_files(output)
    with open(merged, "r+b") as handle:
        handle.truncate(os.path.getsize(merged) // 2)
    write_ledgers(output, 3)
    names = ledger_names(output)
    ledger.compact(output)
    assert ledger_names(output) == names
    with pytest.raises(outputs.ConfigError, match="compacted-.* is damaged"):
        outputs.check_done_files(output)


def test_nightly_skip_done_runs_merge_the_ledger_and_still_skip_done_files(
        tmp_path, split, monkeypatch, cli):
    monkeypatch.setattr(ledger, "COMPACT_FILES", 2)
    folder, output = tmp_path / "bucket", tmp_path / "out"
    seen = {}
    for night in range(3):
        seen.update(write_digits(str(folder / f"n{night}"), split, 3,
                                 seed=night))
        code, _, err = cli("classify", "--input", folder, "--output",
                           output, "--skip-done", "-q")
        assert code == 0, err
    # Runs 1-2 left two ledger files, merged when the third started.
    names = ledger_names(str(output))
    assert len(names) == 2 and names[0].startswith("compacted-"), names
    predicted = pq.read_table(str(output / "predictions")).column("path")
    assert sorted(predicted.to_pylist()) == sorted(seen)  # each file once
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--skip-done", "-q")
    assert code == 0, err
    counts = json.load(open(output / "_manifest.json"))["counts"]
    assert (counts["predicted"], counts["skipped"]) == (0, len(seen))


def test_a_merge_that_fails_is_one_warning_and_the_run_goes_on(
        tmp_path, monkeypatch):
    output = str(tmp_path / "out")
    write_ledgers(output, ledger.COMPACT_FILES)
    names, before = ledger_names(output), ledger_rows(output)
    write = outputs._write_file

    def full_disk(path, data):
        if "_compacting-" in path:
            raise OSError(28, "No space left on device")
        write(path, data)

    monkeypatch.setattr(outputs, "_write_file", full_disk)
    log = io.StringIO()
    run.merge_ledger(output, log)  # what every run and watch window does
    (line,) = log.getvalue().splitlines()
    assert line == (f"imgclass: warning: the ledger files in {output} were "
                    f"not merged (OSError: [Errno 28] No space left on "
                    f"device); the next run tries again")
    assert ledger_names(output) == names and ledger_rows(output) == before


def test_the_readme_states_the_merge_thresholds():
    readme = " ".join(open(os.path.join(os.path.dirname(__file__), "..",
                                        "README.md")).read().split())
    assert (f"finds {ledger.COMPACT_FILES} ledger files under "
            f"{ledger.SMALL_BYTES >> 20} MiB, it first merges them, at most "
            f"{ledger.GROUP_BYTES >> 20} MiB") in readme


def test_an_overwrite_replaces_merged_ledger_files_too(tmp_path, split,
                                                       monkeypatch, cli):
    monkeypatch.setattr(ledger, "COMPACT_FILES", 2)
    folder, output = tmp_path / "bucket", tmp_path / "out"
    for night in range(3):  # the third merges the first two's
        write_digits(str(folder / f"n{night}"), split, 2, seed=night)
        assert cli("classify", "--input", folder, "--output", output,
                   "--skip-done", "-q")[0] == 0
    assert any(n.startswith("compacted-") for n in ledger_names(str(output)))
    code, _, err = cli("classify", "--input", folder / "n0", "--output",
                       output, "--overwrite", "-q")
    assert code == 0, err
    rows = ledger_rows(str(output))
    assert sorted(dict(r)["path"] for r in rows) == sorted(
        glob.glob(str(folder / "n0" / "**" / "*.*"), recursive=True))
    assert sum(rows.values()) == len(rows)


def test_on_object_stores_ledger_files_are_merged_the_same_way():
    from tests.object_store import Bucket
    from tests.test_incremental import _ledger_objects

    objects = _ledger_objects(Bucket, files=ledger.COMPACT_FILES + 1, rows=5)
    output = "memstore://b/out"
    before = outputs.read_table(outputs.ledger_files(output))
    assert ledger.compact(output) == ledger.COMPACT_FILES + 1
    (merged,) = outputs.ledger_files(output)
    assert merged.startswith(f"{output}/_ledger/compacted-")
    assert outputs.read_table([merged]).equals(before)
    assert sorted(Bucket.objects) == sorted(
        [merged, *(p for p in objects if "/errors/" in p)])


def test_a_merged_file_merged_again_is_recovered_at_every_step(tmp_path,
                                                              monkeypatch):
    """A small merged file goes into the next merge with the files that
    came after it: a kill at any step of that merge loses no row either."""
    monkeypatch.setattr(ledger, "COMPACT_FILES", 4)
    output = str(tmp_path / "template")
    write_ledgers(output, 4)
    ledger.compact(output)
    write_ledgers(output, 8, first=4)
    before = ledger_rows(output)
    copy = str(tmp_path / "copy")
    shutil.copytree(output, copy)
    with pytest.MonkeyPatch.context() as counting:
        faults = Faults(counting, copy)
        ledger.compact(copy)
    steps = [s.split(":")[0] for s in faults.steps]
    assert steps == ["write", "move"] + ["delete"] * 9
    for index in range(len(steps)):
        case = str(tmp_path / f"case{index}")
        shutil.copytree(output, case)
        with pytest.MonkeyPatch.context() as faulty:
            Faults(faulty, case, at=index, when="after", fault="kill")
            with pytest.raises(Killed):
                ledger.compact(case)
        assert set(ledger_rows(case)) == set(before)
        ledger.compact(case)
        assert ledger_rows(case) == before, index


def _publish_on_store(output, run_id):
    """Stages a one-file run below ``output`` (an object store) as the
    pipeline does, then publishes it."""
    from tests.object_store import Bucket

    paths = outputs.RunOutputs(output, run_id, None)
    for kind, kind_schema in outputs.SCHEMAS.items():
        row = {"path": f"gs://in/{run_id}.jpg", "run_id": run_id}
        if kind == outputs.LEDGER_DIR:
            row.update(size=1, mtime=1.0, model_name="m", model_version="1")
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([row], schema=kind_schema), sink)
        Bucket.objects[f"{paths.staging_prefix(kind)}-00000-of-00001"
                       f".parquet"] = sink.getvalue()
    staged = paths.staged_files()
    paths.publish(staged, {"run_id": run_id, "partition": None,
                           "table": None, "layout": "none",
                           "files": paths.destinations(staged)},
                  overwrite=False)


def test_on_object_stores_published_runs_leave_no_staging_so_their_ledger_is_merged(
        monkeypatch):
    """GCS and S3 have no folders: deleting ``_staging/<run_id>`` must
    delete the objects below it. A ``_publish.json`` left there is a
    publishing pending for ever: every run completed it again, and the
    ledger was never merged."""
    from tests.object_store import Bucket

    monkeypatch.setattr(ledger, "COMPACT_FILES", 3)
    Bucket.reset({})
    output = "memstore://b/out"
    for n in range(3):
        _publish_on_store(output, f"2026010{n}T000000Z-run{n}")
    assert not [p for p in Bucket.objects if "/_staging/" in p]
    assert outputs.pending_publishes(output) == []
    log = io.StringIO()
    run.recover(output, log)
    assert log.getvalue() == ""  # nothing to finish: nothing re-published
    run.merge_ledger(output, log)
    (merged,) = outputs.ledger_files(output)
    assert merged.startswith(f"{output}/_ledger/compacted-")
    assert outputs.read_table([merged]).num_rows == 3


def test_a_damaged_ledger_file_is_refused_in_one_line_before_any_merge(
        tmp_path, split, monkeypatch, cli):
    """A refused run (exit 2) does no work: the ledger is merged only once
    the output passed the checks, so a damaged file among many small ones
    is the one line --skip-done promises, and nothing was merged."""
    monkeypatch.setattr(ledger, "COMPACT_FILES", 3)
    folder, output = tmp_path / "in", str(tmp_path / "out")
    write_digits(str(folder), split, 2)
    write_ledgers(output, 6)
    size = max(os.path.getsize(p) for p in outputs.ledger_files(output))
    monkeypatch.setattr(ledger, "GROUP_BYTES", 3 * size)  # two groups
    damaged = outputs.ledger_files(output)[-1]
    os.truncate(damaged, 20)
    names = ledger_names(output)
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--skip-done")
    assert code == 2
    (line,) = err.splitlines()
    assert f"_ledger file {damaged} is damaged" in line
    assert ledger_names(output) == names
