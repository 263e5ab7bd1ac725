"""Reading, decoding and preprocessing, a batch of files at a time.

Every file that cannot be used becomes an error row on the ``errors`` output
(see :func:`transforms.common.error_row`), never an exception that stops the
run.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import FileMetadata
from apache_beam.metrics import Metrics

from model_store.errors import check_positive
from model_store.images import DEFAULT_MAX_PIXELS, decode_image
from model_store.preprocessing import Preprocessing
from transforms import progress
from transforms.common import METRICS_NAMESPACE, error_row
from transforms.files import DEFAULT_MAX_FILE_BYTES, read_bytes
from transforms.schema import ERRORS_TAG


class Example(NamedTuple):
    """A file ready for the network: ``uint8 (C, H, W)`` pixels."""
    path: str
    pixels: np.ndarray
    width: int
    height: int


# Files that take less to decode are decoded in Beam's thread alone: for
# 256x256 JPEGs (0.3 ms each) two threads fought over the GIL and made a
# 20,000-image run slower (1,267-1,604 against 1,596-1,659 images/s); for
# Lite0's photos (3.7 ms each) they took it from 70-72 to 80-81 images/s.
THREADED_DECODE_SECONDS = 0.001


def decoding_threads() -> int:
    """Threads that decode a batch's files together: one per core this
    process may use (``OMP_NUM_THREADS`` when set, as local multi-process
    runs set it to the cores per worker). Pillow and file reads release the
    GIL. The network call of the batch before runs meanwhile, on its own
    thread (``PredictBatchesFn``): on 2 cores Lite0's photos took as long
    with one decoding thread as with two (bench/README.md), but a machine
    whose cores one decoding thread cannot keep busy needs them all."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, len(os.sched_getaffinity(0)))


class DecodeBatchFn(beam.DoFn):
    """A batch of ``FileMetadata`` -> one list of :class:`Example`, plus an
    error row for each file that cannot be used.

    Per file: read the bytes as they are (stage ``read``: only regular
    files, never decompressed by extension, at most ``max_file_bytes``; see
    ``transforms.files.read_bytes``), decode (``decode``:
    ``model_store.images.decode_image``, Pillow or, for plain JPEGs,
    libjpeg-turbo; JPEGs reduced while decoding to the model's input size),
    then resize with the model's own preprocessing
    (``preprocess``). Scaling and mean/std normalisation run once per batch
    in the predict step (:meth:`Preprocessing.normalize`), vectorised, so
    that examples stay small ``uint8`` arrays until then. When files take
    ``THREADED_DECODE_SECONDS`` or more each (photos, not thumbnails), a
    batch's files are decoded on ``threads`` threads; the examples and
    error rows keep the batch's order either way.

    Args:
        prep: the model's preprocessing (colour mode, input size, resize
            filter, background for transparency).
        run_id: the run's identifier, written in error rows.
        max_pixels: larger images are refused (decompression bombs).
        max_file_bytes: larger files are refused, from the listed size
            before reading, and while reading.
        progress_folder: where workers write their progress (files that
            failed here are done), or None: see ``transforms.progress``.
        threads: decoding threads per worker process; None:
            :func:`decoding_threads`.
    """

    def __init__(self, prep: Preprocessing, *, run_id: str,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 progress_folder: Optional[str] = None,
                 threads: Optional[int] = None):
        self._prep = prep
        self._progress_folder = progress_folder
        self._run_id = run_id
        self._max_pixels = max_pixels
        self._max_file_bytes = max_file_bytes
        self._threads = None if threads is None else check_positive(
            "threads", threads)
        self._decoded = Metrics.counter(METRICS_NAMESPACE, "files_decoded")
        self._failed = {stage: Metrics.counter(METRICS_NAMESPACE,
                                               f"files_failed_{stage}")
                        for stage in ("read", "decode", "preprocess")}

    def setup(self):
        self._progress = progress.counter(self._run_id,
                                          self._progress_folder)
        self._pool_threads = self._threads or decoding_threads()
        self._pool = (concurrent.futures.ThreadPoolExecutor(
            self._pool_threads, thread_name_prefix="imgclass-decode")
            if self._pool_threads > 1 else None)
        self._seconds_per_file = 0.0  # the first batch is decoded serially

    def teardown(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def finish_bundle(self):
        self._progress.flush()

    def process(self, batch: Sequence[FileMetadata]) -> Iterable:
        # Metrics are counted here, in Beam's thread: a counter updated
        # from another thread is not recorded.
        threaded = (self._pool is not None
                    and self._seconds_per_file >= THREADED_DECODE_SECONDS)
        started = time.perf_counter()
        decoded = list(self._pool.map(self._decode_file, batch) if threaded
                       else map(self._decode_file, batch))
        # CPU seconds per file, roughly: decides how the next batch goes.
        self._seconds_per_file = (time.perf_counter() - started) * (
            self._pool_threads if threaded else 1) / max(1, len(batch))
        examples = []
        for metadata, (example, stage, error) in zip(batch, decoded):
            if example is None:
                self._failed[stage].inc()
                yield beam.pvalue.TaggedOutput(ERRORS_TAG, error_row(
                    metadata.path, stage, error, self._run_id))
            else:
                self._decoded.inc()
                examples.append(example)
        if len(examples) < len(batch):
            self._progress.add(len(batch) - len(examples))
        if examples:
            yield examples

    def _decode_file(self, metadata: FileMetadata) -> tuple[
            Optional[Example], str, Optional[Exception]]:
        """``(example, "", None)``, or ``(None, stage, error)`` for a file
        that cannot be used."""
        path, stage = metadata.path, "read"
        try:
            data = read_bytes(path, size=metadata.size_in_bytes,
                              max_bytes=self._max_file_bytes)
            stage = "decode"
            decoded = decode_image(
                data, mode=self._prep.color_mode,
                target_size=self._prep.decode_size,
                max_pixels=self._max_pixels,
                background=self._prep.background)
            stage = "preprocess"
            pixels = self._prep.pixels_of(decoded)
        except Exception as error:  # one bad file must not stop the run
            return None, stage, error
        return Example(path, pixels, decoded.width, decoded.height), "", None
