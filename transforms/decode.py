"""Reading, decoding and preprocessing, a batch of files at a time.

Every file that cannot be used becomes an error row on the ``errors`` output
(see :func:`error_row`), never an exception that stops the run.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.metrics import Metrics

from model_store.images import DEFAULT_MAX_PIXELS, decode_image
from model_store.preprocessing import Preprocessing

METRICS_NAMESPACE = "imgclass"
ERRORS = "errors"


class Example(NamedTuple):
    """A file ready for the network: ``uint8 (C, H, W)`` pixels."""
    path: str
    pixels: np.ndarray
    width: int
    height: int


def error_row(path: str, stage: str, error: BaseException,
              run_id: str) -> dict:
    """One row of the errors table (see ``transforms.schema.ERRORS``)."""
    message = " ".join(str(error).split()) or type(error).__name__
    return {"path": path, "stage": stage, "error_type": type(error).__name__,
            "message": message[:1000], "run_id": run_id}


class DecodeBatchFn(beam.DoFn):
    """A batch of ``FileMetadata`` -> one list of :class:`Example`, plus an
    error row for each file that cannot be used.

    Per file: read the bytes with Beam's ``fileio`` (stage ``read``), decode
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
    """

    def __init__(self, prep: Preprocessing, *, run_id: str,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self._prep = prep
        self._run_id = run_id
        self._max_pixels = max_pixels
        self._decoded = Metrics.counter(METRICS_NAMESPACE, "files_decoded")
        self._failed = {stage: Metrics.counter(METRICS_NAMESPACE,
                                               f"files_failed_{stage}")
                        for stage in ("read", "decode", "preprocess")}

    def process(self, batch: Sequence[FileMetadata]) -> Iterable:
        examples = []
        for metadata in batch:
            example = yield from self._one(metadata)
            if example is not None:
                examples.append(example)
        if examples:
            yield examples

    def _one(self, metadata: FileMetadata):
        """Generator: yields error rows, returns the Example or None."""
        path, stage = metadata.path, "read"
        try:
            data = fileio.ReadableFile(metadata).read()
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
                ERRORS, error_row(path, stage, error, self._run_id))
            return None
        self._decoded.inc()
        return Example(path, pixels, decoded.width, decoded.height)
