"""Dense layer + bias + activation as one op, its columns split over the
OpenMP threads (c/dense.c)."""

from __future__ import annotations

from model_store.engine import T, theano
from model_store.ops.base import (
    ACTIVATIONS,
    InferenceOp,
    c_contiguous_inputs,
    c_release_inputs,
    float32_tensor,
    int_params,
)

_INPUTS = ("xc", "wc", "bc")


class DenseBiasAct(InferenceOp):
    """``act(x @ W + b)``, float32, inference only.

    Inputs: x ``(M, K)``, W ``(K, N)``, b ``(N,)``. Each thread multiplies
    x by a block of W's columns with one single-threaded sgemm and applies
    bias and activation to its block of the output.
    """

    __props__ = ("activation",)
    _c_files = ("dense.c",)
    uses_blas = True
    params_type = int_params("act")

    def __init__(self, *, activation: str):
        super().__init__(activation)

    def get_params(self, node):
        return self.params_type.get_params(act=ACTIVATIONS[self.activation])

    def make_node(self, x, W, b):
        x = float32_tensor(x, 2, "x")
        inputs = [x, float32_tensor(W, 2, "W"), float32_tensor(b, 1, "b")]
        out = T.TensorType("float32", (x.broadcastable[0], False))()
        return theano.gof.Apply(self, inputs, [out])

    def infer_shape(self, node, shapes):
        return [(shapes[0][0], shapes[1][1])]

    def c_code(self, node, name, inputs, outputs, sub):
        x, W, b = inputs
        out, = outputs
        return _CODE % dict(
            inputs=c_contiguous_inputs(dict(zip(_INPUTS, (x, W, b))),
                                       sub["fail"]),
            release=c_release_inputs(_INPUTS), out=out, fail=sub["fail"],
            act=f"{sub['params']}->act")


_CODE = """
{
    %(inputs)s
    const npy_intp* xd = PyArray_DIMS(xc);
    const npy_intp* wd = PyArray_DIMS(wc);
    npy_intp dims[2] = {xd[0], wd[1]};
    int bad = 0;
    if (wd[0] != xd[1] || PyArray_DIMS(bc)[0] != wd[1]) {
        PyErr_Format(PyExc_ValueError,
            "DenseBiasAct: x (%%ld, %%ld) needs W (%%ld, N) and b (N,), got "
            "W (%%ld, %%ld) and b (%%ld,)", (long)xd[0], (long)xd[1],
            (long)xd[1], (long)wd[0], (long)wd[1],
            (long)PyArray_DIMS(bc)[0]);
        bad = 1;
    }
    if (!bad && imgclass_output(&%(out)s, dims, 2) != 0) bad = 1;
    if (!bad && dims[0] * dims[1] > 0) {
        /* Plain C on buffers only: other Python threads run. */
        Py_BEGIN_ALLOW_THREADS
        imgclass_dense((const float*)PyArray_DATA(xc),
                       (const float*)PyArray_DATA(wc),
                       (const float*)PyArray_DATA(bc),
                       (float*)PyArray_DATA(%(out)s), (int)xd[0],
                       (int)xd[1], (int)wd[1], %(act)s);
        Py_END_ALLOW_THREADS
    }
    %(release)s
    if (bad) { %(fail)s }
}
"""
