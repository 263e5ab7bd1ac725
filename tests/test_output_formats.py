"""An output's table format (parquet, delta, iceberg) is fixed by its first
run, as its layout is; --overwrite never touches a Delta or Iceberg table;
an explicit Iceberg catalog is opened before any work. The outputs are read
back as outside readers do (pyarrow, deltalake, pyiceberg)."""

import json
import os
import sqlite3

import pyarrow.parquet as pq
import pytest
from apache_beam.io.aws.clients.s3.messages import S3ClientError
from apache_beam.io.azure.blobstorageio import BlobStorageError
from apache_beam.io.filesystem import BeamIOError

from model_store import fs
from pipeline import tables
from tests.conftest import write_digits

TABLE_FORMATS = ["delta", "iceberg"]


@pytest.fixture
def images(tmp_path, split):
    folder = str(tmp_path / "in")
    return folder, write_digits(folder, split, 3, nested=False)


def forbid_work(monkeypatch):
    """From now on, a run that loads its model (starts work) fails."""
    import model_store.store

    def load_model(*args, **kwargs):
        raise AssertionError("the run loaded its model: work started")

    monkeypatch.setattr(model_store.store, "load_model", load_model)


def listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, names in os.walk(folder) for f in names)


def read_paths(output, table_format):
    """The predictions' paths, through the format's own reader."""
    if table_format == "delta":
        from deltalake import DeltaTable
        table = DeltaTable(os.path.join(output, "predictions"))
        return table.version(), sorted(
            table.to_pyarrow_table().column("path").to_pylist())
    if table_format == "iceberg":
        from pyiceberg.catalog.sql import SqlCatalog
        catalog = SqlCatalog("imgclass", uri=f"sqlite:///{output}/"
                                             f"{tables.CATALOG_FILE}")
        table = catalog.load_table("imgclass.predictions")
        return len(table.snapshots()), sorted(
            table.scan().to_arrow().column("path").to_pylist())
    return None, sorted(pq.read_table(os.path.join(output, "predictions"))
                        .column("path").to_pylist())


def refused(cli, folder, output, *args):
    """Runs classify, which must stop with one line, exit 2; the line."""
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       *args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("table_format", TABLE_FORMATS)
def test_a_table_output_refuses_other_formats_and_overwrite(
        tmp_path, images, cli, monkeypatch, table_format):
    folder, truth = images
    output = str(tmp_path / "out")
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--table-format", table_format, "-q")
    assert code == 0, err
    with open(os.path.join(output, "_layout.json")) as handle:
        assert json.load(handle) == {"layout": "none",
                                     "table_format": table_format}
    before, table = listing(output), read_paths(output, table_format)
    assert table[1] == sorted(truth)

    forbid_work(monkeypatch)
    other = "iceberg" if table_format == "delta" else "delta"
    for args in (["--skip-done"], ["--skip-done", "--table-format", other]):
        err = refused(cli, folder, output, *args)
        assert f"(--table-format {table_format})" in err
    err = refused(cli, folder, output, "--overwrite")
    assert "--overwrite would" in err and "new --output folder" in err
    assert {"delta": "DeltaTable.delete",
            "iceberg": "Table.delete"}[table_format] in err
    # An output written before the format was recorded: read from disk.
    os.remove(os.path.join(output, "_layout.json"))
    before.remove("_layout.json")
    assert f"(--table-format {table_format})" in refused(
        cli, folder, output, "--skip-done")
    assert "--overwrite would" in refused(cli, folder, output, "--overwrite")
    assert listing(output) == before
    assert read_paths(output, table_format) == table


def test_a_parquet_output_refuses_table_formats(tmp_path, images, cli,
                                               monkeypatch):
    folder, truth = images
    output = str(tmp_path / "out")
    assert cli("classify", "--input", folder, "--output", output,
               "-q")[0] == 0
    before = listing(output)
    forbid_work(monkeypatch)
    for table_format in TABLE_FORMATS:
        err = refused(cli, folder, output, "--skip-done", "--table-format",
                      table_format)
        assert "Parquet files (--table-format parquet)" in err
    os.remove(os.path.join(output, "_layout.json"))
    assert "Parquet files" in refused(cli, folder, output, "--skip-done",
                                      "--table-format", "delta")
    before.remove("_layout.json")
    assert listing(output) == before
    assert read_paths(output, "parquet")[1] == sorted(truth)


@pytest.mark.parametrize("catalog", ["missing-folder", "not-a-database",
                                     "no-such-dialect", "no-driver"])
