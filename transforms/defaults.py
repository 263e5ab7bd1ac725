"""The defaults and choices of a classification run, in one place.

Plain constants with no Beam import, so that the command line can show them
in its help without loading Beam; the transforms and the runs import them
from here.
"""

DEFAULT_TOP_K = 5          # best classes listed per row (fewer when the
                           # model has fewer classes: see top_k_for)
DEFAULT_BATCH_SIZE = 256   # files per batch: read and decoded together, one
                           # Theano call
# The most a batch's pixels may take in memory: the decoded uint8 images,
# their stacked copy and the float32 network input, 6 bytes per input value
# (while the network runs one batch, the next is decoded). A --batch-size
# above it is a mistake, stopped before any work (see check_batch_size).
MAX_BATCH_BYTES = 2 * 1024 ** 3
PARTITIONS = ("none", "run_date")   # --partition-by
SKIP_BY = ("mtime", "content")      # --skip-done-by: what makes a file done
DEFAULT_SKIP_BY = SKIP_BY[0]

# imgclass watch: how often to look (s), the publishing window (s, a divisor
# of 3600), how long a file must be unmodified before it is read (s).
DEFAULT_INTERVAL, DEFAULT_WINDOW, DEFAULT_SETTLE = 30.0, 3600, 30.0


def top_k_for(requested, classes: int, model: str) -> int:
    """How many classes a row lists for a model with ``classes`` classes:
    ``requested``, or when it is None, DEFAULT_TOP_K capped at ``classes``
    (a two-class model lists both). A ``requested`` above ``classes`` is a
    mistake: ConfigError, naming ``model``."""
    from model_store.errors import ConfigError

    if requested is None:
        return min(DEFAULT_TOP_K, classes)
    if requested > classes:
        raise ConfigError(f"top_k {requested} exceeds the {classes} classes "
                          f"of model {model}")
    return requested


def check_batch_size(batch_size: int, input_shape, model: str, *,
                     option: str = "--batch-size") -> None:
    """ConfigError, naming ``model``, when batches of ``batch_size`` images
    of ``input_shape`` (C, H, W) would take more than MAX_BATCH_BYTES;
    ``option``: the name the user gave it by."""
    import math

    from model_store.errors import ConfigError

    per_image = 6 * math.prod(input_shape)
    most = max(1, MAX_BATCH_BYTES // per_image)
    if batch_size > most:
        raise ConfigError(
            f"{option} {batch_size:,} would hold "
            f"{batch_size * per_image / 1e9:.1f} GB of pixels per batch for "
            f"model {model} ({'x'.join(map(str, input_shape))} per image); "
            f"give at most {most:,} (the default is {DEFAULT_BATCH_SIZE})")
