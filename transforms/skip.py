"""Incremental runs: skip files a committed run already classified.

A file is done when the ledger (``transforms.schema.LEDGER``) of an earlier
committed run holds the same path, size and modification time for the same
model name and version. The check is a Beam join (``CoGroupByKey``) of the
matched files with the ledger, so it scales with the bucket rather than with
the driver's memory.
"""

from __future__ import annotations

from typing import Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import parquetio
from apache_beam.metrics import Metrics

from transforms import schema
from transforms.decode import METRICS_NAMESPACE

NEW, SKIPPED = "new", "skipped"


def file_key(metadata) -> tuple:
    return (int(metadata.size_in_bytes),
            float(metadata.last_updated_in_seconds))


class _SplitDoneFn(beam.DoFn):
    def __init__(self, run_id: str):
        self._run_id = run_id
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "files_skipped")

    def process(self, joined):
        path, groups = joined
        done = {(int(r["size"]), float(r["mtime"])): r["run_id"]
                for r in groups["ledger"]}
        for metadata in groups["matched"]:
            previous = done.get(file_key(metadata))
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
    """

    def __init__(self, ledger_files: Sequence[str], *, model_name: str,
                 model_version: str, run_id: str):
        super().__init__()
        self._files = list(ledger_files)
        self._model = (model_name, str(model_version))
        self._run_id = run_id

    def expand(self, matched):
        model = self._model
        keyed = matched | "KeyMatched" >> beam.Map(lambda m: (m.path, m))
        done = (matched.pipeline
                | "LedgerFiles" >> beam.Create(self._files)
                | "ReadLedger" >> parquetio.ReadAllFromParquet()
                | "ThisModel" >> beam.Filter(
                    lambda r: (r["model_name"], r["model_version"]) == model)
                | "KeyLedger" >> beam.Map(lambda r: (r["path"], r)))
        split = ({"matched": keyed, "ledger": done}
                 | "Join" >> beam.CoGroupByKey()
                 | "Split" >> beam.ParDo(_SplitDoneFn(self._run_id))
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
        "run_id": [run_id] * n}, schema=schema.LEDGER)
