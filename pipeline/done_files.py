"""The files a model version has classified, as ``imgclass watch`` keeps
them between windows: 16 bytes per file.

A file is done when a ledger row of the model version holds its path, size
and modification time (``transforms.skip.file_key``; the run's own skip
check is the Beam join of ``transforms.skip``, this only tells the watcher
whether a window has anything new). Each such key is kept as its BLAKE2b
digest of 128 bits, in one sorted NumPy array: a watcher of ten million
files holds 160 MB, where a dictionary of paths held about 460 bytes per file
(bench/watch_listing.py ``--done-memory``). Two different keys share a
digest with a probability of about n^2 / 2^129 (1.5e-25 for ten million).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Iterable, Sequence

import numpy as np
import pyarrow.compute as pc

from pipeline import outputs
from transforms.skip import file_key

_DIGEST = np.dtype("S16")
_COLUMNS = ["path", "size", "mtime", "model_name", "model_version"]
_ROWS_AT_ONCE = 65_536  # ledger rows turned into Python values at a time


def digest(path: str, size: int, mtime: float) -> bytes:
    """The 16 bytes that stand for a file's key (paths travel escaped,
    ``transforms.files``, so they encode; a stray surrogate would too)."""
    data = path.encode("utf-8", "surrogatepass") + struct.pack(
        "<qd", int(size), float(mtime) + 0.0)  # -0.0 and 0.0 are one time
    return hashlib.blake2b(data, digest_size=16).digest()


class DoneFiles:
    """A set of file keys read from ledger files: ``add_ledger`` to add,
    ``new`` to ask which of a listing's files are not in it."""

    def __init__(self):
        self._digests = np.empty(0, dtype=_DIGEST)  # sorted, unique

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def nbytes(self) -> int:
        return self._digests.nbytes

    def clear(self) -> None:
        self._digests = np.empty(0, dtype=_DIGEST)

    def add_ledger(self, files: Iterable[str], stored) -> None:
        """Adds the rows of the ledger ``files`` made with ``stored`` (a
        StoredModel), one file at a time (several at once on an object
        store)."""
        name, version = stored.name, str(stored.version)
        parts = outputs.map_files(
            lambda path: _ledger_digests(path, name, version), files)
        self._add(np.concatenate(parts) if parts else
                  np.empty(0, dtype=_DIGEST))

    def new(self, files: Sequence) -> list:
        """The ``files`` (``FileMetadata``) whose key is not in the set, in
        their order."""
        if not files:
            return []
        keys = np.array([digest(m.path, *file_key(m)) for m in files],
                        dtype=_DIGEST)
        done = self._holds(keys)
        return [m for m, found in zip(files, done) if not found]

    def _holds(self, keys: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self._digests, keys)
        inside = at < len(self._digests)
        found = np.zeros(len(keys), dtype=bool)
        found[inside] = self._digests[at[inside]] == keys[inside]
        return found

    def _add(self, keys: np.ndarray) -> None:
        keys = np.unique(keys)
        if len(keys) * 8 > len(self._digests):  # many: sort them all once
            self._digests = np.union1d(self._digests, keys)
            return
        keys = keys[~self._holds(keys)]  # few (a window's): insert them
        self._digests = np.insert(
            self._digests, np.searchsorted(self._digests, keys), keys)


def _ledger_digests(path: str, name: str, version: str) -> np.ndarray:
    table = outputs.read_table([path], _COLUMNS)
    if table is None:
        return np.empty(0, dtype=_DIGEST)
    table = table.filter(pc.and_(pc.equal(table["model_name"], name),
                                 pc.equal(table["model_version"], version)))
    parts = [np.empty(0, dtype=_DIGEST)]
    keys = table.select(["path", "size", "mtime"])
    for batch in keys.to_batches(max_chunksize=_ROWS_AT_ONCE):
        columns = batch.to_pydict()
        parts.append(np.array(
            [digest(p, s, t) for p, s, t in zip(
                columns["path"], columns["size"], columns["mtime"])],
            dtype=_DIGEST))
    return np.concatenate(parts)
