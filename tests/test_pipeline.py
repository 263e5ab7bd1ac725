"""End-to-end runs of ``imgclass classify``, read back by outside clients."""

import json
import os

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model_store.datasets import load_digits_split
from model_store.evaluate import evaluate_on_split
from model_store.store import load_model
from pipeline.cli import main
from tests.conftest import FORMATS, write_bad_files, write_digits
from transforms import schema


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """360 held-out digits in six formats and sizes 8-96, plus bad files."""
    folder = str(tmp_path_factory.mktemp("corpus"))
    split = load_digits_split()
    truth = write_digits(folder, split, 360)
    bad = write_bad_files(os.path.join(folder, "bad"))
    return folder, truth, bad


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    folder, _, _ = corpus
    output = str(tmp_path_factory.mktemp("run") / "out")
    code = main(["classify", "--input", folder, "--output", output,
                 "--top-k", "3"])
    return code, output


def read(output, kind):
    return pq.read_table(os.path.join(output, kind))


def test_exit_code_success_marker_and_manifest(run, corpus):
    code, output = run
    _, truth, bad = corpus
    assert code == 0
    assert os.path.exists(os.path.join(output, "_SUCCESS"))
    manifest = json.load(open(os.path.join(output, "_manifest.json")))
    counts = manifest["counts"]
    assert counts["matched"] == len(truth) + len(bad)
    assert counts["predicted"] == len(truth)
    assert counts["failed"] == len(bad)
    assert counts["matched"] == counts["predicted"] + counts["failed"]
    assert manifest["model"]["name"] == "digits-cnn"
    assert manifest["model"]["weights_sha256"] == load_model(
        "digits-cnn").weights_sha256
    for kind in ("predictions", "errors"):
        for path in manifest["files"][kind]:
            assert os.path.exists(path)
    assert not os.path.exists(os.path.join(output, "_staging"))


def test_every_file_is_in_exactly_one_output(run, corpus):
    _, output = run
    _, truth, bad = corpus
    predicted = read(output, "predictions").column("path").to_pylist()
    failed = read(output, "errors").column("path").to_pylist()
    assert len(predicted) == len(set(predicted))
    assert len(failed) == len(set(failed))
    assert not set(predicted) & set(failed)
    assert set(predicted) | set(failed) == set(truth) | set(bad)


def test_schema_is_the_documented_contract(run):
    _, output = run
    for kind, want in (("predictions", schema.PREDICTIONS),
                       ("errors", schema.ERRORS)):
        for name in os.listdir(os.path.join(output, kind)):
            got = pq.read_schema(os.path.join(output, kind, name))
            assert got.remove_metadata().equals(want), (kind, got)


def test_duckdb_reads_the_output(run, corpus):
    _, output = run
    _, truth, bad = corpus
    con = duckdb.connect()
    rows = con.execute(
        f"select count(*), min(confidence), max(confidence), "
        f"count(distinct run_id), min(len(top_k)), max(len(top_k)) "
        f"from read_parquet('{output}/predictions/**/*.parquet')").fetchone()
    assert rows[0] == len(truth)
    assert 0 < rows[1] <= rows[2] <= 1.0
    assert rows[3] == 1 and rows[4] == rows[5] == 3
    # top_k is a list of structs sorted best first, its head is the label.
    head = con.execute(
        f"select count(*) from read_parquet('{output}/predictions/**/*.parquet')"
        f" where top_k[1].label = label and top_k[1].score = confidence"
        f" and top_k[1].score >= top_k[2].score"
        f" and top_k[2].score >= top_k[3].score").fetchone()[0]
    assert head == len(truth)
    stages = dict(con.execute(
        f"select stage, count(*) from read_parquet('{output}/errors/*.parquet')"
        f" group by stage").fetchall())
    assert stages == {"decode": len(bad)}


def test_bad_files_become_one_line_error_rows(run, corpus):
    _, output = run
    _, _, bad = corpus
    errors = {r["path"]: r for r in read(output, "errors").to_pylist()}
    for path, stage in bad.items():
        row = errors[path]
        assert row["stage"] == stage
        assert row["error_type"] in ("ImageDecodeError", "ImageTooLargeError")
        assert "\n" not in row["message"] and row["message"]
    bomb = errors[[p for p in bad if p.endswith("bomb.png")][0]]
    assert bomb["error_type"] == "ImageTooLargeError"
    assert "900,000,000 pixels" in bomb["message"]
    assert "empty" in errors[[p for p in bad if "empty" in p][0]]["message"]


