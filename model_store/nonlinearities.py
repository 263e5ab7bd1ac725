"""Elementwise nonlinearities, by the names specs use.

Shared by the layers (training and the plain forward pass) and by the
inference kernels (:mod:`model_store.kernels`), so a name means one function.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from model_store.engine import T, floatX
from model_store.errors import SpecError


def identity(x):
    return x


def relu(x):
    return T.nnet.relu(x)


def relu6(x):
    """``min(max(x, 0), 6)``, as in MobileNet and EfficientNet-Lite."""
    return T.clip(x, np.asarray(0, floatX), np.asarray(6, floatX))


def sigmoid(x):
    return T.nnet.sigmoid(x)


def swish(x):
    """``x * sigmoid(x)`` (also called SiLU)."""
    return x * T.nnet.sigmoid(x)


def hard_swish(x):
    """``x * relu6(x + 3) / 6``, as in MobileNetV3."""
    return x * relu6(x + np.asarray(3, floatX)) / np.asarray(6, floatX)


def softmax(x):
    """Softmax over the last axis of a ``(batch, classes)`` input."""
    return T.nnet.softmax(x)


NONLINEARITIES: dict[str, Callable] = {
    "identity": identity, "relu": relu, "relu6": relu6, "sigmoid": sigmoid,
    "swish": swish, "hard_swish": hard_swish, "softmax": softmax}


def get(name) -> Callable:
    """The nonlinearity called ``name``; a :class:`SpecError` names the choices."""
    if isinstance(name, str) and name in NONLINEARITIES:
        return NONLINEARITIES[name]
    raise SpecError(f"unknown nonlinearity {name!r}: use one of "
                    f"{', '.join(sorted(NONLINEARITIES))}")
