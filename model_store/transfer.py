"""Transfer learning: a stored model's features, cached on disk, and a new
classifier head trained on them.

The *backbone* is a stored model (e.g. ``efficientnet-lite0``) cut before
its classifier: its features are the input of its last ``dense`` layer (for
Lite0 the 1280-d global average pool). The backbone is frozen, so the
features of one file never change: :class:`FeatureCache` keeps them on disk
keyed by the backbone weights' sha256 and the file's path and content (the
sha256 of its bytes; and the augmentation variant), and a second training
run on the same data computes none again.

Augmentation with a frozen backbone: each training image gets
``augment_copies`` fixed random variants (random resized crop + horizontal
flip, drawn from the seed and the file's path), and the features of each
variant are cached like the original's. Training the head then sees the
same variants every epoch; that is what makes them cacheable.

The trained model is ONE stored model: the backbone's spec and weights up to
the features, then the new ``dense`` + ``softmax`` head, with the backbone's
preprocessing in its metadata, so ``classify --model NAME`` runs it like any
other model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import tempfile
import zlib
from typing import Callable

import numpy as np
from PIL import Image

from model_store import fs
from model_store.cache import cache_dir
from model_store.errors import ConfigError
from model_store.folders import (
    FolderDataset,
    decode_bytes,
    describe_error,
    read_bytes,
)
from model_store.preprocessing import Preprocessing
from model_store.store import StoredModel

FEATURE_BATCH = 32
# Random resized crop: area and aspect-ratio ranges (torchvision's ratio,
# a milder area range for small datasets).
CROP_AREA = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
HEAD_LAYER, PROB_LAYER = "new_head", "new_head_prob"
# The feature cache's key format, hashed into every key: 3 also hashes the
# file's path below the dataset's root, from which its augmented variants
# are drawn (with 2, a training on a folder inside one trained before,
# photos/animals/ after photos/, took the parent's crops of a file for its
# own); 2 hashes the file's content; 1 hashed its size and modification
# time, which a copy that keeps modification times (rsync -t, cp -p, tar x)
# reproduces for other bytes.
# Entries of another format are never found again (their keys differ): each
# format has its folder, ``features/v<format>/``, and those of older formats
# are removed (FeatureCache.remove_stale; a newer imgclass's are left alone).
CACHE_KEY_FORMAT = 3
# Names in ``features/`` of the folders of a format (``v<N>``, or a weights
# sha256: formats 1 and 2 were kept there before formats had folders), and
# of an entry file in them, in its ``<2 hex>/`` folder.
_FORMAT_FOLDER = re.compile(r"v([0-9]{1,9})|[0-9a-f]{64}")
_ENTRY_FILE = re.compile(r"([0-9a-f]{2})[0-9a-f]{62}\.npy")


# The backbone ---------------------------------------------------------------

def feature_layer(model: StoredModel) -> int:
    """Index in ``model.spec["layers"]`` of the layer whose output feeds the
    last ``dense`` layer (dropout skipped): the backbone's features.

    Raises:
        ConfigError: ``model`` has no dense layer, or none below it.
    """
    layers = model.spec["layers"]
    index = {layer["name"]: i for i, layer in enumerate(layers)}
    dense = [i for i, layer in enumerate(layers) if layer["type"] == "dense"]
    if not dense:
        raise ConfigError(f"--base {model.ref} has no dense classifier "
                          f"layer, whose input would be its features; "
                          f"{_GOOD_BASE}")
    i = dense[-1]
    while True:
        inputs = layers[i].get("inputs")
        i = index.get(inputs[0], -1) if inputs else i - 1
        if i < 0:
            raise ConfigError(f"--base {model.ref} has no layers to keep "
                              f"below its classifier (its last dense layer "
                              f"takes the input itself); {_GOOD_BASE}")
        if layers[i]["type"] != "dropout":
            return i


_GOOD_BASE = ("give a base whose last dense layer sits on feature layers "
              "(convolutions, pooling or another dense layer), such as "
              "digits-cnn or efficientnet-lite0")


def backbone_of(model: StoredModel, cut: int | None = None) -> StoredModel:
    """``model`` cut after layer index ``cut`` (default: its feature layer):
    a stored-model object whose "predictions" are that layer's output (not
    saved anywhere)."""
    cut = feature_layer(model) if cut is None else cut
    spec = dict(model.spec, layers=model.spec["layers"][:cut + 1])
    kept = {layer["name"] for layer in spec["layers"]}
    weights = {key: value for key, value in model.weights.items()
               if key.split(".")[0] in kept}
    return dataclasses.replace(model, spec=spec, weights=weights)


def compile_features(model: StoredModel, cut: int | None = None) -> Callable:
    """``float32 (N, C, H, W)`` -> the output of ``model``'s layer ``cut``
    (default: its features), flattened to ``(N, D)``; compiled as any
    predictor (so with the same folding), computed in whole batches
    (:func:`_padded`)."""
    from model_store.compile import compile_predictor

    predictor = compile_predictor(backbone_of(model, cut))

    def features(batch: np.ndarray) -> np.ndarray:
        return predictor(_padded(batch))[:len(batch)].reshape(len(batch),
                                                              -1)
    return features


def _padded(batch: np.ndarray) -> np.ndarray:
    """``batch`` with its last example repeated up to a multiple of
    ``FEATURE_BATCH``: the backbone then always computes as many at once,
    so that an image's features do not depend on how many others were
    computed with it (BLAS takes other paths for 1 to 3 rows, whose last
    bits differ: a training whose cache held some features trained
    another model than the same data and seed with none)."""
    missing = -len(batch) % FEATURE_BATCH
    return np.concatenate([batch, np.repeat(batch[-1:], missing, axis=0)]) \
        if missing else batch


def block_cut(spec: dict, blocks: int) -> int:
    """Index of the layer before the last ``blocks`` blocks, for
    ``--fine-tune-blocks`` (blocks are the layers named ``b<N>_...``, as in
    ``model_store/architectures.py``)."""
    ids = sorted({int(m.group(1)) for layer in spec["layers"]
                  if (m := re.match(r"^b(\d+)_", layer["name"]))})
    if not ids:
        raise ConfigError("--fine-tune-blocks: this base has no blocks "
                          "(layers named b<N>_...); leave the option out to "
                          "train a head on its frozen features")
    if not 1 <= blocks <= len(ids):
        raise ConfigError(f"--fine-tune-blocks must be from 1 to {len(ids)} "
                          f"(the blocks of the base, layers named b<N>_...)"
                          f", got {blocks}")
    first = f"b{ids[-blocks]}_"
    return min(i for i, layer in enumerate(spec["layers"])
               if layer["name"].startswith(first)) - 1


def upper_spec(model: StoredModel, cut: int, n_classes: int) -> dict:
    """The layers after ``cut`` (to the features) and the new head, as a
    network whose input is the output of layer ``cut``."""
    spec = combined_spec(model, n_classes)
    cut_name = spec["layers"][cut]["name"]
    layers = []
    for layer in spec["layers"][cut + 1:]:
        layer = dict(layer)
        if "inputs" in layer:
            layer["inputs"] = ["input" if name == cut_name else name
                               for name in layer["inputs"]]
        layers.append(layer)
    from model_store.spec import build_network
    shape = build_network(backbone_of(model, cut).spec).output_shape[1:]
    return {"input_shape": list(shape), "layers": layers}


def fine_tune_network(model: StoredModel, cut: int, n_classes: int, *,
                      seed: int):
    """The upper network of :func:`upper_spec` with ``model``'s weights for
    its layers and a new random head."""
    from model_store import layers as L
    from model_store.spec import build_network

    network = build_network(upper_spec(model, cut, n_classes), seed=seed)
    for param in L.get_all_params(network):
        if param.name in model.weights:
            param.set_value(model.weights[param.name].astype(param.dtype))
    return network


def combined_spec(model: StoredModel, n_classes: int) -> dict:
    """The backbone's layers up to the features, then the new head."""
    backbone = check_head_names(model)
    return dict(backbone, layers=backbone["layers"] + [
        {"type": "dense", "name": HEAD_LAYER, "num_units": n_classes,
         "nonlinearity": "identity"},
        {"type": "softmax", "name": PROB_LAYER}])


