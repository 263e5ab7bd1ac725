"""Graph rewrites that fuse the ops of an MBConv block.

* ``pointwise(x) + r`` -> one pointwise op with a residual. MBConv blocks
  end with a linear 1x1 projection whose output is added to the block's
  input. Theano would run that ``add`` as a separate elementwise pass over
  memory; the pointwise op can add it in its output pass instead. The
  rewrite applies when the pointwise output feeds nothing else and both
  addends have the output's type; the op checks the shapes at run time.
* ``depthwise(pointwise(x))`` -> one ``ExpandDepthwiseConv2dBiasAct``, when
  the expansion feeds nothing else (and adds no residual): its output, the
  block's largest tensor, then never goes through memory whole.
* ``max_pool(dense_conv(x))`` -> one ``DenseConv2dBiasAct`` that pools, when
  the convolution feeds nothing else and the pooling has no padding and
  ignores the border (what ``max_pool2d`` layers without padding build).
"""

from __future__ import annotations

import numpy as np

from model_store.engine import T, theano
from model_store.ops.conv import NO_POOL, DenseConv2dBiasAct
from model_store.ops.depthwise import DepthwiseConv2dBiasAct
from model_store.ops.expand import ExpandDepthwiseConv2dBiasAct
from model_store.ops.pointwise import PointwiseConv2dBiasAct


@theano.gof.local_optimizer([T.Elemwise])
def fuse_residual_add(node):
    if not (isinstance(node.op, T.Elemwise)
            and isinstance(node.op.scalar_op, theano.scalar.Add)
            and len(node.inputs) == 2):
        return False
    out = node.outputs[0]
    for i, candidate in enumerate(node.inputs):
        owner = candidate.owner
        other = node.inputs[1 - i]
        if (owner is not None
                and isinstance(owner.op, PointwiseConv2dBiasAct)
                and not owner.op.residual
                and candidate.type == out.type == other.type
                and len(candidate.clients) == 1):
            op = PointwiseConv2dBiasAct(activation=owner.op.activation,
                                        residual=True)
            return [op(*owner.inputs, other)]
    return False


theano.tensor.opt.register_specialize(fuse_residual_add,
                                      "imgclass_fuse_residual_add")


@theano.gof.local_optimizer([DepthwiseConv2dBiasAct])
def fuse_expand_depthwise(node):
    if not isinstance(node.op, DepthwiseConv2dBiasAct):
        return False
    expanded = node.inputs[0]
    owner = expanded.owner
    if (owner is None or not isinstance(owner.op, PointwiseConv2dBiasAct)
            or owner.op.residual or len(expanded.clients) != 1):
        return False
    op = ExpandDepthwiseConv2dBiasAct(
        kernel=node.op.kernel, stride=node.op.stride,
        padding=node.op.padding, expand_activation=owner.op.activation,
        activation=node.op.activation)
    return [op(*owner.inputs, *node.inputs[1:])]


theano.tensor.opt.register_specialize(fuse_expand_depthwise,
                                      "imgclass_fuse_expand_depthwise")


def _constant_ints(variable):
    """The ints of a constant vector variable, or None."""
    if not isinstance(variable, T.TensorConstant) or variable.ndim != 1:
        return None
    return tuple(int(v) for v in np.asarray(variable.data))


@theano.gof.local_optimizer([theano.tensor.signal.pool.Pool])
def fuse_conv_max_pool(node):
    op = node.op
    if not (isinstance(op, theano.tensor.signal.pool.Pool)
            and op.mode == "max" and op.ignore_border and op.ndim == 2):
        return False
    conv = node.inputs[0]
    owner = conv.owner
    window, stride, pad = (_constant_ints(v) for v in node.inputs[1:4])
    if (owner is None or not isinstance(owner.op, DenseConv2dBiasAct)
            or owner.op.pool != NO_POOL or len(conv.clients) != 1
            or None in (window, stride, pad) or len(window) != 2
            or len(stride) != 2 or pad != (0, 0)):
        return False
    fused = DenseConv2dBiasAct(
        kernel=owner.op.kernel, stride=owner.op.stride,
        padding=owner.op.padding, activation=owner.op.activation,
        pool=window + stride)
    return [fused(*owner.inputs)]


theano.tensor.opt.register_specialize(fuse_conv_max_pool,
                                      "imgclass_fuse_conv_max_pool")
