"""Delta Lake and Iceberg commits of already written Parquet files
(pipeline/tables.py), read back with the formats' own readers."""

import datetime
import json
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model_store.errors import ConfigError
from pipeline import outputs, run, tables
from tests import test_publishing as publishing
from transforms import schema

PARTITION = "run_date=2026-11-26"


def prediction_rows(run_id, count, *, embedding=None):
    now = datetime.datetime(2026, 11, 26, 3, tzinfo=datetime.timezone.utc)
    columns = {
        "path": [f"/bucket/{run_id}/{i}.png" for i in range(count)],
        "label": ["7"] * count, "class_id": [7] * count,
        "confidence": [0.5] * count,
        "top_k": [[{"label": "7", "score": 0.5}]] * count,
        "model_name": ["digits-cnn"] * count, "model_version": ["1"] * count,
        "width": [8] * count, "height": [8] * count,
        "run_id": [run_id] * count, "processed_at": [now] * count}
    table_schema = schema.PREDICTIONS
    if embedding is not None:
        columns["embedding"] = [list(np.full(embedding, i, np.float32))
                                for i in range(count)]
        table_schema = table_schema.append(
            pa.field("embedding", pa.list_(pa.float32())))
    return pa.Table.from_pydict(columns, schema=table_schema)


def stage_run(output, run_id, counts, *, embedding=None):
    """Writes a run's files where publishing moves them; ``(files,
    manifest)`` as publishing passes them to the commit."""
    folder = os.path.join(output, "predictions", PARTITION)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for shard, count in enumerate(counts):
        path = os.path.join(folder, f"part-{run_id}-{shard:05d}-of-"
                                    f"{len(counts):05d}.parquet")
        pq.write_table(prediction_rows(run_id, count, embedding=embedding),
                       path)
        paths.append(path)
    manifest = {"run_id": run_id, "partition": PARTITION,
                "model": {"name": "digits-cnn", "version": "1"},
                "counts": {"matched": sum(counts), "predicted": sum(counts)}}
    return {"predictions": paths}, manifest


def spec_for(table_format, output):
    return tables.table_spec(table_format, output, partition=PARTITION)


def read_back(table_format, output):
    """The table's current snapshot, through the format's own reader."""
    if table_format == "delta":
        from deltalake import DeltaTable
        return DeltaTable(os.path.join(output, "predictions")) \
            .to_pyarrow_table()
    table = tables.iceberg_table(spec_for("iceberg", output), "predictions",
                                 None)
    return table.scan().to_arrow()


def run_ids(table_format, output):
    return sorted(read_back(table_format, output).column("run_id")
                  .to_pylist())


FORMATS = ["delta", "iceberg"]


@pytest.mark.parametrize("table_format", FORMATS)
def test_a_run_is_committed_once_however_often_publishing_is_repeated(
        tmp_path, table_format):
    output = str(tmp_path)
    spec = spec_for(table_format, output)
    files, manifest = stage_run(output, "run1", [3, 4])
    assert tables.commit_run(spec, files, manifest) == ["predictions"]
    assert tables.commit_run(spec, files, manifest) == []  # recovery
    files2, manifest2 = stage_run(output, "run2", [5])
    assert tables.commit_run(spec, files2, manifest2) == ["predictions"]
    assert tables.commit_run(spec, files2, manifest2) == []
    assert run_ids(table_format, output) == ["run1"] * 7 + ["run2"] * 5


def test_delta_history_time_travel_and_readers(tmp_path):
    from deltalake import DeltaTable
    output = str(tmp_path)
    spec = spec_for("delta", output)
    for run_id, counts in (("run1", [3]), ("run2", [2, 2])):
        tables.commit_run(spec, *stage_run(output, run_id, counts))
    root = os.path.join(output, "predictions")
    table = DeltaTable(root)
    assert table.version() == 1
    history = table.history()  # newest first
    assert [h["imgclass.run_id"] for h in history] == ["run2", "run1"]
    assert history[0]["imgclass.model"] == "digits-cnn@1"
    assert history[0]["imgclass.table_rows"] == "4"
    assert table.metadata().partition_columns == ["run_date"]
    current = table.to_pyarrow_table()
    assert current.num_rows == 7
    assert set(current.column("run_date").to_pylist()) == {
        datetime.date(2026, 11, 26)}
    assert current.schema.field("top_k").type.value_type == \
        schema.TOP_K_ENTRY
    table.load_as_version(0)  # time travel: before run2
    assert table.to_pyarrow_table().column("run_id").to_pylist() == \
        ["run1"] * 3
    polars = pytest.importorskip("polars")
    frame = polars.read_delta(root)
    assert frame.height == 7
    assert frame.filter(polars.col("run_id") == "run2").height == 4


