"""Shared fixtures: image folders made from held-out digits, and a runner for
the command line that captures its exit code and messages."""

import contextlib
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image


def _suite_cache() -> str:
    """The suite's own cache folder (``XDG_CACHE_HOME``), beside the user's:
    the suite compiles hundreds of Theano modules (every op at many shapes),
    and every imgclass process reads the key of each module in its cache
    when it first compiles (0.46 s for 513 modules), so the user's cache
    keeps only what the user's own runs compiled. Set before any imgclass
    module is imported; tests that start processes pass it on."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return root if os.path.basename(root) == SUITE_CACHE else os.path.join(
        root, SUITE_CACHE)


SUITE_CACHE = "imgclass-tests"
os.environ["XDG_CACHE_HOME"] = _suite_cache()

from model_store.datasets import digit_image, load_digits_split  # noqa: E402
from pipeline.cli import main  # noqa: E402

FORMATS = [("png", "PNG", {}), ("jpg", "JPEG", {"quality": 85}),
           ("bmp", "BMP", {}), ("webp", "WEBP", {"quality": 90}),
           ("tiff", "TIFF", {}), ("gif", "GIF", {})]
SIZES = [8, 12, 16, 24, 32, 48, 64, 96]


def pytest_configure(config):
    """``IMGCLASS_TEST_MARCH=haswell`` compiles Theano's C code for that CPU
    instead of this one's (``-march=native``'s equivalent): how the tests
    check the fast ops' code for CPUs without AVX-512 on one that has it."""
    march = os.environ.get("IMGCLASS_TEST_MARCH")
    if march:
        from model_store.engine import theano  # configures Theano first
        theano.gof.cmodule.GCC_compiler.march_flags = [f"-march={march}"]


def run_tests_compiled_for(march: str, test_file: str, keyword: str,
                           compiledir) -> int:
    """Runs the tests of ``test_file`` matching ``keyword`` in a new process
    that compiles every C module afresh into ``compiledir`` for CPU
    ``march``; the number that passed (the run must pass)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, IMGCLASS_TEST_MARCH=march,
               THEANO_FLAGS=f"base_compiledir={compiledir}")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-k", keyword, os.path.join(root, "tests", test_file)],
        env=env, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return int(done.stdout.split(" passed")[0].split()[-1])


@pytest.fixture(scope="session")
def split():
    return load_digits_split()


def write_digits(folder, split, count, *, seed=0, nested=True):
    """Saves ``count`` held-out digits in rotating formats and sizes.

    Returns ``{path: true label}``.
    """
    rng = np.random.RandomState(seed)
    truth = {}
    indices = rng.permutation(len(split.test_images))[:count]
    for n, index in enumerate(indices):
        ext, fmt, kwargs = FORMATS[n % len(FORMATS)]
        size = SIZES[rng.randint(len(SIZES))]
        sub = os.path.join(folder, f"batch{n % 3}" if nested else "")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"d{n:04d}_{size}px.{ext}")
        digit_image(split.test_images[index], size,
                    Image.Resampling.BICUBIC).save(path, fmt, **kwargs)
        truth[path] = str(split.test_labels[index])
    return truth


def png_bomb(width=30000, height=30000):
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def write_bad_files(folder):
    """One file per kind of bad input; returns ``{path: stage}``."""
    os.makedirs(folder, exist_ok=True)
    good = io.BytesIO()
    Image.new("L", (64, 64), 128).save(good, "JPEG")
    files = {
        "empty.png": b"",
        "notes.jpg": b"just some text, not an image\n",
        "random.webp": np.random.RandomState(1).bytes(5000),
        "truncated.jpg": good.getvalue()[: len(good.getvalue()) // 2],
        "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 200,
        "bomb.png": png_bomb(),
    }
    stages = {}
    for name, data in files.items():
        path = os.path.join(folder, name)
        with open(path, "wb") as handle:
            handle.write(data)
        stages[path] = "decode"
    return stages


class _Hung(BaseException):
    """Not an OSError: the code under test must not catch it."""


def traced_peak(call):
    """``(call(), the peak of the memory Python allocated during it)``
    (tracemalloc: allocations by NumPy and Python, not by C libraries)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@contextlib.contextmanager
def within(seconds):
    """Fails (rather than hangs) when the block takes longer."""
    def timeout(*args):
        signal.alarm(1)  # again, should something catch it
        raise _Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def cli(capsys):
    """Runs ``imgclass`` in-process: ``(exit code, stdout, stderr)``."""
    def run(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


@pytest.fixture
def kill_mid_run():
    """Starts ``imgclass classify ARGS`` in a process group of its own and
    SIGKILLs the group as soon as the run has staged a file (within two
    minutes); fails if the run ended or staged nothing first."""
    def run_and_kill(output, *args):
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "classify", "--output",
             str(output), *map(str, args)],
            stderr=subprocess.PIPE, start_new_session=True)
        staging = os.path.join(str(output), "_staging")
        deadline = time.monotonic() + 120
        staged = []
        while time.monotonic() < deadline and process.poll() is None:
            staged = [n for _, _, names in os.walk(staging) for n in names]
            if staged:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        assert staged, "nothing was staged within two minutes"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return run_and_kill


# EfficientNet-Lite0 on real photos -------------------------------------------

# scikit-image's photos: (file name in skimage/data, name here, re-encoding).
LITE0_PHOTOS = [("coffee.png", "coffee.png", None),
                ("chelsea.png", "chelsea.png", None),
                ("astronaut.png", "astronaut.jpg", "JPEG"),  # 512 px: draft
                ("rocket.jpg", "rocket.jpg", None),
                ("motorcycle_left.png", "motorcycle.png", None)]


@pytest.fixture(scope="session")
def lite0_photos(tmp_path_factory):
    """A folder with the 5 photos, as files."""
    import skimage.data

    source = os.path.dirname(skimage.data.__file__)
    folder = tmp_path_factory.mktemp("photos")
    for name, target, fmt in LITE0_PHOTOS:
        image = Image.open(os.path.join(source, name))
        if fmt is None:
            with open(os.path.join(source, name), "rb") as handle:
                (folder / target).write_bytes(handle.read())
        else:
            image.convert("RGB").save(folder / target, fmt, quality=92)
    return str(folder)


def lite0_inputs(paths, prep):
    """Files -> normalised batch, decoded exactly as the pipeline does."""
    from model_store.images import decode_image

    images = []
    for path in paths:
        with open(path, "rb") as handle:
            images.append(decode_image(handle.read(), mode=prep.color_mode,
                                       target_size=prep.decode_size).image)
    return prep(images)


@pytest.fixture(scope="session")
def lite0_reference(lite0_photos):
    """{path: float64 logits} of the independent NumPy forward pass."""
    from model_store.lite0 import PREPROCESSING, SOURCE
    from model_store.pretrained import source_path
    from model_store.torch_pickle import load_state_dict
    from tests import lite0_reference as reference

    state = load_state_dict(source_path(SOURCE))
    paths = sorted(os.path.join(lite0_photos, n) for n in
                   os.listdir(lite0_photos))
    logits = reference.forward(state, lite0_inputs(paths, PREPROCESSING))
    return dict(zip(paths, logits))


@pytest.fixture(scope="session")
def lite0_logits_predictor():
    """The shipped model compiled without its final softmax: logits."""
    import dataclasses

    from model_store.compile import compile_predictor
    from model_store.store import load_model

    model = load_model("efficientnet-lite0")
    assert model.spec["layers"][-1]["type"] == "softmax"
    spec = dict(model.spec, layers=model.spec["layers"][:-1])
    return compile_predictor(dataclasses.replace(model, spec=spec))
