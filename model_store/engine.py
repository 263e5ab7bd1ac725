"""The Theano engine: the only module that imports theano.

Theano 1.0.5 reads its configuration once, at import time, so this module sets
it before the first ``import theano`` and every other module gets Theano's
symbols from here. Defaults:

* ``floatX=float32``: the network, the weights and the pipeline are float32.
* ``base_compiledir`` under the per-user cache folder
  (``$XDG_CACHE_HOME/imgclass/theano``, default ``~/.cache/imgclass/theano``),
  so compiled modules are reused across runs and never land in the project.
* ``blas.ldflags``: Theano links its C operations against the OpenBLAS of
  the ``scipy-openblas32`` wheel (a PyPI dependency, so no system BLAS is
  needed). That library prefixes its symbols (``scipy_sgemm_``), so the flags
  carry ``-Dsgemm_=scipy_sgemm_`` and the like, and the library is loaded
  here first so that compiled modules find it without an rpath. Theano's
  convolution then runs its batch loop on OpenMP threads (``openmp=True``)
  with single-threaded BLAS calls inside, which bench/ measured fastest.
  Without the wheel, ``blas.ldflags`` is empty and Theano calls BLAS through
  NumPy's C API (slower, and OpenMP must stay off). Either way Theano 1.0.5
  no longer reads ``numpy.distutils.__config__.blas_opt_info``, which current
  NumPy builds lack (it would fail to link ``-lblas``).

* glibc's ``malloc`` keeps freed memory for reuse (:func:`_keep_freed_memory`):
  Theano allocates and frees the same large buffers on every call.

A user's own ``THEANO_FLAGS`` are appended after these defaults, and Theano
lets the last setting of a flag win, so the user's flags always take effect.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import warnings

from model_store.cache import cache_dir
from model_store.errors import EnvironmentProblem

_REQUIRED_PYTHON = (3, 11)


def _check_environment() -> None:
    if sys.version_info[:2] != _REQUIRED_PYTHON:
        raise EnvironmentProblem(
            f"imgclass needs Python 3.11 (Theano 1.0.5 is pinned to it), but this "
            f"is Python {sys.version_info.major}.{sys.version_info.minor}: "
            f"install python3.11 and run 'make install'")
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise EnvironmentProblem(
            f"imgclass needs a C++ compiler for Theano and {compiler!r} was not "
            f"found on PATH: install one (Debian/Ubuntu: 'apt-get install g++', "
            f"macOS: 'xcode-select --install') or set CXX to its path")


def _openblas_flags() -> dict:
    """Theano flags for the scipy-openblas32 wheel, or {} without it."""
    try:
        import scipy_openblas32
    except ImportError:
        return {}
    import ctypes

    lib_dir = scipy_openblas32.get_lib_dir()
    library = scipy_openblas32.get_library()
    # Loaded globally: modules linked with -l<library> then resolve it by
    # its soname without an rpath (THEANO_FLAGS cannot hold the commas).
    handle = ctypes.CDLL(os.path.join(lib_dir, f"lib{library}.so"),
                         mode=ctypes.RTLD_GLOBAL)
    # One BLAS thread per call: the parallelism is OpenMP's, over the batch.
    getattr(handle, f"{_PREFIX}openblas_set_num_threads")(1)
    renames = " ".join(f"-D{name}={_PREFIX}{name}" for name in _BLAS_SYMBOLS)
    # OpenMP threads that spin after each parallel convolution steal the core
    # the next image's decoding needs (bench/README.md: 18.1 s -> 14.3 s for
    # 20,000 images in process). Read when the first OpenMP module loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return {"blas.ldflags": f"-L{lib_dir} -l{library} {renames}",
            "openmp": "True"}


_PREFIX = "scipy_"
# Every BLAS routine Theano's C code may call, and OpenBLAS's thread calls.
_BLAS_SYMBOLS = [
    f"{t}{name}_" for t in "sd" for name in (
        "axpy", "copy", "dot", "gbmv", "gemm", "gemv", "ger", "rot", "rotg",
        "rotm", "rotmg", "sbmv", "scal", "spmv", "spr", "spr2", "swap",
        "symm", "symv", "syr", "syr2", "syr2k", "syrk", "tbmv", "tbsv",
        "tpmv", "tpsv", "trmm", "trmv", "trsm", "trsv")
] + ["openblas_get_num_threads", "openblas_set_num_threads"]


def _configure() -> None:
    defaults = {
        "floatX": "float32",
        "base_compiledir": os.path.join(cache_dir(), "theano"),
        "blas.ldflags": "",
        # Theano's warnings about old bugs fixed before 0.9 are noise here.
        "warn.ignore_bug_before": "all",
        # Worker processes starting together contend for the compile lock;
        # Theano's default makes a waiter sleep 5-10 s between tries.
        "compile.wait": "1",
        # A predictor loaded from imgclass's own cache (model_store.
        # predictor_cache) is already optimised: link it, do not redo it.
        "reoptimize_unpickled_function": "False",
    }
    defaults.update(_openblas_flags())
    cxx = os.environ.get("CXX")
    if cxx:
        defaults["cxx"] = cxx
    ours = ",".join(f"{key}={value}" for key, value in defaults.items())
    user = os.environ.get("THEANO_FLAGS", "")
    os.environ["THEANO_FLAGS"] = f"{ours},{user}" if user else ours


def _keep_freed_memory() -> None:
    """Tells glibc's ``malloc`` to keep freed memory instead of returning it.

    Every call of a compiled function allocates its outputs and work
    buffers (a convolution's column buffer is tens of MB at batch 128) and
    frees them before the next call. With glibc's defaults, buffers above
    the mmap threshold are mapped and unmapped each time and the top of the
    heap is trimmed, so the kernel zeroes fresh pages on every call:
    Fashion-MNIST training spent 11 s of 26 s in the kernel at 500
    images/s, against under 1 s at 720 images/s with these settings. The
    cost is that a process keeps its peak heap (the same buffers it reuses).
    Not glibc (macOS, musl): nothing to do.
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (AttributeError, OSError, TypeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest on 64-bit
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_top_pad, 64 << 20)


_check_environment()
_configure()
_keep_freed_memory()

with warnings.catch_warnings():
    # Theano 1.0.5 uses APIs that newer Python and NumPy deprecate.
    warnings.simplefilter("ignore", DeprecationWarning)
    import logging

    # "Using NumPy C-API based implementation for BLAS functions" is the
    # intended set-up (see the module docstring), not something to warn about.
    logging.getLogger("theano.tensor.blas").setLevel(logging.ERROR)
    import theano  # noqa: E402
    import theano.tensor as T  # noqa: E402
    from theano.sandbox.rng_mrg import MRG_RandomStreams  # noqa: E402
    from theano.tensor.nnet import conv2d  # noqa: E402
    from theano.tensor.signal.pool import pool_2d  # noqa: E402



def _cache_ops_without_props() -> None:
    """Lets Theano reuse compiled modules of ops whose ``__props__`` is ().

    Theano 1.0.5 adds each op's ``__props__`` to a module's cache version and
    treats an empty entry as "unversioned", so every op without properties
    (``Dot22``, ``SoftmaxWithBias``, ``ScalarFromTensor``...) is compiled
    again by g++ in every new process, under a machine-wide lock: about 1.5 s
    per process, and worker processes starting together queue for the lock
    (bench/README.md). Those ops' code versions are already in the key through
    ``c_code_cache_version``; an empty ``__props__`` only says that all
    instances are equal, so it is recorded as a marker instead.
    """
    import inspect
    import textwrap

    from theano.gof import cc

    source = textwrap.dedent(inspect.getsource(cc.CLinker.cmodule_key_))
    old = "version.append(node.op.__props__)"
    if source.count(old) != 1:
        return  # not the Theano 1.0.5 code this was written for: leave it
    namespace = {}
    exec(compile(source.replace(old, "version.append(node.op.__props__ or "
                                     "('no-props',))"),
                 cc.__file__, "exec"), cc.__dict__, namespace)
    cc.CLinker.cmodule_key_ = namespace["cmodule_key_"]


_cache_ops_without_props()


def _stable_cop_versions() -> None:
    """Makes the cache version of Theano's ``COp`` (``DimShuffle`` among
    them) the same in every process.

    Theano 1.0.5 versions a ``COp`` by ``hash()`` of its C source, and
    Python randomises string hashes per process: every process compiled its
    ``DimShuffle`` module again with g++ (about 1-2.5 s of each start-up,
    bench/README.md) and left one more entry in the compile cache, which
    every later process reads at start. A SHA-256 of the same source is
    stable and still changes when the source does.
    """
    import hashlib

    from theano.gof.op import COp

    def c_code_cache_version(self):
        digest = hashlib.sha256("\0".join(self.func_codes).encode())
        version = (int(digest.hexdigest()[:15], 16),)
        if hasattr(self, "params_type"):
            version += (self.params_type.c_code_cache_version(),)
        return version

    COp.c_code_cache_version = c_code_cache_version


_stable_cop_versions()

# Theano clones, differentiates and optimises graphs recursively, a frame
# or more per node along the longest path: with Python's default limit of
# 1,000 frames, a chain of about 300 layers failed to compile. Python 3.11
# keeps pure-Python frames off the C stack, so a higher limit while Theano
# works is safe; it is restored afterwards, so that elsewhere (e.g. JSON
# parsing of hostile specs) deep nesting still stops early.
_THEANO_RECURSION_LIMIT = 200_000
_recursion_lock = threading.Lock()
_recursion_users = [0, 0]  # threads inside Theano, limit to restore


@contextlib.contextmanager
def _room_for_recursion():
    with _recursion_lock:
        if _recursion_users[0] == 0:
            _recursion_users[1] = sys.getrecursionlimit()
            sys.setrecursionlimit(max(_recursion_users[1],
                                      _THEANO_RECURSION_LIMIT))
        _recursion_users[0] += 1
    try:
        yield
    finally:
        with _recursion_lock:
            _recursion_users[0] -= 1
            if _recursion_users[0] == 0:
                sys.setrecursionlimit(_recursion_users[1])


def function(*args, **kwargs):
    """``theano.function``, with room for Theano's recursion on deep graphs."""
    with _room_for_recursion():
        return theano.function(*args, **kwargs)


def grad(*args, **kwargs):
    """``theano.grad``, with room for Theano's recursion on deep graphs."""
    with _room_for_recursion():
        return theano.grad(*args, **kwargs)


def version_key() -> str:
    """What a compiled function depends on besides its graph: the Theano,
    NumPy and Python versions and Theano's flags (ours and the user's)."""
    import numpy

    return (f"theano {theano.__version__}; numpy {numpy.__version__}; "
            f"python {sys.version.split()[0]}; "
            f"flags {os.environ.get('THEANO_FLAGS', '')}")


floatX = theano.config.floatX
shared = theano.shared

__all__ = [
    "T", "MRG_RandomStreams", "cache_dir", "conv2d", "floatX", "function",
    "grad", "pool_2d", "shared", "theano", "version_key",
]
