"""Incremental runs: skip files a committed run already classified.

A file is done when the ledger (``transforms.schema.LEDGER``) of an earlier
committed run holds, for the same model name and version, the same path and

* ``by="mtime"`` (default): the same size and modification time, from the
  listing alone; or
* ``by="content"``: the same sha256 of the bytes, for stores that rewrite
  unchanged files (new modification time, same content). Each file is then
  read twice: once to hash it here, once to decode it if it is new. A
  ledger row without a sha256 (written by a ``by="mtime"`` run, or for a
  file that could not be read) is compared by size and modification time,
  so that switching to content mode does not classify everything again.

A file that failed is retried, per stage of its error row in the run the
ledger names: ``read`` and ``predict`` errors (a network filesystem hiccup,
a permission fixed since, a worker that ran out of memory) always; ``decode``
and ``preprocess`` errors of an unchanged file (a corrupt file stays
corrupt) only with ``retry_errors``. Retried files are classified again and
carry the stage in the ledger's ``retried_stage``.

The check is a Beam join (``CoGroupByKey``) of the matched files with the
ledger and the earlier error rows, so it scales with the bucket rather than
with the driver's memory.
"""

from __future__ import annotations

import collections
import hashlib
from typing import NamedTuple, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import parquetio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.metrics import Metrics

from model_store import fs
from model_store.errors import ConfigError
from transforms import schema
from transforms.common import METRICS_NAMESPACE
from transforms.defaults import SKIP_BY
from transforms.files import DEFAULT_MAX_FILE_BYTES, iter_chunks

NEW = "new"  # the main output: files to classify (SKIPPED_TAG: the others)
# Error stages whose files the next --skip-done run classifies again.
RETRIED_STAGES = ("read", "predict")


class MatchedFile(NamedTuple):
    """A matched file and what the skip check learnt about it (the ledger's
    ``sha256`` and ``retried_stage``). It reads as the ``FileMetadata`` it
    wraps (``path``, ``size_in_bytes``, ``last_updated_in_seconds``), so the
    steps after the check take either."""
    metadata: FileMetadata
    sha256: Optional[str] = None  # by="content" only
    retried_stage: Optional[str] = None

    @classmethod
    def of(cls, file) -> "MatchedFile":
        """``file`` (``FileMetadata`` or MatchedFile) as a MatchedFile."""
        return file if isinstance(file, MatchedFile) else cls(file)

    @property
    def path(self) -> str:
        return self.metadata.path

    @property
    def size_in_bytes(self) -> int:
        return self.metadata.size_in_bytes

    @property
    def last_updated_in_seconds(self) -> float:
        return self.metadata.last_updated_in_seconds


def packed(file):
    """A matched file as it travels between stages: a ``FileMetadata`` as
    the plain tuple of its fields, a :class:`MatchedFile` as that tuple and
    what the check learnt; tuples Beam's coder writes without pickling (a
    third of the bytes, about 3 us less per file each way: bench/README.md).
    Anything else (a listing error) as it is."""
    if type(file) is FileMetadata:
        return file.path, file.size_in_bytes, file.last_updated_in_seconds
    if type(file) is MatchedFile and type(file.metadata) is FileMetadata:
        return (*packed(file.metadata), file.sha256, file.retried_stage)
    return file


def unpacked(value):
    """The file :func:`packed` made ``value`` of."""
    if type(value) is not tuple:
        return value
    metadata = FileMetadata(*value[:3])
    return metadata if len(value) == 3 else MatchedFile(metadata, *value[3:])


def file_key(metadata) -> tuple:
    return (int(metadata.size_in_bytes),
            float(metadata.last_updated_in_seconds))


def _done_key(by: str, size, mtime, sha256):
    """What makes a ledger row's file done: its size and modification time;
    with ``by="content"`` its sha256, unless it has none (a row of an
    ``mtime`` run, or a file that could not be read), then the same."""
    if by == "content" and sha256 is not None:
        return sha256
    return (int(size), float(mtime))


def _matched_keys(by: str, matched: "MatchedFile") -> list:
    """The done keys a matched file is found under: its size and time
    (rows without a sha256), and with ``by="content"`` its sha256."""
    keys = [file_key(matched)]
    if by == "content" and matched.sha256 is not None:
        keys.append(matched.sha256)
    return keys


class _DigestFn(beam.DoFn):
    """A :class:`MatchedFile` with the sha256 of the file's bytes."""

    def __init__(self, max_file_bytes: int):
        self._max_bytes = max_file_bytes

    def process(self, metadata: FileMetadata):
        try:
            digest = hashlib.sha256()
            for chunk in iter_chunks(metadata.path,
                                     size=metadata.size_in_bytes,
                                     max_bytes=self._max_bytes):
                digest.update(chunk)
            sha256 = digest.hexdigest()
        except Exception:  # unreadable: classified, so the read error is
            sha256 = None  # recorded as an error row by the decoder
        yield MatchedFile(metadata, sha256=sha256)


