"""The output contract: the Parquet schemas of predictions and errors.

Other tools read these files; change them only with a new major version of
the output contract (see README, "Output contract").
"""

import pyarrow as pa

TOP_K_ENTRY = pa.struct([("label", pa.string()), ("score", pa.float32())])

PREDICTIONS = pa.schema([
    ("path", pa.string()),            # the full matched URI
    ("label", pa.string()),           # class name of the top prediction;
                                      # null below --min-confidence
    ("class_id", pa.int32()),         # its index in the model's classes
    ("confidence", pa.float32()),     # its probability
    ("top_k", pa.list_(TOP_K_ENTRY)), # the k best, best first
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("width", pa.int32()),            # the source image, as displayed
    ("height", pa.int32()),
    ("run_id", pa.string()),
    ("processed_at", pa.timestamp("us", tz="UTC")),
])

# With --emit-embeddings, predictions gain the network's penultimate features
# (the model's embedding layer), for similarity search and near-duplicates.
EMBEDDING = pa.field("embedding", pa.list_(pa.float32()))


def predictions_schema(embeddings: bool = False) -> pa.Schema:
    return PREDICTIONS.append(EMBEDDING) if embeddings else PREDICTIONS


STAGES = ("read", "decode", "preprocess", "predict")

# The tag of the Beam output that carries error rows (``ERRORS``).
ERRORS_TAG = "errors"
ERRORS = pa.schema([
    ("path", pa.string()),
    ("stage", pa.string()),           # one of STAGES
    ("error_type", pa.string()),      # the exception class name
    ("message", pa.string()),         # one line
    ("run_id", pa.string()),
])

# The ledger: which files a committed run claimed (classified or failed),
# under which model version. ``--skip-done`` reads it to skip files already
# done; it lives in DIR/_ledger/, away from the tables readers glob.
LEDGER = pa.schema([
    ("path", pa.string()),
    ("size", pa.int64()),             # bytes, as the filesystem listed it
    ("mtime", pa.float64()),          # last modification, Unix seconds
    ("model_name", pa.string()),
    ("model_version", pa.string()),
    ("run_id", pa.string()),
    ("sha256", pa.string()),          # of the bytes, with --skip-done-by
                                      # content; else null
    ("retried_stage", pa.string()),   # the stage at which the file failed
])                                    # before, if it was retried; else null

# Files a --skip-done run did not classify again, and why; and the tag of
# SkipDone's output that carries them.
SKIPPED_TAG = "skipped"
SKIPPED = pa.schema([
    ("path", pa.string()),
    ("reason", pa.string()),          # "done": an earlier run's ledger has
                                      # the path with this model, and the
                                      # same size and mtime (--skip-done-by
                                      # mtime) or sha256 (content)
    ("previous_run_id", pa.string()),
    ("run_id", pa.string()),
])
