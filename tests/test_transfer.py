"""Training on image folders: transfer learning on cached features, from
a spec, promotion of new versions and aliases."""

import glob
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from model_store import store
from model_store.errors import ConfigError
from model_store.folder_training import FolderData, train_transfer
from model_store.spec import build_network
from model_store.train import TrainConfig
from model_store.transfer import FeatureCache, FileContent, compile_features
from tests.folder_data import write_broken, write_photo_crops, write_shapes

# A small RGB "backbone": its features are the 16 outputs of 'feat'.
BACKBONE = {"input_shape": [3, 24, 24], "layers": [
    {"type": "conv2d", "name": "conv", "num_filters": 8, "filter_size": 3},
    {"type": "max_pool2d", "name": "pool", "pool_size": 2},
    {"type": "dense", "name": "feat", "num_units": 16},
    {"type": "dropout", "name": "drop", "p": 0.5},
    {"type": "dense", "name": "out", "num_units": 5,
     "nonlinearity": "identity"},
    {"type": "softmax", "name": "prob"}]}
PREP = {"input_shape": [3, 24, 24], "color_mode": "RGB",
        "resize": "bilinear", "resize_shorter": 28,
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}}


@pytest.fixture
def backbone_store(tmp_path):
    root = str(tmp_path / "store")
    store.save_model(build_network(BACKBONE, seed=1), name="tiny",
                     metadata=dict(PREP, class_names=list("abcde")),
                     root=root)
    return root


@pytest.fixture
def shapes(tmp_path):
    data = tmp_path / "shapes"
    write_shapes(data, per_class=10)
    write_broken(data / "red")
    return str(data)


def counting(features):
    calls = []

    def wrapped(batch):
        calls.append(len(batch))
        return features(batch)
    return wrapped, calls


def test_transfer_learns_and_the_second_run_computes_no_feature(
        backbone_store, shapes, tmp_path):
    base = store.load_model("tiny", root=backbone_store)
    features, calls = counting(compile_features(base))
    config = TrainConfig(epochs=60, lr=0.01, augment_copies=2, seed=5)
    cache_dir = str(tmp_path / "cache")
    runs = []
    for _ in range(2):
        runs.append(train_transfer(FolderData(shapes), name="shapes",
                                   base=base, config=config,
                                   features=features,
                                   cache_directory=cache_dir))
        if len(runs) == 1:
            first_calls = sum(calls)
    # 24 training images x 2 variants + 6 validation images, computed once.
    assert first_calls == 24 * 2 + 6
    assert sum(calls) == first_calls
    (net_a, meta_a), (net_b, meta_b) = runs
    assert meta_a["metrics"]["accuracy"] >= 0.8
    assert meta_a["training"]["history"] == meta_b["training"]["history"]
    assert sorted(meta_a["training"]["skipped"]) == sorted(
        os.path.join(shapes, "red", n) for n in ("notes.jpg",
                                                 "truncated.png"))
    assert meta_a["resize_shorter"] == 28  # the backbone's preprocessing


def test_the_second_run_says_it_computed_none_despite_broken_files(
        backbone_store, shapes, tmp_path):
    """The broken files (in red/) have no features to find: each of their
    variants was counted as computed on every run, though none was."""
    base = store.load_model("tiny", root=backbone_store)
    config = TrainConfig(epochs=1, augment_copies=2)
    lines = []
    for _ in range(2):
        stream = io.StringIO()
        train_transfer(FolderData(shapes), name="shapes", base=base,
                       config=config, stream=stream,
                       features=compile_features(base),
                       cache_directory=str(tmp_path / "cache"))
        lines.append(next(line for line in stream.getvalue().splitlines()
                          if line.startswith("features of ")))
    assert "(0 cached, 54 computed)" in lines[0]  # 24 x 2 variants + 6
    assert "(54 cached, 0 computed)" in lines[1]


def test_a_feature_cache_that_cannot_be_written_does_not_stop_training(
        backbone_store, shapes, tmp_path):
    """A file where the cache's folder goes was a NotADirectoryError
    traceback (exit 1): the cache only saves work, so one line says so
    and the training goes on."""
    base = store.load_model("tiny", root=backbone_store)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "features").write_text("not a folder")
    stream = io.StringIO()
    network, metadata = train_transfer(
        FolderData(shapes), name="shapes", base=base,
        config=TrainConfig(epochs=1, augment_copies=0), stream=stream,
        features=compile_features(base), cache_directory=str(cache_dir))
    assert metadata["metrics"]["n_test"] == 6
    unwritable = [line for line in stream.getvalue().splitlines()
                  if "could not be written" in line]
    assert len(unwritable) == 1
    assert unwritable[0].startswith(f"the feature cache {cache_dir}/")
    assert "(Not a directory): these features will be computed again" in \
        unwritable[0]


def test_the_same_folder_elsewhere_trains_the_same_model(
        backbone_store, shapes, tmp_path):
    """Augmentation is seeded by each file's path below the folder, not by
    where the folder lies: a copy trains the same weights."""
    import shutil

    base = store.load_model("tiny", root=backbone_store)
    copy = shutil.copytree(shapes, tmp_path / "elsewhere" / "photos")
    config = TrainConfig(epochs=5, lr=0.01, augment_copies=2, seed=3)
    weights = []
    for folder in (shapes, str(copy)):
        network, _ = train_transfer(
            FolderData(folder), name="shapes", base=base, config=config,
            features=compile_features(base),
            cache_directory=str(tmp_path / "cache"))
        from model_store import layers as L
        weights.append(L.get_param_values(network))
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])


