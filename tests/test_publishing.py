"""Exactly-once publishing under faults: a kill before and after EVERY
filesystem operation publishing makes, an error (a full disk, a refused
move or delete) or a torn write before it, then the recovery the next run
does and that run (plain, --skip-done or --overwrite, as the variant); an
outside reader (pyarrow) checks that no run is lost, none is duplicated,
and that ``_SUCCESS`` vouches for the files.

The runs here are staged by hand (Parquet files with the contract's schemas,
as the pipeline writes them), so each of the few hundred cases takes
milliseconds; tests/test_exactly_once.py does the same through the command
line with real pipelines at the steps that matter most.
"""

import glob
import io
import json
import os
import tempfile
import threading
import urllib.parse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import BeamIOError

from model_store.fs import is_uri
from pipeline import outputs, run, watch
from pipeline.layout import layout_of
from tests import client_errors
from tests.object_store import Bucket, MemStore

EARLIER, NEW = "20260101T000000Z-earlier", "20260102T000000Z-new"
RERUN = "20260103T000000Z-rerun"
WINDOW = watch.Window(1_767_243_600, 60)  # 2026-01-01 05:00:00-05:01:00Z
# The publishing operations (outputs.py routes every one through these).
OPERATIONS = ("_write_file", "_delete_file", "_move", "_remove_staging")


# Where outputs go: a local folder, and an object store (Beam's GCS and S3
# filesystems: objects listed by prefix, no folders, rename = copy + delete).
ROOTS = ("local", "memstore")


def new_output(root, folder):
    """A fresh output of ``root`` (the store emptied), below the local
    ``folder`` for a local one."""
    if root == "memstore":
        Bucket.reset({})
        return "memstore://acme-lake/vision/imgclass/labels/nightly"
    return os.path.join(folder, "out")


# An outside reader's view of an output, local files or objects (without
# imgclass's or Beam's listing).
def exists(path):
    """Whether the file ``path`` exists (on object stores, the object)."""
    return path in Bucket.objects if is_uri(path) else os.path.exists(path)


def anything_below(folder):
    """Whether the local folder exists, or any object is named below it."""
    if is_uri(folder):
        return any(p.startswith(folder + "/") for p in Bucket.objects)
    return os.path.exists(folder)


def files_below(folder, suffix):
    """The files at any depth below ``folder`` whose names end in
    ``suffix``, sorted."""
    if is_uri(folder):
        return sorted(p for p in Bucket.objects
                      if p.startswith(folder + "/") and p.endswith(suffix))
    return sorted(glob.glob(os.path.join(folder, "**", f"*{suffix}"),
                            recursive=True))


def read_bytes(path):
    if is_uri(path):
        return Bucket.objects[path]
    with open(path, "rb") as handle:
        return handle.read()


def read_json(path):
    return json.loads(read_bytes(path))


def read_paths(path):
    """The ``path`` column of the Parquet file ``path``."""
    return pq.read_table(io.BytesIO(read_bytes(path))).column(
        "path").to_pylist()


def put_bytes(path, data):
    """Writes ``path`` as the pipeline's writers do (an object appears
    whole when closed)."""
    if is_uri(path):
        Bucket.objects[path] = data
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


class Killed(BaseException):
    """The process died here (nothing catches it, as nothing runs after a
    SIGKILL)."""


def stage_run(output, run_id, predicted, failed, skipped=(), partition=None):
    """Writes a run's staging as the pipeline does (predictions in two
    shards); returns ``(RunOutputs, staged, manifest)``."""
    paths = outputs.RunOutputs(output, run_id, partition)
    tables = {
        outputs.PREDICTIONS_DIR: [{"path": p, "label": "1", "run_id": run_id}
                                  for p in predicted],
        outputs.ERRORS_DIR: [{"path": p, "stage": "decode",
                              "run_id": run_id} for p in failed],
        outputs.LEDGER_DIR: [{"path": p, "size": 1, "mtime": 1.0,
                              "model_name": "m", "model_version": "1",
                              "run_id": run_id}
                             for p in [*predicted, *failed]],
        outputs.SKIPPED_DIR: [{"path": p, "reason": "done", "run_id": run_id}
                              for p in skipped],
    }
    for kind, rows in tables.items():
        shards = [rows[:1], rows[1:]] if kind == outputs.PREDICTIONS_DIR \
            else [rows]
        shards = [s for s in shards if s]
        for n, shard in enumerate(shards):
            path = (f"{paths.staging_prefix(kind)}-{n:05d}-of-"
                    f"{len(shards):05d}.parquet")
            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(
                shard, schema=outputs.SCHEMAS[kind]), buffer)
            put_bytes(path, buffer.getvalue())
    staged = paths.staged_files()
    manifest = {"run_id": run_id, "files": paths.destinations(staged),
                "partition": partition, "table": None,
                "layout": layout_of(partition)}
    return paths, staged, manifest


