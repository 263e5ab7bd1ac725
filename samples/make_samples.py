"""Regenerates samples/digits/: the demo's input folder.

36 held-out UCI digits (never seen in training) saved in six formats at
sizes from 8 to 96 pixels, named ``<true label>_<index>_<size>px.<ext>``,
plus three broken files that must become error rows. Deterministic: running
it again writes the same images.

    python samples/make_samples.py
"""

import os
import shutil

import numpy as np
from PIL import Image

from model_store.datasets import digit_image, load_digits_split

HERE = os.path.dirname(os.path.abspath(__file__))
FORMATS = [("png", "PNG", {}), ("jpg", "JPEG", {"quality": 90}),
           ("bmp", "BMP", {}), ("webp", "WEBP", {"lossless": True}),
           ("tiff", "TIFF", {}), ("gif", "GIF", {})]
SIZES = [8, 16, 24, 32, 64, 96]


def main(folder: str = os.path.join(HERE, "digits")) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "more"))
    split = load_digits_split()
    rng = np.random.RandomState(7)
    picks = rng.choice(len(split.test_images), size=36, replace=False)
    for n, index in enumerate(picks):
        ext, fmt, kwargs = FORMATS[n % len(FORMATS)]
        size = SIZES[(n // len(FORMATS)) % len(SIZES)]
        image = digit_image(split.test_images[index], size,
                            Image.Resampling.BICUBIC)
        sub = "more" if n % 5 == 4 else ""  # a nested folder, too
        name = f"{split.test_labels[index]}_{index:03d}_{size}px.{ext}"
        image.save(os.path.join(folder, sub, name), fmt, **kwargs)
    broken = os.path.join(folder, "broken")
    os.makedirs(broken)
    good = next(os.path.join(folder, f) for f in sorted(os.listdir(folder))
                if f.endswith(".jpg"))
    with open(good, "rb") as src:
        data = src.read()
    with open(os.path.join(broken, "truncated.jpg"), "wb") as out:
        out.write(data[:len(data) // 2])
    with open(os.path.join(broken, "notes.png"), "w") as out:
        out.write("this is a text file with an image's name\n")
    open(os.path.join(broken, "empty.gif"), "wb").close()


if __name__ == "__main__":
    main()