def test_iceberg_snapshots_carry_the_run(tmp_path):
    output = str(tmp_path)
    spec = spec_for("iceberg", output)
    for run_id, counts in (("run1", [3]), ("run2", [2, 2])):
        tables.commit_run(spec, *stage_run(output, run_id, counts))
    assert spec.catalog == (f"sqlite:///{output}/{tables.CATALOG_FILE}")
    table = tables.iceberg_table(spec, "predictions", None)
    snapshots = table.snapshots()
    assert [s.summary[tables.RUN_ID_KEY] for s in snapshots] == [
        "run1", "run2"]
    assert [s.summary["added-records"] for s in snapshots] == ["3", "4"]
    assert table.scan().to_arrow().num_rows == 7
    earlier = table.scan(snapshot_id=snapshots[0].snapshot_id).to_arrow()
    assert earlier.column("run_id").to_pylist() == ["run1"] * 3
    assert table.location() == f"file://{output}/predictions" or \
        table.location() == os.path.join(output, "predictions")


def test_iceberg_runs_manifests_are_merged_so_scans_read_few(tmp_path,
                                                            monkeypatch):
    # Merging starts at 100 manifests by default; 3 keeps the test short.
    monkeypatch.setattr(tables, "ICEBERG_PROPERTIES", {
        **tables.ICEBERG_PROPERTIES, "commit.manifest.min-count-to-merge": "3"})
    output = str(tmp_path)
    spec = spec_for("iceberg", output)
    for n in range(6):
        tables.commit_run(spec, *stage_run(output, f"run{n}", [2]))
    table = tables.iceberg_table(spec, "predictions", None)
    manifests = table.current_snapshot().manifests(table.io)
    assert len(manifests) < 3  # one per run without merging: 6
    assert table.scan().to_arrow().num_rows == 12
    assert [s.summary[tables.RUN_ID_KEY] for s in table.snapshots()] == [
        f"run{n}" for n in range(6)]


def test_an_iceberg_table_made_without_merging_gains_it_at_its_next_run(
        tmp_path, monkeypatch):
    output = str(tmp_path)
    spec = spec_for("iceberg", output)
    with monkeypatch.context() as plain:  # as an earlier release made it
        plain.setattr(tables, "ICEBERG_PROPERTIES", {})
        tables.commit_run(spec, *stage_run(output, "old", [2]))
    table = tables.iceberg_table(spec, "predictions", None)
    assert "commit.manifest-merge.enabled" not in table.properties
    tables.commit_run(spec, *stage_run(output, "new", [3]))
    table = tables.iceberg_table(spec, "predictions", None)
    assert table.properties["commit.manifest-merge.enabled"] == "true"
    assert table.scan().to_arrow().num_rows == 5


@pytest.mark.parametrize("table_format", FORMATS)
def test_an_old_table_gains_the_embedding_column(tmp_path, table_format):
    output = str(tmp_path)
    spec = spec_for(table_format, output)
    tables.commit_run(spec, *stage_run(output, "old", [2]))
    tables.commit_run(spec, *stage_run(output, "new", [3], embedding=4))
    table = read_back(table_format, output).sort_by("run_id")
    assert table.num_rows == 5
    embeddings = table.column("embedding").to_pylist()
    assert embeddings[:3] == [[0.0] * 4, [1.0] * 4, [2.0] * 4]  # "new"
    assert embeddings[3:] == [None, None]  # "old" files lack the column
    assert pa.types.is_floating(table.schema.field("embedding")
                                .type.value_type)


