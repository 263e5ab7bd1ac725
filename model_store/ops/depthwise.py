"""Depthwise and few-input-channel (stem) convolutions + bias + activation.

Both run the register-tiled plane kernel of c/depthwise.c over a padded,
phase-split copy of each input plane; they differ in which planes a filter
reads (its own channel, or all C of a colour stem).
"""

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

# The geometry and the activation arrive at run time (``PlaneConvOp``'s
# params), so every geometry shares one compiled module per op class.
GEOMETRY_C = """
    const int kh = %(params)s->kh, kw = %(params)s->kw, s = %(params)s->s;
    const int pt = %(params)s->pt, pb = %(params)s->pb;
    const int pl = %(params)s->pl, pr = %(params)s->pr;
    const int act = %(params)s->act;
"""

_CODE = """
{
%(geometry)s
    %(inputs)s
    const npy_intp* xd = PyArray_DIMS(xc);
    const npy_intp* wd = PyArray_DIMS(wc);
    const npy_intp ho = (xd[2] + pt + pb - kh) / s + 1;
    const npy_intp wo = (xd[3] + pl + pr - kw) / s + 1;
    int bad = 0;
    if (wd[0] != %(filters)s || wd[1] != %(per_filter)s || wd[2] != kh
            || wd[3] != kw || PyArray_DIMS(bc)[0] != wd[0]) {
        PyErr_Format(PyExc_ValueError,
            "%(name)s: x (%%ld, %%ld, %%ld, %%ld) needs W (%%ld, %%ld, "
            "%%d, %%d) and b (%%ld,), got W (%%ld, %%ld, %%ld, %%ld) "
            "and b (%%ld,)", (long)xd[0], (long)xd[1], (long)xd[2],
            (long)xd[3], (long)(%(filters)s), (long)(%(per_filter)s), kh, kw,
            (long)wd[0], (long)wd[0], (long)wd[1], (long)wd[2], (long)wd[3],
            (long)PyArray_DIMS(bc)[0]);
        bad = 1;
    } else if (xd[2] + pt + pb < kh || xd[3] + pl + pr < kw) {
        PyErr_Format(PyExc_ValueError, "%(name)s: a %%ldx%%ld image with "
            "this padding is smaller than the %%dx%%d kernel",
            (long)xd[2], (long)xd[3], kh, kw);
        bad = 1;
    }%(more_checks)s
    npy_intp dims[4] = {xd[0], wd[0], %(out_h)s, %(out_w)s};
    if (!bad && imgclass_output(&%(out)s, dims) != 0) bad = 1;
    if (!bad) {
        int failed;
        /* Plain C on buffers only: other Python threads (decoding) run. */
        Py_BEGIN_ALLOW_THREADS
        failed = %(call)s;
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

_INPUTS = ("xc", "wc", "bc")

_ARGS = """(const float*)PyArray_DATA(xc), (const float*)PyArray_DATA(wc),
            (const float*)PyArray_DATA(bc), (float*)PyArray_DATA(%(out)s)"""


class PlaneConvOp(InferenceOp):
    """What the ops that run the plane kernel share: a k x k kernel, one
    stride for both axes, zero padding ``((top, bottom), (left, right))``.
    These and the activation reach the C code as the op's params (Theano's
    ``ParamsType``), not as literals: the code is the same for every
    geometry, so Theano compiles one module per op class, not one per
    geometry."""

    __props__ = ("kernel", "stride", "padding", "activation")
    params_type = int_params("kh", "kw", "s", "pt", "pb", "pl", "pr", "act")

    def __init__(self, *, kernel, stride: int, padding, activation: str):
        super().__init__(activation)
        self.kernel = tuple(int(k) for k in kernel)
        self.stride = int(stride)
        self.padding = tuple(tuple(int(p) for p in pair) for pair in padding)
        if (len(self.kernel) != 2 or min(self.kernel) < 1 or self.stride < 1
                or len(self.padding) != 2
                or any(len(p) != 2 or min(p) < 0 for p in self.padding)):
            raise ValueError(f"bad {type(self).__name__} geometry: kernel "
                             f"{kernel}, stride {stride}, padding {padding}")

    def make_node(self, x, W, b):
        x = float32_tensor(x, 4, "x")
        W = float32_tensor(W, 4, "W")
        b = float32_tensor(b, 1, "b")
        return theano.gof.Apply(self, [x, W, b], [output_type(x)])

    def get_params(self, node):
        (pt, pb), (pl, pr) = self.padding
        kh, kw = self.kernel
        return self.params_type.get_params(
            kh=kh, kw=kw, s=self.stride, pt=pt, pb=pb, pl=pl, pr=pr,
            **self._more_params())

    def _more_params(self) -> dict:
        """The params besides the geometry: the activation's code, and
        whatever a subclass adds to ``params_type``."""
        return {"act": ACTIVATIONS[self.activation]}

    def output_size(self, h, w):
        """Output height and width (ints or symbolic) for an h x w input."""
        (pt, pb), (pl, pr) = self.padding
        kh, kw = self.kernel
        return ((h + pt + pb - kh) // self.stride + 1,
                (w + pl + pr - kw) // self.stride + 1)

    def infer_shape(self, node, shapes):
        n, _, h, w = shapes[0]
        return [(n, shapes[1][0], *self.output_size(h, w))]

    def _c_shapes(self, params: str) -> dict:
        """C expressions of the filters W must have (``filters``) and of
        its inputs per filter (``per_filter``); a subclass may add checks
        (``more_checks``, an ``else if`` chain) and the output's height and
        width (``out_h``, ``out_w``; default the convolution's ``ho`` and
        ``wo``), which may read the params struct ``params``."""
        raise NotImplementedError

    def _c_call(self) -> str:
        raise NotImplementedError

    def c_code(self, node, name, inputs, outputs, sub):
        x, W, b = inputs
        out, = outputs
        values = dict(inputs=c_contiguous_inputs(
                          dict(zip(_INPUTS, (x, W, b))), sub["fail"]),
                      release=c_release_inputs(_INPUTS), out=out,
                      fail=sub["fail"], geometry=GEOMETRY_C % dict(params=sub["params"]),
                      name=type(self).__name__, more_checks="",
                      out_h="ho", out_w="wo")
        values.update(self._c_shapes(sub["params"]))
        values["call"] = self._c_call() % dict(values, args=_ARGS % values)
        return _CODE % values


class DepthwiseConv2dBiasAct(PlaneConvOp):
    """``act(depthwise_conv(x, W) + b)``, NCHW float32, inference only.

    Inputs: x ``(N, C, H, W)``, W ``(C, 1, kh, kw)``, b ``(C,)``. Cross-
    correlation like every framework, zero padding
    ``((top, bottom), (left, right))``, the same stride on both axes.
    """

    _c_files = ("depthwise.c",)

    def _c_shapes(self, params: str):
        return dict(filters="xd[1]", per_filter="1")

    def _c_call(self):
        return ("imgclass_depthwise(%(args)s, (int)xd[0], (int)xd[1], "
                "(int)xd[2], (int)xd[3], kh, kw, s, pt, pb, pl, pr, act)")


class StemConv2dBiasAct(PlaneConvOp):
    """``act(conv2d(x, W) + b)`` for an input with few channels (an RGB
    stem), NCHW float32, inference only.

    Inputs: x ``(N, C, H, W)``, W ``(F, C, kh, kw)``, b ``(F,)``; padding and
    stride as for :class:`DepthwiseConv2dBiasAct`.
    """

    _c_files = ("depthwise.c", "stem.c")

    def _c_shapes(self, params: str):
        return dict(filters="wd[0]", per_filter="xd[1]")

    def _c_call(self):
        return ("imgclass_stem(%(args)s, (int)xd[0], (int)xd[1], (int)wd[0], "
                "(int)xd[2], (int)xd[3], kh, kw, s, pt, pb, pl, pr, act)")
