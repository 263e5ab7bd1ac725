"""Incremental runs: skip files a committed run already classified.

A file is done when the ledger (``transforms.schema.LEDGER``) of an earlier
committed run holds, for the same model name and version, the same path and

* ``by="mtime"`` (default): the same size and modification time, from the
  listing alone; or
* ``by="content"``: the same sha256 of the bytes, for stores that rewrite
  unchanged files (new modification time, same content). Each file is then
  read twice: once to hash it here, once to decode it if it is new.

The check is a Beam join (``CoGroupByKey``) of the matched files with the
ledger, so it scales with the bucket rather than with the driver's memory.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import parquetio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.metrics import Metrics

from model_store.errors import ConfigError

from transforms import schema
from transforms.decode import METRICS_NAMESPACE
from transforms.files import DEFAULT_MAX_FILE_BYTES, iter_chunks

NEW, SKIPPED = "new", "skipped"
SKIP_BY = ("mtime", "content")


def file_key(metadata) -> tuple:
    return (int(metadata.size_in_bytes),
            float(metadata.last_updated_in_seconds))


def _done_key(by: str, size, mtime, sha256):
    if by == "content":
        return sha256  # None (unreadable, or an older ledger) matches nothing
    return (int(size), float(mtime))


class _DigestFn(beam.DoFn):
    """Attaches the sha256 of each file's bytes as ``metadata.sha256``."""

    def __init__(self, max_file_bytes: int):
        self._max_bytes = max_file_bytes

    def process(self, metadata: FileMetadata):
        copy = FileMetadata(metadata.path, metadata.size_in_bytes,
                            metadata.last_updated_in_seconds)
        try:
            digest = hashlib.sha256()
            for chunk in iter_chunks(metadata.path,
                                     size=metadata.size_in_bytes,
                                     max_bytes=self._max_bytes):
                digest.update(chunk)
            copy.sha256 = digest.hexdigest()
        except Exception:  # unreadable: classified, so the read error is
            copy.sha256 = None  # recorded as an error row by the decoder
        yield copy


class _SplitDoneFn(beam.DoFn):
    def __init__(self, run_id: str, by: str):
        self._run_id = run_id
        self._by = by
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "files_skipped")

    def process(self, joined):
        path, groups = joined
        done = {_done_key(self._by, r["size"], r["mtime"], r.get("sha256")):
                r["run_id"] for r in groups["ledger"]}
        done.pop(None, None)
        for metadata in groups["matched"]:
            previous = done.get(_done_key(
                self._by, metadata.size_in_bytes,
                metadata.last_updated_in_seconds,
                getattr(metadata, "sha256", None)))
            if previous is None:
                yield metadata
            else:
                self._skipped.inc()
                yield beam.pvalue.TaggedOutput(SKIPPED, {
                    "path": path, "reason": "done",
                    "previous_run_id": previous, "run_id": self._run_id})


class SkipDone(beam.PTransform):
    """Matched ``FileMetadata`` -> ``{"new": metadata to classify,
    "skipped": rows of transforms.schema.SKIPPED}``.

    Args:
        ledger_files: Parquet files of earlier committed runs' ledgers.
        model_name: only entries of this model ...
        model_version: ... and version count as done.
        run_id: this run's identifier, for the skipped rows.
        by: ``"mtime"`` or ``"content"`` (see the module docstring).
        max_file_bytes: larger files are not hashed (they become read
            errors when classified).
    """

    def __init__(self, ledger_files: Sequence[str], *, model_name: str,
                 model_version: str, run_id: str, by: str = "mtime",
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES):
        super().__init__()
        if by not in SKIP_BY:
            raise ConfigError(f"--skip-done-by must be one of "
                              f"{', '.join(SKIP_BY)}, got {by!r}")
        self._files = list(ledger_files)
        self._model = (model_name, str(model_version))
        self._run_id = run_id
        self._by = by
        self._max_file_bytes = max_file_bytes

    def expand(self, matched):
        model = self._model
        if self._by == "content":
            matched = matched | "Digest" >> beam.ParDo(
                _DigestFn(self._max_file_bytes))
        keyed = matched | "KeyMatched" >> beam.Map(lambda m: (m.path, m))
        done = (matched.pipeline
                | "LedgerFiles" >> beam.Create(self._files)
                | "ReadLedger" >> parquetio.ReadAllFromParquet()
                | "ThisModel" >> beam.Filter(
                    lambda r: (r["model_name"], r["model_version"]) == model)
                | "KeyLedger" >> beam.Map(lambda r: (r["path"], r)))
        split = ({"matched": keyed, "ledger": done}
                 | "Join" >> beam.CoGroupByKey()
                 | "Split" >> beam.ParDo(_SplitDoneFn(self._run_id, self._by))
                 .with_outputs(SKIPPED, main=NEW))
        return {NEW: split[NEW], SKIPPED: split[SKIPPED]}


def ledger_table(batch, *, model_name: str, model_version: str,
                 run_id: str) -> pa.Table:
    """The ledger rows (``schema.LEDGER``) of a batch of ``FileMetadata``."""
    keys = [file_key(m) for m in batch]
    n = len(batch)
    return pa.Table.from_pydict({
        "path": [m.path for m in batch],
        "size": [size for size, _ in keys],
        "mtime": [mtime for _, mtime in keys],
        "model_name": [model_name] * n,
        "model_version": [str(model_version)] * n,
        "run_id": [run_id] * n,
        "sha256": [getattr(m, "sha256", None) for m in batch]},
        schema=schema.LEDGER)
