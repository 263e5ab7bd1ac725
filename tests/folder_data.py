"""Small labelled image folders made in the tests: one sub-folder per class
of synthetic pictures (a coloured shape on a noisy background)."""

import os

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60),
           "blue": (40, 60, 220)}


def shape_image(colour, rng, size=48):
    """A disc of ``colour`` at a random place on a gray noisy background."""
    noise = rng.randint(90, 160, size=(size, size, 3)).astype(np.uint8)
    image = Image.fromarray(noise, "RGB")
    radius = rng.randint(size // 5, size // 3)
    x, y = rng.randint(radius, size - radius, size=2)
    ImageDraw.Draw(image).ellipse((x - radius, y - radius, x + radius,
                                   y + radius), fill=colour)
    return image


def write_shapes(root, per_class=6, *, seed=0, classes=COLOURS, size=48,
                 nested=True):
    """Writes ``per_class`` images per class; returns ``{path: class}``."""
    rng = np.random.RandomState(seed)
    truth = {}
    for name in classes:
        for n in range(per_class):
            sub = os.path.join(root, name, "more" if nested and n % 3 == 2
                               else "")
            os.makedirs(sub, exist_ok=True)
            ext, fmt = (("png", "PNG"), ("jpg", "JPEG"))[n % 2]
            path = os.path.join(sub, f"{name}{n:03d}.{ext}")
            shape_image(classes[name], rng, size).save(path, fmt)
            truth[path] = name
    return truth


def write_broken(folder):
    """Two unusable files in ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, "truncated.png"),
             os.path.join(folder, "notes.jpg")]
    with open(paths[0], "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n\x00\x00")
    with open(paths[1], "wb") as handle:
        handle.write(b"this is not a picture")
    return paths


PHOTOS = ("chelsea", "coffee", "rocket")


def write_photo_crops(root, per_class=8, *, seed=0, size=96):
    """Random crops (half to all of the shorter side, random flips) of
    scikit-image's sample photos, one class per photo; ``{path: class}``."""
    import skimage.data

    rng = np.random.RandomState(seed)
    truth = {}
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skimage.data, name)())
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for n in range(per_class):
            side = int(min(photo.size) * rng.uniform(0.5, 1.0))
            left = rng.randint(0, photo.width - side + 1)
            top = rng.randint(0, photo.height - side + 1)
            crop = photo.crop((left, top, left + side, top + side))
            if rng.rand() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            path = os.path.join(root, name, f"{name}{n:03d}.jpg")
            crop.resize((size, size), Image.Resampling.BILINEAR).save(
                path, "JPEG", quality=90)
            truth[path] = name
    return truth
