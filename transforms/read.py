"""Matching file patterns, once per file, and batching the matched files.

Local patterns are listed by ``transforms.files.list_pattern`` (symlinks
followed safely, unreadable folders reported, non-UTF-8 names escaped); other
Beam filesystems (gs://, s3://, ...) by Beam's own matcher."""

from __future__ import annotations

import time
from typing import Iterable, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import FileMetadata
from apache_beam.metrics import Metrics

from model_store.errors import ConfigError, check_positive, check_text
from model_store.fs import basename
from model_store.preprocessing import finite
from transforms.common import METRICS_NAMESPACE, described_error_row
from transforms.files import ListingError, list_identified
from transforms.schema import ERRORS_TAG
from transforms.skip import file_key, packed, unpacked

# Names that mark a file as still being written (``imgclass watch``): write
# to such a name, then rename the finished file.
IN_PROGRESS_PREFIXES = (".",)
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


def in_progress(path: str) -> bool:
    """Whether a file's name marks it as still being written."""
    name = basename(path)
    return name.startswith(IN_PROGRESS_PREFIXES) or name.lower().endswith(
        IN_PROGRESS_SUFFIXES)


def is_settled(metadata: FileMetadata, settle_seconds: float,
               now: float) -> bool:
    """Whether a file looks finished at ``now`` (Unix seconds): its name
    does not mark it as in progress, and it was last modified at least
    ``settle_seconds`` before."""
    return not in_progress(metadata.path) and float(
        metadata.last_updated_in_seconds or 0.0) <= now - settle_seconds


def modified_in_future(metadata: FileMetadata, now: float) -> bool:
    """Whether a file named as finished was last modified after ``now`` (a
    skewed clock where it was written, ``cp -p`` from there):
    :func:`is_settled` holds for it only once the clock passes that time."""
    return not in_progress(metadata.path) and float(
        metadata.last_updated_in_seconds or 0.0) > now


def file_version(metadata: FileMetadata) -> tuple:
    """``(path, size, mtime)``: a file as listed; a change makes another."""
    return (metadata.path, *file_key(metadata))


def one_per_file(real: str, items):
    """What stands for one file that one or more paths reach (several
    patterns, or symlinks to one file; ``real`` its real path, as
    :func:`transforms.files.list_identified` gives it): its real path if
    that was listed (a link added later changes nothing), else the first
    path in sorted order; a file before what could not be read."""
    return min(items, key=lambda i: (isinstance(i, ListingError),
                                     i.path != real, i.path))


class _ListFn(beam.DoFn):
    def __init__(self, exclude):
        self._exclude = tuple(exclude)

    def process(self, pattern: str):
        unusable = _unusable(pattern)
        if unusable is not None:
            yield unusable.path, unusable
            return
        for identity, item in list_identified(pattern, exclude=self._exclude):
            yield identity, packed(item)


def _unusable(pattern) -> Optional[ListingError]:
    """The error row of a pattern that names no file (the empty string
    would list the working folder), else None."""
    if not isinstance(pattern, str):
        return ListingError(repr(pattern), "TypeError",
                            f"a pattern must be a string, got "
                            f"{type(pattern).__name__} {pattern!r}")
    if not pattern:
        return ListingError("", "ValueError",
                            "an empty pattern: give a file, a folder or a "
                            "glob such as 'images/**/*.png'")
    return None


class _SplitFn(beam.DoFn):
    """One of the items listed under a path; files that are not settled
    (``imgclass watch``) are left out, unless ``settled`` holds their
    :func:`file_version`; what cannot be read is an error row; the rest is
    counted as matched."""

    def __init__(self, settle_seconds: Optional[float], listed_at: float,
                 run_id: str, settled: frozenset = frozenset()):
        self._settle = settle_seconds
        self._listed_at = listed_at
        self._settled = settled
        self._run_id = run_id
        self._matched = Metrics.counter(METRICS_NAMESPACE, "files_matched")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "files_failed_read")

    def process(self, keyed):
        real, values = keyed
        item = one_per_file(real, map(unpacked, values))
        if isinstance(item, ListingError):
            self._matched.inc()
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, described_error_row(
                item.path, "read", item.error_type, item.message,
                self._run_id))
        elif (self._settle is None
              or is_settled(item, self._settle, self._listed_at)
              or file_version(item) in self._settled):
            self._matched.inc()
            yield item


