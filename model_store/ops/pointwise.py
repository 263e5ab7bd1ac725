"""Pointwise (1x1) convolution + bias + activation (+ residual) as one op."""

from __future__ import annotations

from model_store.engine import theano
from model_store.ops.base import (
    ACTIVATIONS,
    InferenceOp,
    c_contiguous_inputs,
    c_release_inputs,
    float32_tensor,
    int_params,
    output_type,
)


class PointwiseConv2dBiasAct(InferenceOp):
    """``act(conv1x1(x, W) + b) [+ residual]``, NCHW float32, inference only.

    Inputs: x ``(N, C, H, W)``, W ``(F, C, 1, 1)``, b ``(F,)`` and, when
    ``residual``, r ``(N, F, H, W)`` added after the activation. Per output
    tile over NCHW (no im2col): a register-tiled product for up to 128 input
    channels, else one sgemm (for planes of up to 64 pixels, over the
    images' columns side by side); bias, activation and residual applied
    while the tile is in cache (c/pointwise.c).
    """

    __props__ = ("activation", "residual")
    _c_files = ("pointwise.c",)
    uses_blas = True
    # Read at run time: one compiled module per residual or not, whatever
    # the activation (see depthwise.PlaneConvOp).
    params_type = int_params("act")

    def __init__(self, *, activation: str, residual: bool = False):
        super().__init__(activation)
        self.residual = bool(residual)

    def get_params(self, node):
        return self.params_type.get_params(act=ACTIVATIONS[self.activation])

    def make_node(self, x, W, b, *residual):
        if len(residual) != int(self.residual):
            raise TypeError(f"{self} takes {3 + int(self.residual)} inputs")
        x = float32_tensor(x, 4, "x")
        inputs = [x, float32_tensor(W, 4, "W"), float32_tensor(b, 1, "b")]
        inputs += [float32_tensor(r, 4, "residual") for r in residual]
        return theano.gof.Apply(self, inputs, [output_type(x)])

    def infer_shape(self, node, shapes):
        n, _, h, w = shapes[0]
        return [(n, shapes[1][0], h, w)]

    def c_code(self, node, name, inputs, outputs, sub):
        x, W, b = inputs[:3]
        out, = outputs
        arrays = dict(xc=x, wc=W, bc=b,
                      rc=inputs[3] if self.residual else None)
        values = dict(inputs=c_contiguous_inputs(arrays, sub["fail"]),
                      release=c_release_inputs(arrays), out=out,
                      fail=sub["fail"], act=f"{sub['params']}->act")
        return """
        {
            %(inputs)s
            const npy_intp* xd = PyArray_DIMS(xc);
            const npy_intp* wd = PyArray_DIMS(wc);
            npy_intp dims[4] = {xd[0], wd[0], xd[2], xd[3]};
            int bad = 0;
            if (wd[1] != xd[1] || wd[2] != 1 || wd[3] != 1
                    || PyArray_DIMS(bc)[0] != wd[0]) {
                PyErr_Format(PyExc_ValueError,
                    "PointwiseConv2dBiasAct: x (%%ld, %%ld, %%ld, %%ld) needs W "
                    "(F, %%ld, 1, 1) and b (F,), got W (%%ld, %%ld, %%ld, %%ld) "
                    "and b (%%ld,)", (long)xd[0], (long)xd[1], (long)xd[2],
                    (long)xd[3], (long)xd[1], (long)wd[0], (long)wd[1],
                    (long)wd[2], (long)wd[3], (long)PyArray_DIMS(bc)[0]);
                bad = 1;
            } else if (rc && !imgclass_has_dims(rc, dims)) {
                PyErr_SetString(PyExc_ValueError, "PointwiseConv2dBiasAct: "
                    "the residual's shape differs from the output's");
                bad = 1;
            }
            if (!bad && imgclass_output(&%(out)s, dims) != 0) bad = 1;
            if (!bad && dims[0] * dims[1] * dims[2] * dims[3] > 0) {
                /* Plain C on buffers only: other Python threads run. */
                Py_BEGIN_ALLOW_THREADS
                imgclass_pointwise(
                    (const float*)PyArray_DATA(xc), (const float*)PyArray_DATA(wc),
                    (const float*)PyArray_DATA(bc),
                    rc ? (const float*)PyArray_DATA(rc) : NULL,
                    (float*)PyArray_DATA(%(out)s), (int)xd[0], (int)xd[1],
                    (int)(xd[2] * xd[3]), (int)wd[0], %(act)s);
                Py_END_ALLOW_THREADS
            }
            %(release)s
            if (bad) { %(fail)s }
        }
        """ % values