def test_a_fifo_as_a_cache_entry_is_a_miss_not_waited_on(tmp_path):
    """np.load opened the entry and waited for a FIFO's writer."""
    from tests.conftest import within

    item = FileContent.of("/x/a.png", b"bytes")
    cache = FeatureCache("w1", str(tmp_path))
    cache.put(item, "plain", np.arange(3.0))
    path = cache._path(item, "plain")
    os.remove(path)
    os.mkfifo(path)
    with within(20):
        assert cache.get(item, "plain") is None
    cache.put(item, "plain", np.arange(3.0))  # replaces it
    np.testing.assert_array_equal(cache.get(item, "plain"), np.arange(3.0))


@pytest.mark.parametrize("damage", ["NaN", "float64", "other size"])
def test_a_damaged_feature_cache_entry_is_computed_again_or_named(
        backbone_store, shapes, tmp_path, damage):
    """An entry whose bytes hold a valid array of other values (a NaN, as
    bit rot may leave) was used as is, and one of another size ended the
    training in a numpy traceback (exit 1). An entry that is no finite
    float32 vector is computed again; one of another size stops in one
    line naming the cache to delete."""
    base = store.load_model("tiny", root=backbone_store)
    cache_dir = str(tmp_path / "cache")

    def train(stream=None):
        return train_transfer(
            FolderData(shapes), name="shapes", base=base,
            config=TrainConfig(epochs=1, augment_copies=0),
            stream=stream or io.StringIO(), features=compile_features(base),
            cache_directory=cache_dir)
    train()
    entries = sorted(glob.glob(os.path.join(cache_dir, "**", "*.npy"),
                               recursive=True))
    value = np.load(entries[0])
    np.save(entries[0], {"NaN": np.full_like(value, np.nan),
                         "float64": value.astype(np.float64),
                         "other size": value[:3]}[damage])
    if damage == "other size":
        with pytest.raises(ConfigError, match=r"^the feature cache .* holds "
                           r"features of 3 and of \d+ values for these "
                           r"images: delete it and train again$"):
            train()
        return
    stream = io.StringIO()
    train(stream)
    assert "(29 cached, 1 computed)" in stream.getvalue()
    np.testing.assert_array_equal(np.load(entries[0]), value)


def test_changed_file_or_other_weights_miss_the_cache(tmp_path):
    item = FileContent.of("/x/a.png", b"old bytes")
    cache = FeatureCache("w1", str(tmp_path))
    cache.put(item, "plain", np.arange(3.0))
    np.testing.assert_array_equal(cache.get(item, "plain"), [0, 1, 2])
    # Other bytes of the same size: a miss.
    assert cache.get(FileContent.of("/x/a.png", b"new bytes"),
                     "plain") is None
    assert cache.get(item, "aug0.0") is None
    assert FeatureCache("w2", str(tmp_path)).get(item, "plain") is None
    # Same weights, other preprocessing (another mean/std, size, colours).
    assert FeatureCache("w1", str(tmp_path), inputs='{"mean": [0.9]}').get(
        item, "plain") is None


WEIGHTS = "5" * 64  # a weights sha256


def write_cache_files(features, names):
    """Files below ``features`` (``name`` or ``name -> target``); an
    entry's name is its key, in the folder of its first two digits."""
    for name in names:
        path = features / name.split(" -> ")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        if " -> " in name:
            path.symlink_to(name.split(" -> ")[1])
        else:
            path.write_bytes(b"x")


def files_below(folder):
    return sorted(os.path.relpath(os.path.join(parent, name), folder)
                  for parent, folders, names in os.walk(folder)
                  for name in names + [f for f in folders if os.path.islink(
                      os.path.join(parent, f))])


def test_entries_of_older_key_formats_are_removed_and_nothing_else(
        tmp_path):
    """Format-1 entries (and those kept in features/<weights sha256>/
    before formats had folders) were never found again, nor removed. A
    newer format's folder (v4/, of a newer imgclass) is left alone."""
    key, other = "ab" + "1" * 62, "cd" + "2" * 62
    features = tmp_path / "features"
    outside = tmp_path / "mine.npy"
    outside.write_bytes(b"not the cache's")
    stale = [f"{WEIGHTS}/ab/{key}.npy", f"{WEIGHTS}/b3_conv/cd/{other}.npy",
             f"v1/{WEIGHTS}/ab/{key}.npy", f"v2/{WEIGHTS}/ab/{key}.npy"]
    kept = [f"{WEIGHTS}/notes.txt", f"{WEIGHTS}/ab/tmpq1w2e3.tmp",
            f"{WEIGHTS}/ab/{'ab' + '3' * 62}.npy -> {outside}",
            f"{WEIGHTS}/cd/{key}.npy",  # not in its key's folder
            f"v3/{WEIGHTS}/ab/{key}.npy", f"v4/{WEIGHTS}/ab/{key}.npy",
            f"photos/ab/{key}.npy",
            f"{'5' * 63}/ab/{key}.npy"]
    write_cache_files(features, stale + kept)
    (features / "linked").symlink_to(features / WEIGHTS)
    cache = FeatureCache(WEIGHTS, str(tmp_path))
    assert cache.folder == str(features / "v3" / WEIGHTS)
    assert cache.remove_stale() == 4
    assert files_below(features) == sorted(
        [name.split(" -> ")[0] for name in kept] + ["linked"])
    assert not (features / WEIGHTS / "b3_conv").exists()
    assert not (features / "v1").exists() and not (features / "v2").exists()
    assert outside.read_bytes() == b"not the cache's"
    assert cache.remove_stale() == 0


