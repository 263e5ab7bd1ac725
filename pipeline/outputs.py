"""The output folder of a run: checks before the run, finalising after it.

Layout of ``DIR`` (the output contract, documented in the README)::

    DIR/predictions/[run_date=YYYY-MM-DD/]part-<run_id>-SSSSS-of-NNNNN.parquet
    DIR/errors/[run_date=YYYY-MM-DD/]part-<run_id>-SSSSS-of-NNNNN.parquet
    DIR/_manifest.json
    DIR/_SUCCESS                   written last, only when the run finished

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
MANIFEST, SUCCESS, STAGING = "_manifest.json", "_SUCCESS", "_staging"
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


def check_output(output: str, *, overwrite: bool) -> None:
    """Fails before any work if ``output`` cannot be written, or holds an
    earlier run and ``overwrite`` is not set."""
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
    if not overwrite and holds_earlier_run(output):
        raise ConfigError(f"output {output!r} holds an earlier run; choose "
                          f"another folder or pass --overwrite to replace it")


class RunOutputs:
    """Paths of one run, and the final move from staging to the output."""

    def __init__(self, output: str, run_id: str, partition: str | None):
        self.output = output
        self.run_id = run_id
        self.partition = partition  # e.g. "run_date=2026-11-26", or None
        self.staging = join(output, STAGING, run_id)

    def staging_prefix(self, kind: str) -> str:
        return join(self.staging, kind, f"part-{self.run_id}")

    def final_dir(self, kind: str) -> str:
        parts = [kind] + ([self.partition] if self.partition else [])
        return join(self.output, *parts)

    def finalize(self, *, overwrite: bool) -> dict:
        """Moves the staged shards into place; returns ``{kind: [paths]}``.

        An output with no rows still gets one empty Parquet file with the
        schema, so readers always find the columns.
        """
        if overwrite:
            self._remove_earlier_run()
        moved = {}
        for kind, table_schema in ((PREDICTIONS_DIR, schema.PREDICTIONS),
                                   (ERRORS_DIR, schema.ERRORS)):
            staged = _list(join(self.staging, kind, "*.parquet"))
            target = self.final_dir(kind)
            if not is_uri(target):
                os.makedirs(target, exist_ok=True)
            if not staged:
                empty = join(self.staging, kind,
                             f"part-{self.run_id}-00000-of-00001.parquet")
                _write_empty(empty, table_schema)
                staged = [empty]
            destinations = [join(target, _basename(p)) for p in staged]
            FileSystems.rename(staged, destinations)
            moved[kind] = destinations
        self.discard_staging()
        return moved

    def discard_staging(self) -> None:
        for path in (self.staging, join(self.output, STAGING)):
            try:
                if is_uri(path) or os.path.exists(path):
                    FileSystems.delete([path])
            except Exception:  # noqa: BLE001 - leftovers are harmless ("_")
                pass

    def write_manifest(self, manifest: dict) -> None:
        _write_bytes(join(self.output, MANIFEST),
                     (json.dumps(manifest, indent=2) + "\n").encode())

    def write_success(self) -> None:
        _write_bytes(join(self.output, SUCCESS), b"")

    def _remove_earlier_run(self) -> None:
        for name in (SUCCESS, MANIFEST, PREDICTIONS_DIR, ERRORS_DIR):
            path = join(self.output, name)
            if FileSystems.exists(path):
                FileSystems.delete([path])


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


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as handle:
        handle.write(data)


def _write_empty(path: str, table_schema: pa.Schema) -> None:
    buffer = io.BytesIO()
    pq.write_table(table_schema.empty_table(), buffer)
    _write_bytes(path, buffer.getvalue())
