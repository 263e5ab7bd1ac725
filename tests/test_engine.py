"""The engine's per-machine memory of what Theano asks g++ in each process."""

import json
import os
import subprocess
import sys

from model_store.engine import theano

PRINT_PROBES = (
    "import json; import model_store.engine; "
    "from theano.gof.cmodule import GCC_compiler; "
    "from theano.gof.op import OpenMPOp; "
    "print(json.dumps([GCC_compiler.march_flags, "
    "OpenMPOp.gxx_support_openmp]))")


def _probes(cache):
    env = dict(os.environ, XDG_CACHE_HOME=str(cache),
               # the compiled modules stay where they are (warm)
               THEANO_FLAGS=f"base_compiledir={theano.config.base_compiledir}")
    done = subprocess.run([sys.executable, "-c", PRINT_PROBES], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_compiler_probes_are_kept_per_machine_and_read_back(tmp_path):
    flags, openmp = _probes(tmp_path)
    assert any(f.startswith("-march=") for f in flags)
    assert openmp is True
    saved, = (tmp_path / "imgclass" / "compiler").iterdir()
    assert json.loads(saved.read_text()) == {"march_flags": flags,
                                             "openmp": True}
    # The next process takes the answers from the file, without asking g++:
    # a changed file shows through.
    saved.write_text(json.dumps({"march_flags": ["-march=x86-64"],
                                 "openmp": False}))
    assert _probes(tmp_path) == [["-march=x86-64"], False]
    # A damaged file is probed again and rewritten.
    saved.write_text("{not json")
    assert _probes(tmp_path) == [flags, openmp]
    assert json.loads(saved.read_text())["march_flags"] == flags
    # So is a FIFO (open() waited for a writer: every command hung).
    saved.unlink()
    os.mkfifo(saved)
    assert _probes(tmp_path) == [flags, openmp]
    assert json.loads(saved.read_text())["march_flags"] == flags


START_UP_IMPORTS = """
import sys
import model_store.engine
from theano.scalar import basic_scipy
from theano.tensor.nnet import abstract_conv
loaded = [name for name in ("scipy.signal", "pkg_resources")
          if name in sys.modules]
stats_loaded = type(sys.modules["scipy.stats"]).__name__ == "module"
import scipy.signal
from scipy.stats import chi2
print(loaded, stats_loaded, abstract_conv.imported_scipy_signal,
      round(float(basic_scipy.scipy.stats.chi2.sf(3.0, 2)), 6),
      list(scipy.signal.convolve([1, 2], [1, 1])))
"""


def test_theano_starts_without_modules_imgclass_never_uses():
    """Starting the engine loads neither scipy.signal nor pkg_resources, and
    scipy.stats only when first used; all three still work afterwards, and
    Theano sees scipy.signal as it would anyway (current SciPy lacks the
    sigtools module Theano looks for)."""
    done = subprocess.run([sys.executable, "-c", START_UP_IMPORTS],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import glob

    import scipy
    has_sigtools = bool(glob.glob(os.path.join(
        os.path.dirname(scipy.__file__), "signal", "sigtools*")))
    assert done.stdout.split() == [
        "[]", "False", str(has_sigtools), "0.22313", "[1,", "3,", "2]"]


def _spin_settings(**env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run(
        [sys.executable, "-c", "import os, model_store.engine; print("
         "os.environ.get('OMP_WAIT_POLICY'), os.environ.get("
         "'GOMP_SPINCOUNT'))"], env=dict(base, **env), capture_output=True,
        text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_openmp_threads_spin_briefly_unless_the_user_says_otherwise():
    """The engine asks libgomp to spin about a millisecond before an idle
    thread sleeps (fast back-to-back parallel regions, no core stolen from
    decoding for long); a user's own OpenMP wait settings are left alone."""
    from model_store.engine import OPENMP_SPIN_COUNT

    assert _spin_settings() == ["None", str(OPENMP_SPIN_COUNT)]
    assert _spin_settings(OMP_WAIT_POLICY="PASSIVE") == ["PASSIVE", "None"]
    assert _spin_settings(GOMP_SPINCOUNT="5") == ["None", "5"]



MALLOPT_CALLS = r"""
import ctypes

told = []

class LibC:  # records what glibc's malloc is told (and tells it)
    def __init__(self, real):
        self.real = real

    def mallopt(self, param, value):
        told.append((param, value))
        return self.real.mallopt(param, value)

    def __getattr__(self, name):
        return getattr(self.real, name)

real_cdll = ctypes.CDLL
ctypes.CDLL = lambda *args, **kwargs: LibC(real_cdll(*args, **kwargs))

import model_store.engine
from model_store.store import load_model
load_model("digits-cnn")
print(len(told), end=" ")
from model_store.compile import compile_predictor
compile_predictor(load_model("digits-cnn"))
print(sorted(told))
"""


def test_malloc_keeps_freed_memory_only_once_a_network_is_compiled():
    """glibc keeps freed memory (Theano reallocates the same buffers on
    every call) from when a predictor is compiled or loaded; importing the
    engine and loading a model (a pipeline's driver, which lists the files
    and runs no network) leave malloc as it was, so what Beam frees goes
    back to the system."""
    done = subprocess.run([sys.executable, "-c", MALLOPT_CALLS],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    assert done.stdout.split(" ", 1) == ["0", str(sorted([
        (m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30),
        (m_top_pad, 64 << 20)])) + "\n"], done.stdout
