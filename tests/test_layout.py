"""An output's layout (none, run_date, date/hour) is fixed by its first run
(issue 12, item 1): readers cannot query mixed layouts."""

import json
import os

import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from tests.conftest import write_digits
from transforms import schema


def listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, names in os.walk(folder) for f in names)


@pytest.fixture
def images(tmp_path, split):
    folder = str(tmp_path / "in")
    return folder, write_digits(folder, split, 3, nested=False)


def test_a_later_run_with_another_layout_is_refused_before_any_work(
        tmp_path, images, cli):
    folder, truth = images
    output = str(tmp_path / "out")
    assert cli("classify", "--input", folder, "--output", output,
               "--partition-by", "run_date", "--run-date",
               "2026-11-25")[0] == 0
    with open(os.path.join(output, "_layout.json")) as handle:
        assert json.load(handle) == {"layout": "run_date",
                                     "table_format": "parquet"}
    before = listing(output)
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--skip-done")
    assert code == 2 and err.count("\n") == 1
    assert "run_date= partitions" in err and "no partitions" in err
    assert listing(output) == before
    # The output still reads as one Hive-partitioned table.
    rows = duckdb.connect().execute(
        f"select count(*) from read_parquet('{output}/predictions/**/"
        f"*.parquet', hive_partitioning=true)").fetchone()
    assert rows == (len(truth),)
    # The same layout is accepted.
    assert main(["classify", "--input", folder, "--output", output,
                 "--skip-done", "--partition-by", "run_date",
                 "--run-date", "2026-11-26"]) == 0


def test_an_output_written_before_the_record_is_read_from_its_folders(
        tmp_path, images, cli):
    """e.g. 'classify --skip-done' into what 'imgclass watch' wrote."""
    folder, _ = images
    output = tmp_path / "out"
    hour = output / "predictions" / "date=2026-11-26" / "hour=13"
    hour.mkdir(parents=True)
    pq.write_table(schema.PREDICTIONS.empty_table(),
                   str(hour / "part-x.parquet"))
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--skip-done")
    assert code == 2 and "date=/hour= partitions" in err
    assert listing(output) == ["predictions/date=2026-11-26/hour=13/"
                               "part-x.parquet"]


def test_overwrite_may_change_the_layout(tmp_path, images):
    folder, truth = images
    output = str(tmp_path / "out")
    assert main(["classify", "--input", folder, "--output", output]) == 0
    assert main(["classify", "--input", folder, "--output", output,
                 "--overwrite", "--partition-by", "run_date",
                 "--run-date", "2026-11-25"]) == 0
    with open(os.path.join(output, "_layout.json")) as handle:
        assert json.load(handle) == {"layout": "run_date",
                                     "table_format": "parquet"}
    rows = duckdb.connect().execute(
        f"select run_date, count(*) from read_parquet('{output}/predictions/"
        f"**/*.parquet', hive_partitioning=true) group by all").fetchall()
    assert [(str(d), n) for d, n in rows] == [("2026-11-25", len(truth))]


class Killed(BaseException):
    """The process died here."""


def kill_at(monkeypatch, operation, matches):
    """The first call of ``outputs.<operation>`` on a path ``matches``
    accepts kills the run, before it does anything."""
    from pipeline import outputs

    real = getattr(outputs, operation)

    def killed(*args):
        path = args[0][0] if operation == "_move" else args[0]
        if matches(path):
            monkeypatch.setattr(outputs, operation, real)
            raise Killed(path)
        return real(*args)

    monkeypatch.setattr(outputs, operation, killed)


def recorded(output):
    with open(os.path.join(output, "_layout.json")) as handle:
        return json.load(handle)


# Killed with the publish record durable: before the first file moved
# (nothing visible yet), and before _SUCCESS (every file moved).
KILLS = {"first-move": ("_move", lambda p: "predictions" in p),
         "success": ("_write_file", lambda p: p.endswith("_SUCCESS"))}


@pytest.mark.parametrize("kill", sorted(KILLS))
def test_the_layout_is_checked_after_interrupted_publishing_is_completed(
        tmp_path, images, cli, monkeypatch, kill):
    """D1: the killed run's layout is recorded by the recovery, and the
    next run is judged against it (not against a half-published output)."""
    folder, truth = images
    output = str(tmp_path / "out")
    kill_at(monkeypatch, *KILLS[kill])
    with pytest.raises(Killed):
        cli("classify", "--input", folder, "--output", output,
            "--partition-by", "run_date", "--run-date", "2026-11-25")
    code, _, err = cli("classify", "--input", folder, "--output", output,
                       "--skip-done")
    assert code == 2, err
    assert "finished publishing interrupted run" in err
    assert err.strip().splitlines()[-1].startswith("imgclass: error:")
    assert "run_date= partitions" in err and "no partitions" in err
    assert recorded(output) == {"layout": "run_date",
                                "table_format": "parquet"}
    table = pq.read_table(os.path.join(output, "predictions"))
    assert sorted(table.column("path").to_pylist()) == sorted(truth)
    assert not os.path.exists(os.path.join(output, "_staging"))


def test_watch_checks_the_layout_after_completing_interrupted_publishing(
        tmp_path, images, cli, monkeypatch):
    import io
    import threading

    from model_store.errors import ConfigError
    from pipeline.run import ClassifyConfig
    from pipeline.watch import watch

    folder, truth = images
    output = str(tmp_path / "out")
    kill_at(monkeypatch, *KILLS["first-move"])
    with pytest.raises(Killed):
        cli("classify", "--input", folder, "--output", output)
    stopped = threading.Event()
    stopped.set()  # a watch that is not refused returns at once
    log = io.StringIO()
    with pytest.raises(ConfigError, match="output folder of its own"):
        watch(ClassifyConfig(inputs=[folder], output=output),
              stop_event=stopped, log=log)
    assert "finished publishing interrupted run" in log.getvalue()
    assert recorded(output) == {"layout": "none", "table_format": "parquet"}
    assert sorted(pq.read_table(os.path.join(output, "predictions"))
                  .column("path").to_pylist()) == sorted(truth)
