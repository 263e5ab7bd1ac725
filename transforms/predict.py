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

:class:`PredictBatchesFn` runs the network on a thread of its own, one batch
behind: while batch k is in the network (whose C ops release the GIL),
Beam's thread returns to decode batch k+1 (decoding and the network run in
the same fused stage). Each batch's rows are emitted when the next batch
arrives, or at the end of the bundle, in the batch's own window.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import inspect
import time
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.utils import shared
from apache_beam.utils.windowed_value import WindowedValue
from PIL import Image

from model_store.errors import ConfigError, ModelIntegrityError, check_positive
from model_store.images import DEFAULT_MAX_PIXELS, check_pixels, to_mode
from transforms import progress, schema
from transforms.common import METRICS_NAMESPACE, check_model_ref, check_optional_text, error_row
from transforms.defaults import top_k_for


def load_predictor(model_ref: str, store: Optional[str],
                   expected_sha256: Optional[str] = None, *,
                   embeddings: bool = False):
    """Loads, verifies and compiles a stored model (seconds; do it once);
    with ``embeddings``, its calls also return the embeddings."""
    from model_store.compile import compile_predictor
    from model_store.store import load_model

    stored = load_model(model_ref, root=store)
    if expected_sha256 and stored.weights_sha256 != expected_sha256:
        raise ModelIntegrityError(
            f"model {stored.ref} on this worker has weights sha256 "
            f"{stored.weights_sha256[:12]}... but the run was started with "
            f"{expected_sha256[:12]}...: deploy the same model store to "
            f"every worker")
    return compile_predictor(stored, embeddings=embeddings, cached=True)


