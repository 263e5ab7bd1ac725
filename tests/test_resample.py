"""The compiled resize gives Pillow's pixels, byte for byte.

Pillow is the reference: ``Image.resize`` then ``np.asarray`` and a
transpose to planes, which is what the preprocessing did before the kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from model_store import resample
from tests.conftest import run_tests_compiled_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILTERS = [Image.Resampling.BOX, Image.Resampling.BILINEAR,
           Image.Resampling.HAMMING, Image.Resampling.BICUBIC,
           Image.Resampling.LANCZOS]


def pillow_planar(image, size, filter_, box=None):
    pixels = np.asarray(image.resize(size, filter_, box=box))
    return pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def random_image(rng, mode, height, width):
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def random_box(rng, width, height):
    x0 = rng.uniform(0, width - 0.5)
    y0 = rng.uniform(0, height - 0.5)
    return (x0, y0, rng.uniform(x0 + 0.25, width), rng.uniform(y0 + 0.25, height))


@pytest.fixture(scope="module", autouse=True)
def kernel():
    """Every test here must run the C kernel, not the Pillow fallback."""
    module = resample.compiled()
    assert module is not None, "the resampling kernel did not compile"
    return module


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("filter_", FILTERS, ids=lambda f: f.name.lower())
def test_resize_equals_pillow_for_random_sizes_and_boxes(mode, filter_):
    rng = np.random.default_rng(int(filter_) * 10 + len(mode))
    for case in range(30):
        height, width = (int(n) for n in rng.integers(1, 200, 2))
        out_w, out_h = (int(n) for n in rng.integers(1, 200, 2))
        image = random_image(rng, mode, height, width)
        box = random_box(rng, width, height) if case % 3 else None
        got = resample.resize_planar(image, (out_w, out_h), filter_, box)
        want = pillow_planar(image, (out_w, out_h), filter_, box)
        assert got.flags.c_contiguous and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want, err_msg=f"case {case}: "
                                      f"{width}x{height} -> {out_w}x{out_h}, box {box}")


@pytest.mark.parametrize("size, out, box", [
    ((1, 1), (7, 5), None),                       # one pixel, enlarged
    ((300, 1), (1, 1), None),                     # a line, to one pixel
    ((1, 300), (3, 224), None),                   # a column
    ((640, 480), (224, 224), (80.0, 0.0, 560.0, 480.0)),    # box on edges
    ((512, 384), (224, 224), (53.75, 24.0, 389.75, 360.0)),  # Lite0 crop
    ((40, 30), (400, 300), None),                 # 10x larger
    ((2000, 30), (20, 30), None),                 # 100x smaller, one axis
])
@pytest.mark.parametrize("filter_", [Image.Resampling.BICUBIC,
                                     Image.Resampling.LANCZOS],
                         ids=["bicubic", "lanczos"])
def test_resize_equals_pillow_at_extremes(size, out, box, filter_):
    rng = np.random.default_rng(sum(size) + sum(out))
    image = random_image(rng, "RGB", size[1], size[0])
    np.testing.assert_array_equal(
        resample.resize_planar(image, out, filter_, box),
        pillow_planar(image, out, filter_, box))


def test_resize_equals_pillow_on_smooth_photo_like_pixels():
    # Noise rarely lands near a rounding boundary twice; a gradient with
    # flat areas and sharp edges does (overshoot clipped at 0 and 255).
    y, x = np.mgrid[0:333, 0:500]
    checker = np.where((x // 50 + y // 40) % 2, 255, 0)
    image = Image.fromarray(np.stack([checker, x * 255 // 499, y * 255 // 332],
                                     -1).astype(np.uint8), "RGB")
    for filter_ in FILTERS:
        np.testing.assert_array_equal(
            resample.resize_planar(image, (224, 224), filter_, (60.5, 10.25, 441.0, 330.0)),
            pillow_planar(image, (224, 224), filter_, (60.5, 10.25, 441.0, 330.0)))


def test_box_of_whole_pixels_at_scale_one_is_the_crop():
    image = random_image(np.random.default_rng(3), "RGB", 256, 300)
    got = resample.resize_planar(image, (224, 224), Image.Resampling.BICUBIC,
                                 (38.0, 16.0, 262.0, 240.0))
    np.testing.assert_array_equal(got, np.asarray(image)[16:240, 38:262].transpose(2, 0, 1))


def test_threads_resize_at_once_with_the_same_results():
    rng = np.random.default_rng(4)
    images = [random_image(rng, "RGB", int(rng.integers(250, 400)), int(rng.integers(250, 400)))
              for _ in range(16)]

    def resize(image):
        return resample.resize_planar(image, (224, 224), Image.Resampling.BICUBIC,
                                      (10.0, 12.5, image.width - 9.0, image.height - 3.5))

    serial = [resize(image) for image in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(resize, images * 4))
    for i, got in enumerate(parallel):
        np.testing.assert_array_equal(got, serial[i % len(images)])


def test_modes_and_filters_without_kernel_go_to_pillow():
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (50, 60, 4), dtype=np.uint8), "RGBA")
    np.testing.assert_array_equal(
        resample.resize_planar(image, (20, 30), Image.Resampling.BICUBIC),
        pillow_planar(image, (20, 30), Image.Resampling.BICUBIC))
    gray = random_image(rng, "L", 50, 60)
    np.testing.assert_array_equal(
        resample.resize_planar(gray, (20, 30), Image.Resampling.NEAREST),
        pillow_planar(gray, (20, 30), Image.Resampling.NEAREST))


def test_images_too_large_to_copy_go_to_pillow(monkeypatch):
    class Untouchable:
        def resample(self, *args):
            raise AssertionError("the kernel was called")

    monkeypatch.setattr(resample, "compiled", lambda: Untouchable())
    monkeypatch.setattr(resample, "MAX_COPY_PIXELS", 40 * 50 - 1)
    image = random_image(np.random.default_rng(7), "RGB", 40, 50)
    np.testing.assert_array_equal(
        resample.resize_planar(image, (20, 30), Image.Resampling.BICUBIC),
        pillow_planar(image, (20, 30), Image.Resampling.BICUBIC))
    with pytest.raises(AssertionError, match="kernel was called"):
        resample.resize_planar(random_image(np.random.default_rng(8), "RGB", 40, 49),
                               (20, 30), Image.Resampling.BICUBIC)


def test_without_a_compiler_pillow_resizes_and_one_warning_says_so(monkeypatch, caplog):
    def broken():
        raise OSError("g++: not found")

    monkeypatch.setattr(resample, "_build", broken)
    monkeypatch.setattr(resample, "_loaded", [])
    image = random_image(np.random.default_rng(6), "RGB", 80, 90)
    for _ in range(3):
        got = resample.resize_planar(image, (32, 32), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(got, pillow_planar(image, (32, 32), Image.Resampling.BICUBIC))
    warnings = [r for r in caplog.records if "did not compile" in r.getMessage()]
    assert len(warnings) == 1 and "g++: not found" in warnings[0].getMessage()


_BUILD_AND_CHECK = """
import numpy as np
from PIL import Image
from model_store import resample
module = resample.compiled()
assert module is not None
image = Image.fromarray(np.arange(90 * 70 * 3, dtype=np.uint32).reshape(90, 70, 3).astype(np.uint8))
got = resample.resize_planar(image, (33, 44), Image.Resampling.BICUBIC, (1.5, 2.0, 66.0, 88.5))
want = np.asarray(image.resize((33, 44), Image.Resampling.BICUBIC, box=(1.5, 2.0, 66.0, 88.5)))
assert np.array_equal(got, want.transpose(2, 0, 1))
print(module.__file__)
"""


def test_a_damaged_library_in_the_cache_is_built_again(tmp_path):
    """A library cut short (a full disk, a copy interrupted) is not loaded:
    the next process builds the kernel again and resizes correctly, and
    removes what a build killed half-way left."""
    env = dict(os.environ, PYTHONPATH=ROOT, THEANO_FLAGS=f"base_compiledir={tmp_path}")

    def run():
        done = subprocess.run([sys.executable, "-c", _BUILD_AND_CHECK], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    library = run()
    assert library.startswith(str(tmp_path)) and os.path.getsize(library) > 1000
    with open(library, "r+b") as handle:
        handle.truncate(100)
    killed_build = os.path.join(os.path.dirname(library), "build-killed")
    os.makedirs(killed_build)
    open(os.path.join(killed_build, "mod.cpp"), "w").close()
    assert run() == library
    assert os.path.getsize(library) > 1000
    leftovers = [name for name in os.listdir(os.path.dirname(library))
                 if name != os.path.basename(library)]
    assert leftovers == []


def test_kernel_built_for_a_cpu_without_avx512_gives_the_same_pixels(tmp_path):
    """This machine has AVX-512; compiled for Haswell (AVX2), the kernel's
    code differs, and this file's comparisons with Pillow pass with it
    too, in a process that builds it afresh."""
    assert run_tests_compiled_for("haswell", "test_resample.py", "equals_pillow",
                                  tmp_path) >= 20
    libraries = list(tmp_path.rglob("imgclass_resample_*.so"))
    assert len(libraries) == 1
    assert os.path.basename(libraries[0]) != os.path.basename(resample.compiled().__file__)
    objdump = shutil.which("objdump")
    if objdump:  # binutils comes with the compiler
        code = subprocess.run([objdump, "-d", str(libraries[0])], capture_output=True,
                              text=True, check=True).stdout
        assert "%ymm" in code and "%zmm" not in code