@pytest.mark.parametrize("table_format", FORMATS)
@pytest.mark.parametrize("attempt", range(3))  # the race is not always lost
def test_concurrent_commits_lose_no_run(tmp_path, table_format, attempt):
    output = str(tmp_path)
    spec = spec_for(table_format, output)
    runs = [stage_run(output, f"run{n}", [n + 1]) for n in range(4)]
    start = threading.Barrier(len(runs))
    failures = []

    def commit(files, manifest):
        start.wait()
        try:
            tables.commit_run(spec, files, manifest)
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(error)

    # All four create the missing table and append at the same moment.
    threads = [threading.Thread(target=commit, args=run) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert run_ids(table_format, output) == sorted(
        f"run{n}" for n in range(4) for _ in range(n + 1))
    # One commit per run, and the table created once (one table id).
    if table_format == "delta":
        from deltalake import DeltaTable
        history = DeltaTable(os.path.join(output, "predictions")).history()
        assert [h["operation"] for h in history].count("CREATE TABLE") == 1
        committed = [h[tables.RUN_ID_KEY] for h in history]
    else:
        table = tables.iceberg_table(spec, "predictions", None)
        committed = [s.summary[tables.RUN_ID_KEY] for s in table.snapshots()]
    assert sorted(committed) == [f"run{n}" for n in range(4)]


def test_options_are_checked_before_any_work(tmp_path):
    assert tables.table_spec("parquet", str(tmp_path)) is None
    with pytest.raises(ConfigError, match="--table-format must be one of"):
        tables.table_spec("hudi", str(tmp_path))
    with pytest.raises(ConfigError, match="only apply with --table-format "
                                          "iceberg"):
        tables.table_spec("delta", str(tmp_path), namespace="other")
    with pytest.raises(ConfigError, match="partitions by run_date only"):
        tables.table_spec("delta", str(tmp_path), partition="hour=13")
    with pytest.raises(ConfigError, match="SQLAlchemy URI"):
        tables.table_spec("iceberg", str(tmp_path), catalog="catalog.db")
    with pytest.raises(ConfigError, match="give --iceberg-catalog"):
        tables.table_spec("iceberg", "gs://bucket/out")



def delta_log(output):
    """Each commit's actions, oldest first, as the Delta log holds them."""
    log = os.path.join(output, "predictions", "_delta_log")
    return [[json.loads(line) for line in open(os.path.join(log, name))]
            for name in sorted(os.listdir(log)) if name.endswith(".json")]


def test_a_delta_run_that_adds_a_column_names_itself_in_every_commit(
        tmp_path, monkeypatch):
    """deltalake appends files under the table's schema, so the column is
    added by a commit of its own: it carries the run's commit info, and
    only the commit adding the files marks the run as committed, so a run
    stopped between the two is still committed once."""
    from deltalake import DeltaTable
    output = str(tmp_path)
    spec = spec_for("delta", output)
    tables.commit_run(spec, *stage_run(output, "old", [2]))
    files, manifest = stage_run(output, "new", [3], embedding=4)
    real_write = DeltaTable.create_write_transaction
    monkeypatch.setattr(DeltaTable, "create_write_transaction",
                        lambda *a, **k: (_ for _ in ()).throw(
                            SystemExit("killed after the schema commit")))
    with pytest.raises(SystemExit):
        tables.commit_run(spec, files, manifest)
    monkeypatch.setattr(DeltaTable, "create_write_transaction", real_write)
    assert tables.commit_run(spec, files, manifest) == ["predictions"]
    assert tables.commit_run(spec, files, manifest) == []  # recognised
    commits = delta_log(output)
    infos = [next(a["commitInfo"] for a in c if "commitInfo" in a)
             for c in commits]
    assert [i[tables.RUN_ID_KEY] for i in infos] == ["old", "new", "new"]
    assert [i["operation"] for i in infos[1:]] == ["ADD COLUMN", "WRITE"]
    assert infos[1]["imgclass.model"] == infos[2]["imgclass.model"]
    marks = [[a["txn"]["appId"] for a in c if "txn" in a] for c in commits]
    assert marks == [["imgclass/old"], [], ["imgclass/new"]]
    table = DeltaTable(os.path.join(output, "predictions"))
    assert table.to_pyarrow_table().num_rows == 5


# --- a kill or an error at a table commit while publishing -----------------

def table_run(output, table_format, run_id, **files):
    """A run staged by hand (tests/test_publishing.py) whose publishing
    commits to ``table_format`` tables; ``(RunOutputs, staged, manifest)``."""
    paths, staged, manifest = publishing.stage_run(output, run_id, **files)
    spec = tables.table_spec(table_format, output,
                             partition=files.get("partition"))
    predicted, failed = len(files["predicted"]), len(files["failed"])
    manifest.update(table=spec.to_dict(),
                    model={"name": "digits-cnn", "version": "1"},
                    counts={"matched": predicted + failed,
                            "predicted": predicted, "failed": failed})
    return paths, staged, manifest


def table_steps(table_format, variant):
    """The steps of the variant's publishing, the table commits among
    them, found by publishing it once without faults."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder, \
            pytest.MonkeyPatch.context() as monkeypatch:
        output = os.path.join(folder, "out")
        publish = prepare_table_run(output, table_format, variant)
        faults = publishing.Faults(monkeypatch, output,
                                   also=COMMITS[table_format])
        publish()
        return faults.steps


def prepare_table_run(output, table_format, variant):
    """Publishes the variant's earlier run (if any); returns publishing
    the new one as the run does (outputs.py and run.py)."""
    earlier, new, overwrite, _ = publishing.VARIANTS[variant]
    if earlier:
        paths, staged, manifest = table_run(output, table_format,
                                            publishing.EARLIER, **earlier)
        paths.publish(staged, manifest, overwrite=False)
    paths, staged, manifest = table_run(output, table_format,
                                        publishing.NEW, **new)
    return lambda: run._publish(paths, staged, manifest,
                                overwrite=overwrite)


def table_rows(table_format, output, name):
    """``(paths, run ids of its commits)`` of the table ``name``, read with
    the format's own library (not imgclass's): what a lake's readers see;
    no rows and no commits before the table is made."""
    if table_format == "delta":
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError
        try:
            table = DeltaTable(os.path.join(output, name))
        except TableNotFoundError:
            return [], []
        rows = table.to_pyarrow_table(columns=["path"])
        commits = [h.get(tables.RUN_ID_KEY) for h in table.history()
                   if h["operation"] != "ADD COLUMN"]
    else:
        from pyiceberg.catalog.sql import SqlCatalog
        from pyiceberg.exceptions import NoSuchTableError
        catalog = SqlCatalog("imgclass", uri=f"sqlite:///{output}/"
                             f"{tables.CATALOG_FILE}")  # as the README
        try:
            table = catalog.load_table(f"imgclass.{name}")
        except NoSuchTableError:
            return [], []
        rows = table.scan(selected_fields=("path",)).to_arrow()
        commits = [s.summary[tables.RUN_ID_KEY] for s in table.snapshots()]
    return sorted(rows.column("path").to_pylist()), sorted(commits)


# Which rows each table holds, before and once the new run is published.
def table_states(variant, name):
    earlier, new, _, _ = publishing.VARIANTS[variant]
    key = "predicted" if name == "predictions" else "failed"
    before = sorted(earlier[key]) if earlier else []
    runs_before = [publishing.EARLIER] if earlier else []
    return (before, runs_before), (sorted(before + new[key]),
                                   sorted(runs_before + [publishing.NEW]))


COMMITS = {"delta": [(tables, "commit_delta")],
           "iceberg": [(tables, "commit_iceberg")]}
TABLE_VARIANTS = ("first", "skip-done")  # --overwrite refuses tables
# At each table's commit (a run commits predictions, then errors): a kill
# before and after it, and an error before it (a full disk under the Delta
# log, a catalog that refuses). A kill before the first commit leaves what
# a kill after the last move leaves, and one after the last commit what a
# kill before writing _runs/ leaves: the publishing matrix's states.
TABLE_CASES = [(table_format, variant, index, label, when, fault)
               for table_format in FORMATS for variant in TABLE_VARIANTS
               for index, label in enumerate(table_steps(table_format,
                                                         variant))
               if label.startswith("commit:")
               for when, fault in (("before", "kill"), ("after", "kill"),
                                   ("before", "error"))]


@pytest.mark.parametrize(
    "table_format,variant,index,label,when,fault", TABLE_CASES,
    ids=[f"{t}-{v}-{label}-{w}-{f}" for t, v, _, label, w, f in TABLE_CASES])
def test_a_fault_at_a_table_commit_loses_and_doubles_no_row(
        tmp_path, monkeypatch, table_format, variant, index, label, when,
        fault):
    output = str(tmp_path / "out")
    publish = prepare_table_run(output, table_format, variant)
    publishing.Faults(monkeypatch, output, at=index, when=when, fault=fault,
                      also=COMMITS[table_format])
    with pytest.raises((run.RunFailed, publishing.Killed)) as failed:
        publish()
    monkeypatch.undo()
    if fault == "error":
        publishing.check_error_line(str(failed.value), output, label)
    # Meanwhile each table holds the earlier runs, or the new one too.
    for name in outputs.PARTITIONED:
        assert table_rows(table_format, output, name) in \
            table_states(variant, name)

    # The next run recovers: each row once, one commit per run and table.
    assert outputs.recover(output) == [publishing.NEW]
    for name in outputs.PARTITIONED:
        assert table_rows(table_format, output, name) == \
            table_states(variant, name)[1]
    assert sorted(os.listdir(os.path.join(output, outputs.RUNS_DIR))) == \
        sorted(f"{r}.json" for r in table_states(variant, "errors")[1][1])
