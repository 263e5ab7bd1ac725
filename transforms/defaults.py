"""The defaults and choices of a classification run, in one place.

Plain constants with no Beam import, so that the command line can show them
in its help without loading Beam; the transforms and the runs import them
from here.
"""

DEFAULT_TOP_K = 5          # best classes listed per row
DEFAULT_BATCH_SIZE = 256   # files per batch: read and decoded together, one
                           # Theano call
PARTITIONS = ("none", "run_date")   # --partition-by
SKIP_BY = ("mtime", "content")      # --skip-done-by: what makes a file done

# imgclass watch: how often to look (s), the publishing window (s, a divisor
# of 3600), how long a file must be unmodified before it is read (s).
DEFAULT_INTERVAL, DEFAULT_WINDOW, DEFAULT_SETTLE = 30.0, 3600, 30.0
