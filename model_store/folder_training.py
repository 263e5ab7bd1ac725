"""``imgclass train --data PATH``: training on a labelled image folder, from
a spec (from scratch) or on top of a stored model (``--base``, transfer
learning with a frozen backbone and cached features).

Validation data is ``--val-data PATH`` or a stratified ``--val-fraction`` of
``PATH`` (fixed seed). The weights of the epoch with the best validation
accuracy are saved, with that accuracy as the version's metrics.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Callable, TextIO

import numpy as np

from model_store.errors import ConfigError
from model_store.folders import (
    VAL_FRACTION,
    FolderDataset,
    align_classes,
    check_classes,
    check_disjoint,
    check_same_classes,
    check_sides,
    check_usable,
    file_groups,
    folder_root,
    listed,
    load_pixels,
    scan_folder,
    stratified_split,
)
from model_store.fs import printable, shown
from model_store.preprocessing import Preprocessing
from model_store.train import best_epoch, fit, load_spec, spec_file_name
from model_store.train_config import TrainConfig

_MODES = {1: "L", 3: "RGB"}
# Skipped files the version's training.skipped names (all are counted in
# training.n_skipped and listed on stderr): a photo folder with a .json
# sidecar per photo (Google Takeout) named hundreds of thousands, more
# than a model's metadata file may hold.
SKIPPED_RECORDED = 100


@dataclasses.dataclass(frozen=True)
class FolderData:
    """Where the images are and how to split them."""
    data: str
    val_data: str | None = None
    val_fraction: float = VAL_FRACTION

    def __post_init__(self):  # recorded in the metadata: absolute
        object.__setattr__(self, "data", folder_root(self.data))
        if self.val_data is not None:
            object.__setattr__(self, "val_data", folder_root(self.val_data))


def split_folders(folders: FolderData) -> tuple[FolderDataset, FolderDataset]:
    """``(train, validation)`` file lists, checked before any decoding."""
    dataset = scan_folder(folders.data)
    check_classes(dataset, "--data")
    if folders.val_data is None:
        train, val = stratified_split(dataset.labels, folders.val_fraction,
                                      groups=file_groups(dataset))
        return dataset.subset(train), dataset.subset(val)
    val = scan_folder(folders.val_data)
    check_same_classes(val, dataset.class_names)
    check_classes(val, "--val-data", least=1)
    check_disjoint(dataset, val)
    return dataset, align_classes(val, dataset.class_names)


def epoch_reporter(stream: TextIO, epochs: int) -> Callable:
    def report(row: dict, rate: float) -> None:
        loss = "not finite (diverged: try a smaller --lr)" \
            if row["loss"] is None else f"{row['loss']:.4f}"
        stream.write(f"epoch {row['epoch']}/{epochs}: loss {loss}"
                     f" train acc {row['accuracy']:.4f} val acc "
                     f"{row['val_accuracy']:.4f} ({rate:,.0f} images/s)\n")
    return report


def report_broken(broken: list, stream: TextIO) -> None:
    for path, reason in broken:
        stream.write(f"skipped {shown(path)}: {reason}\n")


def check_decoded(folders: FolderData, class_names: list, y_train, y_val,
                  broken: list, broken_val: list) -> None:
    """After decoding: every class keeps a training image, and some
    validation image is left (the broken files counted where they lie)."""
    in_data = len(broken) + (0 if folders.val_data else len(broken_val))
    check_usable(y_train, class_names, in_data, "--data")
    check_usable(y_val, class_names, len(broken_val),
                 "--val-data" if folders.val_data else
                 "the validation part of --data", every_class=False)


def train_from_spec(folders: FolderData, *, name: str, spec_path: str,
                    config: TrainConfig, stream: TextIO = sys.stderr):
    """Trains a network from a JSON spec on a folder.

    Returns:
        ``(network, metadata)`` for :func:`model_store.store.save_version`.
    """
    spec = load_spec(spec_path)
    channels = spec["input_shape"][0]
    if channels not in _MODES:
        raise ConfigError(f"spec {shown(spec_path)} takes {channels} channels; "
                          f"folder images are read as 1 (gray) or 3 (RGB)")
    train_set, val_set = split_folders(folders)
    network = _spec_network(spec, spec_path, train_set.class_names,
                            config.seed)
    neutral = Preprocessing(tuple(spec["input_shape"]), _MODES[channels],
                            "bilinear", (0.0,) * channels, (1.0,) * channels)
    started = time.monotonic()
    x_train, y_train, broken = _train_pixels(train_set, neutral, config)
    x_val, kept_val, broken_val = load_pixels(val_set, neutral)
    report_broken(broken + broken_val, stream)
    check_decoded(folders, train_set.class_names, y_train, kept_val.labels,
                  broken, broken_val)
    means, stds = channel_statistics(x_train)
    prep = dataclasses.replace(
        neutral, mean=tuple(round(float(m), 6) for m in means),
        std=tuple(round(max(float(s), 1e-3), 6) for s in stds))
    spec_file = spec_file_name(spec_path)
    stream.write(f"training {name} from {spec_file} on "
                 f"{len(x_train)} images, validating on {len(x_val)}\n")
    history = fit(network, prep.normalize(x_train), y_train, config,
                  validation=(prep.normalize(x_val), kept_val.labels),
                  report=epoch_reporter(stream, config.epochs))
    metadata = dict(prep.to_metadata(), class_names=train_set.class_names,
                    training=_training_record(
                        folders, config, history, started,
                        spec=spec_file,
                        n_train=len(train_set.files) - len(broken),
                        broken=broken + broken_val),
                    metrics=_val_metrics(history, len(x_val), folders))
    return network, metadata


def channel_statistics(pixels: np.ndarray, *, chunk: int = 64):
    """``(mean, std)`` of each channel of ``uint8 (N, C, H, W)`` pixels on
    the 0..1 scale, summed in float64 a chunk of images at a time: a float64
    copy of them all (8 bytes a value, and two more while computing) made
    the peak memory of a training from a spec 5 times that of its pixels
    and their float32 input (2,000 photos of 224x224, 3 variants each:
    22 GB)."""
    total, squares = np.zeros((2, pixels.shape[1]))
    for start in range(0, len(pixels), chunk):
        part = pixels[start:start + chunk].astype(np.float64)
        total += part.sum((0, 2, 3))
        squares += np.square(part, out=part).sum((0, 2, 3))
    count = max(len(pixels) * pixels.shape[2] * pixels.shape[3], 1)
    mean = total / count
    return mean / 255.0, np.sqrt(np.maximum(squares / count - mean ** 2,
                                            0.0)) / 255.0


def _spec_network(spec: dict, spec_path: str, class_names: list, seed: int):
    """The network of ``spec``, built before any decoding; ConfigError
    unless it has one output per class."""
    from model_store.spec import build_network

    network = build_network(spec, seed=seed)
    outputs, n_classes = network.output_shape[-1], len(class_names)
    if outputs != n_classes:
        raise ConfigError(
            f"spec {shown(spec_path)} has {outputs} outputs but --data has "
            f"{n_classes} classes ({listed(class_names)}): set num_units "
            f"of its last dense layer to {n_classes}")
    return network


def _train_pixels(train_set: FolderDataset, prep: Preprocessing,
                  config: TrainConfig):
    """Training pixels: ``augment_copies`` random variants of each image
    (0: the plain images)."""
    from model_store.transfer import random_resized_crop, variant_rng

    if config.augment_copies == 0:
        pixels, kept, broken = load_pixels(train_set, prep)
        return pixels, kept.labels, broken
    parts, labels, broken = [], [], []
    for copy in range(config.augment_copies):
        pixels, kept, broken = load_pixels(
            train_set, prep, transform=lambda image, item, copy=copy: random_resized_crop(
                image, variant_rng(config.seed, train_set.name_of(item), copy)))
        parts.append(pixels)
        labels.append(kept.labels)
    return np.concatenate(parts), np.concatenate(labels), broken


def train_transfer(folders: FolderData, *, name: str, base,
                   config: TrainConfig, stream: TextIO = sys.stderr,
                   fine_tune_blocks: int = 0,
                   features: Callable | None = None,
                   cache_directory: str | None = None):
    """Trains a new head on the frozen features of the stored model
    ``base`` (and its last ``fine_tune_blocks`` blocks, with batch norm in
    inference mode, on cached outputs of the block before them).

    Args:
        features: the backbone's compiled feature function, up to the
            features or the cut (default: compiled here on first need);
            tests pass a counting wrapper.
        cache_directory: root of the feature cache (default: the user's
            cache folder).

    Returns:
        ``(network, metadata)`` of the combined model (backbone + head).
    """
    from model_store.transfer import (
        FeatureCache,
        block_cut,
        check_head_names,
        combine,
        compile_features,
    )

    # A base with no features, or a layer named as the new head, stops
    # before any work.
    check_head_names(base)
    train_set, val_set = split_folders(folders)
    cut = block_cut(base.spec, fine_tune_blocks) if fine_tune_blocks \
        else None
    features = features or _compiled_on_first_call(
        lambda: compile_features(base, cut))
    cache = FeatureCache(
        base.weights_sha256, cache_directory,
        layer=None if cut is None else base.spec["layers"][cut]["name"],
        inputs=json.dumps(base.preprocessing.to_metadata(), sort_keys=True))
    removed = cache.remove_stale()
    if removed:
        stream.write(f"removed {removed} feature cache entries of an older "
                     f"format from {shown(cache.root)}\n")
    started = time.monotonic()
    (x_train, y_train, x_val, y_val), broken, broken_val = _features(
        folders, train_set, val_set, base, features, cache, config, stream)
    trained, x_train, x_val = _network_to_train(
        base, cut, len(train_set.class_names), x_train, x_val, config.seed,
        cache)
    history = fit(trained, x_train, y_train, config,
                  validation=(x_val, y_val), frozen_statistics=True,
                  report=epoch_reporter(stream, config.epochs))
    metadata = dict(
        base.preprocessing.to_metadata(), class_names=train_set.class_names,
        description=f"{base.ref} features with a new head trained on "
                    f"{printable(folders.data)}",
        training=_training_record(
            folders, config, history, started,
            base={"model": base.ref, "weights_sha256": base.weights_sha256,
                  "fine_tune_blocks": fine_tune_blocks},
            n_train=len(train_set.files) - len(broken),
            broken=broken + broken_val),
        metrics=_val_metrics(history, len(x_val), folders))
    return combine(base, trained), metadata


def _network_to_train(base, cut, n_classes, x_train, x_val, seed, cache):
    """``(network, x_train, x_val)``: a new head on the features (``cut``
    None), or the blocks after ``cut`` and a new head, with the cached block
    outputs reshaped to what they take."""
    from model_store.transfer import fine_tune_network, new_head

    if cut is None:
        return new_head(x_train.shape[1], n_classes, seed=seed), x_train, \
            x_val
    trained = fine_tune_network(base, cut, n_classes, seed=seed)
    shape = trained_input_shape(trained)
    for x, part in ((x_train, "training"), (x_val, "validation")):
        check_sides(x.shape, shape, f"the {part} outputs of "
                    f"{base.spec['layers'][cut]['name']}",
                    f"delete the feature cache {cache.folder} and train "
                    f"again")
    return (trained, x_train.reshape((-1, *shape)),
            x_val.reshape((-1, *shape)))


def trained_input_shape(network) -> tuple:
    from model_store import layers as L
    return tuple(L.get_all_layers(network)[0].output_shape[1:])


def _features(folders, train_set, val_set, base, features, cache, config,
              stream):
    """Cached backbone outputs of the training variants and the validation
    images: ``((x_train, y_train, x_val, y_val), broken training files,
    broken validation files)``."""
    from model_store.transfer import dataset_features

    started = time.monotonic()
    prep = base.preprocessing
    x_train, y_train, broken = dataset_features(
        train_set, prep, features, cache, copies=config.augment_copies,
        seed=config.seed)
    x_val, y_val, broken_val = dataset_features(val_set, prep, features,
                                                cache)
    report_broken(broken + broken_val, stream)
    check_decoded(folders, train_set.class_names, y_train, y_val, broken,
                  broken_val)
    stream.write(f"features of {len(x_train) + len(x_val)} images from "
                 f"{base.ref} ({cache.hits} cached, {cache.computed} computed)"
                 f" in {time.monotonic() - started:.1f}s; training on "
                 f"{len(x_train)}, validating on {len(x_val)}\n")
    if cache.unwritable:
        stream.write(f"the feature cache {shown(cache.folder)} could not be "
                     f"written ({cache.unwritable}): these features will be "
                     f"computed again next time\n")
    return (x_train, y_train, x_val, y_val), broken, broken_val


def _compiled_on_first_call(compile_fn: Callable) -> Callable:
    """A function that compiles on its first call: when every feature is
    cached, the backbone is never compiled."""
    compiled = []

    def call(batch):
        if not compiled:
            compiled.append(compile_fn())
        return compiled[0](batch)
    return call


def _training_record(folders, config, history, started, *, n_train, broken,
                     **extra) -> dict:
    return dict(extra, data=printable(folders.data),
                val_data=folders.val_data and printable(folders.val_data),
                val_fraction=None if folders.val_data else
                folders.val_fraction, n_train=int(n_train),
                settings=dataclasses.asdict(config), history=history,
                best_epoch=best_epoch(history)["epoch"],
                skipped=[printable(path)
                         for path, _ in broken[:SKIPPED_RECORDED]],
                n_skipped=len(broken),
                seconds=round(time.monotonic() - started, 1))


def _val_metrics(history, n_val: int, folders: FolderData) -> dict:
    where = printable(folders.val_data) if folders.val_data else (
        f"{folders.val_fraction:.0%} of {printable(folders.data)}, "
        f"stratified")
    return {"accuracy": best_epoch(history)["val_accuracy"],
            "n_test": int(n_val), "dataset": f"validation: {where}"}
