"""imgclass classify --table-format delta|iceberg, end to end: the tables
read back with their own readers hold exactly what the manifests count,
once, across nights, --skip-done and runs killed around the commit."""

import glob
import json
import os
import shutil
import urllib.parse

import pyarrow.compute as pc
import pytest

from pipeline import outputs, tables
from pipeline.cli import main
from tests.conftest import write_bad_files, write_digits
from tests.test_output_formats import forbid_work, refused

FORMATS = ["delta", "iceberg"]


def classify(folder, output, table_format, *extra):
    return main(["classify", "--input", folder, "--output", output,
                 "--skip-done", "--table-format", table_format, "-q",
                 "--partition-by", "run_date", *extra])


def manifest(output):
    return json.load(open(os.path.join(output, "_manifest.json")))


def read_table(output, table_format, name="predictions"):
    """The current snapshot, through the format's own reader."""
    if table_format == "delta":
        from deltalake import DeltaTable
        return DeltaTable(os.path.join(output, name)).to_pyarrow_table()
    spec = tables.table_spec("iceberg", output)
    return tables.iceberg_table(spec, name, None).scan().to_arrow()


def commits(output, table_format):
    """Run ids of the table's commits, oldest first."""
    if table_format == "delta":
        from deltalake import DeltaTable
        history = DeltaTable(os.path.join(output, "predictions")).history()
        return [h[tables.RUN_ID_KEY] for h in reversed(history)]
    table = tables.iceberg_table(tables.table_spec("iceberg", output),
                                 "predictions", None)
    return [s.summary[tables.RUN_ID_KEY] for s in table.snapshots()]


@pytest.mark.parametrize("table_format", FORMATS)
def test_three_nights_each_file_once_in_the_current_snapshot(
        tmp_path, split, table_format):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    truth, bad, runs = {}, {}, []
    for night in (1, 2, 3):
        truth.update(write_digits(os.path.join(folder, f"n{night}"), split,
                                  4 + night, seed=night))
        if night == 2:
            bad = write_bad_files(os.path.join(folder, "bad"))
        assert classify(folder, output, table_format, "--run-date",
                        f"2026-11-2{night}") == 0
        runs.append(manifest(output))
    predictions = read_table(output, table_format)
    paths = predictions.column("path").to_pylist()
    assert sorted(paths) == sorted(truth)  # each file exactly once
    assert len(paths) == sum(m["counts"]["predicted"] for m in runs)
    errors = read_table(output, table_format, "errors")
    assert sorted(errors.column("path").to_pylist()) == sorted(bad)
    assert [m["counts"]["skipped"] for m in runs] == [
        0, 5, 5 + 6 + len(bad)]
    assert commits(output, table_format) == [m["run_id"] for m in runs]
    for m in runs:  # each run's rows are what its manifest counted
        rows = predictions.filter(
            pc.equal(predictions.column("run_id"), m["run_id"])).num_rows
        assert rows == m["counts"]["predicted"]
    if table_format == "delta":
        dates = {str(d) for d in predictions.column("run_date").to_pylist()}
        assert dates == {"2026-11-21", "2026-11-22", "2026-11-23"}


@pytest.mark.parametrize("table_format", FORMATS)
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_run_killed_around_its_commit_is_finished_exactly_once(
        tmp_path, split, monkeypatch, table_format, when):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    truth = write_digits(os.path.join(folder, "n1"), split, 5, seed=1)
    assert classify(folder, output, table_format) == 0
    first = manifest(output)["run_id"]
    truth.update(write_digits(os.path.join(folder, "n2"), split, 7, seed=2))
    real_commit = tables.commit_run

    def killed(*args, **kwargs):
        if when == "after":
            real_commit(*args, **kwargs)
        raise SystemExit(f"killed {when} the table commit")

    monkeypatch.setattr(tables, "commit_run", killed)
    with pytest.raises(SystemExit):
        classify(folder, output, table_format)
    monkeypatch.setattr(tables, "commit_run", real_commit)
    # The files are moved into the table folder, the manifest not written.
    assert manifest(output)["run_id"] == first
    moved = outputs.count_rows(glob.glob(os.path.join(
        output, "predictions", "*", "part-*.parquet")))
    assert moved >= 12  # a plain Parquet reader sees them all ...
    visible = read_table(output, table_format).num_rows
    if when == "before":  # ... the table only what was committed
        assert visible == 5 and commits(output, table_format) == [first]
    else:
        assert visible == 12

    assert classify(folder, output, table_format) == 0  # recovers first
    paths = read_table(output, table_format).column("path").to_pylist()
    assert sorted(paths) == sorted(truth)
    history = commits(output, table_format)
    assert len(history) == len(set(history)) == 3  # first, killed, rerun
    assert manifest(output)["counts"]["skipped"] == 12
    assert len(os.listdir(os.path.join(output, "_runs"))) == 3


