"""Prediction: a compiled Theano predictor per worker process.

Two ways in:

* :class:`PredictBatchesFn`, used by this project's pipeline: a batch of
  :class:`~transforms.decode.Example` in, one ``pyarrow.Table`` of prediction
  rows out (errors to the ``errors`` output).
* :class:`TheanoModelHandler`, for Beam's own ``RunInference`` in a pipeline
  of your own: normalised ``float32 (C, H, W)`` arrays in,
  ``PredictionResult`` with the class probabilities out.

Both load and compile in ``DoFn.setup`` through :func:`load_predictor`, held
by Beam's ``Shared`` so that every DoFn instance in a worker process uses the
same compiled function.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.utils import shared

from model_store.errors import ModelIntegrityError
from transforms import schema
from transforms.decode import METRICS_NAMESPACE, error_row

def load_predictor(model_ref: str, store: Optional[str],
                   expected_sha256: Optional[str] = None):
    """Loads, verifies and compiles a stored model (seconds; do it once)."""
    from model_store.compile import compile_predictor
    from model_store.store import load_model

    model = load_model(model_ref, root=store)
    if expected_sha256 and model.weights_sha256 != expected_sha256:
        raise ModelIntegrityError(
            f"model {model.ref} on this worker has weights sha256 "
            f"{model.weights_sha256[:12]}... but the run was started with "
            f"{expected_sha256[:12]}...: deploy the same model store to "
            f"every worker")
    return compile_predictor(model)


class _Progress:
    """Prints images done and images/s every few seconds, per process."""

    def __init__(self, every_seconds: float = 10.0):
        self.every = every_seconds
        self.lock = threading.Lock()
        self.started = self.last = None
        self.done = 0

    def add(self, count: int) -> None:
        with self.lock:
            now = time.monotonic()
            if self.started is None:  # count from the first batch, not
                self.started = self.last = now  # from compiling the model
            self.done += count
            if now - self.last >= self.every:
                self.last = now
                # print, not logging: worker processes of the local
                # multi-processing runner share the terminal's stderr.
                print(f"imgclass: progress: {self.done} images classified "
                      f"by worker {os.getpid()}, "
                      f"{self.done / (now - self.started):.0f} images/s",
                      file=sys.stderr, flush=True)


# IMGCLASS_PROGRESS_SECONDS sets how often workers report (default 10 s).
_PROGRESS = _Progress(float(os.environ.get("IMGCLASS_PROGRESS_SECONDS", "10")))


class PredictBatchesFn(beam.DoFn):
    """Batches of examples -> a table of prediction rows per batch.

    Args:
        model_ref: ``NAME@VERSION`` (resolved by the driver, never "latest",
            so that every worker runs the same version).
        store: the model store root, or None for the worker's default.
        expected_sha256: the weights' checksum as the driver saw it.
        top_k: how many of the best classes each row lists.
        run_id: the run's identifier, written in every row.
    """

    def __init__(self, model_ref: str, *, store: Optional[str],
                 expected_sha256: str, top_k: int, run_id: str):
        self._model_ref = model_ref
        self._store = store
        self._sha256 = expected_sha256
        self._top_k = top_k
        self._run_id = run_id
        self._shared = shared.Shared()
        self._batches = Metrics.counter(METRICS_NAMESPACE, "batches")
        self._predicted = Metrics.counter(METRICS_NAMESPACE, "files_predicted")
        self._failed = Metrics.counter(METRICS_NAMESPACE,
                                       "files_failed_predict")
        self._batch_size = Metrics.distribution(METRICS_NAMESPACE,
                                                "batch_size")
        self._latency = Metrics.distribution(METRICS_NAMESPACE,
                                             "inference_ms_per_batch")

    def setup(self):
        self._predictor = self._shared.acquire(
            lambda: load_predictor(self._model_ref, self._store,
                                   self._sha256),
            tag=f"{self._model_ref}:{self._sha256}")
        model = self._predictor.model
        self._prep = model.preprocessing
        self._labels = np.asarray(model.class_names, dtype=object)
        self._name, self._version = model.name, str(model.version)

    def process(self, batch: Sequence) -> Iterable:
        try:
            pixels = np.stack([example.pixels for example in batch])
            started = time.perf_counter()
            probs = self._predictor(self._prep.normalize(pixels))
            self._latency.update(int(1000 * (time.perf_counter() - started)))
        except Exception as error:  # one bad batch must not stop the run
            self._failed.inc(len(batch))
            for example in batch:
                yield beam.pvalue.TaggedOutput(
                    "errors", error_row(example.path, "predict", error,
                                        self._run_id))
            return
        self._batches.inc()
        self._batch_size.update(len(batch))
        self._predicted.inc(len(batch))
        _PROGRESS.add(len(batch))
        yield self._table(batch, probs)

    def _table(self, batch: Sequence, probs: np.ndarray) -> pa.Table:
        n, k = len(batch), min(self._top_k, probs.shape[1])
        # argpartition then sort the k best: O(N*K) rather than a full sort.
        best = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(probs, best, axis=1), axis=1)
        best = np.take_along_axis(best, order, axis=1)
        scores = np.take_along_axis(probs, best, axis=1).astype(np.float32)
        top = pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
            pa.StructArray.from_arrays(
                [pa.array(self._labels[best.ravel()], pa.string()),
                 pa.array(scores.ravel(), pa.float32())],
                fields=list(schema.TOP_K_ENTRY)))
        now = datetime.datetime.now(datetime.timezone.utc)
        columns = {
            "path": pa.array([e.path for e in batch], pa.string()),
            "label": pa.array(self._labels[best[:, 0]], pa.string()),
            "class_id": pa.array(best[:, 0].astype(np.int32)),
            "confidence": pa.array(scores[:, 0]),
            "top_k": top,
            "model_name": pa.array([self._name] * n, pa.string()),
            "model_version": pa.array([self._version] * n, pa.string()),
            "width": pa.array([e.width for e in batch], pa.int32()),
            "height": pa.array([e.height for e in batch], pa.int32()),
            "run_id": pa.array([self._run_id] * n, pa.string()),
            "processed_at": pa.array([now] * n,
                                     schema.PREDICTIONS.field(
                                         "processed_at").type),
        }
        return pa.Table.from_pydict(columns, schema=schema.PREDICTIONS)


class TheanoModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """A stored Theano model for Beam's ``RunInference``.

    Examples are normalised ``float32 (C, H, W)`` arrays, e.g. from
    ``model.preprocessing([image])[0]``; each result's ``inference`` holds the
    class probabilities. Example::

        handler = TheanoModelHandler("digits-cnn@1")
        probs = examples | RunInference(handler)

    Args:
        model_ref: ``NAME``, ``NAME@VERSION`` or a version folder path.
        store: model store root (default: ``$IMGCLASS_MODEL_STORE`` or the
            shipped models).
        min_batch_size: smallest batch ``RunInference`` forms.
        max_batch_size: largest batch ``RunInference`` forms.
    """

    def __init__(self, model_ref: str, *, store: Optional[str] = None,
                 min_batch_size: Optional[int] = None,
                 max_batch_size: Optional[int] = None):
        super().__init__(min_batch_size=min_batch_size,
                         max_batch_size=max_batch_size)
        self._model_ref = model_ref
        self._store = store

    def load_model(self):
        return load_predictor(self._model_ref, self._store)

    def run_inference(self, batch: Sequence[np.ndarray], model,
                      inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        probs = model(np.stack(batch))
        return [PredictionResult(x, p, model_id=model.model.ref)
                for x, p in zip(batch, probs)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(x.nbytes for x in batch)

    def get_metrics_namespace(self) -> str:
        return "imgclass_RunInference"
