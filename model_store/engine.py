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

* glibc's ``malloc`` keeps freed memory for reuse once a network is compiled
  or loaded (:func:`keep_freed_memory`): Theano allocates and frees the same
  large buffers on every call.
* idle OpenMP threads spin briefly before they sleep
  (:func:`_short_openmp_waits`).

A user's own ``THEANO_FLAGS`` are appended after these defaults, and Theano
lets the last setting of a flag win, so the user's flags always take effect.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import importlib.util
import os
import shutil
import sys
import threading
import types
import warnings

from model_store import fs
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


#: Iterations an idle OpenMP thread spins before it sleeps (libgomp's
#: ``GOMP_SPINCOUNT``; about a millisecond here, against 300,000 by default).
OPENMP_SPIN_COUNT = 20000


def _short_openmp_waits() -> None:
    """Idle OpenMP threads spin briefly, then sleep.

    With libgomp's default wait (spinning for 300,000 iterations), threads
    left spinning after a convolution stole the core the next image's
    decoding needed (20,000 images in process: 18.1 s, against 14.3 s with
    ``OMP_WAIT_POLICY=PASSIVE``). Sleeping at once costs a wake-up at each
    of a network's parallel regions instead: EfficientNet-Lite0 at batch 1
    ran 92 images/s passive, 125 with this spin count, and neither
    pipeline got slower (bench/README.md). Read when the first OpenMP
    module loads; a user's ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` wins.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(OPENMP_SPIN_COUNT))


def keep_freed_memory() -> None:
    """Tells glibc's ``malloc`` to keep freed memory instead of returning it.

    Every call of a compiled function allocates its outputs and work
    buffers (a convolution's column buffer is tens of MB at batch 128) and
    frees them before the next call. With glibc's defaults, buffers above
    the mmap threshold are mapped and unmapped each time and the top of the
    heap is trimmed, so the kernel zeroes fresh pages on every call:
    Fashion-MNIST training spent 11 s of 26 s in the kernel at 500
    images/s, against under 1 s at 720 images/s with these settings. The
    cost is that a process keeps its peak heap from then on, so it is
    called when a network is compiled or loaded (:func:`function`,
    ``compile_predictor``), not when Theano is imported: a pipeline's
    driver, which lists the files and runs no network, then gives back
    what Beam's buffers and messages freed (100,000 files over 2 worker
    processes: 478 -> 350 MB, bench/README.md). Not glibc (macOS, musl):
    nothing to do.
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


class _DeferredModule(types.ModuleType):
    """Stands in ``sys.modules`` for a module until an attribute of it is
    read; then the real module is imported, takes its place in
    ``sys.modules`` and answers that read and every later one."""

    def __getattr__(self, attribute):
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        return getattr(real, attribute)


def _defer_import(name: str) -> None:
    """Lets an ``import name`` cost nothing until the module is used."""
    if name not in sys.modules and importlib.util.find_spec(name) is not None:
        sys.modules[name] = _DeferredModule(name)


@contextlib.contextmanager
def _lighter_theano_imports():
    """Leaves out what Theano 1.0.5 imports at start-up and imgclass never
    uses, about 0.5 s of CPU in every process (bench/README.md):

    * ``scipy.stats``, for one scalar op (``chi2.sf``) no network here
      builds: it stays a stand-in until anything reads it (scikit-learn's
      metrics, a user's code), which imports it for real.
    * ``scipy.signal``, for the Python fallback of its convolutions: Theano
      imports it only to reach ``scipy.signal.sigtools``, which current
      SciPy no longer has, so the import fails and Theano goes on without
      it. While Theano is imported, ``scipy.signal`` is blocked (``None`` in
      ``sys.modules``), which fails the same way at once.
    * setuptools' replacement for ``distutils`` (which loads
      ``pkg_resources``), for ``distutils.spawn`` and ``sysconfig``: Python
      3.11's own ``distutils`` serves the same calls. setuptools installs
      its import hook at interpreter start unless
      ``SETUPTOOLS_USE_DISTUTILS=stdlib``; the hook is taken out again if
      nothing has imported ``distutils`` yet, and child processes get the
      variable.
    """
    os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
    if "distutils" not in sys.modules and \
            os.environ["SETUPTOOLS_USE_DISTUTILS"] == "stdlib":
        try:
            import _distutils_hack
            _distutils_hack.remove_shim()
        except (ImportError, AttributeError):
            pass
    _defer_import("scipy.stats")
    block_signal = "scipy.signal" not in sys.modules and not _scipy_has(
        "signal", "sigtools")
    if block_signal:
        sys.modules["scipy.signal"] = None
    try:
        yield
    finally:
        if block_signal and sys.modules.get("scipy.signal", 0) is None:
            del sys.modules["scipy.signal"]