def test_no_train_serve_skew(run, corpus):
    """Labels from files in six formats and sizes 8-96 are as accurate as
    the model's own evaluation says."""
    _, output = run
    _, truth, _ = corpus
    model = load_model("digits-cnn")
    evaluated = evaluate_on_split(model, load_digits_split())["accuracy"]
    rows = read(output, "predictions").to_pylist()
    right = [row["label"] == truth[row["path"]] for row in rows]
    accuracy = sum(right) / len(right)
    assert accuracy >= evaluated - 0.02, (accuracy, evaluated)
    for ext, _, _ in FORMATS:
        per_format = [ok for row, ok in zip(rows, right)
                      if row["path"].endswith("." + ext)]
        assert len(per_format) == 60
        assert sum(per_format) / 60 >= evaluated - 0.05, ext


def test_width_height_and_model_columns(run, corpus):
    _, output = run
    for row in read(output, "predictions").to_pylist()[:50]:
        size = int(os.path.basename(row["path"]).split("_")[1].split("px")[0])
        assert (row["width"], row["height"]) == (size, size)
        assert (row["model_name"], row["model_version"]) == ("digits-cnn",
                                                             "1")
        assert row["processed_at"].tzinfo is not None


def test_partition_by_run_date_is_hive_style(corpus, tmp_path):
    folder, truth, bad = corpus
    output = str(tmp_path / "out")
    code = main(["classify", "--input", os.path.join(folder, "batch0"),
                 "--output", output, "--partition-by", "run_date",
                 "--run-date", "2026-11-25"])
    assert code == 0
    assert os.listdir(os.path.join(output, "predictions")) == [
        "run_date=2026-11-25"]
    rows = duckdb.connect().execute(
        f"select run_date, count(*) from read_parquet("
        f"'{output}/predictions/**/*.parquet', hive_partitioning=true) "
        f"group by run_date").fetchall()
    assert [(str(d), n) for d, n in rows] == [
        ("2026-11-25", sum(1 for p in truth if "/batch0/" in p))]