@beam.typehints.with_input_types(str)
class MatchFiles(beam.PTransform):
    """File patterns -> ``FileMetadata`` of every matched file, once each.

    A pattern matching nothing is not an error here (``imgclass classify``
    refuses it before the pipeline, unless ``--allow-empty``:
    ``pipeline.inputs.unmatched``).
    A file several patterns match, or several paths lead to (symlinks), is
    listed once, under its real path if that was listed, else the first of
    its paths in sorted order (a Beam group by the file's real path, so it
    scales with the bucket; hard links are separate files). What a pattern
    matches but cannot be listed or read (an unreadable folder, a dangling
    symlink, a symlink loop, a FIFO, socket or device) is an error row
    (stage ``read``), as is a pattern that is empty or not a string.

    Returns: ``files`` (main) and ``errors`` outputs.

    Args:
        exclude: folders never listed (the run's output).
        settle_seconds: if given (``imgclass watch``), files that may still
            be being written are left out before they are counted: see
            :func:`is_settled`. A later run picks them up. Default: none
            are left out.
        listed_at: the instant (Unix seconds) settling is measured from,
            the same for every worker. Default: when this transform is
            made.
        settled: :func:`file_version` of files taken as settled whatever
            their modification time (``imgclass watch`` settled them by its
            own clock: they were modified in the future), while unchanged.
        run_id: written in the error rows.
    """

    def __init__(self, *, exclude: Sequence[str] = (),
                 settle_seconds: Optional[float] = None,
                 listed_at: Optional[float] = None,
                 settled: Iterable[tuple] = (), run_id: str = ""):
        super().__init__()
        self._exclude = _check_folders(exclude)
        self._settle = _check_seconds("settle_seconds", settle_seconds)
        self._listed_at = time.time() if listed_at is None else \
            _check_seconds("listed_at", listed_at)
        self._settled = frozenset(settled)
        self._run_id = check_text("run_id", run_id)

    def expand(self, patterns):
        return (patterns
                | "List" >> beam.ParDo(_ListFn(self._exclude))
                | "OncePerFile" >> beam.GroupByKey()
                | "Split" >> beam.ParDo(
                    _SplitFn(self._settle, self._listed_at, self._run_id,
                             self._settled))
                .with_outputs(ERRORS_TAG, main="files"))


def _check_folders(exclude) -> tuple:
    """``exclude`` as a tuple of strings, else ConfigError (one string
    would be taken as a folder per character)."""
    if isinstance(exclude, str):
        raise ConfigError(f"exclude takes a list of folders, got one "
                          f"string: give exclude=[{exclude!r}]")
    folders = tuple(exclude)
    for folder in folders:
        if not isinstance(folder, str):
            raise ConfigError(f"exclude must be folders given as strings, "
                              f"got {folder!r}: give str(folder)")
    return folders


def _check_seconds(name: str, value):
    """``value`` if it is None or a finite number of seconds from 0, else
    ConfigError."""
    if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float))
            or not finite(value) or value < 0):
        raise ConfigError(f"{name} must be a number of seconds from 0, got "
                          f"{value!r}")
    return value


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
        self._batch_size = check_positive("batch_size", batch_size)

    def expand(self, matched):
        return (matched
                | "Batch" >> beam.BatchElements(
                    min_batch_size=self._batch_size,
                    max_batch_size=self._batch_size)
                | "Pack" >> beam.Map(lambda batch: [packed(m) for m in batch])
                | "Spread" >> beam.Reshuffle()
                | "Unpack" >> beam.Map(
                    lambda batch: [unpacked(m) for m in batch]))