def test_an_iceberg_catalog_that_cannot_be_opened_is_refused_before_work(
        tmp_path, images, cli, monkeypatch, catalog):
    """I1: found before any work, one line naming the URI, exit 2."""
    folder, _ = images
    forbid_work(monkeypatch)
    not_a_database = tmp_path / "notes.db"
    not_a_database.write_text("not a database\n" * 100)
    uri = {"missing-folder": f"sqlite:///{tmp_path}/missing/catalog.db",
           "not-a-database": f"sqlite:///{not_a_database}",
           "no-such-dialect": "nosuchdb://host/catalog",
           "no-driver": "postgresql://127.0.0.1:1/catalog"}[catalog]
    output = str(tmp_path / "out")
    err = refused(cli, folder, output, "--table-format", "iceberg",
                  "--iceberg-catalog", uri)
    assert f"--iceberg-catalog {uri!r} cannot be opened" in err
    assert "Background on this error" not in err  # only the first line
    assert not os.path.exists(output)


@pytest.mark.parametrize("uri", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_iceberg_catalog_is_refused_before_work(
        tmp_path, images, cli, monkeypatch, uri):
    """It would be lost when the run ends: the run's tables in no catalog,
    and every later run on the output refused."""
    folder, _ = images
    forbid_work(monkeypatch)
    output = str(tmp_path / "out")
    err = refused(cli, folder, output, "--table-format", "iceberg",
                  "--iceberg-catalog", uri)
    assert f"--iceberg-catalog {uri!r} is an in-memory database" in err
    assert not os.path.exists(output)


def test_a_catalog_server_that_never_answers_stops_the_run_in_one_line(
        tmp_path, images, cli, monkeypatch):
    """A PostgreSQL catalog that accepts the connection and never answers
    (an overloaded or wedged server) hung the run for good: libpq waits
    without a limit unless the URI sets connect_timeout."""
    import socket
    import time

    from pipeline import tables

    folder, _ = images
    forbid_work(monkeypatch)
    monkeypatch.setattr(tables, "CATALOG_CONNECT_TIMEOUT", 2)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()  # the kernel accepts; nothing ever replies
        uri = f"postgresql://u@127.0.0.1:{server.getsockname()[1]}/catalog"
        output = str(tmp_path / "out")
        started = time.monotonic()
        err = refused(cli, folder, output, "--table-format", "iceberg",
                      "--iceberg-catalog", uri)
        assert time.monotonic() - started < 30
    assert f"--iceberg-catalog {uri!r} cannot be opened" in err
    assert "timeout" in err
    assert not os.path.exists(output)


def test_an_explicit_sqlite_catalog_is_created_on_first_use(
        tmp_path, images, cli):
    """A catalog file that does not exist yet, in a folder that does, is a
    new catalog (the first run of a new lake), not a mistake."""
    folder, truth = images
    output, catalog = str(tmp_path / "out"), tmp_path / "lake.db"
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--table-format", "iceberg", "--iceberg-catalog",
                       f"sqlite:///{catalog}", "-q")
    assert code == 0, err
    with sqlite3.connect(catalog) as db:
        assert db.execute("select table_name from iceberg_tables order by "
                          "1").fetchall() == [("errors",), ("predictions",)]


def test_error_line_is_the_line_that_says_what_failed():
    assert fs.error_line(OSError(28, "No space left on device")) == \
        "[Errno 28] No space left on device"
    assert fs.error_line(RuntimeError(
        "(sqlite3.OperationalError) database is locked\n(Background on "
        "this error at: https://sqlalche.me/e/20/e3q8)")) == \
        "(sqlite3.OperationalError) database is locked"
    # Beam wraps a worker's error in the traceback; its last line says it.
    assert fs.error_line(RuntimeError(
        "Pipeline failed\nTraceback (most recent call last):\n  File "
        "\"x.py\", line 1\nValueError: bad pixels [while running 'X']\n")) \
        == "ValueError: bad pixels [while running 'X']"
    assert fs.error_line(RuntimeError("")) == ""


def test_error_line_tells_beams_object_store_errors_by_their_reason():
    """Beam's S3 and Azure client errors print as the tuple of their
    arguments; GCS's batch moves and deletes give an HTTP status, not an
    error."""
    slow_down = S3ClientError("An error occurred (SlowDown) when calling "
                              "the HeadObject operation: Please reduce "
                              "your request rate.", 503)
    assert fs.error_line(slow_down) == (
        "HTTP 503: An error occurred (SlowDown) when calling the HeadObject "
        "operation: Please reduce your request rate.")
    assert fs.error_line(BlobStorageError("busy", None)) == "busy"
    assert fs.error_line(BeamIOError("Delete operation failed", {
        "s3://b/k": slow_down})).startswith(
        "Delete operation failed: S3ClientError: HTTP 503: An error")
    assert fs.error_line(BeamIOError("Rename operation failed", {
        ("gs://b/_staging/r/a", "gs://b/a"): 503,
        ("gs://b/_staging/r/b", "gs://b/b"): 503})) == (
        "Rename operation failed: HTTP 503 (and 1 more files)")


