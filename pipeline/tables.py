"""Committing a run's Parquet files to Delta Lake or Apache Iceberg tables.

The workers write Parquet files as for the plain layout; publishing moves
them inside the table folder (``DIR/predictions/...``, ``DIR/errors/...``)
and then :func:`commit_run` adds them to the table as they are (no rewrite):

* ``delta`` (``deltalake``, delta-rs): one commit per table per run, whose
  commit info holds the run id, model and counts, and whose application
  transaction ``imgclass/<run_id>`` marks the run as committed (a run that
  adds columns adds them first, in a commit with the same info);
* ``iceberg`` (``pyiceberg``, SQL catalog): one ``add_files`` snapshot per
  table per run, with the run id, model and counts in its summary.

Readers of a table see only committed files, so files moved but not yet
committed are invisible. Each commit is idempotent by run id: publishing
that a crash interrupted is finished by the next run (``outputs.recover``)
without ever committing a run twice. Concurrent commits to the same table
are retried on conflict (each format's optimistic concurrency).

A table gains the columns a run's files have and the table lacks (schema
evolution: older files read them as null), e.g. ``embedding``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
import urllib.parse
from typing import Callable, Optional

from model_store import fs
from model_store.errors import ConfigError
from model_store.fs import error_line, is_uri, join

# pyarrow, Beam and the table libraries are imported where they are used:
# the command line imports this module for its option names and defaults.

FORMATS = ("parquet", "delta", "iceberg")
DEFAULT_FORMAT = "parquet"
DEFAULT_NAMESPACE = "imgclass"
CATALOG_FILE = "_catalog.db"      # the default Iceberg catalog, in DIR
CATALOG_NAME = "imgclass"
# Seconds a database catalog may take to connect (the drivers that take
# ``connect_timeout`` in the URI; a URI that sets one keeps its own).
CATALOG_CONNECT_TIMEOUT = 10
_TIMEOUT_DRIVERS = ("psycopg2", "psycopg", "pymysql", "mysqldb")
APP_PREFIX = "imgclass/"          # Delta application transaction id prefix
RUN_ID_KEY = "imgclass.run_id"    # in Delta commit info / Iceberg summaries
PARTITION_COLUMNS = ("run_date",)
COMMIT_ATTEMPTS = 20
# Iceberg properties of the tables imgclass creates (and sets on older ones
# at their next commit): each run adds a manifest, and without merging them
# every scan reads them all (bench/table_growth.py: a read at 400 runs
# 0.78 s, 0.46 s merged).
ICEBERG_PROPERTIES = {"commit.manifest-merge.enabled": "true"}


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """Where and how a run's tables are committed (kept in the publish
    record, so that recovery commits exactly as the run would have)."""
    format: str
    output: str
    catalog: Optional[str] = None     # Iceberg: SQLAlchemy URI
    namespace: str = DEFAULT_NAMESPACE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, value: dict) -> "TableSpec":
        return cls(**value)


def table_spec(table_format: str, output: str, *,
               catalog: Optional[str] = None,
               namespace: Optional[str] = None,
               partition: Optional[str] = None) -> Optional[TableSpec]:
    """Checks the options; None for the plain Parquet layout. ``catalog``
    and ``namespace`` are None when not given (the defaults)."""
    if table_format not in FORMATS:
        raise ConfigError(f"--table-format must be one of "
                          f"{', '.join(FORMATS)}, got {table_format!r}")
    _check_iceberg_options_given(table_format, catalog, namespace)
    if table_format == "parquet":
        return None
    if partition is not None and partition_values(partition) is None:
        raise ConfigError(f"--table-format {table_format} partitions by "
                          f"run_date only, got partition {partition!r}")
    if table_format == "delta":
        _check_delta_path(output)
        return TableSpec("delta", output)
    namespace = DEFAULT_NAMESPACE if namespace is None else namespace
    if not namespace or not all(part.isidentifier()
                                for part in namespace.split(".")):
        raise ConfigError(f"--iceberg-namespace must be a name such as "
                          f"'imgclass' or 'lake.labels', got {namespace!r}")
    if catalog is not None and "://" not in catalog:
        raise ConfigError(f"--iceberg-catalog must be a SQLAlchemy URI such "
                          f"as sqlite:////path/catalog.db or "
                          f"postgresql://host/db, got {catalog!r}")
    return TableSpec("iceberg", output, catalog or default_catalog(output),
                     namespace)


def _check_iceberg_options_given(table_format: str, catalog: Optional[str],
                                 namespace: Optional[str]) -> None:
    """The Iceberg options given (even with their default value) without
    ``--table-format iceberg`` are a mistake."""
    if table_format != "iceberg" and (catalog, namespace) != (None, None):
        raise ConfigError("--iceberg-catalog and --iceberg-namespace only "
                          "apply with --table-format iceberg: drop them, "
                          "or give --table-format iceberg")


# '%' and two hex digits: deltalake (delta-rs 1.x) decodes them in a local
# table path once too often, and looks for another folder (%41 -> A).
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def _check_delta_path(output: str) -> None:
    """Refuses a local output whose path deltalake cannot open a table in."""
    if is_uri(output):
        return
    path = os.path.realpath(output)
    escape = _PERCENT_ESCAPE.search(path)
    if escape:
        raise ConfigError(
            f"--table-format delta cannot use output {output!r}: deltalake "
            f"reads {escape.group()!r} in its path {path!r} as an escaped "
            f"character and cannot open a table there; give an --output "
            f"whose path has no '%' followed by two hex digits")


def default_catalog(output: str) -> str:
    """The SQLite catalog file kept in the output folder, as a URI (its
    path percent-encoded: SQLAlchemy decodes it, so '%', '?' and '#' in a
    folder name are kept)."""
    if is_uri(output):
        raise ConfigError(f"output {output!r} is not a local folder: give "
                          f"--iceberg-catalog (a SQL catalog URI)")
    path = os.path.join(os.path.abspath(output), CATALOG_FILE)
    return f"sqlite:///{urllib.parse.quote(path)}"


def partition_values(partition: Optional[str]) -> Optional[dict]:
    """``"run_date=2026-11-26"`` -> ``{"run_date": "2026-11-26"}``; ``{}``
    for no partition; None for a partition tables do not support."""
    if not partition:
        return {}
    values = dict(part.split("=", 1) for part in partition.split("/"))
    return values if tuple(values) == PARTITION_COLUMNS else None


def commit_run(spec: TableSpec, files: dict, manifest: dict) -> list[str]:
    """Commits a run's files, ``{table name: [paths below DIR/<table>]}``
    (as ``manifest["files"]``), to each table; returns the tables it
    committed to now (not those that already held the run)."""
    commit = {"delta": commit_delta, "iceberg": commit_iceberg}[spec.format]
    values = partition_values(manifest.get("partition")) or {}
    committed = []
    for name, paths in files.items():
        if commit(spec, name, paths, values, manifest):
            committed.append(name)
    return committed


def commit_properties(manifest: dict, rows: int) -> dict:
    """What each commit records: run id, model and counts (strings)."""
    model = manifest["model"]
    return {RUN_ID_KEY: manifest["run_id"],
            "imgclass.model": f"{model['name']}@{model['version']}",
            "imgclass.table_rows": str(rows),
            "imgclass.counts": json.dumps(manifest["counts"],
                                          sort_keys=True)}


def table_location(output: str, name: str) -> str:
    return join(output if is_uri(output) else os.path.abspath(output), name)


def table_schema(paths: list[str], partition: dict):
    """The files' own Parquet schema, plus the partition columns."""
    import pyarrow as pa

    file_schema = _read_schema(paths[0]).remove_metadata()
    for column in partition:
        file_schema = file_schema.append(pa.field(column, pa.date32()))
    return file_schema


