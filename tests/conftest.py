"""Shared fixtures: image folders made from held-out digits, and a runner for
the command line that captures its exit code and messages."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from model_store.datasets import digit_image, load_digits_split
from pipeline.cli import main

FORMATS = [("png", "PNG", {}), ("jpg", "JPEG", {"quality": 85}),
           ("bmp", "BMP", {}), ("webp", "WEBP", {"quality": 90}),
           ("tiff", "TIFF", {}), ("gif", "GIF", {})]
SIZES = [8, 12, 16, 24, 32, 48, 64, 96]


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


@pytest.fixture
def cli(capsys):
    """Runs ``imgclass`` in-process: ``(exit code, stdout, stderr)``."""
    def run(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run