EARLY = {"predicted": ["a1", "a2", "a3"], "failed": ["a4"],
         "partition": "run_date=2026-01-01"}
# A watcher's window (its marker and its hour's _SUCCESS files with it).
WATCHED = {"predicted": ["a1", "a2", "a3"], "failed": ["a4"],
           "partition": watch.hour_partition(WINDOW.start)}
# variant: (earlier run or None, the new run, overwrite?, rows once the new
# run is published)
VARIANTS = {
    "first": (None, {"predicted": ["b1", "b2"], "failed": ["b3"]}, False,
              ["b1", "b2", "b3"]),
    "skip-done": (EARLY, {"predicted": ["b1", "b2"], "failed": ["b3"],
                          "skipped": ["a1", "a2", "a3", "a4"],
                          "partition": "run_date=2026-01-02"}, False,
                  ["a1", "a2", "a3", "a4", "b1", "b2", "b3"]),
    "overwrite": (EARLY, {"predicted": ["a1", "a2", "b1"], "failed": ["b3"]},
                  True, ["a1", "a2", "b1", "b3"]),
    "overwrite-watch": (WATCHED, {"predicted": ["a1", "b1"],
                                  "failed": ["b3"]}, True, ["a1", "b1", "b3"]),
}


def prepare(output, variant):
    earlier, new, overwrite, _ = VARIANTS[variant]
    if earlier:
        paths, staged, manifest = stage_run(output, EARLIER, **earlier)
        paths.publish(staged, manifest, overwrite=False)
    if earlier is WATCHED:  # as the watcher marks its window and hour
        watch._write_marker(output, WINDOW, dict(manifest, counts={
            "predicted": 3, "failed": 1}), WINDOW.end)
        watch._complete_hours(output, WINDOW.start, WINDOW.start + 3600)
    paths, staged, manifest = stage_run(output, NEW, **new)
    # As the run publishes: an error is its one line (RunFailed).
    return lambda: run._publish(paths, staged, manifest, overwrite=overwrite)


