"""Matching file patterns and opening the matched files, with Beam's fileio
(so every Beam filesystem works: local, gs://, s3://, ...)."""

from __future__ import annotations

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


class MatchFiles(beam.PTransform):
    """File patterns -> ``FileMetadata`` of every matched file.

    A pattern matching nothing is not an error (a night with no new files).
    The matches are redistributed so that reading and decoding spread over
    all workers, not only the one that listed the folder.
    """

    def expand(self, patterns):
        return (patterns
                | "Match" >> fileio.MatchAll(
                    fileio.EmptyMatchTreatment.ALLOW)
                | "Count" >> beam.ParDo(_CountMatchedFn())
                | "Spread" >> beam.Reshuffle())


class OpenFiles(beam.PTransform):
    """``FileMetadata`` -> ``ReadableFile`` (bytes are read by the decoder)."""

    def expand(self, matches):
        return matches | "Open" >> fileio.ReadMatches()
