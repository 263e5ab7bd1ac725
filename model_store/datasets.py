"""Training data: the UCI handwritten digits that scikit-learn ships.

1,797 images of 8x8 pixels with values 0-16 (16 = ink), light digits on a
dark background. :func:`digit_image` renders one as an 8-bit image: that is
how the sample files and the tests' image files are made, and what the model
expects (light strokes on a dark ground).

Real files differ from the dataset in size, resampling filter, position and
compression, so :func:`augmented_pixels` renders each training digit several
times with random such changes, encodes it as a real file, and runs it
through the same decode and preprocessing code as the pipeline.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from model_store.preprocessing import Preprocessing

CLASS_NAMES = [str(d) for d in range(10)]
# The built-in training sets of "imgclass train --dataset".
DATASETS = ("digits", "fashion-mnist")
SPLIT_SEED = 20240611
TEST_FRACTION = 0.2
_FILTERS = [Image.Resampling.NEAREST, Image.Resampling.BILINEAR,
            Image.Resampling.BICUBIC, Image.Resampling.LANCZOS,
            Image.Resampling.BOX]


@dataclasses.dataclass(frozen=True)
class Split:
    """The stratified 80/20 split; images are ``uint8 (N, 8, 8)``."""
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list


def load_digits_split() -> Split:
    """The stratified 80/20 train/test split, always the same (fixed seed)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int32), test_size=TEST_FRACTION,
        stratify=digits.target, random_state=SPLIT_SEED)
    return Split(x_train, y_train, x_test, y_test, list(CLASS_NAMES))


def digit_image(pixels: np.ndarray, size: int = 8,
                resample=Image.Resampling.BILINEAR) -> Image.Image:
    """An 8x8 ``uint8`` digit as a grayscale image of ``size`` pixels."""
    image = Image.fromarray(np.asarray(pixels, np.uint8), mode="L")
    if size != image.width:
        image = image.resize((size, size), resample)
    return image


def plain_pixels(images: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Images (digits, Fashion-MNIST) rendered at their own size and
    preprocessed: the evaluation set's input, ``uint8 (N, C, H, W)``."""
    return np.stack([prep.to_pixels(digit_image(p, p.shape[-1]))
                     for p in images])


def augmented_pixels(images: np.ndarray, prep: Preprocessing, *,
                     copies: int, seed: int) -> np.ndarray:
    """``copies`` random variants of each digit, ``uint8 (N*copies, C, H, W)``.

    Each variant: a random size from 8 to 96 pixels, a random resampling
    filter, a shift of up to one dataset pixel and a rotation of up to 8
    degrees, then saved as PNG or JPEG (quality 40-95) and decoded and
    preprocessed by the pipeline's own functions. Output order is variant-
    major: ``[all images, copy 0], [all images, copy 1], ...``.
    """
    from model_store.images import decode_image

    rng = np.random.RandomState(seed)
    out = []
    for _ in range(copies):
        for pixels in images:
            size = int(rng.choice([8, 12, 16, 24, 32, 48, 64, 96]))
            image = digit_image(pixels, size, _FILTERS[rng.randint(
                len(_FILTERS))])
            shift = size / 8.0
            image = image.rotate(
                rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR,
                translate=(rng.uniform(-shift, shift),
                           rng.uniform(-shift, shift)), fillcolor=0)
            buffer = io.BytesIO()
            if rng.rand() < 0.5:
                image.save(buffer, "JPEG", quality=int(rng.randint(40, 96)))
            else:
                image.save(buffer, "PNG")
            decoded = decode_image(buffer.getvalue(), mode=prep.color_mode,
                                   target_size=prep.decode_size,
                                   background=prep.background)
            out.append(prep.pixels_of(decoded))
    return np.stack(out)
