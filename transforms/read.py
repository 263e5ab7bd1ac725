"""Matching file patterns and opening the matched files, with Beam's fileio
(so every Beam filesystem works: local, gs://, s3://, ...)."""

from __future__ import annotations

import time
from typing import Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.metrics import Metrics

from transforms.decode import METRICS_NAMESPACE


class _CountMatchedFn(beam.DoFn):
    def __init__(self):
        self._matched = Metrics.counter(METRICS_NAMESPACE, "files_matched")

    def process(self, metadata: FileMetadata):
        self._matched.inc()
        yield metadata


# Names that mark a file as still being written (``imgclass watch``): write
# to such a name, then rename the finished file.
IN_PROGRESS_PREFIXES = (".",)
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


def is_settled(metadata: FileMetadata, settle_seconds: float,
               now: Optional[float] = None) -> bool:
    """Whether a file looks finished: its name does not mark it as in
    progress, and it was last modified at least ``settle_seconds`` ago."""
    name = metadata.path.rstrip("/").rsplit("/", 1)[-1]
    if name.startswith(IN_PROGRESS_PREFIXES) or name.lower().endswith(
            IN_PROGRESS_SUFFIXES):
        return False
    now = time.time() if now is None else now
    return float(metadata.last_updated_in_seconds or 0.0) <= (
        now - settle_seconds)


class MatchFiles(beam.PTransform):
    """File patterns -> ``FileMetadata`` of every matched file.

    A pattern matching nothing is not an error (a night with no new files).

    Args:
        settle_seconds: if given (``imgclass watch``), files that may still
            be being written are left out before they are counted: see
            :func:`is_settled`. A later run picks them up. Default: none
            are left out.
    """

    def __init__(self, settle_seconds: Optional[float] = None):
        super().__init__()
        self._settle = settle_seconds

    def expand(self, patterns):
        matched = patterns | "Match" >> fileio.MatchAll(
            fileio.EmptyMatchTreatment.ALLOW)
        if self._settle is not None:
            matched = matched | "Settled" >> beam.Filter(
                is_settled, self._settle)
        return matched | "Count" >> beam.ParDo(_CountMatchedFn())


class BatchFiles(beam.PTransform):
    """``FileMetadata`` -> lists of up to ``batch_size`` of them, spread over
    the workers.

    Files travel in batches from here on: each later stage pays Beam's
    per-element cost once per batch, not once per image (bench/README.md),
    and the reshuffle moves a few hundred small lists instead of every file's
    metadata, so that reading and decoding spread over all workers, not only
    the one that listed the folder.
    """

    def __init__(self, batch_size: int):
        super().__init__()
        self._batch_size = batch_size

    def expand(self, matched):
        return (matched
                | "Batch" >> beam.BatchElements(
                    min_batch_size=self._batch_size,
                    max_batch_size=self._batch_size)
                | "Spread" >> beam.Reshuffle())
