"""Local runners and failures: multi-processing and multi-threading give the
same rows; a failed or killed run publishes nothing."""

import os

import pyarrow.parquet as pq
import pytest

import transforms.predict
from pipeline.cli import main
from tests.conftest import write_digits


@pytest.fixture(scope="module")
def images(tmp_path_factory, split):
    folder = str(tmp_path_factory.mktemp("images"))
    write_digits(folder, split, 60)
    return folder


def rows(output):
    table = pq.read_table(os.path.join(output, "predictions"))
    return sorted(zip(table.column("path").to_pylist(),
                      table.column("label").to_pylist()))


def published(output):
    """Parquet files where readers look, and whether _SUCCESS exists."""
    found = []
    for kind in ("predictions", "errors"):
        for _, _, names in os.walk(os.path.join(output, kind)):
            found += [n for n in names if n.endswith(".parquet")]
    return found, os.path.exists(os.path.join(output, "_SUCCESS"))


@pytest.mark.parametrize("mode", ["multi_processing", "multi_threading"])
def test_parallel_local_modes_give_the_same_rows(images, tmp_path, mode):
    """Batches of 4 so that workers (processes or threads sharing one
    predictor) classify at the same time."""
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    assert main(["classify", "--input", images, "--output", single]) == 0
    assert main(["classify", "--input", images, "--output", multi,
                 "--batch-size", "4", f"--direct_running_mode={mode}",
                 "--direct_num_workers=2"]) == 0
    assert rows(multi) == rows(single)
    assert len(rows(multi)) == 60
    assert not os.path.exists(os.path.join(multi, "errors")) or pq.read_table(
        os.path.join(multi, "errors")).num_rows == 0


def test_a_failing_pipeline_publishes_nothing(images, tmp_path, monkeypatch,
                                             capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("worker lost its disk")

    monkeypatch.setattr(transforms.predict, "load_predictor", broken)
    output = str(tmp_path / "out")
    assert main(["classify", "--input", images, "--output", output]) == 1
    err = capsys.readouterr().err
    assert "the pipeline failed, nothing was published" in err
    assert "worker lost its disk" in err
    assert published(output) == ([], False)
    assert not os.path.exists(os.path.join(output, "_staging"))


def test_a_killed_run_publishes_nothing(tmp_path, split, kill_mid_run):
    folder = str(tmp_path / "many")
    write_digits(folder, split, 360)
    for copy in range(1, 6):  # 1,860 files: long enough to kill midway
        write_digits(os.path.join(folder, f"more{copy}"), split, 300,
                     seed=copy)
    output = str(tmp_path / "out")
    kill_mid_run(output, "--input", folder, "--batch-size", 16)
    assert published(output) == ([], False)