@pytest.mark.parametrize("mistake", ["mistyped catalog", "other namespace",
                                     "default catalog deleted"])
def test_an_iceberg_table_its_catalog_does_not_list_is_refused(
        tmp_path, images, cli, monkeypatch, mistake):
    """A catalog that does not list the output's tables would commit a
    second table over the first: readers of the right catalog would miss
    the run, readers of the new one every earlier run."""
    folder, truth = images
    output = str(tmp_path / "out")
    first = ["--table-format", "iceberg", "-q"]
    if mistake != "default catalog deleted":
        first += ["--iceberg-catalog", f"sqlite:///{tmp_path}/lake.db"]
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       *first)
    assert code == 0, err
    again = {"mistyped catalog": ["--iceberg-catalog",
                                  f"sqlite:///{tmp_path}/lake2.db"],
             "other namespace": first[3:] + ["--iceberg-namespace", "other"],
             "default catalog deleted": []}[mistake]
    if mistake == "default catalog deleted":
        os.remove(os.path.join(output, tables.CATALOG_FILE))
    before = listing(output)
    forbid_work(monkeypatch)
    err = refused(cli, folder, output, "--table-format", "iceberg",
                  "--skip-done", *again)
    assert "holds an Iceberg table that the catalog" in err
    # Nothing written: not even an empty catalog file.
    assert listing(output) == before
    assert not (tmp_path / "lake2.db").exists()
    if mistake != "default catalog deleted":  # still one table, one run
        from pyiceberg.catalog.sql import SqlCatalog
        table = SqlCatalog("imgclass", uri=f"sqlite:///{tmp_path}/lake.db") \
            .load_table("imgclass.predictions")
        assert len(table.snapshots()) == 1
        assert sorted(table.scan().to_arrow().column("path").to_pylist()) \
            == sorted(truth)


@pytest.mark.parametrize("how", ["shared catalog", "copied output"])
def test_a_catalog_table_located_in_another_output_is_refused(
        tmp_path, images, cli, monkeypatch, how):
    """A run must never add its rows to another output's table: a second
    output in a shared catalog under the same namespace, or a copy of an
    output whose default catalog still points at the original."""
    folder, truth = images
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    shared = ["--iceberg-catalog", f"sqlite:///{tmp_path}/shared.db"] \
        if how == "shared catalog" else []
    code, _, err = cli("classify", "--input", folder, "--output", first,
                       "--table-format", "iceberg", "-q", *shared)
    assert code == 0, err
    if how == "copied output":
        import shutil
        shutil.copytree(first, second)
    before = listing(first)
    forbid_work(monkeypatch)
    err = refused(cli, folder, second, "--table-format", "iceberg",
                  "--skip-done", *shared)
    assert "not in --output" in err and "--iceberg-namespace" in err
    assert listing(first) == before  # the first output's table untouched
    if how == "shared catalog":  # the way out the message gives works
        monkeypatch.undo()
        code, _, err = cli("classify", "--input", folder, "--output", second,
                           "--table-format", "iceberg", "-q", *shared,
                           "--iceberg-namespace", "second")
        assert code == 0, err
        from pyiceberg.catalog.sql import SqlCatalog
        catalog = SqlCatalog("imgclass", uri=f"sqlite:///{tmp_path}/shared.db")
        for namespace in ("imgclass", "second"):
            table = catalog.load_table(f"{namespace}.predictions")
            assert len(table.snapshots()) == 1
            assert sorted(table.scan().to_arrow().column("path")
                          .to_pylist()) == sorted(truth)


@pytest.mark.parametrize("table_format", ["parquet", *TABLE_FORMATS])
def test_refusals_suggest_overwrite_only_where_it_works(
        tmp_path, images, cli, table_format):
    """Following a refusal's advice must not lead to another refusal."""
    folder, _ = images
    output = str(tmp_path / "out")
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--table-format", table_format, "-q")
    assert code == 0, err
    again = refused(cli, folder, output, "--table-format", table_format)
    assert "holds an earlier run" in again and "--skip-done" in again
    other_layout = refused(cli, folder, output, "--table-format",
                           table_format, "--skip-done", "--partition-by",
                           "run_date")
    assert "laid out as" in other_layout
    for err in (again, other_layout):
        assert ("--overwrite" in err) == (table_format == "parquet"), err
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--table-format", table_format, "--overwrite", "-q")
    assert (code == 0) == (table_format == "parquet"), err
