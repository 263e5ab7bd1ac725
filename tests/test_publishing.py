"""Exactly-once publishing under faults: a write error, a kill or a torn
write before and after EVERY filesystem operation publishing makes, then the
recovery the next run does and that run (plain, --skip-done or --overwrite,
as the variant); an outside reader (pyarrow) checks that no run is lost,
none is duplicated, and that ``_SUCCESS`` vouches for the files.

The runs here are staged by hand (Parquet files with the contract's schemas,
as the pipeline writes them), so each of the few hundred cases takes
milliseconds; tests/test_exactly_once.py does the same through the command
line with real pipelines at the steps that matter most.
"""

import glob
import json
import os
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import outputs

EARLIER, NEW = "20260101T000000Z-earlier", "20260102T000000Z-new"
RERUN = "20260103T000000Z-rerun"
# The publishing operations (outputs.py routes every one through these).
OPERATIONS = ("_write_file", "_delete_file", "_move", "_remove_staging")


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
            os.makedirs(os.path.dirname(path), exist_ok=True)
            pq.write_table(pa.Table.from_pylist(
                shard, schema=outputs.SCHEMAS[kind]), path)
    staged = paths.staged_files()
    manifest = {"run_id": run_id, "files": paths.destinations(staged),
                "partition": partition, "table": None,
                "layout": "run_date" if partition else "none"}
    return paths, staged, manifest


EARLY = {"predicted": ["a1", "a2", "a3"], "failed": ["a4"],
         "partition": "run_date=2026-01-01"}
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
}


def prepare(output, variant):
    earlier, new, overwrite, _ = VARIANTS[variant]
    if earlier:
        paths, staged, manifest = stage_run(output, EARLIER, **earlier)
        paths.publish(staged, manifest, overwrite=False)
    paths, staged, manifest = stage_run(output, NEW, **new)
    return lambda: paths.publish(staged, manifest, overwrite=overwrite)