def test_removing_stale_entries_skips_what_another_training_removed(
        tmp_path, monkeypatch):
    """Two trainings cleaning up at once: a file or folder the other one
    removed first is no error."""
    keys = [f"{n:02x}" + "0" * 62 for n in range(3)]
    features = tmp_path / "features"
    write_cache_files(features, [f"{WEIGHTS}/{k[:2]}/{k}.npy" for k in keys])
    real_unlink, real_rmdir = os.unlink, os.rmdir

    def other_first(real):
        def call(path, *args, **kwargs):
            real(path)  # the other training
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "unlink", other_first(real_unlink))
    monkeypatch.setattr(os, "rmdir", other_first(real_rmdir))
    assert FeatureCache(WEIGHTS, str(tmp_path)).remove_stale() == 0
    monkeypatch.undo()
    assert os.listdir(features) == []


def test_training_removes_stale_feature_entries_and_says_so(
        backbone_store, shapes, tmp_path):
    base = store.load_model("tiny", root=backbone_store)
    key = "ab" + "1" * 62
    features = tmp_path / "cache" / "features"
    write_cache_files(features, [f"{base.weights_sha256}/ab/{key}.npy"])
    stream = io.StringIO()
    train_transfer(FolderData(shapes), name="shapes", base=base,
                   config=TrainConfig(epochs=1, augment_copies=0),
                   stream=stream, cache_directory=str(tmp_path / "cache"))
    assert (f"removed 1 feature cache entries of an older format from "
            f"{features}\n") in stream.getvalue()
    assert os.listdir(features) == ["v3"]


