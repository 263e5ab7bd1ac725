"""Running a compiled inference graph over a batch in chunks of images.

Theano runs a graph layer by layer over the whole batch, and frees each
intermediate array when its last consumer is done. A network whose
activations are large (an EfficientNet-Lite0 writes about 26 MB per 224x224
image) then streams every layer of a large batch through main memory, and
arrays above glibc's largest mmap threshold (32 MB) are mapped and faulted
in afresh on every call. Running the same compiled function over a bounded
number of images at a time keeps that in check (bench/README.md has the
measurements: Lite0 at batch 64 ran at 53 images/s in one call and 92 in
chunks). Small networks (digits-cnn: well under 1 MB per image) get one
chunk per batch, i.e. no change.
"""

from __future__ import annotations

import numpy as np

#: Activation bytes one call should write at most: Lite0 in chunks of 19
#: images. Measured with Lite0 on 2 cores (bench/README.md): 16 and 32
#: images per call ran at 115 images/s, 2 per call at 89-98, 64 at 53.
#: (Chunks of 2 were best before the engine kept freed memory, when every
#: call faulted in all its buffers afresh.)
ACTIVATION_BUDGET_BYTES = 512 * 2 ** 20


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