# Delta Lake ---------------------------------------------------------------

def commit_delta(spec: TableSpec, name: str, paths: list[str],
                 partition: dict, manifest: dict, *,
                 clock: Callable[[], float] = time.time) -> bool:
    """Adds ``paths`` (inside the table folder) to the Delta table ``name``
    in one commit (after one adding the columns the table lacks); False if
    the run was committed before."""
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError, TableNotFoundError
    from deltalake.transaction import CommitProperties, Transaction, create_table_with_add_actions

    root = table_location(spec.output, name)
    app_id = APP_PREFIX + manifest["run_id"]
    schema = table_schema(paths, partition)
    actions = [_add_action(root, path, partition) for path in paths]
    rows = sum(json.loads(a.stats)["numRecords"] for a in actions)

    def properties(*, marks_run=True, **retries):
        """The run's commit info; ``marks_run``: and the transaction
        ``imgclass/<run_id>`` (only on the commit that adds its files)."""
        marks = [Transaction(app_id, 1, int(clock() * 1000))]
        return CommitProperties(
            custom_metadata=commit_properties(manifest, rows),
            app_transactions=marks if marks_run else None, **retries)
    error = None
    for _ in range(COMMIT_ATTEMPTS):
        try:
            table = DeltaTable(root)
        except TableNotFoundError:
            try:
                create_table_with_add_actions(
                    root, _delta_schema(schema), actions, mode="error",
                    partition_by=list(partition) or None, name=name,
                    # No retry: delta-rs would retry a lost race to create
                    # as a second CREATE TABLE (a new table id) on top.
                    commit_properties=properties(max_commit_retries=0))
                return True
            except Exception as failed:  # noqa: BLE001 - created meanwhile
                error = failed
                continue
        if table.transaction_version(app_id) is not None:
            return False
        try:
            _evolve_delta(table, schema, properties(marks_run=False))
            table.create_write_transaction(
                actions, mode="append", schema=table.schema(),
                partition_by=list(partition) or None,
                commit_properties=properties())
            return True
        except CommitFailedError as failed:  # a concurrent commit: retry
            error = failed
    raise RuntimeError(f"Delta table {root}: could not commit run "
                       f"{manifest['run_id']} after {COMMIT_ATTEMPTS} "
                       f"attempts: {error_line(error)}")


