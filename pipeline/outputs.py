"""The output folder of a run: checks before the run, finalising after it.

Layout of ``DIR`` (the output contract, documented in the README)::

    DIR/predictions/[run_date=YYYY-MM-DD/]part-<run_id>-SSSSS-of-NNNNN.parquet
    DIR/errors/[run_date=YYYY-MM-DD/]part-<run_id>-SSSSS-of-NNNNN.parquet
    DIR/_manifest.json
    DIR/_SUCCESS                   written last, only when the run finished

    DIR/_runs/<run_id>.json        every published run's manifest
    DIR/_ledger/                   files each run claimed (for --skip-done)
    DIR/_skipped/                  files --skip-done runs did not redo

While the pipeline runs, everything is written below ``DIR/_staging/<run_id>``
(Hive, Spark, Trino, DuckDB globs and Polars skip names starting with ``_``).
Only after the pipeline succeeded are the shards moved to where readers look,
then the manifest and ``_SUCCESS`` are written. A failed or killed run leaves
no Parquet file in ``predictions/`` or ``errors/`` and no ``_SUCCESS``.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from model_store.errors import ConfigError
from transforms import schema

PREDICTIONS_DIR, ERRORS_DIR = "predictions", "errors"
LEDGER_DIR, SKIPPED_DIR, RUNS_DIR = "_ledger", "_skipped", "_runs"
MANIFEST, SUCCESS, STAGING = "_manifest.json", "_SUCCESS", "_staging"
PUBLISH = "_publish.json"
SCHEMAS = {PREDICTIONS_DIR: schema.PREDICTIONS, ERRORS_DIR: schema.ERRORS,
           LEDGER_DIR: schema.LEDGER, SKIPPED_DIR: schema.SKIPPED}
# The tables readers query are partitioned; the bookkeeping is not.
PARTITIONED = (PREDICTIONS_DIR, ERRORS_DIR)
_GLOB_CHARS = "*?["


def is_uri(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts) if is_uri(base) else os.path.join(
        base, *parts)


def input_pattern(path: str) -> str:
    """A user's ``--input`` as a Beam match pattern; checks it exists.

    A folder becomes ``folder/**`` (every file below it, recursively); a
    glob is kept, and its folder part must exist; a file must exist. On
    object stores (``gs://``, ``s3://``), a path that is not a file is read
    as a folder prefix.
    """
    if any(c in path for c in _GLOB_CHARS):
        if not is_uri(path):
            static = path[:min(path.index(c) for c in _GLOB_CHARS
                               if c in path)]
            folder = os.path.dirname(static) or "."
            if not os.path.isdir(folder):
                raise ConfigError(f"input {path!r}: folder {folder!r} does "
                                  f"not exist")
            return os.path.abspath(path)
        return path
    if is_uri(path):
        return path if FileSystems.exists(path) and not path.endswith(
            "/") else join(path.rstrip("/"), "**")
    if os.path.isdir(path):
        return os.path.join(os.path.abspath(path), "**")
    if os.path.isfile(path):
        return os.path.abspath(path)
    raise ConfigError(f"input {path!r} does not exist (give a file, a folder "
                      f"or a glob such as 'images/**/*.png')")


def holds_earlier_run(output: str) -> bool:
    """Whether ``output`` has a manifest, a success marker or results."""
    for name in (MANIFEST, SUCCESS):
        if FileSystems.exists(join(output, name)):
            return True
    for name in (PREDICTIONS_DIR, ERRORS_DIR):
        match = FileSystems.match([join(output, name, "**")])[0]
        if match.metadata_list:
            return True
    return False


def check_output(output: str, *, overwrite: bool,
                 incremental: bool = False) -> None:
    """Fails before any work if ``output`` cannot be written, or holds an
    earlier run and neither ``overwrite`` nor ``incremental`` is set."""
    if not is_uri(output):
        if os.path.exists(output) and not os.path.isdir(output):
            raise ConfigError(f"output {output!r} is a file; give a folder")
        try:
            os.makedirs(output, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"output {output!r} cannot be created: "
                              f"{error.strerror}") from None
    probe = join(output, f"_write_test_{uuid.uuid4().hex}")
    try:
        with FileSystems.create(probe) as handle:
            handle.write(b"ok")
        FileSystems.delete([probe])
    except Exception as error:  # any filesystem's refusal means unwritable
        message = getattr(error, "strerror", None) or str(error).split("\n")[0]
        raise ConfigError(f"output {output!r} cannot be written: "
                          f"{message}") from None
    if not (overwrite or incremental) and holds_earlier_run(output):
        raise ConfigError(f"output {output!r} holds an earlier run; choose "
                          f"another folder, pass --skip-done to add to it, "
                          f"or --overwrite to replace it")