class _SplitDoneFn(beam.DoFn):
    def __init__(self, run_id: str, by: str, retry_errors: bool):
        self._run_id = run_id
        self._by = by
        self._retry_errors = retry_errors
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "files_skipped")
        self._retried = Metrics.counter(METRICS_NAMESPACE, "files_retried")

    def _retried_stage(self, stage):
        """The stage, if an error at it means "classify again"."""
        if stage is not None and (self._retry_errors
                                  or stage in RETRIED_STAGES):
            return stage
        return None

    def process(self, joined):
        path, groups = joined
        runs = {}  # done key -> runs of this model that took the file
        for r in groups["ledger"]:
            key = _done_key(self._by, r["size"], r["mtime"], r.get("sha256"))
            runs.setdefault(key, []).append(r["run_id"])
        failed = dict(groups["errors"])  # run id -> stage of its error row
        for matched in map(MatchedFile.of,
                           map(unpacked, groups["matched"])):
            earlier = [run for key in _matched_keys(self._by, matched)
                       for run in runs.get(key, [])]
            done = [run for run in earlier
                    if self._retried_stage(failed.get(run)) is None]
            if done:
                self._skipped.inc()
                yield beam.pvalue.TaggedOutput(schema.SKIPPED_TAG, {
                    "path": path, "reason": "done",
                    "previous_run_id": max(done), "run_id": self._run_id})
            elif earlier:
                self._retried.inc()
                yield matched._replace(retried_stage=self._retried_stage(
                    failed[max(earlier)]))
            else:
                yield matched


class SkipDone(beam.PTransform):
    """Matched ``FileMetadata`` -> ``{"new": metadata to classify,
    "skipped": rows of transforms.schema.SKIPPED}``.

    Args:
        ledger_files: Parquet files of earlier committed runs' ledgers.
        error_files: Parquet files of earlier committed runs' error rows.
        model_name: only entries of this model ...
        model_version: ... and version count as done.
        run_id: this run's identifier, for the skipped rows.
        by: ``"mtime"`` or ``"content"`` (see the module docstring).
        max_file_bytes: larger files are not hashed (they become read
            errors when classified).
        retry_errors: retry files whose earlier run failed at any stage,
            not only at ``RETRIED_STAGES``.
    """

    def __init__(self, ledger_files: Sequence[str], *, model_name: str,
                 model_version: str, run_id: str, by: str = "mtime",
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 error_files: Sequence[str] = (), retry_errors: bool = False):
        super().__init__()
        if by not in SKIP_BY:
            raise ConfigError(f"--skip-done-by must be one of "
                              f"{', '.join(SKIP_BY)}, got {by!r}")
        self._files = list(ledger_files)
        self._model = (model_name, str(model_version))
        self._run_id = run_id
        self._by = by
        self._max_file_bytes = max_file_bytes
        self._error_files = list(error_files)
        self._retry_errors = retry_errors

    def expand(self, matched):
        model = self._model
        if self._by == "content":
            matched = matched | "Digest" >> beam.ParDo(
                _DigestFn(self._max_file_bytes))
        keyed = matched | "KeyMatched" >> beam.Map(
            lambda m: (m.path, packed(m)))
        done = (matched.pipeline
                | "LedgerFiles" >> beam.Create(self._files)
                | "ReadLedger" >> parquetio.ReadAllFromParquet()
                | "ThisModel" >> beam.Filter(
                    lambda r: (r["model_name"], r["model_version"]) == model)
                | "KeyLedger" >> beam.Map(lambda r: (r["path"], r)))
        failed = (matched.pipeline
                  | "ErrorFiles" >> beam.Create(self._error_files)
                  | "ReadErrors" >> parquetio.ReadAllFromParquet(
                      columns=["path", "stage", "run_id"])
                  | "KeyErrors" >> beam.Map(
                      lambda r: (r["path"], (r["run_id"], r["stage"]))))
        split = ({"matched": keyed, "ledger": done, "errors": failed}
                 | "Join" >> beam.CoGroupByKey()
                 | "Split" >> beam.ParDo(_SplitDoneFn(
                     self._run_id, self._by, self._retry_errors))
                 .with_outputs(schema.SKIPPED_TAG, main=NEW))
        return {NEW: split[NEW],
                schema.SKIPPED_TAG: split[schema.SKIPPED_TAG]}


def ledger_table(batch, *, model_name: str, model_version: str,
                 run_id: str) -> pa.Table:
    """The ledger rows (``schema.LEDGER``) of a batch of ``FileMetadata``
    or :class:`MatchedFile`."""
    batch = [MatchedFile.of(m) for m in batch]
    keys = [file_key(m) for m in batch]
    n = len(batch)
    return pa.Table.from_pydict({
        "path": [m.path for m in batch],
        "size": [size for size, _ in keys],
        "mtime": [mtime for _, mtime in keys],
        "model_name": [model_name] * n,
        "model_version": [str(model_version)] * n,
        "run_id": [run_id] * n,
        "sha256": [m.sha256 for m in batch],
        "retried_stage": [m.retried_stage for m in batch]},
        schema=schema.LEDGER)


def count_retried(ledger_files: Sequence[str]) -> dict:
    """``{stage: files}`` retried by the run that wrote these ledger files."""
    import pyarrow.parquet as pq

    counts = collections.Counter()
    for path in ledger_files:
        with fs.open_ranges(path) as source:
            column = pq.read_table(source, columns=["retried_stage"]).column(0)
        counts.update(column.drop_null().to_pylist())
    return dict(counts)
