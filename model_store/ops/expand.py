"""An MBConv block's 1x1 expansion and depthwise convolution as one op.

The expansion's output is the largest tensor of the block; fused, each
block of its channels stays in a per-thread buffer between the two
convolutions (c/expand.c). ``fusion.py`` rewrites a pointwise op that feeds
only a depthwise op into this one.
"""

from __future__ import annotations

from model_store.engine import theano
from model_store.ops.base import (
    ACTIVATIONS,
    c_contiguous_inputs,
    c_release_inputs,
    float32_tensor,
    int_params,
    output_type,
)
from model_store.ops.depthwise import GEOMETRY_C, PlaneConvOp


class ExpandDepthwiseConv2dBiasAct(PlaneConvOp):
    """``act(depthwise(expand_act(conv1x1(x, We) + be), Wd) + bd)``, NCHW
    float32, inference only.

    Inputs: x ``(N, C, H, W)``, We ``(F, C, 1, 1)``, be ``(F,)``, Wd
    ``(F, 1, kh, kw)``, bd ``(F,)``. Kernel, stride and padding are the
    depthwise convolution's, as for ``DepthwiseConv2dBiasAct``.
    """

    __props__ = ("kernel", "stride", "padding", "expand_activation",
                 "activation")
    _c_files = ("pointwise.c", "depthwise.c", "expand.c")
    uses_blas = True
    params_type = int_params(*PlaneConvOp.params_type.fields, "act_e")

    def __init__(self, *, kernel, stride: int, padding,
                 expand_activation: str, activation: str):
        super().__init__(kernel=kernel, stride=stride, padding=padding,
                         activation=activation)
        if expand_activation not in ACTIVATIONS:
            raise ValueError(f"expand_activation must be one of "
                             f"{sorted(ACTIVATIONS)}, got "
                             f"{expand_activation!r}")
        self.expand_activation = expand_activation

    def _more_params(self) -> dict:
        return {"act": ACTIVATIONS[self.activation],
                "act_e": ACTIVATIONS[self.expand_activation]}

    def make_node(self, x, We, be, Wd, bd):
        x = float32_tensor(x, 4, "x")
        inputs = [x, float32_tensor(We, 4, "We"), float32_tensor(be, 1, "be"),
                  float32_tensor(Wd, 4, "Wd"), float32_tensor(bd, 1, "bd")]
        return theano.gof.Apply(self, inputs, [output_type(x)])

    def c_code(self, node, name, inputs, outputs, sub):
        return _CODE % dict(
            inputs=c_contiguous_inputs(dict(zip(_INPUTS, inputs)), sub["fail"]),
            release=c_release_inputs(_INPUTS), out=outputs[0], fail=sub["fail"],
            geometry=GEOMETRY_C % dict(params=sub["params"]),
            params=sub["params"])


_INPUTS = ("xc", "wec", "bec", "wdc", "bdc")

_CODE = """
{
%(geometry)s
    const int act_e = %(params)s->act_e;
    %(inputs)s
    const npy_intp* xd = PyArray_DIMS(xc);
    const npy_intp* ed = PyArray_DIMS(wec);
    const npy_intp* dd = PyArray_DIMS(wdc);
    const npy_intp f = ed[0];
    const npy_intp ho = (xd[2] + pt + pb - kh) / s + 1;
    const npy_intp wo = (xd[3] + pl + pr - kw) / s + 1;
    int bad = 0;
    if (ed[1] != xd[1] || ed[2] != 1 || ed[3] != 1
            || PyArray_DIMS(bec)[0] != f || dd[0] != f || dd[1] != 1
            || dd[2] != kh || dd[3] != kw
            || PyArray_DIMS(bdc)[0] != f) {
        PyErr_Format(PyExc_ValueError,
            "ExpandDepthwiseConv2dBiasAct: x (%%ld, %%ld, %%ld, %%ld) needs "
            "We (F, %%ld, 1, 1), be (F,), Wd (F, 1, %%d, %%d) and bd "
            "(F,), got We (%%ld, %%ld, %%ld, %%ld) and Wd (%%ld, %%ld, %%ld, "
            "%%ld)", (long)xd[0], (long)xd[1], (long)xd[2], (long)xd[3],
            (long)xd[1], kh, kw, (long)ed[0], (long)ed[1], (long)ed[2], (long)ed[3],
            (long)dd[0], (long)dd[1], (long)dd[2], (long)dd[3]);
        bad = 1;
    } else if (xd[2] + pt + pb < kh || xd[3] + pl + pr < kw) {
        PyErr_Format(PyExc_ValueError, "ExpandDepthwiseConv2dBiasAct: a "
            "%%ldx%%ld image with this padding is smaller than the "
            "%%dx%%d kernel", (long)xd[2], (long)xd[3], kh, kw);
        bad = 1;
    }
    npy_intp dims[4] = {xd[0], f, ho, wo};
    if (!bad && imgclass_output(&%(out)s, dims) != 0) bad = 1;
    if (!bad && dims[0] * dims[1] * dims[2] * dims[3] > 0) {
        int failed;
        /* Plain C on buffers only: other Python threads (decoding) run. */
        Py_BEGIN_ALLOW_THREADS
        failed = imgclass_expand_depthwise(
                (const float*)PyArray_DATA(xc),
                (const float*)PyArray_DATA(wec),
                (const float*)PyArray_DATA(bec),
                (const float*)PyArray_DATA(wdc),
                (const float*)PyArray_DATA(bdc),
                (float*)PyArray_DATA(%(out)s), (int)xd[0], (int)xd[1], (int)f,
                (int)xd[2], (int)xd[3], kh, kw, s, pt, pb, pl, pr, act_e,
                act);
        Py_END_ALLOW_THREADS
        if (failed) {
            PyErr_NoMemory();
            bad = 1;
        }
    }
    %(release)s
    if (bad) { %(fail)s }
}
"""