def check_head_names(model: StoredModel) -> dict:
    """The spec of ``model``'s backbone (:func:`backbone_of`); ConfigError
    if one of its layers has a name of the new head's."""
    backbone = backbone_of(model).spec
    names = {layer["name"] for layer in backbone["layers"]}
    if HEAD_LAYER in names or PROB_LAYER in names:
        raise ConfigError(f"--base {model.ref} already has a layer named "
                          f"{HEAD_LAYER}: train from its own base instead")
    return backbone


def new_head(n_features: int, n_classes: int, *, seed: int):
    """The new classifier, on feature vectors: ``dense`` + ``softmax``,
    named as in :func:`combined_spec`."""
    from model_store import layers as L

    dense = L.DenseLayer(L.InputLayer((None, n_features)), n_classes,
                         name=HEAD_LAYER, nonlinearity="identity",
                         rng=np.random.RandomState(seed))
    return L.SoftmaxLayer(dense, name=PROB_LAYER)


def combine(base: StoredModel, head):
    """One network: ``base``'s layers and weights up to its features, then
    the trained ``head``'s weights (and those of the fine-tuned blocks, if
    ``head`` holds some: they replace the base's)."""
    from model_store import layers as L
    from model_store.spec import build_network, set_weights

    spec = combined_spec(base, head.output_shape[-1])
    network = build_network(spec, initialize=False)
    set_weights(network, dict(backbone_of(base).weights,
                              **L.get_param_values(head)),
                source=f"{base.ref} + trained head")
    return network


