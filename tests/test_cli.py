"""The command line as users and schedulers read it: versions, JSON output,
quiet runs, options in either place, one-line usage errors."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from model_store.store import DEFAULT_ROOT


def test_version_line(capsys):
    from pipeline.cli import main
    with pytest.raises(SystemExit):
        main(["--version"])
    line = capsys.readouterr().out.strip()
    assert "\n" not in line
    for part in ("imgclass 0.1.0", "Apache Beam 2.77", "Theano 1.0.5",
                 "Python 3.11", "default model digits-cnn@1"):
        assert part in line


def test_models_list_and_show_as_json(cli):
    code, out, _ = cli("models", "list", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and {"name": "digits-cnn", "version": 1,
                          "ok": True} .items() <= rows[0].items()
    assert rows[0]["accuracy"] > 0.98 and rows[0]["classes"] == 10
    code, out, _ = cli("models", "show", "digits-cnn@1", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["ref"] == "digits-cnn@1"
    assert shown["metadata"]["class_names"] == [str(d) for d in range(10)]
    assert [layer["name"] for layer in shown["layers"]][-1] == "prob"
    assert shown["layers"][1]["params"]["W"] == [32, 1, 3, 3]


def test_store_is_accepted_after_the_command(cli, tmp_path):
    empty = tmp_path / "empty-store"
    empty.mkdir()
    assert cli("models", "list", "--store", empty)[1].startswith("no models")
    assert cli("--store", empty, "models", "list")[1].startswith("no models")
    code, out, _ = cli("--store", empty, "models", "list", "--store",
                       DEFAULT_ROOT)
    assert code == 0 and "digits-cnn" in out


def test_usage_mistakes_are_one_line_without_a_doubled_prefix(cli):
    code, out, err = cli("classify", "--output", "x")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "imgclass: error: the following arguments are required: --input "
        "(see 'imgclass classify --help')"]


def test_evaluate_help_shows_a_plain_percent(capsys):
    from pipeline.cli import main
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "held-out 20% of" in text and "%%" not in text


def test_quiet_run_prints_only_the_json_summary(cli, tmp_path):
    out_dir = tmp_path / "out"
    code, out, err = cli("classify", "-q", "--input", "samples/digits/more",
                         "--output", out_dir, "--summary-json",
                         "--min-confidence", "0.999")  # the rule, row by row
    summary = json.loads(out)
    # (Theano may log that it waits for its compile lock: not ours)
    assert code == 0 and "imgclass" not in err
    table = pq.read_table(os.path.join(out_dir, "predictions"))
    assert summary["counts"]["matched"] == 7 == table.num_rows
    assert summary["model"]["name"] == "digits-cnn"
    # below the threshold: no label, but the top-k is kept
    rows = table.to_pylist()
    unsure = [r for r in rows if r["confidence"] < 0.999]
    assert all(r["label"] is None and r["class_id"] is None
               and r["top_k"] for r in unsure)
    assert all(r["label"] is not None for r in rows if r not in unsure)
    assert all(r["confidence"] >= 0.999 for r in rows if r not in unsure)


def test_process_start_is_when_the_process_started():
    """Against ps's elapsed time of this process (whole seconds)."""
    import subprocess
    import time

    from pipeline.cli import process_started

    age = time.monotonic() - process_started()
    elapsed = int(subprocess.run(["ps", "-o", "etimes=", "-p",
                                  str(os.getpid())], capture_output=True,
                                 text=True, check=True).stdout)
    assert elapsed - 1.5 <= age <= elapsed + 1.5


def save_three_class_model(root, weight=None):
    """A stored 3-class model of 8x8 gray images: one dense layer, with
    every weight ``weight`` when given."""
    from model_store.layers import get_param_values, set_param_values
    from model_store.spec import build_network
    from model_store.store import save_model
    network = build_network({"input_shape": [1, 8, 8], "layers": [
        {"type": "dense", "name": "out", "num_units": 3,
         "nonlinearity": "identity"},
        {"type": "softmax", "name": "prob"}]}, seed=0)
    if weight is not None:
        set_param_values(network, {
            name: np.full_like(value, weight if name == "out.W" else 0.0)
            for name, value in get_param_values(network).items()})
    return save_model(network, name="three", root=root, metadata={
        "class_names": ["a", "b", "c"], "input_shape": [1, 8, 8],
        "color_mode": "L", "resize": "bilinear",
        "normalization": {"mean": [0.0], "std": [1.0]}})


def test_a_model_with_fewer_than_five_classes_lists_them_all_by_default(
        cli, tmp_path):
    """Without --top-k a row lists 5 classes, or all of a model's when it
    has fewer (a two-class model trained on folders is the common case); an
    explicit --top-k above the classes is still a mistake."""
    root = str(tmp_path / "store")
    save_three_class_model(root)
    out_dir = tmp_path / "out"
    code, out, err = cli("--store", root, "classify", "-q", "--model",
                         "three", "--input", "samples/digits/more",
                         "--output", out_dir, "--summary-json")
    assert code == 0, err
    rows = pq.read_table(os.path.join(out_dir, "predictions")).to_pylist()
    assert len(rows) == json.loads(out)["counts"]["matched"] == 7
    assert all(sorted(e["label"] for e in r["top_k"]) == ["a", "b", "c"]
               for r in rows)
    manifest = json.load(open(out_dir / "_manifest.json"))
    assert manifest["settings"]["top_k"] == 3
    code, _, err = cli("--store", root, "classify", "--model", "three",
                       "--input", "samples/digits/more", "--output",
                       tmp_path / "out2", "--top-k", "4")
    assert code == 2
    assert "top_k 4 exceeds the 3 classes of model three@1" in err


def test_an_image_the_network_overflows_on_is_an_error_row(cli, tmp_path):
    """Probabilities with a NaN (here: logits of 64 x 1e38 overflow on a
    white image) would be a row no --min-confidence can catch; the image
    becomes an error row, stage predict, and the rest of its batch is
    labelled."""
    from PIL import Image
    root = str(tmp_path / "store")
    save_three_class_model(root, weight=1e38)
    images = tmp_path / "images"
    images.mkdir()
    for name, level in (("black.png", 0), ("white.png", 255),
                        ("dark.png", 0)):
        Image.new("L", (8, 8), level).save(images / name)
    out_dir = tmp_path / "out"
    code, out, err = cli("--store", root, "classify", "-q", "--model",
                         "three", "--input", images, "--output", out_dir,
                         "--summary-json")
    assert code == 0, err
    predictions = pq.read_table(os.path.join(out_dir, "predictions"))
    errors = pq.read_table(os.path.join(out_dir, "errors")).to_pylist()
    assert sorted(os.path.basename(p) for p in
                  predictions.column("path").to_pylist()) == [
        "black.png", "dark.png"]
    assert all(abs(c - 1 / 3) < 1e-6
               for c in predictions.column("confidence").to_pylist())
    assert [(os.path.basename(e["path"]), e["stage"], e["error_type"])
            for e in errors] == [("white.png", "predict",
                                  "FloatingPointError")]
    assert "not finite" in errors[0]["message"]
    counts = json.loads(out)["counts"]
    assert (counts["matched"], counts["predicted"], counts["failed"]) == (
        3, 2, 1)