def write_colour_bmps(root, per_class=10):
    """``per_class`` BMPs (fixed size whatever the pixels) per class, red
    and blue with a little noise, all with the same modification time."""
    rng = np.random.RandomState(0)
    for name, colour in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        os.makedirs(root / name)
        for n in range(per_class):
            noise = rng.randint(-20, 21, size=(24, 24, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255)
            path = root / name / f"{n:02d}.bmp"
            Image.fromarray(pixels.astype(np.uint8), "RGB").save(path, "BMP")
            os.utime(path, (1767225600, 1767225600))  # 2026-01-01


def swap_contents_keeping_size_and_mtime(root):
    """The red files get the blue files' bytes and the other way round, as
    a copy that keeps modification times (rsync -t, cp -p) would leave
    them."""
    for red, blue in zip(sorted((root / "red").iterdir()),
                         sorted((root / "blue").iterdir())):
        red_bytes, blue_bytes = red.read_bytes(), blue.read_bytes()
        red.write_bytes(blue_bytes)
        blue.write_bytes(red_bytes)
        for path in (red, blue):
            os.utime(path, (1767225600, 1767225600))


def test_files_replaced_with_the_same_size_and_mtime_are_computed_again(
        backbone_store, tmp_path):
    """Swapped contents with the old sizes and modification times reused
    the old features before: the head learnt the old labels (validation
    accuracy 1.0 reported, 0.0 on evaluation). The second run must train
    exactly as a run without any cache does."""
    data = tmp_path / "colours"
    write_colour_bmps(data)
    base = store.load_model("tiny", root=backbone_store)
    config = TrainConfig(epochs=30, lr=0.01, augment_copies=0, seed=5)

    def train(cache):
        features, calls = counting(compile_features(base))
        network, metadata = train_transfer(
            FolderData(str(data)), name="f", base=base, config=config,
            features=features, cache_directory=str(tmp_path / cache))
        return metadata, sum(calls)

    assert train("cache")[1] == 20
    sizes = sorted(p.stat().st_size for p in data.rglob("*.bmp"))
    swap_contents_keeping_size_and_mtime(data)
    assert sorted(p.stat().st_size for p in data.rglob("*.bmp")) == sizes
    cached, computed = train("cache")
    reference, _ = train("empty-cache")
    assert computed == 20  # every file changed: none taken from the cache
    assert cached["training"]["history"] == reference["training"]["history"]
    assert cached["metrics"]["accuracy"] == 1.0


def test_a_base_with_the_same_weights_and_other_pixels_computes_its_own(
        backbone_store, shapes, tmp_path):
    """Two versions of a base with the same weights but another mean/std
    shared cached features before: the second head was trained on features
    of pixels its model never sees, silently."""
    shifted = dict(PREP, normalization={"mean": [0.2] * 3, "std": [0.6] * 3})
    store.save_model(build_network(BACKBONE, seed=1), name="tiny-shifted",
                     metadata=dict(shifted, class_names=list("abcde")),
                     root=backbone_store)
    bases = [store.load_model(name, root=backbone_store)
             for name in ("tiny", "tiny-shifted")]
    assert bases[0].weights_sha256 == bases[1].weights_sha256
    config = TrainConfig(epochs=1, lr=0.01, augment_copies=0, seed=5)
    computed = []
    for base in bases:
        features, calls = counting(compile_features(base))
        train_transfer(FolderData(shapes), name="x", base=base,
                       config=config, features=features,
                       cache_directory=str(tmp_path / "cache"))
        computed.append(sum(calls))
    assert computed == [24 + 6, 24 + 6]  # 24 training, 6 validation images


def test_trained_model_is_one_stored_model_that_classify_runs(
        backbone_store, shapes, tmp_path, cli):
    code, out, err = cli("--store", backbone_store, "train", "--data",
                         shapes, "--name", "shapes", "--base", "tiny",
                         "--epochs", "60", "--lr", "0.01")
    assert code == 0, err
    assert "skipped" in err and "images/s" in err
    model = store.load_model("shapes", root=backbone_store)
    assert model.class_names == ["blue", "green", "red"]
    assert [layer["name"] for layer in model.spec["layers"]] == [
        "conv", "pool", "feat", "new_head", "new_head_prob"]
    # Its features are the backbone's: the frozen weights are unchanged.
    base = store.load_model("tiny", root=backbone_store)
    for key in ("conv.W", "feat.W", "feat.b"):
        np.testing.assert_array_equal(model.weights[key], base.weights[key])
    # classify through the pipeline agrees with the reported accuracy.
    images = tmp_path / "new"
    truth = write_shapes(images, per_class=4, seed=9)
    code, _, err = cli("--store", backbone_store, "classify", "--input",
                       images, "--output", tmp_path / "out", "--model",
                       "shapes", "--top-k", "3")
    assert code == 0, err
    import pyarrow.parquet as pq
    rows = pq.read_table(str(tmp_path / "out" / "predictions")).to_pylist()
    right = sum(row["label"] == truth[row["path"]] for row in rows)
    assert len(rows) == 12 and right >= 11


def test_train_from_a_spec_on_a_folder(shapes, tmp_path, cli):
    spec = dict(BACKBONE, layers=BACKBONE["layers"][:3] + [
        {"type": "dense", "name": "out", "num_units": 3,
         "nonlinearity": "identity"}, {"type": "softmax", "name": "prob"}])
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    root = str(tmp_path / "store")
    code, out, err = cli("--store", root, "train", "--data", shapes,
                         "--name", "scratch", "--spec", spec_path,
                         "--epochs", "15", "--lr", "0.01", "--no-augment")
    assert code == 0, err
    model = store.load_model("scratch", root=root)
    history = model.metadata["training"]["history"]
    best = max(row["val_accuracy"] for row in history)
    assert model.metadata["metrics"]["accuracy"] == best >= 0.8
    assert "val acc" in err


@pytest.mark.parametrize("layout, message", [
    ("loose", "lies directly in"), ("single", "fewer than 2"),
    ("empty", "holds no files")])
def test_bad_folders_stop_training_in_one_line(tmp_path, cli, layout,
                                               message):
    data = tmp_path / "data"
    data.mkdir()
    if layout != "empty":
        write_shapes(data, per_class=2 if layout == "loose" else 1)
    if layout == "loose":
        Image.new("RGB", (8, 8)).save(data / "x.png")
    code, out, err = cli("train", "--data", data, "--name", "x", "--spec",
                         "model_store/specs/digits-cnn.json")
    assert code == 2 and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("target, message", [
    ("red", "class folder 'pink' in DATA is class folder 'red' (through a "
            "symlink): its images would be learnt as two classes; remove the "
            "link, or give each class its own images"),
    ("red/more", "class folder 'pink' in DATA lies inside class folder "
                 "'red'")])
@pytest.mark.parametrize("how", ["base", "spec"])
def test_a_class_folder_linked_to_another_stops_training_in_one_line(
        backbone_store, tmp_path, cli, target, message, how):
    """pink -> red trained the same images as pink and as red, silently."""
    data = tmp_path / "data"
    write_shapes(data, per_class=6)  # 2 in each class's "more" folder
    (data / "pink").symlink_to(data / target)
    model = ["--base", "tiny"] if how == "base" else [
        "--spec", tiny_spec(tmp_path, n_classes=4)]
    code, out, err = cli("--store", backbone_store, "train", "--data", data,
                         "--name", "x", *model)
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert message.replace("DATA", str(data)) in err
    assert not os.path.exists(os.path.join(backbone_store, "x"))


@pytest.mark.parametrize("how", ["base", "spec"])
def test_one_file_linked_into_two_class_folders_stops_training_in_one_line(
        backbone_store, tmp_path, cli, how):
    """blue/red000.png -> red/red000.png trained one image under both
    labels, silently."""
    data = tmp_path / "data"
    write_shapes(data, per_class=6)
    (data / "blue" / "red000.png").symlink_to(data / "red" / "red000.png")
    model = ["--base", "tiny"] if how == "base" else [
        "--spec", tiny_spec(tmp_path)]
    code, out, err = cli("--store", backbone_store, "train", "--data", data,
                         "--name", "x", *model)
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert (f"{data}/blue/red000.png (class 'blue') and {data}/red/"
            f"red000.png (class 'red') are one file") in err
    assert not os.path.exists(os.path.join(backbone_store, "x"))


@pytest.mark.parametrize("layers", [[], [{"type": "dropout", "name": "d",
                                          "p": 0.5}]])
def test_a_base_with_no_layers_below_its_classifier_is_refused(
        backbone_store, shapes, cli, layers):
    """A single dense layer as --base failed with "spec 'layers' must be a
    non-empty list", naming neither the base nor what would work."""
    flat = {"input_shape": [3, 24, 24], "layers": layers + [
        {"type": "dense", "name": "out", "num_units": 5,
         "nonlinearity": "identity"}, {"type": "softmax", "name": "prob"}]}
    store.save_model(build_network(flat, seed=1), name="flat",
                     metadata=dict(PREP, class_names=list("abcde")),
                     root=backbone_store)
    code, out, err = cli("--store", backbone_store, "train", "--data",
                         shapes, "--name", "x", "--base", "flat@1")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert ("--base flat@1 has no layers to keep below its classifier (its "
            "last dense layer takes the input itself); give a base whose "
            "last dense layer sits on feature layers") in err
    assert not os.path.exists(os.path.join(backbone_store, "x"))


def test_a_new_version_becomes_latest_only_when_promoted(
        backbone_store, shapes, cli):
    train = ["--store", backbone_store, "train", "--data", shapes, "--name",
             "shapes", "--base", "tiny", "--epochs", "3"]
    assert cli(*train)[0] == 0
    assert store.resolve("shapes", root=backbone_store).version == 1
    code, out, _ = cli(*train, "--seed", "1")
    assert code == 0 and "shapes@latest is still shapes@1" in out
    assert store.resolve("shapes", root=backbone_store).version == 1
    assert store.resolve("shapes@latest", root=backbone_store).version == 1
    assert store.resolve("shapes@2", root=backbone_store).version == 2
    code, out, _ = cli(*train, "--promote")
    assert code == 0 and "shapes@latest is now shapes@3" in out
    assert store.resolve("shapes", root=backbone_store).version == 3
    code, out, _ = cli("--store", backbone_store, "models", "promote",
                       "shapes@2", "--alias", "prod")
    assert code == 0 and "shapes@prod -> shapes@2" in out
    with open(os.path.join(backbone_store, "shapes", "aliases.json")) as f:
        assert json.load(f) == {"latest": 3, "prod": 2}
    code, out, _ = cli("--store", backbone_store, "models", "list", "--json")
    rows = {(r["name"], r["version"]): r["aliases"]
            for r in map(json.loads, out.splitlines())}
    assert rows[("shapes", 2)] == ["prod"]
    assert rows[("shapes", 3)] == ["latest"]
    assert rows[("tiny", 1)] == ["latest"]
    code, _, err = cli("--store", backbone_store, "models", "promote",
                       "shapes@9", "--alias", "prod")
    assert code == 2 and "has no version 9" in err


def test_classify_resolves_an_alias(backbone_store, shapes, tmp_path, cli):
    train = ["--store", backbone_store, "train", "--data", shapes, "--name",
             "shapes", "--base", "tiny", "--epochs", "3"]
    assert cli(*train)[0] == 0 and cli(*train, "--seed", "2")[0] == 0
    assert cli("--store", backbone_store, "models", "promote", "shapes@2",
               "--alias", "prod")[0] == 0
    images = tmp_path / "new"
    write_shapes(images, per_class=1)
    code, out, err = cli("--store", backbone_store, "classify", "--input",
                         images, "--output", tmp_path / "out", "--model",
                         "shapes@prod", "--top-k", "3", "--summary-json")
    assert code == 0, err
    model = json.loads(out.splitlines()[-1])["model"]
    assert (model["name"], model["version"]) == ("shapes", "2")


def test_lite0_transfer_is_near_perfect_and_cached(tmp_path):
    """EfficientNet-Lite0 as the backbone, on a few dozen crops of three
    photos
    (24 backbone passes at ~10 images/s, and two Lite0 compilations: about
    30 s, the slowest test here)."""
    from model_store.compile import compile_predictor

    data = tmp_path / "photos"
    write_photo_crops(data, per_class=8)
    base = store.load_model("efficientnet-lite0")
    features, calls = counting(compile_features(base))
    config = TrainConfig(epochs=40, lr=0.003, augment_copies=1, seed=0)
    results = [train_transfer(FolderData(str(data)), name="photos",
                              base=base, config=config, features=features,
                              cache_directory=str(tmp_path / "cache"))
               for _ in range(2)]
    assert sum(calls) == 24  # 18 training (1 variant) + 6 validation, once
    network, metadata = results[1]
    assert metadata["metrics"]["accuracy"] == 1.0
    assert metadata["metrics"]["n_test"] == 6
    # The combined model = the backbone's features through the new head.
    root = str(tmp_path / "store")
    model = store.save_model(network, name="photos", metadata=metadata,
                             root=root)
    prep = model.preprocessing
    images = [Image.open(p) for p in sorted(map(str, data.rglob("*.jpg")))]
    batch = prep(images)
    head = {k: v for k, v in model.weights.items()
            if k.startswith("new_head.")}
    logits = features(batch) @ head["new_head.W"] + head["new_head.b"]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(compile_predictor(model)(batch), expected,
                               atol=1e-4)


def test_separate_validation_folder(backbone_store, shapes, tmp_path, cli):
    val = tmp_path / "val"
    write_shapes(val, per_class=3, seed=7)
    code, out, err = cli("--store", backbone_store, "train", "--data",
                         shapes, "--val-data", val, "--name", "v",
                         "--base", "tiny", "--epochs", "2", "--no-augment")
    assert code == 0, err
    model = store.load_model("v", root=backbone_store)
    assert model.metadata["metrics"]["n_test"] == 9
    assert model.metadata["training"]["n_train"] == 30  # all of --data
    write_shapes(val, per_class=2, classes={"purple": (128, 0, 128)})
    code, _, err = cli("--store", backbone_store, "train", "--data", shapes,
                       "--val-data", val, "--name", "v", "--base", "tiny")
    assert code == 2 and "purple" in err and err.count("\n") == 1


# A backbone with two residual blocks named as model_store/architectures.py
# names them (b<N>_...), for --fine-tune-blocks.
BLOCKS = {"input_shape": [3, 24, 24], "layers": [
    {"type": "conv2d", "name": "stem", "num_filters": 8, "filter_size": 3,
     "stride": 2, "padding": "same"},
    {"type": "conv2d", "name": "b0_conv", "num_filters": 8,
     "filter_size": 3, "padding": "same", "bias": False,
     "nonlinearity": "identity"},
    {"type": "batch_norm", "name": "b0_bn"},
    {"type": "activation", "name": "b0_relu", "nonlinearity": "relu"},
    {"type": "add", "name": "b0_add", "inputs": ["stem", "b0_relu"]},
    {"type": "conv2d", "name": "b1_conv", "num_filters": 8,
     "filter_size": 3, "padding": "same", "bias": False,
     "nonlinearity": "identity"},
    {"type": "batch_norm", "name": "b1_bn"},
    {"type": "activation", "name": "b1_relu", "nonlinearity": "relu"},
    {"type": "add", "name": "b1_add", "inputs": ["b0_add", "b1_relu"]},
    {"type": "global_avg_pool", "name": "pool"},
    {"type": "dense", "name": "fc", "num_units": 5,
     "nonlinearity": "identity"},
    {"type": "softmax", "name": "prob"}]}


def test_fine_tune_blocks_trains_the_last_block_only(shapes, tmp_path, cli):
    root = str(tmp_path / "store")
    network = build_network(BLOCKS, seed=3)
    store.save_model(network, name="blocks", root=root,
                     metadata=dict(PREP, class_names=list("abcde")))
    base = store.load_model("blocks", root=root)
    features, calls = counting(compile_features(base, cut=4))
    config = TrainConfig(epochs=30, lr=0.01, augment_copies=1, seed=1)
    runs = [train_transfer(FolderData(shapes), name="ft", base=base,
                           config=config, fine_tune_blocks=1,
                           features=features,
                           cache_directory=str(tmp_path / "cache"))
            for _ in range(2)]
    assert sum(calls) == 24 + 6  # block outputs cached: none the 2nd time
    network, metadata = runs[1]
    assert metadata["training"]["history"] == runs[0][1]["training"][
        "history"]
    tuned = store.save_model(network, name="ft", metadata=metadata,
                             root=root)
    for key in ("stem.W", "b0_conv.W", "b0_bn.gamma", "b1_bn.mean",
                "b1_bn.var"):
        np.testing.assert_array_equal(tuned.weights[key], base.weights[key])
    assert not np.array_equal(tuned.weights["b1_conv.W"],
                              base.weights["b1_conv.W"])
    assert metadata["metrics"]["accuracy"] >= 0.8
    code, _, err = cli("--store", root, "train", "--data", shapes, "--name",
                       "x", "--base", "blocks", "--fine-tune-blocks", "3")
    assert code == 2 and "--fine-tune-blocks must be from 1 to 2" in err
    code, _, err = cli("--store", root, "train", "--data", shapes, "--name",
                       "x", "--base", "digits-cnn", "--fine-tune-blocks", "1")
    assert code == 2 and "this base has no blocks" in err, err
    assert len(err.strip().splitlines()) == 1


# After decoding: unusable data stops in one line; counts in the metadata ---

def tiny_spec(tmp_path, n_classes=3):
    """BACKBONE's first layers with ``n_classes`` outputs, as a spec file."""
    spec = dict(BACKBONE, layers=BACKBONE["layers"][:3] + [
        {"type": "dense", "name": "out", "num_units": n_classes,
         "nonlinearity": "identity"}, {"type": "softmax", "name": "prob"}])
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return str(path)


def error_lines(err):
    return [line for line in err.splitlines()
            if line.startswith("imgclass: error:")]


@pytest.mark.parametrize("how", ["base", "spec"])
@pytest.mark.parametrize("broken", ["one class", "every class"])
def test_classes_with_no_usable_image_stop_after_decoding(
        backbone_store, tmp_path, cli, how, broken):
    data = tmp_path / "data"
    classes = {"red": (220, 40, 40), "green": (40, 200, 60)}
    if broken == "one class":
        write_shapes(data, per_class=3, classes=classes)
    bad = [path for name in ("red", "green", "blue")
           if broken == "every class" or name == "blue"
           for path in write_broken(data / name) + write_broken(
               data / name / "more")]
    model = ["--base", "tiny"] if how == "base" else [
        "--spec", tiny_spec(tmp_path)]
    code, _, err = cli("--store", backbone_store, "train", "--data", data,
                       "--name", "x", "--no-augment", *model)
    assert code == 2 and len(error_lines(err)) == 1, err
    line = error_lines(err)[0]
    assert "blue" in line and f"{len(bad)} broken" in line
    assert ("red" in line) == (broken == "every class")
    assert err.count("\nskipped ") + err.startswith("skipped ") == len(bad)
    assert not os.path.exists(os.path.join(backbone_store, "x"))


def test_examples_of_other_sides_than_the_network_takes_are_refused(
        tmp_path, shapes):
    """Block outputs (e.g. from a stale cache) whose size is not the one
    the fine-tuned blocks take: one clear line, not a Theano shape error."""
    from model_store.errors import ConfigError

    root = str(tmp_path / "store")
    store.save_model(build_network(BLOCKS, seed=3), name="blocks", root=root,
                     metadata=dict(PREP, class_names=list("abcde")))
    base = store.load_model("blocks", root=root)
    outputs = compile_features(base, cut=4)
    with pytest.raises(ConfigError) as refused:
        train_transfer(FolderData(shapes), name="ft", base=base,
                       config=TrainConfig(epochs=1, augment_copies=0),
                       fine_tune_blocks=1,
                       features=lambda batch: outputs(batch)[:, :-8],
                       cache_directory=str(tmp_path / "cache"))
    message = str(refused.value)
    assert "\n" not in message and "8x12x12" in message


@pytest.mark.parametrize("how", ["base", "spec"])
def test_n_train_subtracts_only_the_broken_training_files(
        backbone_store, tmp_path, cli, how, monkeypatch):
    data, val = tmp_path / "data", tmp_path / "val"
    train_files = list(write_shapes(data, per_class=4)) + write_broken(
        data / "red")
    val_files = list(write_shapes(val, per_class=2, seed=7)) + [
        *write_broken(val / "green"), *write_broken(val / "blue")]
    k, j = 2, 4  # broken files written in --data and in --val-data
    model = ["--base", "tiny"] if how == "base" else [
        "--spec", tiny_spec(tmp_path)]
    monkeypatch.chdir(tmp_path)  # folders given as typed: relative
    code, _, err = cli("--store", backbone_store, "train", "--data", "data/",
                       "--val-data", "./val", "--name", "counted", "--epochs",
                       "1", "--no-augment", *model)
    assert code == 0, err
    with open(os.path.join(backbone_store, "counted", "1",
                           "metadata.json"), encoding="utf-8") as handle:
        metadata = json.load(handle)
    # Recorded so that they mean something from anywhere later.
    assert (metadata["training"]["data"],
            metadata["training"]["val_data"]) == (str(data), str(val))
    assert metadata["metrics"]["dataset"] == f"validation: {val}"
    assert metadata["training"]["n_train"] == len(train_files) - k
    assert metadata["metrics"]["n_test"] == len(val_files) - j
    assert len(metadata["training"]["skipped"]) == k + j


def test_a_file_name_that_is_not_utf8_is_read_and_metadata_stays_utf8(
        backbone_store, tmp_path, cli):
    data = tmp_path / "data"
    write_shapes(data, per_class=3)
    folder = os.fsencode(data / "red")
    Image.new("RGB", (30, 30), (220, 40, 40)).save(
        os.fsdecode(os.path.join(folder, b"caf\xe9.png")), "PNG")
    with open(os.path.join(folder, b"bad\xff.jpg"), "wb") as handle:
        handle.write(b"not a picture")
    code, _, err = cli("--store", backbone_store, "train", "--data", data,
                       "--name", "u", "--base", "tiny", "--epochs", "1",
                       "--no-augment")
    assert code == 0, err
    assert "bad%FF.jpg" in err
    with open(os.path.join(backbone_store, "u", "1", "metadata.json"),
              encoding="utf-8") as handle:
        text = handle.read()
    assert "\\udc" not in text
    metadata = json.loads(text)
    assert metadata["training"]["skipped"] == [
        str(data / "red" / "bad%FF.jpg")]
    assert metadata["training"]["n_train"] + metadata["metrics"][
        "n_test"] == 3 * 3 + 1


def test_a_run_that_diverges_keeps_its_best_epoch(tmp_path, cli):
    """A learning rate that blows up after the first epochs must not lose
    the good epoch: the model is saved with it, the diverged losses are
    null in the history, and it verifies."""
    data, store = tmp_path / "data", str(tmp_path / "store")
    write_shapes(data, per_class=4)
    code, out, err = cli("--store", store, "train", "--data", data, "--name",
                         "hot", "--spec", tiny_spec(tmp_path), "--epochs",
                         "3", "--lr", "1e30", "--optimizer", "sgd",
                         "--no-augment")
    assert code == 0, err
    with open(os.path.join(store, "hot", "1", "metadata.json"),
              encoding="utf-8") as handle:
        training = json.load(handle)["training"]
    losses = [row["loss"] for row in training["history"]]
    assert None in losses, losses  # it did diverge
    assert training["best_epoch"] in [row["epoch"] for row
                                      in training["history"]]
    code, out, _ = cli("--store", store, "models", "verify", "hot@1")
    assert code == 0 and out.startswith("ok")


@pytest.mark.parametrize("validation", ["fraction", "val-data"])
def test_a_data_folder_named_not_utf8_is_recorded_escaped_everywhere(
        backbone_store, tmp_path, cli, validation):
    """The version's description and metrics.dataset held the --data
    (--val-data) path's lone surrogate, which strict JSON readers refuse,
    while training.data wrote it %XX."""
    data = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"d\xffata"))
    val = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"v\xe9l"))
    write_shapes(data, per_class=3)
    extra = ["--val-fraction", "0.3"]
    if validation == "val-data":
        write_shapes(val, per_class=1, seed=1)
        extra = ["--val-data", val]
    code, _, err = cli("--store", backbone_store, "train", "--data", data,
                       "--name", "u", "--base", "tiny", "--epochs", "1",
                       "--no-augment", *extra)
    assert code == 0, err
    with open(os.path.join(backbone_store, "u", "1", "metadata.json"),
              encoding="utf-8") as handle:
        text = handle.read()
    assert "\\udc" not in text
    metadata = json.loads(text)
    assert "d%FFata" in metadata["description"]
    assert ("v%E9l" if validation == "val-data" else "d%FFata") in \
        metadata["metrics"]["dataset"]