class Faults:
    """Wraps the publishing operations; at step ``at``, ``before`` or
    ``after`` it runs, raises ``fault``: "error" (OSError, a full disk),
    "kill" (Killed) or "torn" (half the bytes land where a write goes, as
    on a store without atomic writes, then Killed)."""

    def __init__(self, monkeypatch, output, at=None, when=None, fault=None):
        self.output, self.at, self.when, self.fault = output, at, when, fault
        self.steps = []
        for name in OPERATIONS:
            monkeypatch.setattr(outputs, name,
                                self._wrap(name, getattr(outputs, name)))

    def _wrap(self, name, real):
        def step(*args):
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
        if self.fault == "error":
            raise OSError(28, "No space left on device")
        if self.fault == "torn" and name == "_write_file":
            path, data = args
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(data[: len(data) // 2])
        raise Killed(f"killed at step {self.at}")

    def _label(self, name, args):
        if name == "_move":
            target = args[1][0]
        elif name == "_remove_staging":
            return "remove-staging"
        else:
            target = args[0]
        relative = os.path.relpath(target, self.output)
        return f"{name.strip('_').split('_')[0]}:{relative}"


def steps_of(variant):
    """The operations a variant's publishing makes, found by publishing it
    once without faults."""
    with tempfile.TemporaryDirectory() as folder, \
            pytest.MonkeyPatch.context() as monkeypatch:
        output = os.path.join(folder, "out")
        publish = prepare(output, variant)
        faults = Faults(monkeypatch, output)
        publish()
        return faults.steps


# Every step of every variant: a kill before and after it; before each
# write, also a write error (a full disk) and a torn write. (A write error
# after a step completed leaves what a kill there leaves.)
CASES = [(variant, index, label, when, fault)
         for variant in VARIANTS
         for index, label in enumerate(steps_of(variant))
         for when, fault in (("before", "kill"), ("after", "kill"),
                             ("before", "error"), ("before", "torn"))
         if fault == "kill" or label.startswith("write:")]


def parquet_files(output):
    return sorted(p for kind in outputs.PARTITIONED
                  for p in glob.glob(os.path.join(output, kind, "**",
                                                  "*.parquet"),
                                     recursive=True))


def visible_rows(output):
    """Paths of the rows where readers look, with repeats."""
    return sorted(path for f in parquet_files(output)
                  for path in pq.read_table(f).column("path").to_pylist())


def ledger_rows(output):
    return sorted(path for f in outputs.ledger_files(output)
                  for path in pq.read_table(f).column("path").to_pylist())


def listed_files(output):
    """The Parquet files the published runs' manifests list."""
    listed = []
    for path in glob.glob(os.path.join(output, "_runs", "*.json")):
        with open(path) as handle:
            manifest = json.load(handle)
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
    return (earlier and ("run_date" if earlier.get("partition") else "none"),
            "run_date" if new.get("partition") else "none")


def recorded_layout(output):
    with open(os.path.join(output, "_layout.json")) as handle:
        return json.load(handle)


def check_published(output, rows, layout):
    """A published output: ``_SUCCESS``; exactly ``rows`` (with repeats,
    sorted); the manifests
    list exactly the files readers see; the ledger matches (else
    --skip-done would skip or redo files); ``_layout.json`` records the
    ``layout`` of the last published run."""
    assert os.path.exists(os.path.join(output, "_SUCCESS"))
    assert recorded_layout(output) == {"layout": layout,
                                       "table_format": "parquet"}
    assert visible_rows(output) == rows
    assert listed_files(output) == parquet_files(output)
    assert ledger_rows(output) == rows


@pytest.mark.parametrize(
    "variant,index,label,when,fault", CASES,
    ids=[f"{v}-{i:02d}-{label}-{w}-{f}" for v, i, label, w, f in CASES])
def test_a_fault_at_any_publishing_step_loses_and_duplicates_nothing(
        tmp_path, monkeypatch, variant, index, label, when, fault):
    output = str(tmp_path / "out")
    publish = prepare(output, variant)
    Faults(monkeypatch, output, at=index, when=when, fault=fault)
    with pytest.raises((OSError, Killed)):
        publish()
    monkeypatch.undo()
    before, after = states(variant)

    # An outside reader now: _SUCCESS vouches for one whole state.
    if os.path.exists(os.path.join(output, "_SUCCESS")):
        assert visible_rows(output) in (before, after)
        assert listed_files(output) == parquet_files(output)

    # The next run on the output recovers first.
    recovered = outputs.recover(output)
    durable = index > 0 or when == "after"
    finished = label == "remove-staging" and when == "after"
    assert recovered == ([NEW] if durable and not finished else [])
    layout_before, layout_after = layouts(variant)
    if durable or before:
        check_published(output, after if durable else before,
                        layout_after if durable else layout_before)
    else:
        assert visible_rows(output) == [] and not os.path.exists(
            os.path.join(output, "_SUCCESS"))
        assert not os.path.exists(os.path.join(output, "_layout.json"))
    assert not os.path.exists(os.path.join(output, "_staging"))
    latest = json.load(open(os.path.join(output, "_manifest.json"))) \
        if durable or before else None
    if latest:
        assert latest["run_id"] == (NEW if durable else EARLIER)
    rerun(output, variant)


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


def test_the_publish_record_is_the_first_step_and_success_the_last_write():
    for variant in VARIANTS:
        steps = steps_of(variant)
        assert steps[0] == f"write:_staging/{NEW}/_publish.json"
        assert steps[-2:] == ["write:_SUCCESS", "remove-staging"]
        # Readers trusting _SUCCESS: it goes before any file moves.
        assert steps[1] == "delete:_SUCCESS" or variant == "first"
        moves = [i for i, s in enumerate(steps) if s.startswith("move:")]
        deletes = [i for i, s in enumerate(steps) if s.startswith("delete:")]
        assert moves and all(d < min(moves) for d in deletes)
        # The layout is a step of publishing, recorded before any file of
        # the run becomes visible (and redone by recovery).
        assert steps.index("write:_layout.json") < min(moves)
    overwrite = steps_of("overwrite")
    assert f"delete:_runs/{EARLIER}.json" in overwrite
    assert any(s.startswith("delete:predictions/run_date=2026-01-01/part-")
               for s in overwrite)


@pytest.mark.parametrize("damage", [b"", b'{"sha256": "', b"\x00" * 64,
                                    "altered"])
def test_a_torn_or_altered_record_means_the_run_never_started_publishing(
        tmp_path, damage):
    output = str(tmp_path / "out")
    paths, staged, manifest = stage_run(output, EARLIER, **EARLY)
    paths.publish(staged, manifest, overwrite=False)
    paths, staged, manifest = stage_run(output, NEW, predicted=["b1"],
                                        failed=[])
    record = os.path.join(paths.staging, outputs.PUBLISH)
    if damage == "altered":  # one byte changed: the checksum disagrees
        data = outputs._record_bytes({"moves": [], "deletes": [],
                                      "manifest": manifest})
        damage = data.replace(NEW.encode(), NEW.upper().encode(), 1)
    with open(record, "wb") as handle:
        handle.write(damage)
    assert outputs.recover(output) == []
    check_published(output, sorted(EARLY["predicted"] + EARLY["failed"]),
                    "run_date")
    assert not os.path.exists(os.path.join(output, "_staging"))
