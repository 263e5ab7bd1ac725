"""Folder datasets (one sub-folder per class) and evaluation on them."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from model_store.datasets import digit_image
from model_store.errors import ConfigError
from model_store.folders import (
    MIN_CLASSES,
    check_classes,
    load_pixels,
    scan_folder,
    stratified_split,
)
from model_store.preprocessing import Preprocessing
from tests.conftest import traced_peak
from tests.folder_data import write_broken, write_shapes

PREP = Preprocessing((3, 16, 16), "RGB", "bilinear", (0.5,) * 3, (0.25,) * 3)


def test_classes_are_the_sorted_folder_names_and_nested_files_belong(tmp_path):
    truth = write_shapes(tmp_path, per_class=4)
    (tmp_path / "red" / ".DS_Store").write_bytes(b"junk")
    dataset = scan_folder(str(tmp_path) + "/")
    assert dataset.class_names == ["blue", "green", "red"]
    got = {f.path: dataset.class_names[f.label] for f in dataset.files}
    assert got == {os.path.abspath(p): c for p, c in truth.items()}
    assert any("/more/" in path for path in got)


def test_broken_files_are_listed_and_skipped(tmp_path):
    write_shapes(tmp_path, per_class=3)
    bad = write_broken(tmp_path / "green")
    pixels, kept, broken = load_pixels(scan_folder(str(tmp_path)), PREP)
    assert sorted(path for path, _ in broken) == sorted(bad)
    assert all(reason for _, reason in broken)
    assert pixels.shape == (9, 3, 16, 16) and len(kept.files) == 9
    check_classes(kept)


def test_pixels_are_the_pipelines_decode_and_preprocessing(tmp_path):
    write_shapes(tmp_path, per_class=2, size=40)
    dataset = scan_folder(str(tmp_path))
    pixels, kept, _ = load_pixels(dataset, PREP)
    for row, item in zip(pixels, kept.files):
        if not item.path.endswith(".png"):
            continue  # JPEGs are decoded at a reduced scale (draft)
        with Image.open(item.path) as image:
            expected = np.asarray(image.convert("RGB").resize(
                (16, 16), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
        np.testing.assert_array_equal(row, expected)


@pytest.mark.parametrize("how", ["the same folder", "hard links",
                                 "a symlinked class folder"])
def test_val_data_holding_files_of_data_is_refused(tmp_path, cli, how):
    """--val-data naming --data (or linking to its files) was taken: the
    'validation accuracy' stored as the version's metrics, and the best
    epoch chosen by it, were measured on the training images."""
    data, val = tmp_path / "data", tmp_path / "val"
    write_shapes(data, per_class=3, classes=TWO)
    if how == "the same folder":
        val = data
    elif how == "hard links":
        shutil.copytree(data, val, copy_function=os.link)
    else:
        write_shapes(val, per_class=1, classes={"red": (220, 40, 40)})
        (val / "green").symlink_to(data / "green")
    code, _, err = train_cli(cli, data, "--val-data", val)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--val-data {val} holds {val}/green/" in err
    assert f"which is {data}/green/" in err and "of --data" in err
    copies = tmp_path / "copies"  # each its own file: accepted
    shutil.copytree(data, copies)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"input_shape": [1, 8, 8], "layers": [
        {"type": "dense", "name": "fc", "num_units": 2,
         "nonlinearity": "identity"}, {"type": "softmax", "name": "p"}]}))
    code, _, err = cli("--store", tmp_path / "store", "train", "--data",
                       data, "--val-data", copies, "--name", "x", "--spec",
                       spec, "--epochs", "1")
    assert code == 0, err


def test_the_pixel_statistics_of_a_spec_training_take_no_copy_of_all():
    """The per-channel mean and std that a training from a spec stores as
    the model's normalization were computed on a float64 copy of every
    training pixel: 16 times the pixels' memory at the peak (22 GB for
    2,000 photos of 224x224, 3 variants each). Same values, in chunks."""
    from model_store.folder_training import channel_statistics

    pixels = np.random.RandomState(0).randint(
        0, 256, (4000, 3, 8, 8)).astype(np.uint8)
    (mean, std), peak = traced_peak(lambda: channel_statistics(pixels))
    assert peak < pixels.nbytes / 2, peak
    scaled = pixels.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, scaled.mean((0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, scaled.std((0, 2, 3)), rtol=1e-12)


@pytest.mark.parametrize("layout, message", [
    ("empty", "holds no files"),
    ("loose file", "lies directly in"),
    ("one image", "fewer than 2 images"),
])
def test_bad_layouts_are_config_errors(tmp_path, layout, message):
    if layout == "loose file":
        write_shapes(tmp_path, per_class=2)
        shape = Image.new("RGB", (8, 8))
        shape.save(tmp_path / "stray.png")
    elif layout == "one image":
        write_shapes(tmp_path, per_class=2)
        os.remove(next((tmp_path / "blue").glob("*.jpg")))
    with pytest.raises(ConfigError, match=message):
        dataset = scan_folder(str(tmp_path))
        check_classes(load_pixels(dataset, PREP)[1])


def test_stratified_split_is_fixed_and_keeps_every_class_on_both_sides():
    labels = np.repeat([0, 1, 2], [10, 5, 2])
    train, val = stratified_split(labels, 0.2)
    again = stratified_split(labels, 0.2)
    np.testing.assert_array_equal(train, again[0])
    assert sorted(np.concatenate([train, val])) == list(range(17))
    assert np.bincount(labels[val]).tolist() == [2, 1, 1]
    assert set(labels[train]) == {0, 1, 2}


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_the_split_keeps_links_of_one_file_on_one_side(tmp_path, link):
    """Links of one file in its class folder (cat/best/ holding links to
    favourites in cat/) were split as different images: one could be
    learnt and the other validated, which --val-data refuses."""
    from model_store.folder_training import FolderData, split_folders

    write_shapes(tmp_path, per_class=5, classes=TWO, nested=False)
    for name in TWO:
        (tmp_path / name / "best").mkdir()
        for original in sorted((tmp_path / name).glob("*.*")):
            copy = tmp_path / name / "best" / original.name
            if link == "symlink":
                copy.symlink_to(original)
            else:
                os.link(original, copy)
    train, val = split_folders(FolderData(str(tmp_path), val_fraction=0.5))

    def files(dataset):
        return {os.stat(item.path).st_ino for item in dataset.files}
    assert not files(train) & files(val)
    assert len(train.files) + len(val.files) == 20
    assert set(train.labels) == set(val.labels) == {0, 1}


def write_digit_folder(root, split, count):
    truth = {}
    for n in range(count):
        label = str(split.test_labels[n])
        folder = os.path.join(root, label)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{n:03d}.png")
        digit_image(split.test_images[n], 24).save(path)
        truth[path] = label
    return truth


def test_evaluate_on_a_folder_matches_scikit_learn(tmp_path, split, cli):
    """Predictions made here with the model's own predictor and files opened
    by Pillow; the metrics computed here with scikit-learn."""
    from model_store.compile import compile_predictor
    from model_store.store import load_model

    truth = write_digit_folder(tmp_path / "data", split, 60)
    write_broken(tmp_path / "data" / "3")
    code, out, err = cli("evaluate", "--model", "digits-cnn@1", "--data",
                         tmp_path / "data", "--json")
    assert code == 0, err
    metrics = json.loads(out)

    model = load_model("digits-cnn@1")
    prep = model.preprocessing
    paths = sorted(truth)
    images = [Image.open(p).convert("L") for p in paths]
    probs = compile_predictor(model)(prep(images))
    y_true = np.array([int(truth[p]) for p in paths])
    y_pred = probs.argmax(axis=1)
    assert metrics["n_test"] == len(paths) == 60
    assert metrics["accuracy"] == pytest.approx(
        accuracy_score(y_true, y_pred), abs=1e-6)
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=range(10), zero_division=0)
    for k in range(10):
        row = metrics["per_class"][str(k)]
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx(
            [p[k], r[k], f[k]], abs=1e-6)
        assert row["support"] == s[k]
    assert metrics["confusion_matrix"] == confusion_matrix(
        y_true, y_pred, labels=range(10)).tolist()
    wrong = [(probs[i].max(), paths[i]) for i in range(60)
             if y_pred[i] != y_true[i]]
    assert [m["path"] for m in metrics["mistakes"]] == [
        os.path.abspath(path) for _, path in sorted(wrong, reverse=True)][:10]
    assert len(metrics["broken"]) == 2


def test_evaluate_decodes_a_folder_a_batch_at_a_time(tmp_path, split, cli,
                                                    monkeypatch):
    """The pixels of every file were decoded and held at once (7.5 GB for
    ImageNet's 50,000 validation images) before any was predicted. A batch
    at a time gives the same metrics, broken files and all."""
    from model_store import evaluate, folders

    data = tmp_path / "data"
    write_digit_folder(data, split, 30)
    write_broken(data / "3")
    code, out, err = cli("evaluate", "--model", "digits-cnn@1", "--data",
                         data, "--json")
    assert code == 0, err
    sizes, load_pixels = [], folders.load_pixels

    def counted(dataset, *args, **kwargs):
        sizes.append(len(dataset.files))
        return load_pixels(dataset, *args, **kwargs)
    monkeypatch.setattr(folders, "load_pixels", counted)
    monkeypatch.setattr(evaluate, "EVAL_BATCH", 7)
    code, batched, err = cli("evaluate", "--model", "digits-cnn@1", "--data",
                             data, "--json")
    assert code == 0, err
    assert json.loads(batched) == json.loads(out)
    assert max(sizes) == 7 and sum(sizes) == 32


def test_evaluate_reports_a_class_the_model_lacks_in_one_line(tmp_path, cli):
    write_shapes(tmp_path, per_class=2)
    code, out, err = cli("evaluate", "--model", "digits-cnn@1", "--data",
                         tmp_path)
    assert code == 2 and err.count("\n") == 1
    assert "not classes of the model" in err


# Refusals before any work: exit code 2 and one line ------------------------

DIGITS_SPEC = "model_store/specs/digits-cnn.json"
TWO = {"red": (220, 40, 40), "green": (40, 200, 60)}


def train_cli(cli, data, *extra):
    return cli("train", "--data", data, "--name", "x", "--spec",
               DIGITS_SPEC, *extra)


@pytest.mark.parametrize("content", ["nothing", "hidden file only"])
def test_an_empty_class_folder_is_a_class_and_is_refused_by_name(
        tmp_path, cli, content):
    data = tmp_path / "data"
    write_shapes(data, per_class=3, classes=TWO)
    (data / "blue").mkdir()
    if content == "hidden file only":
        (data / "blue" / ".DS_Store").write_bytes(b"junk")
    # Labels stay stable: the empty folder is a class (with 0 files).
    dataset = scan_folder(str(data))
    assert dataset.class_names == ["blue", "green", "red"]
    assert not any(f.label == 0 for f in dataset.files)
    code, _, err = train_cli(cli, data)
    assert code == 2 and err.count("\n") == 1, err
    assert str(data / "blue") in err and "no image" in err


def test_an_empty_class_folder_of_val_data_is_refused_by_name(tmp_path, cli):
    data, val = tmp_path / "data", tmp_path / "val"
    write_shapes(data, per_class=3)
    write_shapes(val, per_class=1, classes=TWO)
    (val / "blue").mkdir()
    code, _, err = train_cli(cli, data, "--val-data", val)
    assert code == 2 and err.count("\n") == 1, err
    assert str(val / "blue") in err and "no image" in err


@pytest.mark.parametrize("layout, message", [
    ("one class folder", f"at least {MIN_CLASSES} class folders"),
    ("no class folder", "holds no files"),
    ("files only at the top", "lies directly in"),
])
def test_fewer_than_two_classes_are_refused_before_any_work(
        tmp_path, cli, layout, message):
    data = tmp_path / "data"
    data.mkdir()
    if layout == "one class folder":
        write_shapes(data, per_class=5, classes={"red": (220, 40, 40)})
    elif layout == "files only at the top":
        for n in range(3):
            Image.new("RGB", (8, 8)).save(data / f"{n}.png")
    code, _, err = train_cli(cli, data)
    assert code == 2 and err.count("\n") == 1, err
    assert message in err


def test_val_data_must_have_the_classes_of_data(tmp_path, cli):
    data, val = tmp_path / "data", tmp_path / "val"
    write_shapes(data, per_class=3)
    write_shapes(val, per_class=2, classes=TWO)
    code, _, err = train_cli(cli, data, "--val-data", val)
    assert code == 2 and err.count("\n") == 1, err
    assert "blue" in err and "missing" in err


def test_a_class_folder_name_that_is_not_utf8_is_refused_escaped(
        tmp_path, cli):
    data = tmp_path / "data"
    write_shapes(data, per_class=3, classes=TWO)
    bad = os.path.join(os.fsencode(data), b"caf\xe9")
    os.mkdir(bad)
    for n in range(3):
        Image.new("RGB", (8, 8)).save(os.fsdecode(bad) + f"/{n}.png")
    store = tmp_path / "store"
    code, _, err = cli("--store", store, "train", "--data", data, "--name",
                       "x", "--spec", DIGITS_SPEC)
    assert code == 2 and err.count("\n") == 1, err
    assert "caf%E9" in err and "UTF-8" in err
    assert not store.exists() or not any(store.iterdir())


@pytest.mark.parametrize("data_name, class_name", [
    ("data", "AC\\DC"), ("data\\", "red"), ("da\\ta", "red\\")])
def test_a_backslash_in_a_folder_name_is_a_character_of_it(
        tmp_path, data_name, class_name):
    """'\\' was taken for a separator on Linux: 'AC\\DC' made a class 'AC'
    of its images and was refused as an empty class folder, and a data
    folder named 'data\\' was read as 'data'."""
    data = tmp_path / data_name
    (tmp_path / "data").mkdir()  # what 'data\\' was taken for
    write_shapes(data, per_class=2, classes={class_name: (220, 40, 40),
                                             "x": (40, 200, 60)})
    dataset = scan_folder(str(data))
    assert dataset.root == str(data)
    assert dataset.class_names == sorted([class_name, "x"])
    assert sorted(dataset.name_of(f) for f in dataset.files
                  if f.label == dataset.class_names.index(class_name)) == \
        [f"{class_name}/{class_name}000.png",
         f"{class_name}/{class_name}001.jpg"]


def test_class_folders_named_alike_in_nfc_and_nfd_are_refused(
        tmp_path, cli):
    """'café' with 'é' as one code point (Linux) and as 'e' and an accent
    (macOS) are two folders: they were learnt as two classes that print
    the same ('café (true café)' in evaluate's mistakes)."""
    data = tmp_path / "data"
    write_shapes(data, per_class=3, classes={"caf\u00e9": (220, 40, 40),
                                             "cafe\u0301": (40, 200, 60)})
    code, _, err = train_cli(cli, data)
    assert code == 2 and err.count("\n") == 1, err
    assert "class folders 'cafe\\u0301' and 'caf\\xe9' in " in err
    assert "Unicode NFC and NFD" in err


@pytest.mark.parametrize("odd, where, shown", [
    (b"da\nta", "data folder", "da%0Ata"),
    (b"da\xffta", "data folder", "da%FFta"),
    (b"bi\nrd", "class folder", "bi%0Ard"),
])
def test_odd_bytes_in_a_refused_folder_are_shown_escaped_on_one_line(
        tmp_path, cli, odd, where, shown):
    """A newline in the data folder's or a class folder's name split the
    error in two lines; a byte that is not UTF-8 showed as '\\udcff'."""
    name = os.fsdecode(odd)
    data = tmp_path / (name if where == "data folder" else "data")
    write_shapes(data, per_class=3, classes={"red": (220, 40, 40)})
    if where == "class folder":  # a second class, of one image
        (data / name).mkdir()
        Image.new("RGB", (8, 8)).save(data / name / "0.png")
    code, _, err = train_cli(cli, data)
    assert code == 2 and err.count("\n") == 1, err
    assert shown in err and "\\udc" not in err


def _train_two_classes(cli, tmp_path, classes):
    """Trains model ``x`` (one dense layer, one epoch) on 4 images of each
    of the two ``classes`` ({folder name: colour}); ``(store, data)``."""
    data, store = tmp_path / "data", tmp_path / "store"
    write_shapes(data, per_class=4, classes=classes)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"input_shape": [1, 8, 8], "layers": [
        {"type": "dense", "name": "fc", "num_units": 2,
         "nonlinearity": "identity"}, {"type": "softmax", "name": "p"}]}))
    code, _, err = cli("--store", store, "train", "--data", data, "--name",
                       "x", "--spec", spec, "--epochs", "1")
    assert code == 0, err
    return store, data


