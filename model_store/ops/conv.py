"""Dense convolution + bias + activation (+ max pooling) as one op."""

from __future__ import annotations

from model_store.ops.base import int_params
from model_store.ops.depthwise import PlaneConvOp

#: Pooling window and stride ``(ph, pw, psh, psw)`` meaning "no pooling".
NO_POOL = (1, 1, 1, 1)


class DenseConv2dBiasAct(PlaneConvOp):
    """``max_pool(act(conv2d(x, W) + b))``, NCHW float32, inference only.

    Inputs: x ``(N, C, H, W)``, W ``(F, C, kh, kw)``, b ``(F,)``; kernel,
    stride and zero padding as for ``DepthwiseConv2dBiasAct``. ``pool`` is
    ``(ph, pw, psh, psw)``: max over windows of ph x pw every psh rows and
    psw columns, windows wholly inside the plane (Theano's
    ``ignore_border=True``), a window holding a NaN giving NaN (NumPy's
    maximum); :data:`NO_POOL` for none. Per image: im2col
    into a per-thread buffer, one sgemm, bias and activation in cache, then
    the pooling (c/conv.c); the images split over the OpenMP threads.
    ``fusion.py`` folds a max pooling that reads only this op into it.
    """

    __props__ = PlaneConvOp.__props__ + ("pool",)
    _c_files = ("conv.c",)
    uses_blas = True
    params_type = int_params(*PlaneConvOp.params_type.fields,
                             "ph", "pw", "psh", "psw")

    def __init__(self, *, kernel, stride: int, padding, activation: str,
                 pool=NO_POOL):
        super().__init__(kernel=kernel, stride=stride, padding=padding,
                         activation=activation)
        self.pool = tuple(int(p) for p in pool)
        if len(self.pool) != 4 or min(self.pool) < 1:
            raise ValueError(f"pool must be (ph, pw, psh, psw) of positive "
                             f"ints, got {pool!r}")

    def _more_params(self) -> dict:
        ph, pw, psh, psw = self.pool
        return dict(super()._more_params(), ph=ph, pw=pw, psh=psh, psw=psw)

    def output_size(self, h, w):
        ho, wo = super().output_size(h, w)
        if self.pool == NO_POOL:
            return ho, wo
        ph, pw, psh, psw = self.pool
        return (ho - ph) // psh + 1, (wo - pw) // psw + 1

    def _c_shapes(self, params: str):
        pool = "%(p)s->ph, %(p)s->pw, %(p)s->psh, %(p)s->psw" % dict(p=params)
        return dict(
            filters="wd[0]", per_filter="xd[1]",
            more_checks=""" else if (ho < %(p)s->ph || wo < %(p)s->pw) {
        PyErr_Format(PyExc_ValueError, "DenseConv2dBiasAct: its %%ldx%%ld "
            "output is smaller than the %%dx%%d pooling window", (long)ho,
            (long)wo, %(p)s->ph, %(p)s->pw);
        bad = 1;
    }""" % dict(p=params),
            out_h=f"(ho - {params}->ph) / {params}->psh + 1",
            out_w=f"(wo - {params}->pw) / {params}->psw + 1",
            pool=pool)

    def _c_call(self):
        return ("imgclass_conv(%(args)s, (int)xd[0], (int)xd[1], (int)wd[0], "
                "(int)xd[2], (int)xd[3], kh, kw, s, pt, pb, pl, pr, %(pool)s, "
                "act)")
