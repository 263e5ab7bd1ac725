"""An output's partition layout is fixed by its first run.

Readers (DuckDB, Polars, Spark) fail on an output that mixes
``predictions/part-*.parquet`` with ``predictions/run_date=.../`` folders,
or ``run_date=`` with ``date=/hour=`` partitions. So the first run that
publishes into an output records its layout in ``DIR/_layout.json``
(``none``, ``run_date`` or ``date/hour``, the Hive keys joined by ``/``),
and a later run with another layout stops with one line (exit 2) before
any work. Outputs written before the record existed have their layout read
from their folders. ``--overwrite`` replaces the earlier runs, so it may
change the layout.
"""

from __future__ import annotations

import json
from typing import Optional

from apache_beam.io.filesystems import FileSystems

from model_store import fs
from model_store.errors import ConfigError
from pipeline import outputs

LAYOUT_FILE = "_layout.json"
NONE = "none"


def layout_of(partition: Optional[str]) -> str:
    """The layout of a partition path: ``None`` -> ``none``,
    ``run_date=2026-11-26`` -> ``run_date``, ``date=.../hour=..`` ->
    ``date/hour``."""
    if not partition:
        return NONE
    return "/".join(part.split("=", 1)[0] for part in partition.split("/"))


def recorded(output: str) -> Optional[str]:
    """The layout ``output`` holds: recorded, else read from its folders,
    else None (no run published yet)."""
    path = fs.join(output, LAYOUT_FILE)
    if FileSystems.exists(path):
        try:
            with FileSystems.open(path) as handle:
                layout = json.loads(handle.read())["layout"]
            if isinstance(layout, str):
                return layout
        except (ValueError, KeyError, TypeError):
            pass  # a torn record: read the folders instead
    found = _layouts_on_disk(output)
    if len(found) > 1:
        raise ConfigError(f"output {output!r} already mixes layouts "
                          f"({', '.join(sorted(found))}) that readers cannot "
                          f"query together; move one of them elsewhere")
    return found.pop() if found else None


def check(output: str, layout: str, *, overwrite: bool = False) -> None:
    """Refuses a run whose layout differs from the output's (one line)."""
    if overwrite:
        return
    existing = recorded(output)
    if existing is not None and existing != layout:
        raise ConfigError(
            f"output {output!r} is laid out as {_describe(existing)}, this "
            f"run would write {_describe(layout)}; readers cannot query "
            f"both together: use the same layout, another output folder, "
            f"or --overwrite to replace the earlier runs")


def record(output: str, layout: str) -> None:
    """Writes ``DIR/_layout.json`` (after a run published)."""
    fs.create(fs.join(output, LAYOUT_FILE),
              (json.dumps({"layout": layout}) + "\n").encode())


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
                found.add(layout_of("/".join(folders)) if folders else NONE)
                break  # one file per depth tells the layout
    return found