@pytest.mark.parametrize("table_format", FORMATS)
def test_a_failed_pipeline_leaves_the_table_at_its_previous_version(
        tmp_path, split, monkeypatch, table_format):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(os.path.join(folder, "n1"), split, 3, seed=1)
    assert classify(folder, output, table_format) == 0
    write_digits(os.path.join(folder, "n2"), split, 3, seed=2)
    monkeypatch.setattr(outputs.RunOutputs, "publish",
                        lambda *a, **k: (_ for _ in ()).throw(
                            SystemExit("killed before publishing")))
    with pytest.raises(SystemExit):
        classify(folder, output, table_format)
    assert read_table(output, table_format).num_rows == 3
    assert len(commits(output, table_format)) == 1


def test_table_options_are_checked_before_any_work(tmp_path, split, cli):
    folder = str(tmp_path / "bucket")
    write_digits(folder, split, 2, nested=False)
    out = str(tmp_path / "out")
    code, _, err = cli("classify", "--input", folder, "--output", out,
                       "--table-format", "delta", "--overwrite")
    assert code == 2 and "--overwrite does not apply to --table-format" \
        in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("classify", "--input", folder, "--output", out,
                       "--iceberg-namespace", "x")
    assert code == 2 and "only apply with --table-format iceberg" in err
    code, _, err = cli("classify", "--input", folder, "--output", out,
                       "--table-format", "iceberg", "--iceberg-catalog",
                       "nope")
    assert code == 2 and "SQLAlchemy URI" in err
    assert not os.path.exists(os.path.join(out, "predictions"))


@pytest.mark.parametrize("table_format", ["parquet", "delta"])
@pytest.mark.parametrize("option", [
    ["--iceberg-namespace", tables.DEFAULT_NAMESPACE],
    ["--iceberg-catalog", "sqlite:///{out}/_catalog.db"]])
def test_iceberg_options_given_with_their_default_value_are_refused_without_iceberg(
        tmp_path, split, cli, table_format, option):
    folder, out = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(folder, split, 2, nested=False)
    code, _, err = cli("classify", "--input", folder, "--output", out,
                       "--table-format", table_format, option[0],
                       option[1].format(out=out))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "only apply with --table-format iceberg" in err
    assert not os.path.exists(out)


@pytest.mark.parametrize("table_format", FORMATS)
def test_a_table_written_without_embeddings_gains_the_column(
        tmp_path, split, table_format):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    old = write_digits(os.path.join(folder, "n1"), split, 3, seed=1)
    assert classify(folder, output, table_format) == 0
    new = write_digits(os.path.join(folder, "n2"), split, 4, seed=2)
    assert classify(folder, output, table_format, "--emit-embeddings") == 0
    table = read_table(output, table_format)
    rows = dict(zip(table.column("path").to_pylist(),
                    table.column("embedding").to_pylist()))
    assert sorted(rows) == sorted({**old, **new})
    assert all(rows[p] is None for p in old)
    assert all(len(rows[p]) == 256 for p in new)


# Folder names that a file URI or a SQLAlchemy URL would read otherwise
# ('?' too, but an output path holding it is refused for every format:
# Beam's Parquet sink matches its own files as a pattern; test_cli_errors).
URI_LOOKALIKES = ["pq%41", "just%", "h#sh", "sp ace"]


def read_independently(output, table_format):
    """The predictions, through the format's own reader given the path as
    its users would (not through pipeline.tables)."""
    if table_format == "delta":
        from deltalake import DeltaTable
        return DeltaTable(os.path.join(output, "predictions")) \
            .to_pyarrow_table()
    from pyiceberg.catalog.sql import SqlCatalog
    catalog = os.path.join(output, tables.CATALOG_FILE)
    return SqlCatalog("imgclass", uri="sqlite:///" + urllib.parse.quote(
        catalog)).load_table("imgclass.predictions").scan().to_arrow()


