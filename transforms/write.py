"""Writing predictions and errors as Parquet with the explicit schemas.

Beam's file sinks write each shard to a temporary folder and move it into
place only when the whole pipeline has succeeded; the run's driver then moves
the shards from its staging folder to where readers look (see
``pipeline/outputs.py``).
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import parquetio

from model_store.errors import ConfigError

# Batch tables per Parquet row group: one predict batch (256 rows) per group
# would make files slow to scan, so up to this many batch tables are
# concatenated into one row group (64 x 256 = 16,384 rows at the default
# batch size).
TABLES_PER_ROW_GROUP = 64


class WriteTables(beam.PTransform):
    """``pyarrow.Table`` batches -> Parquet shards
    ``<prefix>-SSSSS-of-NNNNN.parquet``; for predictions and the ledger.

    ``compliant_lists`` writes lists in the Parquet spec's nested layout
    (``list.element``), which Iceberg's ``add_files`` requires; Beam's
    default (``list.item``) is kept for the plain Parquet layout.
    """

    def __init__(self, file_path_prefix: str, table_schema: pa.Schema, *,
                 compliant_lists: bool = False):
        super().__init__()
        self._prefix = file_path_prefix
        self._schema = _check_schema(table_schema)
        self._compliant = compliant_lists

    def expand(self, tables):
        return (tables
                | "RowGroups" >> beam.BatchElements(
                    min_batch_size=TABLES_PER_ROW_GROUP,
                    max_batch_size=TABLES_PER_ROW_GROUP)
                | "Concat" >> beam.Map(pa.concat_tables)
                | "Write" >> parquetio.WriteToParquetBatched(
                    self._prefix, schema=self._schema,
                    codec="snappy", file_name_suffix=".parquet",
                    use_compliant_nested_type=self._compliant))


class WriteRows(beam.PTransform):
    """Rows (dicts) -> Parquet shards ``<prefix>-SSSSS-of-NNNNN.parquet``.

    For the small tables: errors and skipped files.
    """

    def __init__(self, file_path_prefix: str, table_schema: pa.Schema):
        super().__init__()
        self._prefix = file_path_prefix
        self._schema = _check_schema(table_schema)

    def expand(self, rows):
        return rows | "Write" >> parquetio.WriteToParquet(
            self._prefix, schema=self._schema, codec="snappy",
            file_name_suffix=".parquet")


def _check_schema(table_schema) -> pa.Schema:
    """``table_schema`` if it is a ``pyarrow.Schema``, else ConfigError (it
    would fail in the worker that finalizes the write, after the run)."""
    if not isinstance(table_schema, pa.Schema):
        raise ConfigError(f"table_schema must be a pyarrow.Schema, e.g. "
                          f"transforms.schema.PREDICTIONS, got "
                          f"{table_schema!r}")
    return table_schema