def top_k_classes(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best classes of each row, best first: ``(ids, scores)``."""
    k = min(k, probs.shape[1])
    # argpartition then sort the k best: O(N*K) rather than a full sort.
    best = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(probs, best, axis=1), axis=1)
    best = np.take_along_axis(best, order, axis=1)
    return best, np.take_along_axis(probs, best, axis=1).astype(np.float32)


# The error row of an image whose probabilities hold a NaN or an infinity
# (an overflow in the model): a row of NaN confidences would be a label no
# threshold can catch.
NOT_FINITE = ("the network's output for this image is not finite (NaN or "
              "infinity): check the model's weights and preprocessing")


class PredictBatchesFn(beam.DoFn):
    """Batches of examples -> a table of prediction rows per batch.

    Args:
        model_ref: ``NAME@VERSION`` (resolved by the driver, never "latest",
            so that every worker runs the same version).
        store: the model store root, or None for the worker's default.
        expected_sha256: the weights' checksum as the driver saw it.
        top_k: how many of the best classes each row lists.
        run_id: the run's identifier, written in every row.
        min_confidence: rows whose best probability is lower get a null
            ``label`` and ``class_id`` (their ``top_k`` is kept).
        embeddings: add the ``embedding`` column (``schema.EMBEDDING``),
            computed by the same Theano call as the probabilities.
        progress_folder: where workers write their progress (local
            runners), or None: see ``transforms.progress``.
    """

    def __init__(self, model_ref: str, *, store: Optional[str],
                 expected_sha256: str, top_k: int, run_id: str,
                 min_confidence: float = 0.0, embeddings: bool = False,
                 progress_folder: Optional[str] = None):
        self._model_ref = model_ref
        self._embeddings = embeddings
        self._progress_folder = progress_folder
        self._min_confidence = min_confidence
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
                                   self._sha256, embeddings=self._embeddings),
            tag=f"{self._model_ref}:{self._sha256}:{self._embeddings}")
        stored = self._predictor.stored
        self._prep = stored.preprocessing
        self._labels = np.asarray(stored.class_names, dtype=object)
        self._name, self._version = stored.name, str(stored.version)
        self._progress = progress.counter(self._run_id,
                                          self._progress_folder)
        self._network = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="imgclass-network")
        self._pending: Optional[_InFlight] = None

    def teardown(self):
        self._network.shutdown(wait=True)

    def start_bundle(self):
        self._pending = None  # a failed bundle's batch is retried whole

    def finish_bundle(self):
        if self._pending is not None:
            pending, self._pending = self._pending, None
            yield from self._rows(pending)
        self._progress.flush()

    def process(self, batch: Sequence, window=beam.DoFn.WindowParam,
                timestamp=beam.DoFn.TimestampParam) -> Iterable:
        submitted = _InFlight(batch, self._network.submit(self._run, batch),
                              window, timestamp)
        if self._pending is not None:
            yield from self._rows(self._pending)
        self._pending = submitted

    def _run(self, batch: Sequence):
        """On the network thread: ``(outputs, milliseconds)``."""
        pixels = np.stack([example.pixels for example in batch])
        started = time.perf_counter()
        outputs = self._predictor.predict(self._prep.normalize(pixels))
        return outputs, int(1000 * (time.perf_counter() - started))

    def _rows(self, pending: "_InFlight") -> Iterable:
        """A batch's outputs once its network call is done, in its window
        (metrics are counted here, in Beam's thread: a counter updated from
        another thread is not recorded)."""
        for output in self._outputs(pending.batch, pending.future):
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag,
                                               pending.windowed(output.value))
            else:
                yield pending.windowed(output)

    def _outputs(self, batch: Sequence, future) -> Iterable:
        try:
            outputs, milliseconds = future.result()
        except Exception as error:  # one bad batch must not stop the run
            yield from self._error_rows(batch, error)
            return
        self._latency.update(milliseconds)
        finite = np.isfinite(outputs[0] if self._embeddings
                             else outputs).all(axis=1)
        if not finite.all():
            yield from self._error_rows(
                [e for e, ok in zip(batch, finite) if not ok],
                FloatingPointError(NOT_FINITE))
            batch = [e for e, ok in zip(batch, finite) if ok]
            outputs = (tuple(o[finite] for o in outputs) if self._embeddings
                       else outputs[finite])
            if not batch:
                return
        self._batches.inc()
        self._batch_size.update(len(batch))
        self._predicted.inc(len(batch))
        self._progress.add(len(batch))
        yield self._table(batch, outputs)

    def _error_rows(self, batch: Sequence, error: Exception) -> Iterable:
        self._failed.inc(len(batch))
        self._progress.add(len(batch))
        for example in batch:
            yield beam.pvalue.TaggedOutput(
                schema.ERRORS_TAG,
                error_row(example.path, "predict", error, self._run_id))

    def _table(self, batch: Sequence, outputs) -> pa.Table:
        probs, embeddings = outputs if self._embeddings else (outputs, None)
        best, scores = top_k_classes(probs, self._top_k)
        n, k = best.shape
        unsure = scores[:, 0] < self._min_confidence
        top = pa.ListArray.from_arrays(
            pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
            pa.StructArray.from_arrays(
                [pa.array(self._labels[best.ravel()], pa.string()),
                 pa.array(scores.ravel(), pa.float32())],
                fields=list(schema.TOP_K_ENTRY)))
        now = datetime.datetime.now(datetime.timezone.utc)
        columns = {
            "path": pa.array([e.path for e in batch], pa.string()),
            "label": pa.array(self._labels[best[:, 0]], pa.string(),
                              mask=unsure),
            "class_id": pa.array(best[:, 0].astype(np.int32), mask=unsure),
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
        if embeddings is not None:
            size = embeddings.shape[1]
            columns["embedding"] = pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * size + 1, size, dtype=np.int32)),
                pa.array(embeddings.ravel().astype(np.float32)))
        return pa.Table.from_pydict(
            columns, schema=schema.predictions_schema(self._embeddings))


@dataclasses.dataclass(frozen=True)
class _InFlight:
    """A batch whose network call runs on the network thread, and the
    window and timestamp its rows belong to."""

    batch: Sequence
    future: concurrent.futures.Future
    window: Any
    timestamp: Any

    def windowed(self, value) -> WindowedValue:
        return WindowedValue(value, self.timestamp, (self.window,))


INPUT_KINDS = ("arrays", "images")
OUTPUT_KINDS = ("probabilities", "top_k")


class TheanoModelHandler(ModelHandler[Any, PredictionResult, Any]):
    """A stored Theano model for Beam's ``RunInference``.

    Example::

        handler = TheanoModelHandler("digits-cnn@1", inputs="images",
                                     outputs="top_k", top_k=3)
        results = images | RunInference(handler)

    Args:
        model_ref: ``NAME``, ``NAME@VERSION`` or a version folder path.
        store: model store root (default: ``$IMGCLASS_MODEL_STORE`` or the
            shipped models).
        inputs: ``"arrays"``: each example is a normalised ``float32 (C, H,
            W)`` array, e.g. ``model.preprocessing([image])[0]`` (integer
            arrays are refused: they would be classified un-normalised);
            ``"images"``: each example is a decoded Pillow image or a
            ``uint8`` array ``(H, W)`` / ``(H, W, C)`` of 1 to 4 channels,
            converted, resized
            and normalised here with the model's own preprocessing.
        outputs: ``"probabilities"``: ``inference`` is the class
            probabilities; ``"top_k"``: a dict with ``label``, ``class_id``,
            ``confidence`` and ``top_k`` (``[(label, score)]``, best first);
            a batch with probabilities that are not finite fails
            (``FloatingPointError``) rather than label them.
        max_pixels: with ``inputs="images"``, images with more pixels
            are refused (``ImageTooLargeError``) before they are decoded,
            as ``ClassifyImages`` refuses them.
        top_k: how many classes ``outputs="top_k"`` lists; None: 5, or
            all the classes of a model with fewer (``top_k_for``); more
            than the model's classes is refused.
        **kwargs: Beam's ``ModelHandler`` options, passed through (an
            unknown one is refused):
            ``min_batch_size``, ``max_batch_size``,
            ``max_batch_duration_secs``, ``large_model``, ``model_copies``,
            ``env_vars``, ...

    A model update through ``RunInference(model_metadata_pcoll=...)`` (or
    Beam's ``WatchFilePattern``) names a version folder, a file in one
    (``metadata.json``: what ``WatchFilePattern`` can watch) or
    ``NAME@VERSION``;
    :meth:`update_model_path` switches to it and results carry its
    ``model_id``.
    """

    def __init__(self, model_ref: str, *, store: Optional[str] = None,
                 inputs: str = "arrays", outputs: str = "probabilities",
                 top_k: Optional[int] = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, **kwargs):
        _check_beam_options(kwargs)
        if inputs not in INPUT_KINDS:
            raise ConfigError(f"inputs must be one of {', '.join(INPUT_KINDS)}"
                              f", got {inputs!r}")
        if outputs not in OUTPUT_KINDS:
            raise ConfigError(f"outputs must be one of "
                              f"{', '.join(OUTPUT_KINDS)}, got {outputs!r}")
        super().__init__(**kwargs)
        self._model_ref = check_model_ref(model_ref)
        self._store = check_optional_text("store", store)
        self._inputs = inputs
        self._outputs = outputs
        self._top_k = None if top_k is None else check_positive("top_k", top_k)
        self._max_pixels = check_positive("max_pixels", max_pixels)

    def load_model(self) -> "HandlerModel":
        return HandlerModel(load_predictor(self._model_ref, self._store))

    def update_model_path(self, model_path: Optional[str] = None):
        if model_path:
            self._model_ref = _version_of(model_path)

    def run_inference(self, batch: Sequence[Any], model: "HandlerModel",
                      inference_args: Optional[dict[str, Any]] = None
                      ) -> Iterable[PredictionResult]:
        if len(batch) == 0:  # Beam's batching with min_batch_size=0
            return []
        model_id, labels, prep = model.model()
        probs = model.predict(self._network_input(batch, model_id, prep))
        if self._outputs == "probabilities":
            return [PredictionResult(x, p, model_id=model_id)
                    for x, p in zip(batch, probs)]
        if not np.isfinite(probs).all():
            raise FloatingPointError(f"model {model_id}: {NOT_FINITE}")
        best, scores = top_k_classes(
            probs, top_k_for(self._top_k, len(labels), model_id))
        return [PredictionResult(x, {
            "label": labels[ids[0]], "class_id": int(ids[0]),
            "confidence": float(row[0]),
            "top_k": [(labels[i], float(s)) for i, s in zip(ids, row)]},
            model_id=model_id) for x, ids, row in zip(batch, best, scores)]

    def _network_input(self, batch: Sequence[Any], model_id: str,
                       prep) -> np.ndarray:
        if self._inputs == "images":
            return prep([_as_image(x, prep, self._max_pixels)
                         for x in batch])
        arrays = [np.asarray(x) for x in batch]
        if not all(np.issubdtype(a.dtype, np.floating) for a in arrays):
            kind = next(a.dtype for a in arrays
                        if not np.issubdtype(a.dtype, np.floating))
            raise ConfigError(
                f"TheanoModelHandler got {kind} pixels, which would be "
                f"classified un-normalised: pass inputs='images' to normalise "
                f"them with model {model_id}'s preprocessing")
        wrong = [a.shape for a in arrays if a.shape != prep.input_shape]
        if wrong:
            raise ConfigError(
                f"model {model_id} takes float {prep.input_shape} arrays "
                f"(C, H, W), got {wrong[0]}: pass inputs='images' to have "
                f"images resized by its preprocessing")
        return np.stack(arrays)

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(getattr(x, "nbytes", 0) or _image_bytes(x) for x in batch)

    def get_metrics_namespace(self) -> str:
        return "imgclass_RunInference"


def _version_of(model_path: str) -> str:
    """The version folder of a file in it (Beam's ``WatchFilePattern``
    watches files: ``STORE/NAME/*/metadata.json``), else ``model_path``."""
    from model_store import fs
    from model_store.store import METADATA_FILE, SPEC_FILE, WEIGHTS_FILE

    folder, name = fs.split(model_path)
    return folder if name in (METADATA_FILE, SPEC_FILE, WEIGHTS_FILE) \
        else model_path


class HandlerModel:
    """What :meth:`TheanoModelHandler.load_model` returns: a predictor
    behind methods. With ``large_model`` or ``model_copies``, Beam hands
    ``run_inference`` a proxy to it in another process, which passes method
    calls only (not attributes).

    Attributes:
        stored: the ``StoredModel``, for callers in the same process.
    """

    def __init__(self, predictor):
        self._predictor = predictor
        self.stored = predictor.stored

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, K)`` of a normalised batch."""
        return self._predictor(batch)

    def model(self) -> tuple:
        """``(model_id, class_names, preprocessing)``."""
        return self.stored.ref, self.stored.class_names, \
            self.stored.preprocessing


def _as_image(example, prep, max_pixels: int) -> Image.Image:
    """A Pillow image or a ``uint8`` array, in the model's colour mode;
    an image of more than ``max_pixels`` is refused before it is decoded
    (``Image.open`` reads the size only)."""
    if not isinstance(example, Image.Image):
        example = Image.fromarray(_image_array(example))
    width, height = example.size
    if 0 in example.size:
        raise ConfigError(f"inputs='images' got an empty image "
                          f"({width}x{height} pixels)")
    check_pixels(width, height, max_pixels)
    return to_mode(example, mode=prep.color_mode, background=prep.background)


def _image_array(example) -> np.ndarray:
    """A ``uint8`` array ``(H, W)`` or ``(H, W, C)`` of 1 to 4 channels, as
    Pillow takes it (one channel: ``(H, W)``); else ConfigError."""
    pixels = np.asarray(example)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (
            pixels.ndim == 3 and pixels.shape[2] > 4):
        raise ConfigError(f"inputs='images' takes Pillow images or uint8 "
                          f"arrays (H, W) or (H, W, C) of 1 to 4 channels, "
                          f"got {pixels.dtype} {pixels.shape}")
    return pixels


def _check_beam_options(options: dict) -> None:
    """ConfigError naming an option that Beam's ``ModelHandler`` does not
    take (it would be ignored without a word), or a batch size given that
    is not a positive integer."""
    for name in ("min_batch_size", "max_batch_size"):
        if options.get(name) is not None:
            check_positive(name, options[name])
    known = [name for name, parameter in inspect.signature(
        ModelHandler.__init__).parameters.items()
        if parameter.kind == parameter.KEYWORD_ONLY] + ["env_vars"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"TheanoModelHandler got unknown option(s) "
                          f"{', '.join(unknown)}: Beam's ModelHandler takes "
                          f"{', '.join(known)}")


def _image_bytes(image) -> int:
    width, height = getattr(image, "size", (0, 0))
    return width * height * len(getattr(image, "getbands", lambda: "")())