# Augmentation ---------------------------------------------------------------

def random_resized_crop(image: Image.Image, rng: np.random.RandomState):
    """A random crop of ``CROP_AREA`` of the area and ``CROP_RATIO`` aspect
    ratio (the whole image if none fits in 10 tries), flipped left-right
    with probability 0.5. Resizing is left to the model's preprocessing."""
    width, height = image.size
    box = (0, 0, width, height)
    for _ in range(10):
        area = width * height * rng.uniform(*CROP_AREA)
        ratio = np.exp(rng.uniform(*np.log(CROP_RATIO)))
        w = int(round(np.sqrt(area * ratio)))
        h = int(round(np.sqrt(area / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = rng.randint(0, width - w + 1)
            top = rng.randint(0, height - h + 1)
            box = (left, top, left + w, top + h)
            break
    image = image.crop(box)
    if rng.rand() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def variant_rng(seed: int, name: str, copy: int) -> np.random.RandomState:
    """The random state of one augmented variant: fixed by the seed, the
    file's path below the dataset's root (``FolderDataset.name_of``: not
    where the dataset lies, so that a copied folder trains alike) and the
    copy number."""
    return np.random.RandomState(
        [seed & 0xFFFFFFFF, zlib.crc32(_name_bytes(name)), copy])


def _name_bytes(text: str) -> bytes:
    """UTF-8, with a local name's bytes that are not UTF-8 kept as they are
    (Python reads them as surrogates)."""
    return text.encode("utf-8", "surrogateescape")


# The feature cache ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FileContent:
    """What the feature cache knows a file by: its path, the sha256 of its
    bytes and its path below the dataset's root (``FolderDataset.name_of``:
    its augmented variants are drawn from it)."""
    path: str
    sha256: str
    name: str = ""

    @classmethod
    def of(cls, path: str, data: bytes, name: str = "") -> "FileContent":
        return cls(path, hashlib.sha256(data).hexdigest(), name)


class FeatureCache:
    """Features on disk: ``<dir>/features/v<CACHE_KEY_FORMAT>/<weights
    sha256>/<key[:2]>/<key>.npy`` (another layer's outputs, for
    fine-tuning: ``.../<weights sha256>/<layer>/...``).

    The key hashes ``CACHE_KEY_FORMAT``, the file's :class:`FileContent`
    (path, content sha256 and path below the dataset's root), the variant
    (``"plain"`` or ``"aug<seed>.<copy>"``) and ``inputs`` (how a file
    becomes the network's input: the base's preprocessing): a changed file
    (even with its old size and modification time), other weights, another
    preprocessing of the same weights or another variant (the same file
    below another root) never reuse old features. Writes are atomic (a
    temporary file renamed), so a killed run leaves no half-written entry.
    """

    def __init__(self, weights_sha256: str, directory: str | None = None,
                 *, layer: str | None = None, inputs: str = ""):
        self.root = os.path.join(directory or cache_dir(), "features")
        self.folder = os.path.join(self.root, f"v{CACHE_KEY_FORMAT}",
                                   weights_sha256, *([layer] if layer
                                                     else []))
        self.inputs = inputs
        # Features found, and features computed (a file that turns out
        # broken is neither); why the last could not be stored, if so.
        self.hits = self.computed = 0
        self.unwritable = ""

    def remove_stale(self) -> int:
        """Removes the entries of older key formats, which are never found
        again (see ``_FORMAT_FOLDER``), then the folders they leave empty;
        the number removed. Only entry files (``<2 hex>/<64 hex>.npy``, not
        symlinks) are removed: anything else there stays. Another training
        removing them at the same moment is no trouble (what is already
        gone is skipped)."""
        try:
            with os.scandir(self.root) as found:
                stale = [entry.path for entry in found
                         if entry.is_dir(follow_symlinks=False)
                         and _older_format(entry.name)]
        except OSError:  # none yet, or not a folder: nothing to remove
            return 0
        return sum(_remove_entries(folder) for folder in stale)

    def _path(self, file: FileContent, variant: str) -> str:
        key = hashlib.sha256(_name_bytes(f"{CACHE_KEY_FORMAT}\0{file.path}"
                                         f"\0{file.sha256}\0{file.name}\0"
                                         f"{variant}\0{self.inputs}")
                             ).hexdigest()
        return os.path.join(self.folder, key[:2], key + ".npy")

    def get(self, file: FileContent, variant: str) -> np.ndarray | None:
        """The features stored for ``file``'s ``variant``; None if there are
        none, or none usable: what is not a finite float32 vector (a
        damaged entry, which ``put`` replaces) is computed again."""
        try:  # a FIFO there is refused (an OSError), not waited on
            value = np.load(io.BytesIO(fs.read_bytes(self._path(
                file, variant))), allow_pickle=False)
        except (OSError, ValueError):
            return None
        if value.dtype != np.float32 or value.ndim != 1 or \
                not np.isfinite(value).all():
            return None
        self.hits += 1
        return value

    def put(self, file: FileContent, variant: str,
            value: np.ndarray) -> None:
        """Stores computed features; a cache that cannot be written (not a
        folder, a full disk) is noted in ``unwritable``, not fatal: the
        features are only computed again next time."""
        self.computed += 1
        try:
            self._write(self._path(file, variant), value)
        except OSError as error:
            self.unwritable = error.strerror or str(error)

    @staticmethod
    def _write(path: str, value: np.ndarray) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path),
                                             suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.save(out, np.asarray(value, np.float32),
                        allow_pickle=False)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise


def _older_format(name: str) -> bool:
    """Whether ``name`` in ``features/`` is the folder of a key format
    older than ``CACHE_KEY_FORMAT``."""
    match = _FORMAT_FOLDER.fullmatch(name)
    return bool(match) and (match.group(1) is None
                            or int(match.group(1)) < CACHE_KEY_FORMAT)


def _remove_entries(folder: str) -> int:
    """Removes the feature cache entry files below ``folder`` and the
    folders left empty (bottom-up); the number of entries removed."""
    removed = 0
    for parent, _, names in os.walk(folder, topdown=False):
        for name in names:
            path = os.path.join(parent, name)
            match = _ENTRY_FILE.fullmatch(name)
            if match and match.group(1) == os.path.basename(parent) \
                    and not os.path.islink(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    removed += 1
        with contextlib.suppress(OSError):  # not empty, or already gone
            os.rmdir(parent)
    return removed


def dataset_features(dataset: FolderDataset, prep: Preprocessing,
                     features: Callable, cache: FeatureCache, *,
                     copies: int = 0, seed: int = 0):
    """Features of every file: the plain image when ``copies`` is 0, else
    ``copies`` augmented variants of each. Every file is read (its content
    is the cache's key), and decoded only if a variant is not cached.

    Returns:
        ``(features float32 (M, D), labels (M,), broken)``; ``broken`` lists
        ``(path, reason)`` of files that cannot be read or decoded.
    """
    variants = ["plain"] if copies == 0 else [f"aug{seed}.{c}"
                                              for c in range(copies)]
    rows: list = []  # [label, features or None]
    pending: list = []  # (row index, file content, variant, pixels)
    broken = []
    for item in dataset.files:
        try:
            content, cached, computed = _file_variants(
                item, dataset.name_of(item), prep, cache, variants, seed)
        except Exception as error:  # a bad file is skipped, never fatal
            broken.append((item.path, describe_error(error)))
            continue
        rows.extend([item.label, cached[v]] for v in variants
                    if cached[v] is not None)
        for variant, pixels in computed:
            rows.append([item.label, None])
            pending.append((len(rows) - 1, content, variant, pixels))
            if len(pending) == FEATURE_BATCH:
                _compute(pending, rows, prep, features, cache)
    if pending:
        _compute(pending, rows, prep, features, cache)
    if not rows:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int32), broken
    sizes = sorted({len(value) for _, value in rows})
    if len(sizes) > 1:  # a cached entry of other features
        raise ConfigError(f"the feature cache {fs.shown(cache.folder)} "
                          f"holds features of {sizes[0]:,} and of "
                          f"{sizes[-1]:,} values for these images: delete "
                          f"it and train again")
    return (np.stack([value for _, value in rows]).astype(np.float32),
            np.array([label for label, _ in rows], np.int32), broken)


def _compute(pending: list, rows: list, prep, features, cache) -> None:
    """The features of the ``pending`` variants (a batch at most), put in
    their ``rows`` and the cache; ``pending`` emptied: only a batch of
    pixels is held at a time (all of them took 9 GB for 20,000 photos of
    3 variants at Lite0's 224x224)."""
    out = features(prep.normalize(np.stack([p[3] for p in pending])))
    for (row, content, variant, _), value in zip(pending, out):
        cache.put(content, variant, value)
        rows[row][1] = value
    pending.clear()


def _file_variants(item, name, prep, cache, variants, seed):
    """One file read once: ``(its FileContent, {variant: cached features or
    None}, [(variant, pixels) of the variants to compute]``); decoded only
    if a variant is not cached."""
    data = read_bytes(item)
    content = FileContent.of(item.path, data, name)
    cached = {variant: cache.get(content, variant) for variant in variants}
    missing = [variant for variant in variants if cached[variant] is None]
    image = decode_bytes(data, prep) if missing else None
    return content, cached, [
        (variant, _variant_pixels(image, prep, variant, name, seed))
        for variant in missing]


def _variant_pixels(image, prep, variant, name, seed) -> np.ndarray:
    if variant != "plain":
        copy = int(variant.rsplit(".", 1)[1])
        image = random_resized_crop(image, variant_rng(seed, name, copy))
    return prep.to_pixels(image)