def _add_action(root: str, path: str, partition: dict):
    from apache_beam.io.filesystems import FileSystems
    from deltalake.transaction import AddAction

    from pipeline.outputs import count_rows

    metadata = FileSystems.match([path])[0].metadata_list[0]
    relative = (path[len(root):] if is_uri(path) else os.path.relpath(
        os.path.abspath(path), root)).lstrip("/")
    return AddAction(
        path=relative, size=int(metadata.size_in_bytes),
        partition_values=dict(partition),
        modification_time=int(metadata.last_updated_in_seconds * 1000),
        data_change=True,
        stats=json.dumps({"numRecords": count_rows([path])}))


def _evolve_delta(table, schema, properties) -> None:
    """Adds the columns ``schema`` (pyarrow) has and the table lacks, in a
    commit of its own with the run's commit ``properties``: deltalake's
    ``create_write_transaction`` keeps the table's schema when appending."""
    import pyarrow as pa
    from deltalake import Schema

    have = {field.name for field in table.schema().fields}
    new = [field for field in schema if field.name not in have]
    if new:
        fields = Schema.from_arrow(pa.schema(new)).fields
        table.alter.add_columns(fields, commit_properties=properties)


def _delta_schema(schema):
    from deltalake import Schema

    return Schema.from_arrow(schema)


# Apache Iceberg -----------------------------------------------------------

def iceberg_catalog(spec: TableSpec):
    from pyiceberg.catalog.sql import SqlCatalog

    properties = {"uri": _with_connect_timeout(spec.catalog)}
    if not is_uri(spec.output):
        properties["warehouse"] = f"file://{os.path.abspath(spec.output)}"
    return SqlCatalog(CATALOG_NAME, **properties)