def test_a_folder_inside_one_trained_before_trains_as_with_no_cache(
        backbone_store, tmp_path):
    """An augmented variant is drawn from the file's path below --data,
    but the cache knew it by its full path: after training on photos/,
    a training on photos/animals/ took the features of photos/'s crops
    of the same files (same path, content and variant number) for its
    own, and the same seed trained another model than with no cache."""
    from model_store import layers as L

    base = store.load_model("tiny", root=backbone_store)
    photos = tmp_path / "photos"
    write_shapes(photos / "animals", per_class=4, nested=False)
    write_shapes(photos / "plants", per_class=4, seed=1, nested=False)
    config = TrainConfig(epochs=2, lr=0.01, augment_copies=1)

    def weights(folder, cache):
        network, _ = train_transfer(
            FolderData(str(folder)), name="x", base=base, config=config,
            stream=io.StringIO(), cache_directory=str(tmp_path / cache))
        return L.get_param_values(network)

    weights(photos, "shared")
    after_photos = weights(photos / "animals", "shared")
    alone = weights(photos / "animals", "fresh")
    for name in alone:
        np.testing.assert_array_equal(after_photos[name], alone[name])


def test_features_do_not_depend_on_how_many_images_are_computed_at_once():
    """digits-cnn's features of 1 to 3 images at once differed in their
    last bits from those of the same images in a larger batch (BLAS takes
    other paths), so a training whose cache already held some features
    (a folder trained before, a few images added) trained another model
    than the same data and seed with no cache."""
    base = store.load_model("digits-cnn")
    features = compile_features(base)
    x = np.random.RandomState(0).randn(
        40, *base.metadata["input_shape"]).astype(np.float32)
    together = features(x)
    for start, stop in ((0, 1), (1, 3), (3, 6), (6, 40)):
        np.testing.assert_array_equal(features(x[start:stop]),
                                      together[start:stop])