@pytest.mark.parametrize("table_format,name", [
    (table_format, name) for table_format in FORMATS
    for name in URI_LOOKALIKES
    if (table_format, name) != ("delta", "pq%41")])  # refused, see below
def test_an_output_named_like_a_uri_escape_is_committed_in_that_folder(
        tmp_path, split, table_format, name):
    folder, runs = str(tmp_path / "bucket"), tmp_path / "runs"
    output = str(runs / f"o_{name}")
    truth = write_digits(os.path.join(folder, "n1"), split, 3, seed=1)
    assert classify(folder, output, table_format) == 0
    truth.update(write_digits(os.path.join(folder, "n2"), split, 2, seed=2))
    assert classify(folder, output, table_format) == 0  # and every later run
    paths = read_independently(output, table_format).column("path")
    assert sorted(paths.to_pylist()) == sorted(truth)
    assert os.listdir(runs) == [f"o_{name}"]  # no catalog beside it
    assert os.path.exists(os.path.join(output, "_SUCCESS"))


def test_delta_refuses_an_output_path_deltalake_reads_as_escaped(
        tmp_path, split, cli, monkeypatch):
    folder = str(tmp_path / "in")
    write_digits(folder, split, 2, nested=False)
    output = str(tmp_path / "o_delta_pq%41")
    forbid_work(monkeypatch)
    err = refused(cli, folder, output, "--table-format", "delta")
    assert "'%41'" in err and "no '%' followed by two hex digits" in err
    assert not os.path.exists(output)


@pytest.mark.parametrize("given", [False, True])
@pytest.mark.parametrize("damage", ["truncated", "fifo"])
def test_a_damaged_iceberg_catalog_stops_the_run_in_one_line(
        tmp_path, split, cli, monkeypatch, damage, given):
    """The default catalog, DIR/_catalog.db, is checked as a given one is;
    a FIFO is not opened (it would block)."""
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(folder, split, 2, nested=False)
    assert classify(folder, output, "iceberg") == 0
    catalog = os.path.join(output, tables.CATALOG_FILE)
    if damage == "truncated":
        os.truncate(catalog, 100)
    else:
        os.remove(catalog)
        os.mkfifo(catalog)
    forbid_work(monkeypatch)
    explicit = ["--iceberg-catalog", f"sqlite:///{catalog}"] if given else []
    err = refused(cli, folder, output, "--table-format", "iceberg",
                  "--skip-done", "-q", *explicit)
    assert "cannot be opened" in err and catalog in err


@pytest.mark.parametrize("table_format", FORMATS)
def test_an_output_reached_through_a_symlink_is_the_same_table(
        tmp_path, split, table_format):
    folder = str(tmp_path / "bucket")
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    truth = write_digits(os.path.join(folder, "n1"), split, 2, seed=1)
    assert classify(folder, str(link), table_format) == 0
    truth.update(write_digits(os.path.join(folder, "n2"), split, 3, seed=2))
    assert classify(folder, str(real), table_format) == 0
    paths = read_independently(str(real), table_format).column("path")
    assert sorted(paths.to_pylist()) == sorted(truth)
    assert len(commits(str(real), table_format)) == 2


def test_a_table_output_laid_out_otherwise_offers_two_ways_out(
        tmp_path, split, cli):
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(folder, split, 2, nested=False)
    assert classify(folder, output, "delta") == 0  # run_date partitions
    err = refused(cli, folder, output, "--table-format", "delta",
                  "--skip-done")
    assert err.rstrip().endswith(
        "readers cannot query both together: use the same layout or "
        "another output folder"), err


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


def _damage(output, damage):
    """Damages the predictions table as by hand between two runs."""
    table = os.path.join(output, "predictions")
    log = glob.glob(os.path.join(table, "_delta_log", "*.json")) or sorted(
        glob.glob(os.path.join(table, "metadata", "*.metadata.json")))
    if damage == "data file deleted":
        for path in glob.glob(os.path.join(table, "**", "*.parquet"),
                              recursive=True):
            os.remove(path)
    elif damage == "log truncated":
        _truncate(log[-1])
    elif damage == "log deleted":
        for path in log:
            os.remove(path)
    elif damage == "table deleted":
        shutil.rmtree(table)
    elif damage == "manifest deleted":
        for path in glob.glob(os.path.join(table, "metadata", "*.avro")):
            os.remove(path)


