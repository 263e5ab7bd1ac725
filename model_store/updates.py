"""Update rules as pure functions, in the style of Lasagne.

Each takes the loss gradients (or the loss) and the parameters and returns an
``OrderedDict`` ``{shared variable: new value expression}`` for
``theano.function(updates=...)``. Rules compose:
``momentum(...)`` is ``apply_momentum(sgd(...))``.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from model_store.engine import T, floatX, grad, shared


def _gradients(loss_or_grads, params):
    if isinstance(loss_or_grads, (list, tuple)):
        return list(loss_or_grads)
    return grad(loss_or_grads, params)


def _zeros_like(param):
    value = param.get_value(borrow=True)
    return shared(np.zeros(value.shape, dtype=value.dtype),
                  broadcastable=param.broadcastable)


def sgd(loss_or_grads, params, learning_rate):
    """Plain stochastic gradient descent: ``p -= lr * g``."""
    grads = _gradients(loss_or_grads, params)
    return OrderedDict((p, p - learning_rate * g) for p, g in zip(params, grads))


def apply_momentum(updates, params=None, momentum=0.9):
    """Adds classical momentum to an update dictionary.

    ``v = momentum * v + (update - p); p = p + v``.
    """
    params = list(updates) if params is None else params
    updates = OrderedDict(updates)
    for param in params:
        velocity = _zeros_like(param)
        new_velocity = momentum * velocity + (updates[param] - param)
        updates[velocity] = new_velocity
        updates[param] = param + new_velocity
    return updates


def momentum(loss_or_grads, params, learning_rate, momentum=0.9):
    """SGD with classical momentum."""
    return apply_momentum(sgd(loss_or_grads, params, learning_rate), params,
                          momentum)


def adam(loss_or_grads, params, learning_rate=0.001, beta1=0.9, beta2=0.999,
         epsilon=1e-8):
    """Adam (Kingma and Ba, 2015), with bias correction folded into the step."""
    grads = _gradients(loss_or_grads, params)
    step = shared(np.asarray(0.0, dtype=floatX))
    t = step + 1
    a_t = learning_rate * T.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    updates = OrderedDict()
    for param, g in zip(params, grads):
        m, v = _zeros_like(param), _zeros_like(param)
        m_t = beta1 * m + (1 - beta1) * g
        v_t = beta2 * v + (1 - beta2) * g ** 2
        updates[m] = m_t
        updates[v] = v_t
        updates[param] = param - a_t * m_t / (T.sqrt(v_t) + epsilon)
    updates[step] = t
    return updates


OPTIMIZERS = {"sgd": sgd, "momentum": momentum, "adam": adam}