def test_a_base_with_a_layer_named_as_the_new_head_is_refused_before_work(
        backbone_store, shapes, cli):
    """A base whose features lie above a layer named new_head was refused
    only once its features were computed and the head trained."""
    spec = dict(BACKBONE, layers=[dict(layer, name="new_head")
                                  if layer["name"] == "feat" else layer
                                  for layer in BACKBONE["layers"]])
    spec["layers"][3] = dict(spec["layers"][3], name="drop")
    spec["layers"].insert(3, {"type": "dense", "name": "feat2",
                              "num_units": 8, "inputs": ["new_head"]})
    store.save_model(build_network(spec, seed=1), name="named",
                     metadata=dict(PREP, class_names=list("abcde")),
                     root=backbone_store)
    code, out, err = cli("--store", backbone_store, "train", "--data",
                         shapes, "--name", "x", "--base", "named@1",
                         "--epochs", "1")
    assert (code, out) == (2, "") and err.count("\n") == 1, err
    assert "--base named@1 already has a layer named new_head" in err
    assert not os.path.exists(os.path.join(backbone_store, "x"))


def test_a_training_that_skips_very_many_files_is_saved(
        backbone_store, tmp_path, cli, monkeypatch):
    """training.skipped named every skipped file: a folder of photos with
    a .json sidecar each (as Google Takeout exports them) made the
    metadata larger than a model's JSON file may be, and the training
    was lost after all its work. The first files are named, all counted."""
    monkeypatch.setattr(store, "MAX_JSON_BYTES", 32 * 1024)
    data = tmp_path / "data"
    write_shapes(data, per_class=3, nested=False)
    for n in range(400):
        (data / "red" / f"IMG_{n:05d}.jpg.supplemental-metadata.json"
         ).write_text("{}")
    code, _, err = cli("--store", backbone_store, "train", "--data", data,
                       "--name", "many", "--base", "tiny", "--epochs", "1",
                       "--no-augment")
    assert code == 0, err.splitlines()[-1]
    training = store.load_model("many", root=backbone_store).metadata[
        "training"]
    assert training["n_skipped"] == 400
    assert len(training["skipped"]) == 100


