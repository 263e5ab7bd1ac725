"""Resizing decoded images to the model input, byte for byte as Pillow does.

:func:`resize_planar` is ``Image.resize(size, filter, box=box)`` followed by
``np.asarray`` and a transpose to planes ``(C, H, W)``, which is what the
model input needs. For "L" and "RGB" images of up to ``MAX_COPY_PIXELS``
and the convolution filters (box, bilinear, hamming, bicubic, lanczos) it
runs a C kernel (``resample.c``, next to this module) with Pillow's own
arithmetic, so the result is identical, in about a third of the time
(bench/README.md): decoding and resizing are what the pipeline spends
besides the network. The GIL is released while it runs, so decoding
threads resize in parallel.

The kernel is a small Python module compiled on first use with the same
compiler and CPU flags as Theano's C code, and kept in Theano's compile
directory under a name made of a digest of its source, flags and compiler:
later processes import it. Where it cannot be compiled, Pillow does the
work (same output, one warning).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading

import numpy as np
from PIL import Image

from model_store.images import image_of_samples

_LOG = logging.getLogger(__name__)

#: Pillow filter -> the code resample.c switches on.
_FILTERS = {Image.Resampling.BOX: 0, Image.Resampling.BILINEAR: 1,
            Image.Resampling.HAMMING: 2, Image.Resampling.BICUBIC: 3,
            Image.Resampling.LANCZOS: 4}
#: Image mode -> (bytes per pixel in Pillow's storage, raw mode, channels).
_LAYOUTS = {"L": (1, "L", 1), "RGB": (4, "RGBX", 3)}
#: The kernel reads a copy of the pixels (``tobytes``: Pillow exposes no
#: safe pointer to its own); larger images go to Pillow, so that a 50 MP
#: PNG does not briefly take 200 MB more. JPEGs are reduced while decoding
#: and stay far below.
MAX_COPY_PIXELS = 4_000_000
# Fused multiply-adds would round sample positions unlike Pillow's build.
_FLAGS = ["-O3", "-ffp-contract=off"]

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "resample.c")

_SCRATCH = "build-"

_lock = threading.Lock()
_loaded: list = []  # [module or None], once tried


def resize_planar(image: Image.Image, size: tuple[int, int], resample: int,
                  box: tuple[float, float, float, float] | None = None
                  ) -> np.ndarray:
    """``image.resize(size, resample, box=box)`` as a C-contiguous ``uint8``
    array of planes ``(C, height, width)``."""
    width, height = size
    if box is None:
        box = (0.0, 0.0, float(image.width), float(image.height))
    left, top, right, bottom = box
    if (right - left, bottom - top) == size and all(
            float(v).is_integer() for v in box):
        # Whole pixels at scale 1: what every filter gives is the crop.
        whole = (left, top) == (0, 0) and size == image.size
        return _planar(image if whole else image.crop(tuple(map(int, box))))
    layout = _LAYOUTS.get(image.mode)
    module = compiled() if (layout and resample in _FILTERS and image.width
                            * image.height <= MAX_COPY_PIXELS) else None
    if module is None:
        return _planar(image.resize(size, resample, box=box))
    elem, raw_mode, channels = layout
    return _kernel(module, image.tobytes("raw", raw_mode), elem, channels,
                   (image.width, image.height), size, resample, box)


def resize_samples(samples: np.ndarray, size: tuple[int, int], resample: int,
                   box: tuple[float, float, float, float] | None = None
                   ) -> np.ndarray:
    """:func:`resize_planar` of ``image_of_samples(samples)`` (see
    ``model_store.images``): the kernel reads the samples where they are,
    without the copy into Pillow and ``tobytes``' copy back."""
    height, width, elem = samples.shape
    channels = 1 if elem == 1 else 3
    if box is None:
        box = (0.0, 0.0, float(width), float(height))
    left, top, right, bottom = box
    if (right - left, bottom - top) == size and all(
            float(v).is_integer() for v in box):
        # Whole pixels at scale 1: what every filter gives is the crop.
        crop = samples[int(top):int(bottom), int(left):int(right), :channels]
        return np.ascontiguousarray(crop.transpose(2, 0, 1))
    module = compiled() if resample in _FILTERS else None
    if module is None:
        return resize_planar(image_of_samples(samples), size, resample, box)
    return _kernel(module, samples, elem, channels, (width, height), size,
                   resample, box)


def _kernel(module, source, elem: int, channels: int,
            source_size: tuple[int, int], size: tuple[int, int],
            resample: int, box) -> np.ndarray:
    """The compiled kernel's resampling of ``source`` (rows of ``elem``
    bytes per pixel) into planes ``(channels, height, width)``."""
    width, height = size
    out = np.empty((channels, height, width), np.uint8)
    module.resample(source, source_size[1], source_size[0], elem,
                    *map(float, box), height, width, _FILTERS[resample],
                    channels, out)
    return out


def _planar(image: Image.Image) -> np.ndarray:
    """A Pillow image's pixels as a C-contiguous ``uint8`` array of planes
    ``(C, height, width)``."""
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        return pixels[np.newaxis]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def compiled():
    """The compiled kernel's module, or None where it cannot be built."""
    if not _loaded:
        with _lock:
            if not _loaded:
                try:
                    _loaded.append(_build())
                except Exception as error:  # no compiler, full disk...
                    _LOG.warning("resizing with Pillow: the resampling "
                                 "kernel did not compile: %s", error)
                    _loaded.append(None)
    return _loaded[0]


def _build():
    from model_store.engine import theano  # configures Theano's compiler

    cmodule, compilelock = theano.gof.cmodule, theano.gof.compilelock
    args = _FLAGS + cmodule.GCC_compiler.compile_args()
    with open(_SOURCE) as handle:
        body = handle.read()
    digest = hashlib.sha256("\0".join(
        [body, *args, theano.config.cxx, cmodule.gcc_version_str,
         sys.version]).encode()).hexdigest()[:16]
    name = f"imgclass_resample_{digest}"
    location = os.path.join(theano.config.compiledir, name)
    library = os.path.join(location, f"{name}.{cmodule.get_lib_extension()}")
    module = _import(cmodule, library)
    if module is not None:
        return module
    with compilelock.lock_ctx():
        module = _import(cmodule, library)  # another process built it
        if module is not None:
            return module
        os.makedirs(location, exist_ok=True)
        # Built aside, then renamed: a build that is killed half-way never
        # leaves a partial library where the next process looks. What such
        # a build left is removed here (the lock is ours).
        for entry in os.listdir(location):
            if entry.startswith(_SCRATCH):
                shutil.rmtree(os.path.join(location, entry), ignore_errors=True)
        scratch = tempfile.mkdtemp(prefix=_SCRATCH, dir=location)
        try:
            cmodule.GCC_compiler.compile_str(
                name, f"#define IMGCLASS_RS_MODULE {name}\n{body}",
                location=scratch, preargs=args, py_module=False)
            os.replace(os.path.join(scratch, os.path.basename(library)),
                       library)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return cmodule.dlimport(library)


def _import(cmodule, library: str):
    """The module at ``library``, or None if it is missing or unreadable
    (a build that was interrupted: it is built again)."""
    if not os.path.exists(library):
        return None
    try:
        return cmodule.dlimport(library)
    except Exception:
        return None