class Faults:
    """Wraps the publishing operations; at step ``at``, ``before`` or
    ``after`` it runs, raises ``fault``: "error" (a write: OSError, a full
    disk; a move or a delete: the filesystem's refusal as Beam reports it,
    :func:`refusal`), "kill" (Killed), "torn" (half the bytes land where a
    write goes, as on a store without atomic writes, then Killed) or "copied" (a move's
    copies land and its sources stay, as when GCS's or S3's rename, a copy
    then a delete, is killed between the two; then Killed)."""

    def __init__(self, monkeypatch, output, at=None, when=None, fault=None,
                 *, also=()):
        """``also``: more steps, ``(module, function name)`` pairs (e.g.
        the table commits)."""
        self.output, self.at, self.when, self.fault = output, at, when, fault
        self.steps = []
        # One step, one index: on object stores the ledger merge deletes
        # several files at once (outputs.map_files).
        self._counting = threading.Lock()
        for module, name in [*((outputs, n) for n in OPERATIONS), *also]:
            monkeypatch.setattr(module, name,
                                self._wrap(name, getattr(module, name)))

    def _wrap(self, name, real):
        def step(*args):
            with self._counting:
                index = len(self.steps)
                self.steps.append(self._label(name, args))
            if index == self.at and self.when == "before":
                self._fail(name, args)
            result = real(*args)
            if index == self.at and self.when == "after":
                self._fail(name, args)
            return result
        return step

    def _fail(self, name, args):
        if self.fault == "error" and name in ("_move", "_delete_file"):
            raise refusal(name, args)
        if self.fault == "error":
            raise OSError(28, "No space left on device")
        if self.fault == "torn" and name == "_write_file":
            path, data = args
            put_bytes(path, data[: len(data) // 2])
        if self.fault == "copied" and name == "_move":
            for source, destination in zip(*args):
                Bucket.objects[destination] = Bucket.objects[source]
        raise Killed(f"killed at step {self.at}")

    def _label(self, name, args):
        if name == "_move":
            target = args[1][0]
        elif name == "_remove_staging":
            return "remove-staging"
        elif name.startswith("commit_"):  # tables.commit_delta(spec, name..
            return f"commit:{args[1]}"
        else:
            target = args[0]
        relative = (target[len(self.output) + 1:] if is_uri(target)
                    else os.path.relpath(target, self.output))
        return f"{name.strip('_').split('_')[0]}:{relative}"


def refusal(name, args):
    """What Beam raises when the filesystem refuses a move or a delete: a
    local disk a permission error, an object store a transient error (its
    details keyed by the files, as Beam's local, GCS and S3 filesystems
    report them)."""
    paths = list(zip(*args)) if name == "_move" else list(args)
    operation = "Rename" if name == "_move" else "Delete"
    if not is_uri(args[0][0] if name == "_move" else args[0]):
        cause = OSError(PermissionError(13, "Permission denied"))
        return BeamIOError(f"{operation} operation failed",
                           {path: cause for path in paths})
    return BeamIOError(f"{operation} operation failed",
                       {path: ServiceUnavailable.of(path) for path in paths})


class ServiceUnavailable(Exception):
    """A transient error of GCS, as google-api-core words it: the status,
    the request (the objects' names in it), then the reason."""

    @classmethod
    def of(cls, path):
        """The error of a copy (``path``: ``(source, destination)``, the
        first half of a rename) or of a delete of ``path``."""
        def url(name):
            bucket, _, key = name[len("memstore://"):].partition("/")
            return f"b/{bucket}/o/{urllib.parse.quote(key, safe='')}"
        request = (f"POST https://storage.googleapis.com/storage/v1/"
                   f"{url(path[0])}/rewriteTo/{url(path[1])}"
                   if isinstance(path, tuple) else
                   f"DELETE https://storage.googleapis.com/storage/v1/"
                   f"{url(path)}")
        return cls(f"503 {request}?prettyPrint=false: We encountered an "
                   f"internal error. Please try again.")


def steps_of(variant, root="local"):
    """The operations a variant's publishing makes, found by publishing it
    once without faults."""
    with tempfile.TemporaryDirectory() as folder, \
            pytest.MonkeyPatch.context() as monkeypatch:
        output = new_output(root, folder)
        publish = prepare(output, variant)
        faults = Faults(monkeypatch, output)
        publish()
        return faults.steps


def faults_of(root, label):
    """The faults tried at a step: a kill before and after it; before each
    write, also a write error (a full disk), and before each move and
    delete, the filesystem refusing it (a permission error, a transient
    object-store error). (An error after a step completed leaves what a
    kill there leaves.) On a local disk, before each write, a torn write
    too; an object appears whole when its writer closes (GCS, S3), so a
    killed write there is a kill before it. On an
    object store, before each move, a rename killed between its copy and
    its delete."""
    faults = [("before", "kill"), ("after", "kill")]
    if label.split(":")[0] in ("write", "move", "delete"):
        faults.append(("before", "error"))
    if label.startswith("write:") and root == "local":
        faults.append(("before", "torn"))
    if label.startswith("move:") and root != "local":
        faults.append(("before", "copied"))
    return faults


# Every step of every variant, on each root.
CASES = [(root, variant, index, label, when, fault)
         for root in ROOTS
         for variant in VARIANTS
         for index, label in enumerate(steps_of(variant, root))
         for when, fault in faults_of(root, label)]


def parquet_files(output):
    return sorted(p for kind in outputs.PARTITIONED
                  for p in files_below(f"{output}/{kind}", ".parquet"))


def visible_rows(output):
    """Paths of the rows where readers look, with repeats."""
    return sorted(path for f in parquet_files(output)
                  for path in read_paths(f))


def ledger_rows(output):
    return sorted(path for f in files_below(f"{output}/_ledger", ".parquet")
                  for path in read_paths(f))


def listed_files(output):
    """The Parquet files the published runs' manifests list."""
    listed = []
    for path in files_below(f"{output}/_runs", ".json"):
        manifest = read_json(path)
        listed += [p for kind in outputs.PARTITIONED
                   for p in manifest["files"][kind]]
    return sorted(listed)


def states(variant):
    earlier, _, _, after = VARIANTS[variant]
    before = sorted(earlier["predicted"] + earlier["failed"]) if earlier \
        else []
    return before, sorted(after)


def layouts(variant):
    """The layouts recorded before and after the new run."""
    earlier, new, _, _ = VARIANTS[variant]
    return (earlier and layout_of(earlier.get("partition")),
            layout_of(new.get("partition")))


def recorded_layout(output):
    return read_json(f"{output}/_layout.json")


def earlier_leftovers(output):
    """What an --overwrite left of the earlier runs besides their files: a
    watcher's window markers and (locally) the folders their files were
    in, left empty (a fresh output has neither)."""
    left = files_below(f"{output}/{outputs.WINDOWS_DIR}", ".json")
    if not is_uri(output):
        left += [folder for folder, subfolders, files in os.walk(output)
                 if not subfolders and not files]
    return left


def check_published(output, rows, layout):
    """A published output: ``_SUCCESS``; exactly ``rows`` (with repeats,
    sorted); the manifests
    list exactly the files readers see; the ledger matches (else
    --skip-done would skip or redo files); ``_layout.json`` records the
    ``layout`` of the last published run."""
    assert exists(f"{output}/_SUCCESS")
    assert recorded_layout(output) == {"layout": layout,
                                       "table_format": "parquet"}
    assert visible_rows(output) == rows
    assert listed_files(output) == parquet_files(output)
    assert ledger_rows(output) == rows


@pytest.mark.parametrize(
    "root,variant,index,label,when,fault", CASES,
    ids=[f"{r}-{v}-{i:02d}-{label}-{w}-{f}" for r, v, i, label, w, f in CASES])
def test_a_fault_at_any_publishing_step_loses_and_duplicates_nothing(
        tmp_path, monkeypatch, root, variant, index, label, when, fault):
    output = new_output(root, str(tmp_path))
    publish = prepare(output, variant)
    Faults(monkeypatch, output, at=index, when=when, fault=fault)
    with pytest.raises((run.RunFailed, Killed)) as failed:
        publish()
    monkeypatch.undo()
    if fault == "error":
        check_error_line(str(failed.value), output, label)
    before, after = states(variant)

    # An outside reader now: _SUCCESS vouches for one whole state.
    if exists(f"{output}/_SUCCESS"):
        assert visible_rows(output) in (before, after)
        assert listed_files(output) == parquet_files(output)

    # The next run on the output recovers first.
    recovered = outputs.recover(output)
    durable = index > 0 or when == "after"
    record_gone = f"delete:_staging/{NEW}/_publish.json"
    finished = label == "remove-staging" or (label == record_gone
                                             and when == "after")
    assert recovered == ([NEW] if durable and not finished else [])
    layout_before, layout_after = layouts(variant)
    if durable or before:
        check_published(output, after if durable else before,
                        layout_after if durable else layout_before)
    else:
        assert visible_rows(output) == [] and not exists(
            f"{output}/_SUCCESS")
        assert not exists(f"{output}/_layout.json")
    assert not anything_below(f"{output}/_staging")
    latest = read_json(f"{output}/_manifest.json") \
        if durable or before else None
    if latest:
        assert latest["run_id"] == (NEW if durable else EARLIER)
    if durable and VARIANTS[variant][2]:  # an --overwrite published
        assert earlier_leftovers(output) == []
    rerun(output, variant)


def check_error_line(message, output, label):
    """A failed publishing is one line: the run, the reason the filesystem
    gave and the way out (the next run)."""
    (line,) = message.splitlines()
    reason = ("No space left on device"
              if not label.startswith(("move:", "delete:"))
              else "internal error. Please try again" if is_uri(output)
              else "Permission denied")
    assert line.startswith(f"run {NEW}: publishing failed (") and \
        reason in line and f"the next run on {output} completes it" in line


def rerun(output, variant):
    """The same command again, as its run would publish, after recovery:
    every file is then published exactly once."""
    _, new, overwrite, after = VARIANTS[variant]
    if variant == "first":  # plain: refused when the output holds a run
        try:
            outputs.check_earlier_run(output, overwrite=False,
                                      incremental=False)
        except outputs.ConfigError:
            assert visible_rows(output) == sorted(after)
            return
        files = {"predicted": new["predicted"], "failed": new["failed"]}
    elif variant == "skip-done":  # classifies what the ledger lacks
        done = set(ledger_rows(output))
        files = {kind: [p for p in EARLY[kind] + new[kind] if p not in done]
                 for kind in ("predicted", "failed")}
    else:  # --overwrite: the whole run again
        files = {"predicted": new["predicted"], "failed": new["failed"]}
    partition = new.get("partition")
    paths, staged, manifest = stage_run(output, RERUN, **files,
                                        partition=partition)
    paths.publish(staged, manifest, overwrite=overwrite)
    check_published(output, sorted(after), layouts(variant)[1])
    if overwrite:
        assert earlier_leftovers(output) == []


@pytest.mark.parametrize("root", ROOTS)
def test_the_publish_record_is_the_first_step_and_success_the_last_write(
        root):
    for variant in VARIANTS:
        steps = steps_of(variant, root)
        assert steps[0] == f"write:_staging/{NEW}/_publish.json"
        # The record is deleted on its own (not quietly), then the rest.
        assert steps[-3:] == ["write:_SUCCESS",
                              f"delete:_staging/{NEW}/_publish.json",
                              "remove-staging"]
        # Readers trusting _SUCCESS: it goes before any file moves.
        assert steps[1] == "delete:_SUCCESS" or variant == "first"
        moves = [i for i, s in enumerate(steps) if s.startswith("move:")]
        deletes = [i for i, s in enumerate(steps) if s.startswith("delete:")
                   and not s.endswith("/_publish.json")]
        assert moves and all(d < min(moves) for d in deletes)
        # The layout is a step of publishing, recorded before any file of
        # the run becomes visible (and redone by recovery).
        assert steps.index("write:_layout.json") < min(moves)
    overwrite = steps_of("overwrite", root)
    assert f"delete:_runs/{EARLIER}.json" in overwrite
    assert any(s.startswith("delete:predictions/run_date=2026-01-01/part-")
               for s in overwrite)
    # A watcher's marker goes with its run's files, before any move.
    steps = steps_of("overwrite-watch", root)
    marker = f"delete:{outputs.WINDOWS_DIR}/{WINDOW.marker_name}"
    assert steps.index(marker) < min(i for i, s in enumerate(steps)
                                     if s.startswith("move:"))


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("damage", [b"", b'{"sha256": "', b"\x00" * 64,
                                    "altered"])
def test_a_torn_or_altered_record_means_the_run_never_started_publishing(
        tmp_path, damage, root):
    output = new_output(root, str(tmp_path))
    paths, staged, manifest = stage_run(output, EARLIER, **EARLY)
    paths.publish(staged, manifest, overwrite=False)
    paths, staged, manifest = stage_run(output, NEW, predicted=["b1"],
                                        failed=[])
    record = f"{paths.staging}/{outputs.PUBLISH}"
    if damage == "altered":  # one byte changed: the checksum disagrees
        data = outputs._record_bytes({"moves": [], "deletes": [],
                                      "manifest": manifest})
        damage = data.replace(NEW.encode(), NEW.upper().encode(), 1)
    put_bytes(record, damage)
    assert outputs.recover(output) == []
    check_published(output, sorted(EARLY["predicted"] + EARLY["failed"]),
                    "run_date")
    assert not anything_below(f"{output}/_staging")


def test_a_record_that_cannot_be_deleted_is_not_completed_again_later(
        tmp_path, monkeypatch):
    """Deleting the publish record fails (twice): publishing says so, and
    the next recovery fails too rather than leaving it pending; once it
    can, the record goes, and a newer run's manifest is never rewritten to
    the older run's (as every later recovery did while it stayed)."""
    output = str(tmp_path / "out")
    delete = outputs._delete_file

    def refused(path):
        if path.endswith(outputs.PUBLISH):
            raise OSError(13, "Permission denied")
        delete(path)

    monkeypatch.setattr(outputs, "_delete_file", refused)
    paths, staged, manifest = stage_run(output, EARLIER, **EARLY)
    with pytest.raises(OSError):
        paths.publish(staged, manifest, overwrite=False)
    with pytest.raises(OSError):
        outputs.recover(output)
    monkeypatch.setattr(outputs, "_delete_file", delete)
    assert outputs.recover(output) == [EARLIER]
    paths, staged, manifest = stage_run(output, NEW, predicted=["b1"],
                                        failed=[])
    paths.publish(staged, manifest, overwrite=False)
    assert outputs.recover(output) == []
    with open(os.path.join(output, outputs.MANIFEST)) as handle:
        assert json.load(handle)["run_id"] == NEW


@pytest.mark.parametrize("error", [
    OSError("503 Service Unavailable"),
    client_errors.gcs_unavailable("GET", "gs://b/_staging/run/_publish.json")],
    ids=["OSError", "ServiceUnavailable"])
def test_a_publish_record_the_store_fails_to_read_is_not_taken_for_torn(
        monkeypatch, error):
    """A run killed while publishing leaves its record; when the next run's
    recovery cannot read it (an object store's 503), it stops in one line
    with the staging kept (taken for a torn record, the staging was
    discarded with the run part published), and the run after it
    completes the publishing exactly once."""
    output = new_output("memstore", None)
    publish = prepare(output, "skip-done")
    with pytest.MonkeyPatch.context() as faulty:  # killed at its first move
        Faults(faulty, output, at=3, when="before", fault="kill")
        with pytest.raises(Killed):
            publish()
    real = MemStore.open

    def failing(self, path, *args, **kwargs):
        if path.endswith(f"/{outputs.PUBLISH}"):
            raise error
        return real(self, path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as down:
        down.setattr(MemStore, "open", failing)
        with pytest.raises(run.RunFailed) as failed:
            run.recover(output, io.StringIO())
    (line,) = str(failed.value).splitlines()
    assert line.startswith(f"could not complete the interrupted publishing "
                           f"in {output}: {type(error).__name__}: 503 ")
    assert outputs.pending_publishes(output) == [f"{output}/_staging/{NEW}"]
    log = io.StringIO()
    run.recover(output, log)
    check_published(output, states("skip-done")[1], "run_date")
    assert NEW in log.getvalue()


def unavailable(store, prefix):
    """An object store that answers no listing (an outage, or listing
    permission revoked): Beam reports it as a failed match."""
    raise OSError("503 Service Unavailable")
    yield  # a generator, as listings are


@pytest.mark.parametrize("pending", [True, False],
                         ids=["publishing-pending", "nothing-pending"])
def test_a_store_that_cannot_list_stops_the_next_runs_recovery_in_one_line(
        monkeypatch, pending):
    """Recovery lists the output first; when the store cannot list, the
    run stops with the one line that says so and how to get out, and the
    run after it, once the store lists again, recovers exactly once."""
    output = new_output("memstore", None)
    publish = prepare(output, "skip-done")
    if pending:  # killed at its first move
        with pytest.MonkeyPatch.context() as faulty:
            Faults(faulty, output, at=3, when="before", fault="kill")
            with pytest.raises(Killed):
                publish()
    with pytest.MonkeyPatch.context() as down:
        down.setattr(MemStore, "_list", unavailable)
        with pytest.raises(run.RunFailed) as failed:
            run.recover(output, io.StringIO())
    (line,) = str(failed.value).splitlines()
    assert line.startswith(f"could not complete the interrupted publishing "
                           f"in {output}: BeamIOError: ")
    assert "503 Service Unavailable" in line and "run again" in line
    assert line.endswith(f"move {output}/_staging out of {output} (files "
                         f"it already moved stay, listed in its "
                         f"{outputs.PUBLISH})")
    log = io.StringIO()
    run.recover(output, log)
    before, after = states("skip-done")
    check_published(output, after if pending else before, "run_date")
    assert (NEW in log.getvalue()) == pending
