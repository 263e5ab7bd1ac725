"""Reading, decoding and preprocessing, a batch of files at a time.

Every file that cannot be used becomes an error row on the ``errors`` output
(see :func:`transforms.common.error_row`), never an exception that stops the
run.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import FileMetadata
from apache_beam.metrics import Metrics

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


class DecodeBatchFn(beam.DoFn):
    """A batch of ``FileMetadata`` -> one list of :class:`Example`, plus an
    error row for each file that cannot be used.

    Per file: read the bytes as they are (stage ``read``: only regular
    files, never decompressed by extension, at most ``max_file_bytes``; see
    ``transforms.files.read_bytes``), decode
    with Pillow (``decode``: JPEGs reduced while decoding to the model's
    input size), then resize with the model's own preprocessing
    (``preprocess``). Scaling and mean/std normalisation run once per batch
    in the predict step (:meth:`Preprocessing.normalize`), vectorised, so
    that examples stay small ``uint8`` arrays until then.

    Args:
        prep: the model's preprocessing (colour mode, input size, resize
            filter, background for transparency).
        run_id: the run's identifier, written in error rows.
        max_pixels: larger images are refused (decompression bombs).
        max_file_bytes: larger files are refused, from the listed size
            before reading, and while reading.
        progress_folder: where workers write their progress (files that
            failed here are done), or None: see ``transforms.progress``.
    """

    def __init__(self, prep: Preprocessing, *, run_id: str,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 progress_folder: Optional[str] = None):
        self._prep = prep
        self._progress_folder = progress_folder
        self._run_id = run_id
        self._max_pixels = max_pixels
        self._max_file_bytes = max_file_bytes
        self._decoded = Metrics.counter(METRICS_NAMESPACE, "files_decoded")
        self._failed = {stage: Metrics.counter(METRICS_NAMESPACE,
                                               f"files_failed_{stage}")
                        for stage in ("read", "decode", "preprocess")}

    def setup(self):
        self._progress = progress.counter(self._run_id,
                                          self._progress_folder)

    def finish_bundle(self):
        self._progress.flush()

    def process(self, batch: Sequence[FileMetadata]) -> Iterable:
        examples = []
        for metadata in batch:
            example = yield from self._decode_file(metadata)
            if example is not None:
                examples.append(example)
        if len(examples) < len(batch):
            self._progress.add(len(batch) - len(examples))
        if examples:
            yield examples

    def _decode_file(self, metadata: FileMetadata):
        """Generator: yields error rows, returns the Example or None."""
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
            pixels = self._prep.to_pixels(decoded.image)
        except Exception as error:  # one bad file must not stop the run
            self._failed[stage].inc()
            yield beam.pvalue.TaggedOutput(
                ERRORS_TAG, error_row(path, stage, error, self._run_id))
            return None
        self._decoded.inc()
        return Example(path, pixels, decoded.width, decoded.height)