@pytest.mark.parametrize("table_format,damage", [
    ("delta", "data file deleted"), ("delta", "log truncated"),
    ("delta", "log deleted"), ("delta", "table deleted"),
    ("iceberg", "data file deleted"), ("iceberg", "log truncated"),
    ("iceberg", "log deleted"), ("iceberg", "manifest deleted"),
    ("iceberg", "table deleted")])
def test_a_table_damaged_between_runs_stops_the_next_one_before_any_work(
        tmp_path, split, cli, monkeypatch, table_format, damage):
    """A run on a damaged table would fail at its commit after all the
    work, or start a new table over the old one's files (their rows lost:
    --skip-done skips those files), or leave a table readers fail on."""
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(os.path.join(folder, "n1"), split, 2, seed=1)
    assert classify(folder, output, table_format) == 0
    write_digits(os.path.join(folder, "n2"), split, 2, seed=2)
    _damage(output, damage)
    forbid_work(monkeypatch)
    err = refused(cli, folder, output, "--table-format", table_format,
                  "--skip-done", "--partition-by", "run_date", "-q")
    assert os.path.join(output, "predictions") in err, err
    assert "restore it from a backup, or give a new --output" in err
    assert len(os.listdir(os.path.join(output, "_runs"))) == 1
    assert not os.path.exists(os.path.join(output, "_staging"))


@pytest.mark.parametrize("damage", ["emptied", "fifo next"])
def test_an_emptied_delta_commit_stops_the_next_run_before_any_work(
        tmp_path, split, cli, monkeypatch, damage):
    """delta-rs reads a commit file of 0 bytes (a disk that filled, a copy
    cut short) as a commit of nothing: the rows of that run would vanish
    from the table while --skip-done skips their files. A FIFO as the next
    commit file it skips, and every commit would then fail on it."""
    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    write_digits(os.path.join(folder, "n1"), split, 2, seed=1)
    assert classify(folder, output, "delta") == 0
    write_digits(os.path.join(folder, "n2"), split, 2, seed=2)
    assert classify(folder, output, "delta") == 0
    write_digits(os.path.join(folder, "n3"), split, 2, seed=3)
    table = os.path.join(output, "predictions")
    last = sorted(glob.glob(os.path.join(table, "_delta_log", "*.json")))[-1]
    if damage == "emptied":
        os.truncate(last, 0)
    else:
        last = os.path.join(table, "_delta_log", "%020d.json" % (
            int(os.path.basename(last)[:-5]) + 1))
        os.mkfifo(last)
    forbid_work(monkeypatch)
    err = refused(cli, folder, output, "--table-format", "delta",
                  "--skip-done", "--partition-by", "run_date", "-q")
    assert f"the Delta table {table} is damaged" in err, err
    assert f"commit file {os.path.basename(last)} has 0 bytes" in err, err
    assert "restore it from a backup, or give a new --output" in err
    assert len(os.listdir(os.path.join(output, "_runs"))) == 2


def test_a_delta_table_with_checkpoints_takes_more_skip_done_runs(
        tmp_path, split):
    """delta-rs writes a checkpoint, a Parquet file in _delta_log/, every
    100 commits (here: after each one): a nightly --skip-done run must not
    read it as error rows."""
    from deltalake import DeltaTable

    folder, output = str(tmp_path / "bucket"), str(tmp_path / "out")
    truth = write_digits(os.path.join(folder, "n1"), split, 2, seed=1)
    write_bad_files(os.path.join(folder, "bad"))
    assert classify(folder, output, "delta") == 0
    first = manifest(output)["counts"]
    for name in outputs.PARTITIONED:
        DeltaTable(os.path.join(output, name)).alter.set_table_properties(
            {"delta.checkpointInterval": "1"})
    assert glob.glob(os.path.join(output, "errors", "_delta_log",
                                  "*.checkpoint.parquet"))
    truth.update(write_digits(os.path.join(folder, "n2"), split, 3, seed=2))
    assert classify(folder, output, "delta") == 0
    second = manifest(output)["counts"]
    assert second["skipped"] == first["matched"]
    paths = read_table(output, "delta").column("path").to_pylist()
    assert sorted(paths) == sorted(truth)
    assert read_table(output, "delta", "errors").num_rows == first["failed"]