def test_a_model_class_holding_a_newline_is_named_on_one_line(
        tmp_path, cli):
    """Class folder names become the model's classes: 'evaluate' refusing
    such a model on the digits split named them over two lines."""
    store, _ = _train_two_classes(cli, tmp_path, {"bi\nrd": (220, 40, 40),
                                                  "red": (200, 40, 60)})
    code, _, err = cli("--store", store, "evaluate", "--model", "x")
    assert code == 2 and err.count("\n") == 1, err
    assert "x@1 classifies bi%0Ard, red, not the dataset's" in err


def test_evaluate_shows_control_characters_in_class_names_escaped(
        tmp_path, cli):
    """A class folder's name holding ESC (a terminal escape sequence) or a
    newline is printed %XX in evaluate's tables, never raw to the
    terminal; --json keeps the names exactly."""
    classes = {"bi\x1b[2Jrd": (220, 40, 40), "re\nd": (40, 40, 200)}
    store, data = _train_two_classes(cli, tmp_path, classes)
    code, out, err = cli("--store", store, "evaluate", "--model", "x",
                         "--data", data)
    assert code == 0, err
    assert "\x1b" not in out and "re\nd" not in out
    rows = [line.split()[0] for line in out.splitlines()
            if line.split()[0] in ("bi%1B[2Jrd", "re%0Ad")]
    assert rows == ["bi%1B[2Jrd", "re%0Ad"] * 2  # metrics, confusion
    code, out, _ = cli("--store", store, "evaluate", "--model", "x",
                       "--data", data, "--json")
    assert sorted(json.loads(out)["per_class"]) == sorted(classes)


