"""An output's partition layout and table format are fixed by its first run.

Readers (DuckDB, Polars, Spark) fail on an output that mixes
``predictions/part-*.parquet`` with ``predictions/run_date=.../`` folders,
or ``run_date=`` with ``date=/hour=`` partitions, and no reader queries a
Delta table, an Iceberg table and plain Parquet files as one. So publishing
a run records its layout (``none``, ``run_date`` or ``date/hour``, the Hive
keys joined by ``/``) and table format (``parquet``, ``delta``,
``iceberg``) in ``DIR/_layout.json``, as a step of the publish record that
recovery completes (``pipeline/outputs.py``), before any of the run's
files is visible. A later run with another layout or format stops with one
line (exit 2) before any work, once it holds the output's lock and has
completed interrupted publishing. Outputs written before the record existed
have their layout read from their folders and their format from what is on
disk (``_delta_log/``, Iceberg ``metadata/``). ``--overwrite`` replaces the
earlier runs, so it may change the layout, but never replaces a Delta or
Iceberg table: it would delete files under the table's log.
"""

from __future__ import annotations

import json
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from model_store import fs
from model_store.errors import ConfigError
from pipeline import outputs, tables

LAYOUT_FILE = "_layout.json"
NONE = "none"
# How each table format shows on disk: (folder in a table, files in it).
_TABLE_MARKERS = {"delta": ("_delta_log", "*.json"),
                  "iceberg": ("metadata", "*.metadata.json")}
_FORMATS = {"parquet": "Parquet files (--table-format parquet)",
            "delta": "a Delta Lake table (--table-format delta)",
            "iceberg": "an Iceberg table (--table-format iceberg)"}
# What to use instead of --overwrite on a table.
_TABLE_TOOLS = {"delta": "deltalake's DeltaTable.delete, or write_deltalake "
                         "with mode='overwrite'",
                "iceberg": "pyiceberg's Table.delete or Table.overwrite"}


def layout_of(partition: Optional[str]) -> str:
    """The layout of a partition path: ``None`` -> ``none``,
    ``run_date=2026-11-26`` -> ``run_date``, ``date=.../hour=..`` ->
    ``date/hour``."""
    if not partition:
        return NONE
    return "/".join(part.split("=", 1)[0] for part in partition.split("/"))


def record_bytes(manifest: dict) -> bytes:
    """``DIR/_layout.json`` for a run's manifest (publishing writes it)."""
    table = manifest.get("table") or {}
    layout = manifest.get("layout") or layout_of(manifest.get("partition"))
    return fs.json_bytes({"layout": layout, "table_format": table.get(
        "format", tables.DEFAULT_FORMAT)})


def _record(output: str) -> dict:
    """``DIR/_layout.json``, or {} (none yet, or damaged: read the disk;
    a FIFO or folder in its place is damaged too, and never waited on)."""
    path = fs.join(output, LAYOUT_FILE)
    if not FileSystems.exists(path):
        return {}
    try:
        record = json.loads(fs.read_bytes(path))
    except (ValueError, fs.NotRegularError):
        return {}
    return record if isinstance(record, dict) else {}


def recorded(output: str) -> Optional[str]:
    """The layout ``output`` holds: recorded, else read from its folders,
    else None (no run published yet)."""
    layout = _record(output).get("layout")
    if isinstance(layout, str):
        return layout
    found = _layouts_on_disk(output)
    if len(found) > 1:
        raise ConfigError(f"output {output!r} already mixes layouts "
                          f"({', '.join(sorted(found))}) that readers cannot "
                          f"query together; move one of them elsewhere")
    return found.pop() if found else None


def recorded_format(output: str) -> Optional[str]:
    """The table format ``output`` holds: recorded, else read from what is
    on disk, else None (no run published yet)."""
    table_format = _record(output).get("table_format")
    if table_format in tables.FORMATS:
        return table_format
    for name, (folder, files) in _TABLE_MARKERS.items():
        for kind in outputs.PARTITIONED:
            if fs.match(fs.join(output, kind, folder, files)):
                return name
    if outputs.holds_earlier_run(output):
        return tables.DEFAULT_FORMAT
    return None


def check(output: str, layout: str, table_format: str, *,
          overwrite: bool = False) -> None:
    """Refuses a run whose layout or table format differs from the
    output's, or that would overwrite a table (one line). Call it holding
    the output's lock, after ``outputs.recover``."""
    existing_format = recorded_format(output)
    if overwrite:
        if existing_format in _TABLE_TOOLS:
            raise ConfigError(
                f"output {output!r} holds {_FORMATS[existing_format]}: "
                f"--overwrite would delete files under the table and break "
                f"its log; give a new --output folder for a new table, or "
                f"change its rows with the table's own tools "
                f"({_TABLE_TOOLS[existing_format]})")
        return
    if existing_format not in (None, table_format):
        raise ConfigError(
            f"output {output!r} holds {_FORMATS[existing_format]}, this run "
            f"would write {_FORMATS[table_format]}; readers cannot query "
            f"both together: give the same --table-format, or another "
            f"output folder")
    existing = recorded(output)
    if existing is not None and existing != layout:
        ways = "the same layout or another output folder" \
            if existing_format in _TABLE_TOOLS else "the same layout, " \
            "another output folder, or --overwrite to replace the earlier runs"
        raise ConfigError(
            f"output {output!r} is laid out as {_describe(existing)}, this "
            f"run would write {_describe(layout)}; readers cannot query "
            f"both together: use {ways}")


def overwritable(output: str) -> bool:
    """Whether ``--overwrite`` may replace what ``output`` holds (not a
    Delta or Iceberg table)."""
    return recorded_format(output) not in _TABLE_TOOLS


def _describe(layout: str) -> str:
    if layout == NONE:
        return "no partitions (--partition-by none)"
    if layout == "date/hour":
        return "date=/hour= partitions ('imgclass watch')"
    if layout == "run_date":
        return "run_date= partitions (--partition-by run_date)"
    return f"{layout} partitions"


def _layouts_on_disk(output: str) -> set:
    found = set()
    for kind in outputs.PARTITIONED:
        for depth in range(3):
            pattern = fs.join(output, kind, *["*"] * depth, "*.parquet")
            for metadata in FileSystems.match([pattern])[0].metadata_list:
                relative = metadata.path[len(fs.join(output, kind)):]
                folders = relative.strip("/").split("/")[:-1]
                if folders and folders[0].startswith("_"):
                    continue  # a table's own files (_delta_log/)
                found.add(layout_of("/".join(folders)) if folders else NONE)
                break  # one file per depth tells the layout
    return found