def _with_connect_timeout(uri: str) -> str:
    """``uri`` with ``connect_timeout`` for the drivers that read it from the
    URI (libpq's psycopg and psycopg2, pymysql, mysqlclient), unless it has
    one: a catalog server that accepts the connection and never answers
    stops the run in one line instead of hanging it."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if url.get_driver_name() not in _TIMEOUT_DRIVERS or \
            "connect_timeout" in url.query:
        return uri
    return url.update_query_dict(
        {"connect_timeout": str(CATALOG_CONNECT_TIMEOUT)}).render_as_string(
            hide_password=False)


def open_catalog(spec: Optional[TableSpec]) -> None:
    """Connects to the Iceberg catalog of ``spec``, given or the default,
    before any work; ConfigError if it cannot be opened (a SQLite path that
    is not a regular file is not opened: a FIFO would block). A SQLite file
    that does not exist yet is a new catalog, made by the first commit: in
    a folder that exists, or (the default) in the output folder."""
    if spec is None or spec.format != "iceberg":
        return
    name, advice = _catalog_words(spec)
    if _in_memory(spec.catalog):
        raise ConfigError(f"{name} is an in-memory database, lost when the "
                          f"run ends, leaving the tables in no catalog: give "
                          f"a file, e.g. sqlite:////path/catalog.db, or leave "
                          f"the option out for {CATALOG_FILE} in --output")
    path = _sqlite_file(spec.catalog)
    if path is not None and os.path.exists(path) and \
            not os.path.isfile(path):
        raise ConfigError(f"{name} cannot be opened ({path} is not a "
                          f"regular file); {advice}")
    if path is not None and not os.path.exists(path):
        _check_new_catalog_folder(spec, name, path)
        return
    try:
        iceberg_catalog(spec)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy, drivers, I/O
        raise ConfigError(f"{name} cannot be opened ({type(error).__name__}"
                          f": {error_line(error)}); {advice}") from None


def _catalog_words(spec: TableSpec) -> tuple[str, str]:
    """How messages name the catalog of ``spec``, and the way out."""
    if _is_default_catalog(spec):
        return (f"the Iceberg catalog {_sqlite_file(spec.catalog)} (the "
                f"default, in --output)", "restore it from a backup, give "
                "the --iceberg-catalog that lists this output's tables, "
                "or use another --output")
    return (f"--iceberg-catalog {spec.catalog!r}",
            "fix the URI, start the database or install its driver")


def _is_default_catalog(spec: TableSpec) -> bool:
    return not is_uri(spec.output) and \
        spec.catalog == default_catalog(spec.output)


def _check_new_catalog_folder(spec: TableSpec, name: str, path: str) -> None:
    """A new SQLite catalog's folder must exist, unless it is the output
    folder of the default catalog (the run makes it)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) and not _is_default_catalog(spec):
        raise ConfigError(f"{name} cannot be opened (its folder {folder} "
                          f"does not exist); fix the URI or make the folder")


def check_catalog_lists(spec: Optional[TableSpec], names) -> None:
    """ConfigError unless, for each table ``name``, the catalog of ``spec``
    and the output agree: a table the output holds (its metadata files) is
    listed, and a listed table is located in this output. Otherwise a
    commit would start a second table over the first (a mistyped or
    deleted catalog), or add this output's rows to another output's table
    (a shared catalog without a namespace per output, a copied output)."""
    if spec is None or spec.format != "iceberg":
        return
    # A catalog file not made yet lists nothing; checking must not make it.
    catalog = None if _new_sqlite_file(spec.catalog) else iceberg_catalog(spec)
    for name in names:
        _check_table_place(catalog, spec, name)


def check_tables(spec: Optional[TableSpec], names, *,
                 published: bool) -> None:
    """ConfigError unless each table ``name`` of the output is whole: its
    log (Delta) or metadata (Iceberg) can be read, every data file it
    lists is there, and it exists if the output holds ``published`` runs.
    Otherwise the run's commit would fail after all the work, or start a
    new table without the earlier runs' rows (which ``--skip-done`` then
    skips), or leave a table that readers fail on. A store's failure (an
    object store's 503) is raised as it is. Call it after
    :func:`check_catalog_lists`."""
    if spec is None:
        return
    for name in names:
        _check_table_whole(spec, name, published)


def _check_table_whole(spec: TableSpec, name: str, published: bool) -> None:
    root = table_location(spec.output, name)
    with _damage_reported(spec, name):
        listed = _table_files(spec, name)
    kind, log, damaged = _damage_words(spec)
    if listed is None:
        if published:
            raise ConfigError(f"{fs.shown(spec.output)} holds earlier runs "
                              f"but no {kind} {fs.shown(root)} (its {log} "
                              f"is gone); "
                              f"{damaged}")
        return
    here = set(fs.match(join(root, "**"))) if is_uri(root) else None
    missing = [path for path in listed if not (
        path in here if here is not None else os.path.isfile(path))]
    if missing:
        raise ConfigError(f"the {kind} {fs.shown(root)} lists "
                          f"{len(missing)} data file(s) that are gone, e.g. "
                          f"{fs.shown(missing[0])}; "
                          f"{damaged}")