def test_evaluate_plots_class_names_holding_dollars_as_plain_text(
        tmp_path, cli):
    """matplotlib read '$...$' in a tick label as mathematics: a class
    folder named '$\\frac{$' made 'evaluate --plot' end in a traceback
    (exit 1) after printing the metrics."""
    store, data = _train_two_classes(cli, tmp_path, {
        "a$b": (220, 40, 40), "$\\frac{$": (40, 40, 200)})
    plot = tmp_path / "cm.png"
    code, out, err = cli("--store", store, "evaluate", "--model", "x",
                         "--data", data, "--plot", plot)
    assert code == 0 and err == "", err
    assert out.endswith(f"wrote {plot}\n")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_class_folder_is_its_class_in_either_unicode_form(tmp_path, cli):
    """A model trained on 'café' in NFC (Linux) and test or validation
    images copied from macOS, which writes it in NFD: evaluate refused
    'café that are not classes of the model; classes: café, tea', and
    --val-data 'missing café; extra café'."""
    from model_store.store import load_model

    nfc, nfd = "caf\u00e9", "cafe\u0301"
    store, data = _train_two_classes(cli, tmp_path, {
        nfc: (220, 40, 40), "tea": (40, 40, 200)})
    copied = tmp_path / "copied"
    shutil.copytree(data, copied)
    (copied / nfc).rename(copied / nfd)
    code, out, err = cli("--store", store, "evaluate", "--model", "x",
                         "--data", copied, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["n_test"] == 8 and list(metrics["per_class"]) == [
        nfc, "tea"]
    assert [row["support"] for row in metrics["per_class"].values()] == \
        [4, 4]
    code, _, err = cli("--store", store, "train", "--data", data,
                       "--val-data", copied, "--name", "x", "--spec",
                       tmp_path / "spec.json", "--epochs", "1")
    assert code == 0, err
    assert load_model("x@2", root=str(store)).class_names == [nfc, "tea"]


def test_a_spec_file_name_that_is_not_utf8_is_recorded_escaped(
        tmp_path, cli):
    """training.spec held the name's lone surrogate, which strict JSON
    readers refuse; it is written %XX, as paths are."""
    data, store = tmp_path / "data", tmp_path / "store"
    write_shapes(data, per_class=3, classes=TWO)
    spec = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"sp\xe9c.json"))
    with open(spec, "w") as handle:
        json.dump({"input_shape": [1, 8, 8], "layers": [
            {"type": "dense", "name": "fc", "num_units": 2,
             "nonlinearity": "identity"}, {"type": "softmax", "name": "p"}]},
            handle)
    code, _, err = cli("--store", store, "train", "--data", data, "--name",
                       "x", "--spec", spec, "--epochs", "1")
    assert code == 0, err
    assert "training x from sp%E9c.json on " in err
    raw = (store / "x" / "1" / "metadata.json").read_bytes()
    assert json.loads(raw.decode("utf-8"))["training"]["spec"] == \
        "sp%E9c.json"