def test_empty_match_is_a_success_with_empty_outputs(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    output = str(tmp_path / "out")
    assert main(["classify", "--input", str(empty), "--output", output]) == 2
    assert not os.path.exists(output)
    assert main(["classify", "--input", str(empty), "--output", output,
                 "--allow-empty"]) == 0
    manifest = json.load(open(os.path.join(output, "_manifest.json")))
    assert manifest["counts"] == {"matched": 0, "predicted": 0, "failed": 0,
                                  "skipped": 0, "failed_by_stage": {},
                                  "skipped_by_reason": {}}
    assert os.path.exists(os.path.join(output, "_SUCCESS"))
    table = read(output, "predictions")
    assert table.num_rows == 0
    assert table.schema.remove_metadata().equals(schema.PREDICTIONS)


def test_glob_patterns_and_several_inputs(corpus, tmp_path):
    folder, truth, _ = corpus
    output = str(tmp_path / "out")
    code = main(["classify", "--input", os.path.join(folder, "**", "*.png"),
                 "--input", os.path.join(folder, "batch2", "*.gif"),
                 "--output", output])
    assert code == 0
    paths = set(read(output, "predictions").column("path").to_pylist())
    want = {p for p in truth if p.endswith(".png")} | {
        p for p in truth if "/batch2/" in p and p.endswith(".gif")}
    assert want - {p for p in truth if p.endswith(".png")}
    assert paths == want


def test_overwrite_replaces_an_earlier_run(corpus, tmp_path, capsys):
    folder, truth, _ = corpus
    output = str(tmp_path / "out")
    small = os.path.join(folder, "batch2")
    assert main(["classify", "--input", small, "--output", output]) == 0
    first = json.load(open(os.path.join(output, "_manifest.json")))["run_id"]
    assert main(["classify", "--input", small, "--output", output]) == 2
    assert "holds an earlier run" in capsys.readouterr().err
    assert main(["classify", "--input", small, "--output", output,
                 "--overwrite"]) == 0
    table = read(output, "predictions")
    assert set(table.column("run_id").to_pylist()) != {first}
    assert table.num_rows == sum(1 for p in truth if "/batch2/" in p)


def photo_like(folder):
    """Images the digits model was not made for: noise, flat colours and
    colour gradients, 24 in all."""
    import numpy as np
    from PIL import Image

    os.makedirs(folder)
    rng = np.random.RandomState(0)
    x = np.linspace(0, 255, 64)
    for i in range(8):
        Image.fromarray(rng.randint(0, 256, (40, 40, 3), dtype=np.uint8)
                        ).save(os.path.join(folder, f"noise{i}.png"))
        Image.fromarray(np.full((40, 40, 3), 30 * i, np.uint8)).save(
            os.path.join(folder, f"flat{i}.png"))
        g = (np.add.outer(x, x * (i % 3 + 1)) / (2 + i % 3)).astype(np.uint8)
        Image.fromarray(np.stack([g, g[::-1], g.T], -1)).save(
            os.path.join(folder, f"gradient{i}.jpg"))


def test_summary_warns_when_most_predictions_are_low_confidence(
        tmp_path, cli):
    """Counted from the predictions' confidence column; the reference is
    the published Parquet read with pyarrow."""
    photo_like(str(tmp_path / "photos"))
    output = tmp_path / "out"
    code, _, err = cli("classify", "--input", tmp_path / "photos",
                       "--output", output)
    assert code == 0, err
    confidence = read(str(output), "predictions").column(
        "confidence").to_pylist()
    below = sum(c < 0.9 for c in confidence)
    assert len(confidence) == 24 and below > 12, confidence
    with open(output / "_manifest.json") as handle:
        manifest = json.load(handle)
    assert manifest["low_confidence"] == {"threshold": 0.9, "rows": below}
    [warning] = [line for line in err.splitlines() if "warning" in line]
    assert warning == (
        f"imgclass: warning: {below} of 24 predictions "
        f"({100 * below / 24:.0f}%) have a confidence below 0.9: are these "
        f"the images model digits-cnn@1 was made for? (e.g. photos given to "
        f"a digits model)")


def test_low_confidence_threshold_is_min_confidence_when_given(tmp_path):
    from pipeline.run import _low_confidence

    path = str(tmp_path / "p.parquet")
    pq.write_table(pa.table({"confidence": pa.array(
        [0.1, 0.55, 0.6, 0.95, 1.0], pa.float32())}), path)
    staged = {"predictions": [path]}
    assert _low_confidence(staged, 0.0) == {"threshold": 0.9, "rows": 3}
    assert _low_confidence(staged, 0.6) == {"threshold": 0.6, "rows": 2}
    assert _low_confidence({"predictions": []}, 0.0)["rows"] == 0


def test_summary_counts_wall_time_from_the_process_start(tmp_path, split):
    """The summary's time is the wall time since the process started
    (``started``: here 100 s before the call, as if imports and loading
    had taken that long), split into start-up and pipeline time."""
    import io
    import re
    import time

    from pipeline.run import ClassifyConfig, run_classify

    folder, output = str(tmp_path / "in"), str(tmp_path / "out")
    write_digits(folder, split, 3)
    log = io.StringIO()
    before = time.monotonic()
    manifest = run_classify(ClassifyConfig(inputs=[folder], output=output),
                            log=log, started=before - 100.0)
    # the manifest rounds seconds to 3 decimals: allow that much
    took = time.monotonic() - before + 0.0005
    assert 100.0 <= manifest["startup_seconds"] <= 100.0 + took
    assert manifest["wall_seconds"] >= manifest["startup_seconds"] + \
        manifest["seconds"] - 0.001
    assert manifest["wall_seconds"] <= 100.0 + took
    line = log.getvalue().splitlines()[-1]
    assert re.search(
        rf"done in {manifest['wall_seconds']:.1f}s \(start-up "
        rf"{manifest['startup_seconds']:.1f}s, pipeline "
        rf"{manifest['seconds']:.1f}s\): 3 matched", line), line
    with open(os.path.join(output, "_manifest.json")) as handle:
        assert json.load(handle)["startup_seconds"] == \
            manifest["startup_seconds"]