def _damage_words(spec: TableSpec) -> tuple[str, str, str]:
    """How messages name a damaged table of ``spec``'s format, its log,
    and the way out."""
    if spec.format == "delta":
        kind, log = "Delta table", "_delta_log"
    else:
        kind, log = "Iceberg table", "metadata"
    return kind, log, ("restore it from a backup, or give a new --output "
                       "for a new table (this output's ledger would skip "
                       "the files whose rows it lost)")


@contextlib.contextmanager
def _damage_reported(spec: TableSpec, name: str, passing=()):
    """A table's log or metadata that cannot be read (missing, truncated,
    not what the format expects), as ConfigError; a store's failure (an
    object store's 503: exit 1, run again) and ``passing`` pass as they
    are."""
    try:
        yield
    except (ConfigError, *passing):
        raise
    except Exception as error:  # noqa: BLE001 - each library's own errors
        if fs.is_store_error(error) and \
                not isinstance(error, FileNotFoundError):
            raise
        kind, log, damaged = _damage_words(spec)
        raise ConfigError(
            f"the {kind} {fs.shown(table_location(spec.output, name))} is "
            f"damaged, "
            f"its {log} cannot be read ({type(error).__name__}: "
            f"{error_line(error)}); {damaged}") from None


def _table_files(spec: TableSpec, name: str) -> Optional[list[str]]:
    """The data files of the table's current version (local ones as
    paths), or None if there is no table."""
    if spec.format == "delta":
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        _check_delta_commits(table_location(spec.output, name))
        try:
            table = DeltaTable(table_location(spec.output, name))
        except TableNotFoundError:
            return None
        # delta-rs gives them percent-encoded (a space as %20, '%' as %25)
        uris = [urllib.parse.unquote(uri) for uri in table.file_uris()]
    else:
        from pyiceberg.exceptions import NoSuchTableError

        if _new_sqlite_file(spec.catalog):
            return None
        try:
            table = iceberg_table(spec, name)
        except NoSuchTableError:
            return None
        uris = [task.file.file_path for task in table.scan().plan_files()]
    return [uri[len("file://"):] if uri.startswith("file://") else uri
            for uri in uris]


_DELTA_COMMIT = re.compile(r"[0-9]{20}\.json")


def _check_delta_commits(root: str) -> None:
    """ValueError for a commit file of 0 bytes in the table's _delta_log
    (a disk that filled, a copy cut short; a FIFO): delta-rs reads it as a
    commit of nothing, and the rows that commit added would silently
    vanish (or, the next version, every commit would fail on it)."""
    from apache_beam.io.filesystems import FileSystems

    pattern = join(root, "_delta_log", "*.json")
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        name = fs.basename(metadata.path)
        if _DELTA_COMMIT.fullmatch(name) and not metadata.size_in_bytes:
            raise ValueError(f"commit file {name} has 0 bytes")


def _new_sqlite_file(uri: str) -> Optional[str]:
    """The file of a ``sqlite:///PATH`` catalog that does not exist yet."""
    path = _sqlite_file(uri)
    return path if path and not os.path.exists(path) else None


def _in_memory(uri: str) -> bool:
    """Whether ``uri`` is an in-memory SQLite database (``sqlite://``,
    ``sqlite:///:memory:``, a ``file:`` URI with ``mode=memory``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except ArgumentError:  # open_catalog reports it
        return False
    return url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:")
        or "mode=memory" in uri)


def _sqlite_file(uri: str) -> Optional[str]:
    """The file of a ``sqlite:///PATH`` catalog (PATH percent-decoded, as
    SQLAlchemy reads it), or None (another database, or in memory)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except ArgumentError:  # open_catalog reports it
        return None
    if url.get_backend_name() != "sqlite" or url.database in (
            None, "", ":memory:") or url.database.startswith("file:"):
        return None
    return url.database