def test_a_spec_whose_outputs_are_not_the_classes_is_refused_before_work(
        tmp_path, cli):
    data = tmp_path / "data"
    write_shapes(data, per_class=3)
    code, _, err = train_cli(cli, data)  # digits-cnn: 10 outputs
    assert code == 2 and err.count("\n") == 1, err
    assert "10 outputs" in err and "3 classes" in err


@pytest.mark.parametrize("images", [1, 2])
def test_a_refusal_about_many_classes_names_a_few_and_counts_them(
        tmp_path, cli, images):
    """With 10,000 class folders, the one line naming them (each class of
    too few images, or every class of a spec of too few outputs) was
    120 kB long: the first few are named, with how many there are."""
    data = tmp_path / "data"
    for n in range(12):
        (data / f"c{n:02d}").mkdir(parents=True)
        for i in range(images):
            Image.new("RGB", (8, 8)).save(data / f"c{n:02d}" / f"{i}.png")
    code, _, err = train_cli(cli, data)  # digits-cnn: 10 outputs
    assert code == 2 and err.count("\n") == 1, err
    assert "c00" in err and "c04" in err and "c05" not in err, err
    assert ", ... (12 classes)" in err


def test_evaluate_json_escapes_names_that_are_not_utf8(tmp_path, cli):
    """--json must be valid UTF-8 for any reader: names with other bytes
    are written %XX, as classify and train write them."""
    from tests.test_cli import save_three_class_model
    store, data = str(tmp_path / "store"), tmp_path / "data"
    save_three_class_model(store, weight=1.0)
    for name in ("a", "b", "c"):
        (data / name).mkdir(parents=True)
        Image.new("L", (8, 8), 200).save(data / name / "ok.png")
    odd = os.path.join(os.fsencode(data / "b"), b"wr\xf6ng.png")
    Image.new("L", (8, 8), 90).save(os.fsdecode(odd), "PNG")
    with open(os.path.join(os.fsencode(data / "c"), b"bad\xff.png"),
              "wb") as handle:
        handle.write(b"not a picture")
    code, out, err = cli("--store", store, "evaluate", "--model", "three",
                         "--data", data, "--json")
    assert code == 0, err
    out.encode("utf-8")  # no lone surrogates
    metrics = json.loads(out)
    assert [row["path"] for row in metrics["broken"]] == [
        f"{data}/c/bad%FF.png"]
    assert metrics["n_test"] == 4
    assert f"{data}/b/wr%F6ng.png" in [row["path"] for row in
                                       metrics["mistakes"]]


