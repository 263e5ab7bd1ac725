"""Reading, decoding and preprocessing DoFns.

Every file a DoFn cannot use becomes an error row on the ``errors`` output
(see :func:`error_row`), never an exception that stops the run.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from model_store.images import DEFAULT_MAX_PIXELS, decode_image
from model_store.preprocessing import Preprocessing

METRICS_NAMESPACE = "imgclass"
ERRORS = "errors"


class Decoded(NamedTuple):
    """A decoded file: the image in the model's colour mode."""
    path: str
    image: object  # PIL.Image.Image
    width: int
    height: int


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


class ReadAndDecodeFn(beam.DoFn):
    """``ReadableFile`` -> :class:`Decoded`, or an error row.

    Reading and decoding share one DoFn so that a file's bytes are never
    shipped between stages; errors still name the stage that failed.

    Args:
        prep: the model's preprocessing (colour mode, input size,
            background for transparency).
        run_id: the run's identifier, written in error rows.
        max_pixels: larger images are refused (decompression bombs).
    """

    def __init__(self, prep: Preprocessing, *, run_id: str,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self._prep = prep
        self._run_id = run_id
        self._max_pixels = max_pixels
        self._decoded = Metrics.counter(METRICS_NAMESPACE, "files_decoded")
        self._read_failed = Metrics.counter(METRICS_NAMESPACE,
                                            "files_failed_read")
        self._decode_failed = Metrics.counter(METRICS_NAMESPACE,
                                              "files_failed_decode")

    def process(self, readable_file) -> Iterable:
        path = readable_file.metadata.path
        try:
            data = readable_file.read()
        except Exception as error:  # any filesystem's failure is a bad file
            self._read_failed.inc()
            yield beam.pvalue.TaggedOutput(
                ERRORS, error_row(path, "read", error, self._run_id))
            return
        try:
            decoded = decode_image(
                data, mode=self._prep.color_mode, target_size=self._prep.size,
                max_pixels=self._max_pixels,
                background=self._prep.background)
        except ValueError as error:  # ImageDecodeError and its kind
            self._decode_failed.inc()
            yield beam.pvalue.TaggedOutput(
                ERRORS, error_row(path, "decode", error, self._run_id))
            return
        self._decoded.inc()
        yield Decoded(path, decoded.image, decoded.width, decoded.height)


class PreprocessFn(beam.DoFn):
    """:class:`Decoded` -> :class:`Example`: the model's own preprocessing.

    Resizes to the model input with its resampling filter; scaling and
    mean/std normalisation run once per batch in the predict step
    (:meth:`Preprocessing.normalize`), vectorised, so that elements stay
    small ``uint8`` arrays until then.
    """

    def __init__(self, prep: Preprocessing, *, run_id: str):
        self._prep = prep
        self._run_id = run_id
        self._failed = Metrics.counter(METRICS_NAMESPACE,
                                       "files_failed_preprocess")

    def process(self, decoded: Decoded) -> Iterable:
        try:
            pixels = self._prep.to_pixels(decoded.image)
        except Exception as error:  # a bad image must not stop the run
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(
                ERRORS, error_row(decoded.path, "preprocess", error,
                                  self._run_id))
            return
        yield Example(decoded.path, pixels, decoded.width, decoded.height)