def test_features_are_computed_a_batch_at_a_time_not_after_decoding_all(
        tmp_path):
    """The pixels of every variant to compute were held until all files
    were decoded: 20,000 photos with 3 variants each, 9 GB for Lite0's
    224x224 inputs. A batch of them is held at a time."""
    from model_store.folders import scan_folder
    from model_store.preprocessing import Preprocessing
    from model_store.transfer import FEATURE_BATCH, dataset_features
    from tests.conftest import traced_peak

    write_shapes(tmp_path / "data", per_class=150, classes={
        "red": (220, 40, 40), "green": (40, 200, 60)}, nested=False)
    prep = Preprocessing((3, 96, 96), "RGB", "bilinear", (0.5,) * 3,
                         (0.25,) * 3)
    dataset = scan_folder(str(tmp_path / "data"))

    def features(batch):
        return np.zeros((len(batch), 4), np.float32)
    (x, labels, broken), peak = traced_peak(lambda: dataset_features(
        dataset, prep, features, FeatureCache(WEIGHTS, str(tmp_path)),
        copies=2))
    assert x.shape == (600, 4) and not broken
    one_batch = FEATURE_BATCH * 3 * 96 * 96 * (1 + 4)  # uint8 and float32
    assert peak < 3 * one_batch, peak
