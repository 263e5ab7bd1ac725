"""Keeping ``DIR/_ledger/`` to a few files: compaction.

Every published run adds its ledger file(s) (``transforms.schema.LEDGER``),
and every ``--skip-done`` run and every ``watch`` start reads them all: a
watcher publishing a window a minute adds 1,440 a day. Once
:data:`COMPACT_FILES` small ones (under :data:`SMALL_BYTES` each) have
accumulated, :func:`compact` merges them, a group of at most
:data:`GROUP_BYTES` at a time, into ``_ledger/compacted-<id>.parquet``:
the same rows (columns an older release did not write are null), nothing
dropped. Its footer lists the files it holds (``SOURCES_KEY``).

Each group is merged in steps that can all be redone, under the output's
lock (``pipeline/outputs.py``), through the operations publishing uses
(tests inject faults there):

1. write the merged file as ``_ledger/_compacting-<id>.tmp`` (readers of
   ``*.parquet`` and pyarrow's dataset discovery ignore it);
2. move it to ``_ledger/compacted-<id>.parquet``: from here on its rows
   are readable, some of them twice while its sources remain;
3. delete its sources.

A kill part way leaves either the sources alone (step 1: the ``.tmp`` file
is removed by the next compaction) or the merged file and some sources: the
next compaction deletes every file a merged file lists. A row read twice
meanwhile changes nothing: ``--skip-done`` and ``watch`` ask whether a
file's key is in the ledger, not how often.
"""

from __future__ import annotations

import io
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from model_store import fs
from pipeline import outputs
from transforms import schema

#: Merge once this many small ledger files have accumulated.
COMPACT_FILES = 64
#: Ledger files at least this large are left as they are (a big run's).
SMALL_BYTES = 8 * 2**20
#: At most this many bytes of ledger files go into one merged file (read
#: into memory together).
GROUP_BYTES = 64 * 2**20
MERGED_PREFIX, PARTIAL_PREFIX = "compacted-", "_compacting-"
#: The key, in a merged file's Parquet footer, of the JSON list of the
#: names of the files it holds.
SOURCES_KEY = b"imgclass.compacted_from"


def compact(output: str) -> int:
    """Finishes any interrupted compaction in ``output``, then merges its
    small ledger files if there are :data:`COMPACT_FILES` of them; returns
    how many files were merged. Call it holding the output's lock, with
    no publishing pending (``outputs.recover`` done)."""
    if outputs.pending_publishes(output):
        return 0  # their moves may name ledger files: leave those be
    folder = fs.join(output, outputs.LEDGER_DIR)
    _finish(folder)
    sizes = dict(_sizes(folder))
    small = [path for path, size in sizes.items() if size < SMALL_BYTES]
    if len(small) < COMPACT_FILES:
        return 0
    merged = 0
    for group in _groups(small, sizes):
        _merge(folder, group)
        merged += len(group)
    return merged


def _sizes(folder: str) -> list[tuple[str, int]]:
    """``(path, bytes)`` of the ledger files in ``folder``, by name."""
    found = FileSystems.match([fs.join(folder, "*.parquet")])[0].metadata_list
    return sorted((m.path, m.size_in_bytes) for m in found)


def _groups(paths: list[str], sizes: dict) -> list[list[str]]:
    """``paths`` cut, in order, into groups of at most GROUP_BYTES (and at
    least two files: a lone file gains nothing from being rewritten)."""
    groups, group, total = [], [], 0
    for path in paths:
        if group and total + sizes[path] > GROUP_BYTES:
            groups.append(group)
            group, total = [], 0
        group.append(path)
        total += sizes[path]
    groups.append(group)
    return [g for g in groups if len(g) > 1]


def _merge(folder: str, sources: list[str]) -> None:
    table = pa.concat_tables(map(_as_ledger, outputs.read_tables(sources)))
    names = [fs.basename(path) for path in sources]
    table = table.replace_schema_metadata({SOURCES_KEY: json.dumps(names)})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    name = uuid.uuid4().hex
    partial = fs.join(folder, f"{PARTIAL_PREFIX}{name}.tmp")
    outputs._write_file(partial, sink.getvalue())
    outputs._move([partial], [fs.join(folder, f"{MERGED_PREFIX}{name}.parquet")])
    _delete(sources)


def _delete(paths: list[str]) -> None:
    """Deletes ``paths``, several at once on object stores (where each is a
    round trip: an output's first merge may delete thousands)."""
    outputs.map_files(outputs._delete_file, paths)


def _as_ledger(table: pa.Table) -> pa.Table:
    """``table`` with the ledger's columns in order: a column an older
    release did not write is null."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.schema.names
               else pa.nulls(table.num_rows, f.type) for f in schema.LEDGER]
    return pa.Table.from_arrays(columns, schema=schema.LEDGER)


def _finish(folder: str) -> None:
    """Completes interrupted compactions: removes partial merged files, and
    the sources of merged files that are still there."""
    for partial in fs.match(fs.join(folder, f"{PARTIAL_PREFIX}*")):
        outputs._delete_file(partial)
    present = dict(_sizes(folder))
    names = {fs.basename(path): path for path in present}
    merged = [p for p in present if fs.basename(p).startswith(MERGED_PREFIX)]
    covered = []
    for path, sources in zip(merged, outputs.map_files(_sources, merged)):
        covered += [names.pop(name) for name in sources
                    if name in names and names[name] != path]
    _delete(covered)


def _sources(merged: str) -> list[str]:
    """The names a merged file's footer lists; none if it is unreadable
    (``outputs.check_done_files`` then names the damage)."""
    try:
        metadata = outputs.footer(merged).metadata or {}
        names = json.loads(metadata.get(SOURCES_KEY, b"[]"))
    except Exception:  # noqa: BLE001 - damage is reported by the checks
        return []
    return [n for n in names if isinstance(n, str)] \
        if isinstance(names, list) else []
