"""The model side of imgclass: layers, specs, the versioned store, compiling,
training and evaluation.

Importing this package does not import Theano; the submodules that need it
(``layers``, ``spec``, ``compile``, ``train``) do, through ``engine``.
"""

from model_store.errors import (
    ChecksumMismatchError,
    ConfigError,
    ImgclassError,
    ModelFileMissingError,
    ModelIntegrityError,
    SpecError,
    UnknownModelError,
    WeightShapeError,
)
from model_store.preprocessing import Preprocessing
from model_store.store import StoredModel, list_models, load_model, save_model, store_root, verify

DEFAULT_MODEL = "digits-cnn@latest"

__all__ = [
    "ChecksumMismatchError", "ConfigError", "DEFAULT_MODEL", "ImgclassError",
    "ModelFileMissingError", "ModelIntegrityError", "Preprocessing",
    "SpecError", "StoredModel", "UnknownModelError", "WeightShapeError",
    "list_models", "load_model", "save_model", "store_root", "verify",
]