def test_a_fifo_in_a_class_folder_is_skipped_not_waited_on(tmp_path):
    """Opening a FIFO blocks until something writes to it: train and
    evaluate hung forever on one. It is listed as broken, never opened."""
    import threading
    truth = write_shapes(tmp_path, per_class=3)
    fifo = tmp_path / "red" / "pipe.png"
    os.mkfifo(fifo)
    done = {}
    worker = threading.Thread(target=lambda: done.update(result=load_pixels(
        scan_folder(str(tmp_path)), PREP)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "reading the folder hung on the FIFO"
    pixels, kept, broken = done["result"]
    assert [(path, "FIFO" in reason) for path, reason in broken] == [
        (str(fifo), True)]
    assert len(kept.files) == len(pixels) == len(truth)


def test_a_file_over_the_size_limit_is_skipped_unread_naming_the_limit(
        tmp_path):
    """A 300 MB file (sparse: never written, never read) in a class folder
    is listed as broken with the limit, which train has no option for."""
    from transforms.files import DEFAULT_MAX_FILE_BYTES

    truth = write_shapes(tmp_path, per_class=3)
    huge = tmp_path / "red" / "huge.png"
    with open(huge, "wb") as handle:
        handle.truncate(DEFAULT_MAX_FILE_BYTES + 1)
    pixels, kept, broken = load_pixels(scan_folder(str(tmp_path)), PREP)
    assert broken == [(str(huge), f"FileTooLargeError: "
                       f"{DEFAULT_MAX_FILE_BYTES + 1:,} bytes, "
                       f"over the limit of {DEFAULT_MAX_FILE_BYTES:,} bytes "
                       f"per file (classify's and watch's "
                       f"--max-file-bytes)")]
    assert len(kept.files) == len(pixels) == len(truth)


def test_symlinked_class_folders_are_followed_and_loops_are_listed_broken(
        tmp_path, split, cli):
    """``data/cat -> /mnt/photos/cats`` is a class like any other (Beam's
    matcher left it empty, so training refused it as an empty class); a
    dangling symlink and a folder leading back to its parent are listed as
    broken, with the reason, and the rest is used."""
    elsewhere = tmp_path / "elsewhere"
    truth = write_shapes(elsewhere, per_class=3)
    data = tmp_path / "data"
    data.mkdir()
    for colour in ("blue", "green", "red"):
        (data / colour).symlink_to(elsewhere / colour)
    (data / "red" / "gone.png").symlink_to(tmp_path / "nothing.png")
    (data / "green" / "loop").symlink_to(data)
    dataset = scan_folder(str(data))
    assert dataset.class_names == ["blue", "green", "red"]
    pixels, kept, broken = load_pixels(dataset, PREP)
    assert len(pixels) == len(kept.files) == len(truth) == 9
    reasons = dict(broken)
    assert sorted(reasons) == [f"{data}/green/loop", f"{data}/red/gone.png"]
    assert "symlink loop" in reasons[f"{data}/green/loop"]
    assert "dangling symlink" in reasons[f"{data}/red/gone.png"]

    numbers = tmp_path / "numbers"
    write_digit_folder(numbers, split, 60)
    (numbers / "3" / "alias").symlink_to(numbers / "3")
    linked = tmp_path / "linked"
    linked.mkdir()
    for digit in os.listdir(numbers):
        (linked / digit).symlink_to(numbers / digit)
    code, out, err = cli("evaluate", "--model", "digits-cnn@1", "--data",
                         linked, "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["n_test"] == 60
    assert [row["path"] for row in metrics["broken"]] == [
        f"{linked}/3/alias"]


def _second_path(data, how):
    """``blue/more/also.png``, made from ``red/red000.png`` as ``how``
    says; both paths."""
    real, other = data / "red" / "red000.png", data / "blue" / "more" / \
        "also.png"
    if how == "symlink":
        other.symlink_to(os.path.relpath(real, other.parent))
    elif how == "hard link":
        os.link(real, other)
    else:
        shutil.copy(real, other)
    return real, other


@pytest.mark.parametrize("how", ["symlink", "hard link"])
def test_one_file_in_two_class_folders_is_refused_naming_both(tmp_path,
                                                              how):
    """blue/more/also.png -> red/red000.png trained one image as blue and
    as red; only whole class folders linked to each other were refused."""
    data = tmp_path / "data"
    write_shapes(data, per_class=3)
    real, other = _second_path(data, how)
    with pytest.raises(ConfigError) as caught:
        scan_folder(str(data))
    assert str(caught.value) == (
        f"{other} (class 'blue') and {real} (class 'red') are one file (a "
        f"symlink or a hard link): its image would be learnt as two "
        f"classes; remove it from the class it does not belong to")


def test_the_same_bytes_in_two_classes_or_one_file_twice_in_a_class_pass(
        tmp_path):
    """A copy (its own inode) is not refused, nor is a link within one
    class."""
    data = tmp_path / "data"
    write_shapes(data, per_class=3)
    _second_path(data, "copy")
    (data / "red" / "more" / "again.png").symlink_to(data / "red" /
                                                     "red000.png")
    dataset = scan_folder(str(data))
    assert len(dataset.files) == 11


@pytest.mark.parametrize("what", ["missing", "a file", "dangling class"])
def test_a_data_path_that_is_not_a_folder_is_refused_in_one_line(
        tmp_path, what):
    data = tmp_path / "data"
    if what == "a file":
        data.write_bytes(b"x")
    elif what == "dangling class":
        write_shapes(data, per_class=2)
        (data / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError) as caught:
        scan_folder(str(data))
    assert len(str(caught.value).splitlines()) == 1
    assert {"missing": "does not exist", "a file": "is not a folder",
            "dangling class": "dangling symlink"}[what] in str(caught.value)


def test_evaluate_on_a_folder_of_only_broken_files_says_which(tmp_path, cli):
    bad = sorted(write_broken(tmp_path / "data" / "3"))
    code, out, err = cli("evaluate", "--model", "digits-cnn@1", "--data",
                         tmp_path / "data")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert f"has no usable image: {len(bad)} file(s) could not be read" in err
    assert f"the first: {bad[0]}: " in err


def test_a_newline_in_a_broken_files_name_does_not_split_its_line():
    """``skipped PATH: reason`` stays one line per file (a script counts
    them); the name shows as the escaped form rows use, ``%0A``."""
    import io

    from model_store.folder_training import report_broken

    stream = io.StringIO()
    report_broken([("/d/cat/two\nlines.png", "cannot identify image"),
                   ("/d/cat/100%41\t.png", "truncated")], stream)
    assert stream.getvalue().splitlines() == [
        "skipped /d/cat/two%0Alines.png: cannot identify image",
        "skipped /d/cat/100%2541%09.png: truncated"]


def test_evaluate_shows_a_data_path_with_a_newline_or_bad_bytes_escaped(
        tmp_path, cli):
    """The first line of evaluate's report held --data as given: a newline
    in it split the line, and a byte that is not UTF-8 was written raw,
    where every other path in the report is %XX."""
    from tests.test_cli import save_three_class_model
    store = str(tmp_path / "store")
    save_three_class_model(store, weight=1.0)
    data = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"new\nl\xffne"))
    for name in ("a", "b", "c"):
        os.makedirs(os.path.join(data, name))
        Image.new("L", (8, 8), 200).save(os.path.join(data, name, "ok.png"))
    code, out, err = cli("--store", store, "evaluate", "--model", "three",
                         "--data", data)
    assert code == 0, err
    assert out.splitlines()[0].endswith(
        f" on 3 images in {tmp_path}/new%0Al%FFne")