class RunOutputs:
    """Paths of one run, and publishing from staging to the output.

    Publishing is a roll-forward protocol: the list of moves and the run's
    manifest are written to ``_staging/<run_id>/_publish.json`` first, then
    the files are moved, then the manifest and ``_SUCCESS`` are written and
    the staging folder removed. If the process dies part way, the next run
    on the same output (:func:`recover`) finishes the moves, so a run is
    published whole or not at all.
    """

    def __init__(self, output: str, run_id: str, partition: str | None):
        self.output = output
        self.run_id = run_id
        self.partition = partition  # e.g. "run_date=2026-11-26", or None
        self.staging = join(output, STAGING, run_id)

    def staging_prefix(self, kind: str) -> str:
        return join(self.staging, kind, f"part-{self.run_id}")

    def final_dir(self, kind: str) -> str:
        parts = [kind] + ([self.partition] if kind in PARTITIONED
                          and self.partition else [])
        return join(self.output, *parts)

    def staged_files(self) -> dict:
        """``{kind: [staged Parquet files]}``; the tables readers query get
        an empty file with the schema when they have no rows."""
        staged = {}
        for kind, table_schema in SCHEMAS.items():
            files = _list(join(self.staging, kind, "*.parquet"))
            if not files and kind in PARTITIONED:
                empty = join(self.staging, kind,
                             f"part-{self.run_id}-00000-of-00001.parquet")
                _write_empty(empty, table_schema)
                files = [empty]
            staged[kind] = files
        return staged

    def destinations(self, staged: dict) -> dict:
        return {kind: [join(self.final_dir(kind), _basename(p))
                       for p in files] for kind, files in staged.items()}

    def publish(self, staged: dict, manifest: dict, *,
                overwrite: bool) -> None:
        """Moves the staged files into place, then writes the manifest and
        ``_SUCCESS``; see the class docstring for what a crash leaves."""
        if overwrite:
            self._remove_earlier_runs()
        moves = [(src, dst) for kind in staged
                 for src, dst in zip(staged[kind],
                                     self.destinations(staged)[kind])]
        _write_bytes(join(self.staging, PUBLISH), _json_bytes(
            {"moves": moves, "manifest": manifest}))
        _complete(self.output, self.staging, moves, manifest)

    def discard_staging(self) -> None:
        _remove_staging(self.output, self.staging)

    def _remove_earlier_runs(self) -> None:
        for name in (SUCCESS, MANIFEST, RUNS_DIR, *SCHEMAS):
            path = join(self.output, name)
            if FileSystems.exists(path):
                FileSystems.delete([path])


def recover(output: str) -> list[str]:
    """Finishes publishing runs that died while publishing, and removes the
    staging folders of runs that died before; returns the recovered run ids.

    Call it before a new run on ``output``; two runs must not write to the
    same output at the same time.
    """
    recovered = []
    for record_path in _list(join(output, STAGING, "*", PUBLISH)):
        staging = record_path[: -len(PUBLISH) - 1]
        with FileSystems.open(record_path) as handle:
            record = json.loads(handle.read())
        _complete(output, staging, record["moves"], record["manifest"])
        recovered.append(record["manifest"]["run_id"])
    _delete_quietly(join(output, STAGING))
    return recovered


def _complete(output: str, staging: str, moves, manifest: dict) -> None:
    """Moves what is not moved yet (idempotent), then marks the run done."""
    pending = [(src, dst) for src, dst in moves if FileSystems.exists(src)]
    for _, dst in pending:
        folder = dst.rsplit("/", 1)[0]
        if not is_uri(folder):
            os.makedirs(folder, exist_ok=True)
    if pending:
        _move([s for s, _ in pending], [d for _, d in pending])
    _commit_tables(manifest)
    body = _json_bytes(manifest)
    _write_bytes(join(output, RUNS_DIR, f"{manifest['run_id']}.json"), body)
    _write_bytes(join(output, MANIFEST), body)
    _remove_staging(output, staging)
    _write_bytes(join(output, SUCCESS), b"")


def _commit_tables(manifest: dict) -> None:
    """With ``--table-format delta|iceberg``, commits the moved files to
    the tables; idempotent by run id (``pipeline/tables.py``)."""
    if manifest.get("table"):
        from pipeline import tables
        tables.commit_run(tables.TableSpec.from_dict(manifest["table"]),
                          {kind: manifest["files"][kind]
                           for kind in PARTITIONED}, manifest)


def _remove_staging(output: str, staging: str) -> None:
    _delete_quietly(staging)
    if not is_uri(output):
        try:  # only when no other run stages here
            os.rmdir(join(output, STAGING))
        except OSError:
            pass


def ledger_files(output: str) -> list[str]:
    """Ledger files of the runs published in ``output``."""
    return _list(join(output, LEDGER_DIR, "*.parquet"))


def count_rows(paths: Iterable[str]) -> int:
    """Rows in Parquet files, from their footers only."""
    return sum(_metadata(p).num_rows for p in paths)


def read_table(paths: Iterable[str], columns=None) -> pa.Table:
    """Reads Parquet files into one table (for small outputs: errors)."""
    tables = []
    for path in paths:
        with FileSystems.open(path) as handle:
            tables.append(pq.read_table(io.BytesIO(handle.read()),
                                        columns=columns))
    return pa.concat_tables(tables) if tables else None


def _metadata(path: str):
    if not is_uri(path):
        return pq.read_metadata(path)
    with FileSystems.open(path) as handle:
        return pq.read_metadata(io.BytesIO(handle.read()))


def _list(pattern: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([pattern])[0]
                  .metadata_list)


def _move(sources: list[str], destinations: list[str]) -> None:
    FileSystems.rename(sources, destinations)


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as handle:
        handle.write(data)


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def _delete_quietly(path: str) -> None:
    try:
        if is_uri(path) or os.path.exists(path):
            FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - leftovers below "_" are harmless
        pass


def _write_empty(path: str, table_schema: pa.Schema) -> None:
    buffer = io.BytesIO()
    pq.write_table(table_schema.empty_table(), buffer)
    _write_bytes(path, buffer.getvalue())
