"""The whole job as one composite transform: file patterns in, prediction
tables and error rows out."""

from __future__ import annotations

from typing import Optional, Union

import apache_beam as beam
from apache_beam.io.filesystem import FileMetadata

from model_store import DEFAULT_MODEL, StoredModel
from model_store.errors import ConfigError, check_bool, check_fraction, check_positive, check_text
from model_store.images import DEFAULT_MAX_PIXELS
from transforms.common import check_model_ref, check_optional_text
from transforms.decode import DecodeBatchFn
from transforms.defaults import DEFAULT_BATCH_SIZE, check_batch_size, top_k_for
from transforms.files import DEFAULT_MAX_FILE_BYTES
from transforms.predict import PredictBatchesFn
from transforms.read import BatchFiles, MatchFiles
from transforms.schema import ERRORS_TAG
from transforms.skip import MatchedFile


# MatchedFile: a FileMetadata with what imgclass's skip check learnt.
@beam.typehints.with_input_types(list[Union[FileMetadata, MatchedFile]])
class ClassifyBatches(beam.PTransform):
    """Classifies batches of matched files.

    Input: a ``PCollection`` of lists of ``FileMetadata`` (``MatchFiles``
    then ``BatchFiles``). Output: a dict
    with ``"predictions"``, a ``PCollection`` of ``pyarrow.Table`` (up to
    ``batch_size`` rows each, schema ``transforms.schema.PREDICTIONS``), and
    ``"errors"``, a ``PCollection`` of dicts (schema
    ``transforms.schema.ERRORS``). Every matched file is in exactly one.

    Args:
        model_ref: ``NAME``, ``NAME@VERSION`` or a version folder path.
        store: model store root (default: ``$IMGCLASS_MODEL_STORE`` or the
            shipped models). Workers must see the same store.
        top_k: how many of the best classes each row lists; None: 5, or
            all the classes of a model with fewer (``top_k_for``).
        batch_size: images per Theano call; batches that would hold more
            than MAX_BATCH_BYTES of pixels are refused (``check_batch_size``).
        max_pixels: images with more pixels are refused (bomb guard).
        max_file_bytes: larger files are refused (an error row, stage read).
        min_confidence: rows whose best probability is lower get a null
            label (see ``PredictBatchesFn``); 0 (default) labels every row.
        run_id: identifier written in every row.
        embeddings: add the model's embeddings (``schema.EMBEDDING``) to
            every prediction row.
        loaded: the model already loaded and verified from ``model_ref`` (by a
            driver that needed it before building the pipeline), so that
            ``expand`` does not read and verify it a second time.
        progress_folder: a local folder where the workers write how many
            files they finished (``transforms.progress``), for a driver on
            the same machine to add up; None: each worker prints its own.
    """

    def __init__(self, model_ref: str = DEFAULT_MODEL, *,
                 store: Optional[str] = None,
                 top_k: Optional[int] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 run_id: str = "", loaded=None,
                 min_confidence: float = 0.0, embeddings: bool = False,
                 progress_folder: Optional[str] = None):
        super().__init__()
        self._embeddings = check_bool("embeddings", embeddings)
        self._progress_folder = check_optional_text("progress_folder",
                                                    progress_folder)
        self._min_confidence = check_fraction("min_confidence",
                                              min_confidence)
        self._model_ref = check_model_ref(model_ref)
        self._store = check_optional_text("store", store)
        self._top_k = (None if top_k is None
                       else check_positive("top_k", top_k))
        self.batch_size = check_positive("batch_size", batch_size)
        self._max_pixels = check_positive("max_pixels", max_pixels)
        self._max_file_bytes = check_positive("max_file_bytes",
                                              max_file_bytes)
        self.run_id = check_text("run_id", run_id)
        # the StoredModel, once expanded
        self.stored = _check_loaded(loaded, self._model_ref)

    def expand(self, batches):
        from model_store.store import load_model, looks_like_path

        # Load here, in the driver: an unknown or damaged model stops the run
        # before any work, and "latest" becomes a fixed version for workers.
        stored = self.stored = self.stored or load_model(self._model_ref,
                                                         root=self._store)
        top_k = top_k_for(self._top_k, len(stored.class_names), stored.ref)
        check_batch_size(self.batch_size, stored.preprocessing.input_shape,
                         stored.ref, option="batch_size")
        if self._embeddings:  # a model without one: a mistake, found now
            _check_embedding_layer(stored)
        prep = stored.preprocessing
        ref = stored.location if looks_like_path(self._model_ref) \
            else stored.ref
        examples = batches | "Decode" >> beam.ParDo(DecodeBatchFn(
            prep, run_id=self.run_id, max_pixels=self._max_pixels,
            max_file_bytes=self._max_file_bytes,
            progress_folder=self._progress_folder)).with_outputs(
                ERRORS_TAG, main="examples")
        predicted = examples.examples | "Predict" >> beam.ParDo(
            PredictBatchesFn(ref, store=self._store,
                             expected_sha256=stored.weights_sha256,
                             top_k=top_k, run_id=self.run_id,
                             min_confidence=self._min_confidence,
                             embeddings=self._embeddings,
                             progress_folder=self._progress_folder)
        ).with_outputs(ERRORS_TAG, main="predictions")
        errors = ((examples[ERRORS_TAG], predicted[ERRORS_TAG])
                  | "Errors" >> beam.Flatten())
        return {"predictions": predicted.predictions, "errors": errors}


@beam.typehints.with_input_types(str)
class ClassifyImages(beam.PTransform):
    """Classifies every image file that the input patterns match.

    Input: a ``PCollection`` of file patterns (a file, a glob where ``**``
    crosses folders, or ``folder/**``) on any Beam filesystem. Output: as
    :class:`ClassifyBatches`, whose arguments it takes.
    """

    def __init__(self, model_ref: str = DEFAULT_MODEL, **kwargs):
        super().__init__()
        self._classify = ClassifyBatches(model_ref, **kwargs)

    @property
    def stored(self):
        """The StoredModel, once expanded."""
        return self._classify.stored

    def expand(self, patterns):
        matched = patterns | "MatchFiles" >> MatchFiles(
            run_id=self._classify.run_id)
        out = (matched.files
               | "BatchFiles" >> BatchFiles(self._classify.batch_size)
               | "Classify" >> self._classify)
        errors = ((matched[ERRORS_TAG], out["errors"])
                  | "AllErrors" >> beam.Flatten())
        return {"predictions": out["predictions"], "errors": errors}


def _check_loaded(loaded, model_ref: str):
    """``loaded`` if it is None or a ``StoredModel`` that ``model_ref``
    may name (a name's version or alias; a folder is not checked), else
    ConfigError."""
    from model_store.store import looks_like_path

    if loaded is not None and not isinstance(loaded, StoredModel):
        raise ConfigError(f"loaded must be a StoredModel (model_store."
                          f"load_model(model_ref)) or None, got {loaded!r}")
    name = model_ref.split("@", 1)[0]
    if loaded is not None and not looks_like_path(model_ref) \
            and name != loaded.name:
        raise ConfigError(f"loaded is {loaded.ref}, not a version of {name}: "
                          f"give loaded=load_model({model_ref!r})")
    return loaded


def _check_embedding_layer(stored) -> None:
    """Raises SpecError, naming the fix, when the model has no layer to take
    embeddings from (workers would fail on it after the run started)."""
    from model_store.layers import embedding_layer
    from model_store.spec import build_network
    embedding_layer(build_network(stored.spec, initialize=False),
                    stored.embedding_layer)
