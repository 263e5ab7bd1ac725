"""Running a compiled inference graph over a batch in chunks of images.

Theano runs a graph layer by layer over the whole batch, and frees each
intermediate array when its last consumer is done. A network whose
activations are large (an EfficientNet-Lite0 writes about 26 MB per 224x224
image) then streams every layer through main memory and faults in fresh
pages for every intermediate array on every call. Running the same compiled
function over a few images at a time keeps a layer's output in cache for the
next layer and lets the allocator reuse the same blocks (bench/README.md
has the measurements). Small networks (digits-cnn: well under 1 MB per
image) get one chunk per batch, i.e. no change.
"""

from __future__ import annotations

import numpy as np

#: Activation bytes one call should write at most (measured with Lite0 on a
#: 2-core machine with 2 MB of L2 per core; bench/README.md).
ACTIVATION_BUDGET_BYTES = 64 * 2 ** 20


def chunk_size(activation_bytes_per_image: int,
               budget: int = ACTIVATION_BUDGET_BYTES) -> int:
    """Images per call so that one call's activations fit ``budget``."""
    return max(1, budget // max(1, int(activation_bytes_per_image)))


def run_in_chunks(fn, batch: np.ndarray, chunk: int):
    """``fn`` over ``batch`` ``chunk`` images at a time, outputs joined
    (each of them, when ``fn`` returns a list)."""
    if len(batch) <= chunk:
        return fn(batch)
    parts = [fn(batch[i:i + chunk]) for i in range(0, len(batch), chunk)]
    if isinstance(parts[0], (list, tuple)):
        return [np.concatenate(outputs) for outputs in zip(*parts)]
    return np.concatenate(parts)
