"""Independent NumPy (float64) references of every layer type, and a plain
interpreter of graph specs built on them. Written from the definitions, not
from model_store's code, so tests can compare the Theano layers with them."""

import numpy as np


def tf_same_padding(size, kernel, stride):
    """TensorFlow's SAME: output ceil(n / s); the odd pixel at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def padding_pairs(padding, kernel, stride, hw):
    """A spec padding value as ((top, bottom), (left, right))."""
    if padding in (None, "valid", 0):
        return ((0, 0), (0, 0))
    if padding == "same":
        return tuple(tf_same_padding(n, k, s)
                     for n, k, s in zip(hw, kernel, stride))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if isinstance(padding[0], int):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    return tuple(tuple(p) for p in padding)


def conv2d(x, w, b=None, stride=(1, 1), padding=((0, 0), (0, 0)), groups=1):
    """Cross-correlation, NCHW input, (F, C/groups, kh, kw) weights."""
    (top, bottom), (left, right) = padding
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    oh, ow = (h - kh) // stride[0] + 1, (wd - kw) // stride[1] + 1
    xg = x.reshape(n, groups, cg, h, wd)
    wg = w.reshape(groups, f // groups, cg, kh, kw)
    out = np.zeros((n, groups, f // groups, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xg[:, :, :, i:i + stride[0] * (oh - 1) + 1:stride[0],
                       j:j + stride[1] * (ow - 1) + 1:stride[1]]
            out += np.einsum("ngchw,gfc->ngfhw", patch, wg[:, :, :, i, j])
    out = out.reshape(n, f, oh, ow)
    return out if b is None else out + b[None, :, None, None]


def pool2d(x, size, stride, padding=((0, 0), (0, 0)), mode="max",
           count_include_pad=False):
    """Max or average pooling; windows clipped to the real cells (padding
    never wins a max; averages divide by the real cells unless told)."""
    n, c, h, w = x.shape
    (top, bottom), (left, right) = padding
    oh = (h + top + bottom - size[0]) // stride[0] + 1
    ow = (w + left + right - size[1]) // stride[1] + 1
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        r0 = i * stride[0] - top
        for j in range(ow):
            c0 = j * stride[1] - left
            cells = x[:, :, max(r0, 0):min(r0 + size[0], h),
                      max(c0, 0):min(c0 + size[1], w)]
            if mode == "max":
                out[:, :, i, j] = cells.max(axis=(2, 3))
            else:
                count = (size[0] * size[1] if count_include_pad
                         else cells.shape[2] * cells.shape[3])
                out[:, :, i, j] = cells.sum(axis=(2, 3)) / count
    return out


def batch_norm(x, gamma, beta, mean, var, epsilon):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + epsilon)
            * gamma.reshape(shape) + beta.reshape(shape))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


NONLINEARITIES = {
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.minimum(np.maximum(x, 0), 6),
    "sigmoid": sigmoid,
    "swish": lambda x: x * sigmoid(x),
    "hard_swish": lambda x: x * np.minimum(np.maximum(x + 3, 0), 6) / 6,
    "softmax": softmax,
}


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _layer(kind, args, inputs, weights, name):
    x = inputs[0]
    act = NONLINEARITIES[args.get("nonlinearity", "relu")]
    if kind == "conv2d":
        kernel, stride = _pair(args["filter_size"]), _pair(args.get("stride", 1))
        padding = padding_pairs(args.get("padding", args.get("pad")), kernel,
                                stride, x.shape[2:])
        return act(conv2d(x, weights[f"{name}.W"], weights.get(f"{name}.b"),
                          stride, padding, args.get("groups", 1)))
    if kind == "dense":
        out = x.reshape(len(x), -1) @ weights[f"{name}.W"]
        return act(out + weights.get(f"{name}.b", 0))
    if kind == "batch_norm":
        return batch_norm(x, *(weights[f"{name}.{p}"] for p in
                               ("gamma", "beta", "mean", "var")),
                          args.get("epsilon", 1e-3))
    if kind == "activation":
        return NONLINEARITIES[args["nonlinearity"]](x)
    if kind == "add":
        return sum(inputs)
    if kind == "multiply":
        a, b = inputs
        if a.ndim != b.ndim:
            a, b = (a[:, :, None, None], b) if a.ndim == 2 else (a, b[:, :, None, None])
        return a * b
    if kind == "concat":
        return np.concatenate(inputs, axis=1)
    if kind == "global_avg_pool":
        return x.mean(axis=(2, 3), keepdims=args.get("keepdims", False))
    if kind in ("max_pool2d", "avg_pool2d"):
        size = _pair(args["pool_size"])
        stride = _pair(args.get("stride", size))
        padding = padding_pairs(args.get("padding", 0), size, stride,
                                x.shape[2:])
        return pool2d(x, size, stride, padding, kind[:3],
                      args.get("count_include_pad", False))
    if kind == "flatten":
        return x.reshape(len(x), -1)
    if kind == "dropout":
        return x
    if kind == "softmax":
        return softmax(x)
    raise ValueError(kind)


def forward(spec, weights, x):
    """The spec's network applied to ``x`` in float64, deterministically."""
    weights = {k: np.asarray(v, np.float64) for k, v in weights.items()}
    values = {"input": np.asarray(x, np.float64)}
    previous = "input"
    for layer in spec["layers"]:
        args = {k: v for k, v in layer.items()
                if k not in ("type", "name", "inputs")}
        inputs = [values[n] for n in layer.get("inputs", [previous])]
        previous = layer["name"]
        values[previous] = _layer(layer["type"], args, inputs, weights,
                                  previous)
    return values[previous]