def _scipy_has(*path: str) -> bool:
    """Whether SciPy's package folder has a module at ``path`` (any
    suffix), found without importing it."""
    spec = importlib.util.find_spec("scipy")
    folders = (spec.submodule_search_locations or []) if spec else []
    return any(glob.glob(os.path.join(folder, *path) + "*")
               for folder in folders)


_check_environment()
_configure()
_short_openmp_waits()

_SETTINGS = ("fix or unset THEANO_FLAGS and OMP_NUM_THREADS, and give "
             "XDG_CACHE_HOME a folder that can be written")

with warnings.catch_warnings(), _lighter_theano_imports():
    # Theano 1.0.5 uses APIs that newer Python and NumPy deprecate.
    warnings.simplefilter("ignore", DeprecationWarning)
    import logging

    # "Using NumPy C-API based implementation for BLAS functions" is the
    # intended set-up (see the module docstring), not something to warn about.
    logging.getLogger("theano.tensor.blas").setLevel(logging.ERROR)
    try:
        import theano  # noqa: E402
    except (ValueError, TypeError) as error:
        # Theano checks its settings as it is imported: a THEANO_FLAGS
        # value it rejects, OMP_NUM_THREADS=abc, a compile folder it
        # cannot create (XDG_CACHE_HOME a file).
        raise EnvironmentProblem(
            f"Theano cannot start with this environment: "
            f"{' '.join(str(error).split())} ({_SETTINGS})") from None
    import theano.tensor as T  # noqa: E402
    from theano.sandbox.rng_mrg import MRG_RandomStreams  # noqa: E402
    from theano.tensor.nnet import conv2d  # noqa: E402
    from theano.tensor.signal.pool import pool_2d  # noqa: E402


def _check_theano_settings() -> None:
    """Settings Theano accepts but cannot run a network with (its
    convolutions have no float16 on the CPU; a ``cxx`` it cannot find),
    refused now rather than when the first network is compiled."""
    if theano.config.floatX == "float16":
        raise EnvironmentProblem(
            "THEANO_FLAGS sets floatX=float16, which Theano cannot run on "
            "the CPU: use float32 (the default) or float64")
    cxx = theano.config.cxx
    if cxx and shutil.which(cxx) is None:
        raise EnvironmentProblem(
            f"THEANO_FLAGS sets cxx={cxx}, which was not found: give the "
            f"path of a C++ compiler, or leave cxx out")


_check_theano_settings()



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

def _cpu_identity() -> str | None:
    """The first CPU's model and feature flags (Linux), or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read().split("\n\n")[0]
    except OSError:
        return None
    lines = [line for line in text.splitlines()
             if line.split(":")[0].strip() in ("vendor_id", "model name",
                                                "flags")]
    return "\n".join(lines) or None


def _cache_compiler_probes() -> None:
    """Remembers, per machine, what Theano asks g++ in every process.

    Theano 1.0.5 finds the flags equivalent to ``-march=native`` (one g++
    call, then compiling and running a test program) and whether g++ does
    OpenMP (compiling another) in each process before it can look up a
    compiled module: about 0.2 s of every start-up (bench/README.md). The
    answers depend only on the compiler and the CPU, so they are kept in
    the user's cache keyed by both; without ``/proc/cpuinfo`` nothing is
    cached.
    """
    import hashlib
    import json

    from theano.gof.cmodule import GCC_compiler, gcc_version_str
    from theano.gof.op import OpenMPOp

    cpu = _cpu_identity()
    if cpu is None or not theano.config.cxx:
        return
    key = hashlib.sha256("\0".join((
        theano.config.cxx, shutil.which(theano.config.cxx) or "",
        gcc_version_str, theano.config.gcc.cxxflags, theano.__version__,
        cpu)).encode()).hexdigest()[:24]
    path = os.path.join(cache_dir(), "compiler", f"{key}.json")
    try:  # a FIFO there is refused (an OSError), not waited on
        with fs.open_text(path) as handle:
            probes = json.load(handle)
        GCC_compiler.march_flags = [str(f) for f in probes["march_flags"]]
        OpenMPOp.gxx_support_openmp = bool(probes["openmp"])
        return
    except (OSError, ValueError, KeyError, TypeError):
        pass
    GCC_compiler.compile_args()
    if OpenMPOp.gxx_support_openmp is None:
        OpenMPOp.gxx_support_openmp = OpenMPOp.test_gxx_support()
    probes = {"march_flags": GCC_compiler.march_flags,
              "openmp": OpenMPOp.gxx_support_openmp}
    try:
        fs.write_atomic(path, fs.json_bytes(probes))
    except OSError:
        pass  # a read-only cache: probe again next time


_cache_compiler_probes()

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
    """``theano.function``, with room for Theano's recursion on deep graphs
    (and :func:`keep_freed_memory` for the calls to come)."""
    keep_freed_memory()
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