def _check_table_place(catalog, spec: TableSpec, name: str) -> None:
    from apache_beam.io.filesystems import FileSystems
    from pyiceberg.exceptions import NoSuchTableError

    here = table_location(spec.output, name)
    identifier = f"{spec.namespace}.{name}"
    try:
        if catalog is None:
            raise NoSuchTableError(identifier)
        with _damage_reported(spec, name, passing=(NoSuchTableError,)):
            there = catalog.load_table(identifier).location()
    except NoSuchTableError:
        if FileSystems.match([join(here, "metadata", "*.metadata.json")]
                             )[0].metadata_list:
            raise ConfigError(
                f"{here} holds an Iceberg table that the catalog "
                f"{spec.catalog} does not list as {identifier}: give the "
                f"--iceberg-catalog and --iceberg-namespace it was created "
                f"with (or register it there), or use another --output"
            ) from None
        return
    if _place(there) != _place(here):
        raise ConfigError(
            f"the catalog {spec.catalog} lists {identifier} at {there}, not "
            f"in --output {spec.output}: give each output its own "
            f"--iceberg-namespace in a shared catalog (a copied output "
            f"needs its own catalog)")


def _place(location: str) -> str:
    """A table location without ``file://`` and a trailing slash; a local
    one with its symbolic links resolved (the same folder, however
    reached)."""
    if location.startswith("file://"):
        location = location[len("file://"):]
    location = location.rstrip("/")
    return location if is_uri(location) else os.path.realpath(location)


def iceberg_table(spec: TableSpec, name: str, schema=None):
    """Loads the table ``namespace.name``; creates it (located in the
    output folder) when it is missing and ``schema`` is given."""
    from pyiceberg.exceptions import (
        NamespaceAlreadyExistsError,
        NoSuchTableError,
        TableAlreadyExistsError,
    )
    from sqlalchemy.exc import IntegrityError

    catalog = iceberg_catalog(spec)
    identifier = f"{spec.namespace}.{name}"
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        if schema is None:
            raise
    try:
        catalog.create_namespace(spec.namespace)
    except (NamespaceAlreadyExistsError, IntegrityError):
        pass  # created meanwhile by another run
    try:
        return catalog.create_table(
            identifier, schema=schema,
            location=table_location(spec.output, name),
            properties=ICEBERG_PROPERTIES)
    except (TableAlreadyExistsError, IntegrityError):  # likewise
        return catalog.load_table(identifier)


def iceberg_snapshot_of(table, run_id: str):
    """The snapshot that committed ``run_id``, or None."""
    for snapshot in table.snapshots():
        summary = snapshot.summary
        if summary is not None and summary.get(RUN_ID_KEY) == run_id:
            return snapshot
    return None


def commit_iceberg(spec: TableSpec, name: str, paths: list[str],
                   partition: dict, manifest: dict) -> bool:
    """Adds ``paths`` to the Iceberg table ``name`` in one snapshot; False
    if the run was committed before. Iceberg tables are not partitioned
    (the files do not hold ``run_date``; their folders still do)."""
    from pyiceberg.exceptions import CommitFailedException
    from sqlalchemy.exc import OperationalError

    from pipeline.outputs import count_rows

    schema = _read_schema(paths[0]).remove_metadata()
    rows = count_rows(paths)
    properties = commit_properties(manifest, rows)
    files = [_iceberg_path(path) for path in paths]
    error = None
    for _ in range(COMMIT_ATTEMPTS):
        try:
            table = iceberg_table(spec, name, schema)
            if iceberg_snapshot_of(table, manifest["run_id"]) is not None:
                return False
            with table.transaction() as transaction:
                if ICEBERG_PROPERTIES.items() - table.properties.items():
                    transaction.set_properties(ICEBERG_PROPERTIES)
                if set(schema.names) - set(table.schema().column_names):
                    with transaction.update_schema() as update:
                        update.union_by_name(schema)
                transaction.add_files(files, snapshot_properties=properties,
                                      check_duplicate_files=False)
            return True
        except (CommitFailedException, OperationalError) as failed:
            error = failed  # a concurrent commit, or SQLite busy: retry
    raise RuntimeError(f"Iceberg table {spec.namespace}.{name}: could not "
                       f"commit run {manifest['run_id']} after "
                       f"{COMMIT_ATTEMPTS} attempts: {error_line(error)}")


def _iceberg_path(path: str) -> str:
    return path if is_uri(path) else os.path.abspath(path)


def _read_schema(path: str):
    import pyarrow.parquet as pq

    with fs.open_ranges(path) as source:
        return pq.read_schema(source)
