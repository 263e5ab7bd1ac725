"""A per-machine cache of optimised predictors.

Optimising a predictor's Theano graph takes seconds in every worker process
(EfficientNet-Lite0: most of its compile time, bench/README.md). The
optimised function is pickled once under the user's cache folder
(``<cache_dir()>/predictors``) and later processes link it without
optimising it again (the engine sets Theano's
``reoptimize_unpickled_function=False``).

An entry is a pickle, so it is loaded only from that folder, the same trust
domain as Theano's own compiled C modules next to it: never from a model
store or anything a model ships. Its name is a SHA-256 of everything the
function depends on: the weights' sha256, the spec and metadata, whether it
returns embeddings, the Theano/NumPy/Python versions and Theano's flags, and
the source of the ``model_store`` package (engine, layers, kernels, C ops).
Entries are written atomically (a temporary file renamed into place) and
carry a checksum of their content: a truncated, corrupt or unreadable entry
is ignored and rebuilt. A model version keeps one entry (with embeddings,
one more): writing a new one removes the entries it replaces.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import pickle
import tempfile
from typing import Optional

from model_store import fs
from model_store.cache import cache_dir

_FOLDER = "predictors"
_MAGIC = b"imgclass-predictor 1\n"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SOURCE_SUFFIXES = (".py", ".c", ".h", ".cpp")

_log = logging.getLogger(__name__)


def entry_key(model, *, embeddings: bool) -> str:
    """The SHA-256 naming ``model``'s compiled predictor in the cache."""
    from model_store.engine import version_key

    described = json.dumps({
        "weights_sha256": model.weights_sha256,
        "spec": model.spec,
        "metadata": model.metadata,
        "embeddings": bool(embeddings),
        "engine": version_key(),
        "code": code_version(),
    }, sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()


def code_version() -> str:
    """A SHA-256 of the ``model_store`` package's source files (Python and
    C), which build and optimise the graph."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(_PACKAGE_DIR)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(_SOURCE_SUFFIXES):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, _PACKAGE_DIR).encode())
                with open(path, "rb") as file:
                    digest.update(hashlib.sha256(file.read()).digest())
    return digest.hexdigest()


def entry_path(model, *, embeddings: bool) -> str:
    """Where ``model``'s entry is: ``<slot>-<entry_key>.pkl``, the slot
    naming the model version (and ``embeddings``) so that a new entry can
    replace the old ones."""
    return os.path.join(_folder(), f"{_slot(model, embeddings)}-"
                        f"{entry_key(model, embeddings=embeddings)}.pkl")


def load(model, *, embeddings: bool) -> Optional[dict]:
    """``model``'s entry, or None when there is none or it is unreadable,
    corrupt or written for another key (it is then rebuilt)."""
    path = entry_path(model, embeddings=embeddings)
    try:  # a FIFO there is refused (an OSError), not waited on
        data = fs.read_bytes(path)
    except OSError:
        return None
    checksum, payload = _split(data)
    if payload is None or hashlib.sha256(payload).hexdigest() != checksum:
        _log.warning("ignoring corrupt predictor cache entry %s", path)
        return None
    try:
        entry = pickle.loads(payload)
    except Exception as error:  # a stale class, a Theano change...
        _log.warning("ignoring unreadable predictor cache entry %s: %s",
                     path, error)
        return None
    if not isinstance(entry, dict) or entry.pop("path", None) != path:
        return None
    return entry


def store(model, *, embeddings: bool, entry: dict) -> None:
    """Writes ``entry`` (a picklable dict) atomically and removes the
    entries it replaces; a failure to write only costs the next process a
    compile."""
    path = entry_path(model, embeddings=embeddings)
    try:
        payload = pickle.dumps(dict(entry, path=path),
                               protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        _log.warning("cannot cache the predictor: %s", error)
        return
    data = (_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n"
            + payload)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path),
                                         prefix=".tmp-", suffix=".pkl")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
        for old in glob.glob(os.path.join(
                _folder(), f"{_slot(model, embeddings)}-*.pkl")):
            if old != path:
                os.unlink(old)
    except OSError as error:
        _log.warning("cannot write the predictor cache entry %s: %s",
                     path, error)


def _folder() -> str:
    return os.path.join(cache_dir(), _FOLDER)


def _slot(model, embeddings: bool) -> str:
    named = f"{model.ref}\0{bool(embeddings)}".encode()
    return hashlib.sha256(named).hexdigest()[:16]


def _split(data: bytes):
    """``(checksum, payload)``, or ``(None, None)`` for a bad header."""
    if not data.startswith(_MAGIC):
        return None, None
    checksum, _, payload = data[len(_MAGIC):].partition(b"\n")
    return checksum.decode("ascii", "replace"), payload
