"""What a Delta or Iceberg table that gets one commit per run costs as the
runs add up (an hourly ``classify`` makes 8,760 a year), and what expiring
old Iceberg snapshots buys back.

Each run, one Parquet file of one row, is committed by imgclass's own
``pipeline.tables.commit_run``, as publishing commits it. Printed
at every ``--every`` runs: the seconds of one commit (mean of the last 20)
and of opening and reading the whole table.

    python bench/table_growth.py [--runs 400] [--every 100] [--no-manifest-merge]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
import warnings

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

from pipeline import tables  # noqa: E402


def commit(spec, n: int) -> float:
    """Commits run ``n`` (one Parquet file of one row) as a run's
    publishing does; returns the seconds it took."""
    path = os.path.join(spec.output, "predictions", f"part-run-{n}.parquet")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"path": [f"/in/{n}.jpg"]}), path)
    manifest = {"run_id": f"run-{n:06d}", "partition": None, "counts": {},
                "model": {"name": "digits-cnn", "version": "1"}}
    started = time.perf_counter()
    tables.commit_run(spec, {"predictions": [path]}, manifest)
    return time.perf_counter() - started


def read(spec) -> tuple[float, int]:
    """Seconds to open the table and read it whole, and its rows."""
    started = time.perf_counter()
    if spec.format == "delta":
        from deltalake import DeltaTable
        rows = DeltaTable(tables.table_location(
            spec.output, "predictions")).to_pyarrow_table().num_rows
    else:
        rows = tables.iceberg_table(spec, "predictions").scan().to_arrow(
            ).num_rows
    return time.perf_counter() - started, rows


def grow(spec, runs: int, every: int) -> None:
    times = []
    for n in range(runs):
        times.append(commit(spec, n))
        if (n + 1) % every == 0:
            seconds, rows = read(spec)
            print(f"{spec.format:8} {n + 1:5d} runs: commit "
                  f"{sum(times[-20:]) / 20:.3f} s, open and read "
                  f"{seconds:.3f} s ({rows} rows)", flush=True)


def expire(spec, runs: int) -> None:
    """Expires all but the last 10 snapshots, as a table's owner would."""
    table = tables.iceberg_table(spec, "predictions")
    keep = table.metadata.snapshots[-10]
    started = time.perf_counter()
    table.maintenance.expire_snapshots().older_than(
        datetime.datetime.fromtimestamp(keep.timestamp_ms / 1000,
                                        datetime.timezone.utc)).commit()
    expired = time.perf_counter() - started
    after = [commit(spec, runs + n) for n in range(5)]
    seconds, rows = read(spec)
    left = len(tables.iceberg_table(spec, "predictions").metadata.snapshots)
    print(f"iceberg  all but the last 10 snapshots expired in {expired:.3f} "
          f"s; then commit {min(after):.3f}-{max(after):.3f} s, open and "
          f"read {seconds:.3f} s ({rows} rows, {left} snapshots)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--no-manifest-merge", action="store_true",
                        help="Iceberg tables as pyiceberg creates them "
                             "(without tables.ICEBERG_PROPERTIES)")
    args = parser.parse_args()
    if args.no_manifest_merge:
        tables.ICEBERG_PROPERTIES = {}
    with tempfile.TemporaryDirectory() as folder:
        for table_format in ("delta", "iceberg"):
            output = os.path.join(folder, table_format)
            spec = tables.table_spec(table_format, output)
            grow(spec, args.runs, args.every)
        expire(spec, args.runs)


if __name__ == "__main__":
    sys.exit(main())
