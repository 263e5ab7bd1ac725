"""Update rules against NumPy references; training is deterministic."""

import subprocess
import sys

import numpy as np
import pytest

from model_store import layers as L
from model_store import updates
from model_store.engine import T, floatX, function, shared
from model_store.errors import ConfigError
from model_store.spec import build_network
from model_store.train import TrainConfig, fit
from model_store.train_config import OPTIMIZER_NAMES


def run_rule(rule, steps=5, **kwargs):
    """Minimises sum((w - target)^2) with ``rule``; returns w after each step."""
    target = np.array([1.0, -2.0, 3.0], dtype=floatX)
    w = shared(np.zeros(3, dtype=floatX))
    loss = T.sum((w - target) ** 2)
    step = function([], loss, updates=rule(loss, [w], **kwargs))
    values = []
    for _ in range(steps):
        step()
        values.append(w.get_value().copy())
    return target, values


def test_sgd_matches_numpy():
    target, values = run_rule(updates.sgd, learning_rate=0.1)
    w = np.zeros(3)
    for got in values:
        w = w - 0.1 * 2 * (w - target)
        np.testing.assert_allclose(got, w, rtol=1e-5)


def test_momentum_is_sgd_with_apply_momentum_and_matches_numpy():
    target, values = run_rule(updates.momentum, learning_rate=0.1,
                              momentum=0.9)
    w, v = np.zeros(3), np.zeros(3)
    for got in values:
        v = 0.9 * v - 0.1 * 2 * (w - target)
        w = w + v
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-6)


def test_adam_matches_numpy():
    target, values = run_rule(updates.adam, learning_rate=0.01)
    w, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    for t, got in enumerate(values, start=1):
        g = 2 * (w - target)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m_hat, v_hat = m / (1 - 0.9 ** t), v / (1 - 0.999 ** t)
        w = w - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8)
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-6)


def test_update_rules_return_ordered_dicts_that_compose():
    w = shared(np.ones(2, dtype=floatX))
    loss = T.sum(w ** 2)
    plain = updates.sgd(loss, [w], 0.1)
    combined = updates.apply_momentum(plain, [w], momentum=0.5)
    assert list(plain) == [w]
    assert len(combined) == 2 and w in combined  # w and its velocity


SPEC = {"input_shape": [1, 8, 8], "layers": [
    {"type": "conv2d", "name": "c", "num_filters": 4, "filter_size": 3},
    {"type": "max_pool2d", "name": "p", "pool_size": 2},
    {"type": "dense", "name": "h", "num_units": 16},
    {"type": "dropout", "name": "drop", "p": 0.2},
    {"type": "dense", "name": "o", "num_units": 3,
     "nonlinearity": "identity"},
    {"type": "softmax", "name": "s"}]}


def train_tiny(seed):
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 3, size=96).astype(np.int32)
    # Learnable: the class sets the mean brightness of the image.
    x = (rng.rand(96, 1, 8, 8) * 0.3 + labels[:, None, None, None] * 0.3)
    network = build_network(SPEC, seed=seed)
    history = fit(network, x.astype(floatX), labels,
                  TrainConfig(epochs=6, batch_size=16, lr=0.01, seed=seed))
    return L.get_param_values(network), history


def test_training_is_deterministic_for_a_seed_and_learns():
    weights_a, history_a = train_tiny(seed=3)
    weights_b, history_b = train_tiny(seed=3)
    weights_c, _ = train_tiny(seed=4)
    assert history_a == history_b
    for name in weights_a:
        np.testing.assert_array_equal(weights_a[name], weights_b[name])
    assert any(not np.array_equal(weights_a[n], weights_c[n])
               for n in weights_a)
    assert history_a[-1]["loss"] < history_a[0]["loss"]
    assert history_a[-1]["accuracy"] > 0.9


@pytest.mark.parametrize("kwargs,message", [
    ({"epochs": 0}, "--epochs must be a positive integer, got 0"),
    ({"epochs": 10**23}, r"--epochs must be at most 10000 \(each epoch is "
                         r"a row of the model's training history\), got "
                         r"100000000000000000000000"),
    ({"lr": -1.0}, "--lr must be positive and finite, got -1.0"),
    ({"lr": float("inf")}, "--lr must be positive and finite, got inf"),
    # 0 and infinity in float32: nothing was learnt, or every epoch ran
    # before the diverged weights were refused.
    ({"lr": 1e-50}, r"--lr must be from 1.18e-38 to 3.4e\+38 \(the network "
                    r"trains in float32\), got 1e-50"),
    ({"lr": 1e39}, r"--lr must be from 1.18e-38 to 3.4e\+38 .*, got 1e\+39"),
    ({"optimizer": "rmsprop"}, "--optimizer must be one of"),
    ({"seed": -1}, "--seed must be an integer from 0 to 4294967295, got -1"),
    ({"seed": 2**32}, "--seed must be an integer from 0 to 4294967295"),
    ({"lr_schedule": "step"}, "--lr-schedule must be one of constant, "
                              "cosine, got 'step'"),
    ({"augment_copies": 10**9}, "--augment-copies must be at most 100 "
                                r"\(every copy of every image is held in "
                                r"memory\), got 1000000000"),
])
def test_bad_training_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_every_optimizer_the_settings_accept_is_an_update_rule():
    """TrainConfig (Theano-free, for --help) checks --optimizer against
    OPTIMIZER_NAMES; training looks the rule up in updates.OPTIMIZERS."""
    assert sorted(OPTIMIZER_NAMES) == sorted(updates.OPTIMIZERS)
    for name in OPTIMIZER_NAMES:
        assert TrainConfig(optimizer=name).optimizer == name


def test_train_help_does_not_load_theano():
    """``imgclass train --help`` states the defaults of train_config
    without importing Theano (seconds of start-up)."""
    code = ("import sys, contextlib, io\n"
            "from pipeline.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n"
            "        main(['train', '--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "assert f'default: {DIGITS_DEFAULTS.epochs};' in out.getvalue()\n"
            "print(sorted(m for m in sys.modules if m.startswith('theano')))")
    code = ("from model_store.train_config import DIGITS_DEFAULTS\n" + code)
    result = subprocess.run([sys.executable, "-c", code], check=True,
                            capture_output=True, text=True)
    assert result.stdout.strip() == "[]"


def test_cosine_schedule_halves_the_step_of_the_middle_epoch():
    """With --lr-schedule cosine over 3 epochs, epoch 2 steps with half the
    rate and epoch 3 with a quarter, which a NumPy gradient of softmax
    cross-entropy confirms step by step (full-batch SGD, one step per
    epoch)."""
    spec = {"input_shape": [4, 1, 1], "layers": [
        {"type": "dense", "name": "o", "num_units": 3,
         "nonlinearity": "softmax"}]}
    rng = np.random.RandomState(1)
    x = rng.normal(size=(12, 4, 1, 1)).astype(floatX)
    labels = rng.randint(0, 3, size=12).astype(np.int32)
    network = build_network(spec, seed=0)
    flat = x.reshape(12, 4)
    snapshots = [L.get_param_values(network)]
    config = TrainConfig(epochs=3, batch_size=12, lr=0.5, optimizer="sgd",
                         lr_schedule="cosine")
    fit(network, x, labels, config,
        report=lambda row, rate: snapshots.append(L.get_param_values(network)))
    assert [config.lr_at(e) for e in (1, 2, 3)] == pytest.approx(
        [0.5, 0.375, 0.125])
    for epoch in (1, 2, 3):
        before, after = snapshots[epoch - 1], snapshots[epoch]
        w, b = before["o.W"], before["o.b"]
        logits = flat @ w + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(12), labels] -= 1
        np.testing.assert_allclose(after["o.W"] - w,
                                   -config.lr_at(epoch) * flat.T @ p / 12,
                                   rtol=1e-4, atol=1e-6)


def test_training_moves_batch_norm_running_statistics():
    """fit() applies batch norm's updates with the optimiser's: the running
    mean and variance end near the statistics of the data they normalise."""
    spec = {"input_shape": [2, 6, 6], "layers": [
        {"type": "batch_norm", "name": "bn", "momentum": 0.9},
        {"type": "conv2d", "name": "c", "num_filters": 3, "filter_size": 3,
         "nonlinearity": "identity", "bias": False},
        {"type": "batch_norm", "name": "bn2", "momentum": 0.9},
        {"type": "activation", "name": "a", "nonlinearity": "relu"},
        {"type": "dense", "name": "o", "num_units": 2,
         "nonlinearity": "softmax"}]}
    rng = np.random.RandomState(0)
    x = rng.normal(loc=[[[5.0]], [[-2.0]]], scale=[[[3.0]], [[0.5]]],
                   size=(128, 2, 6, 6)).astype(floatX)
    labels = (x[:, 0].mean(axis=(1, 2)) > 5).astype(np.int32)
    network = build_network(spec, seed=0)
    by_name = {layer.name: layer for layer in L.get_all_layers(network)}
    bn_in, bn = by_name["bn"], by_name["bn2"]
    fit(network, x, labels, TrainConfig(epochs=4, batch_size=32, lr=0.01))
    kept = 0.9 ** 16  # 16 steps from the initial mean 0 and variance 1
    np.testing.assert_allclose(bn_in.mean.get_value(),
                               (1 - kept) * np.array([5.0, -2.0]), atol=0.1)
    np.testing.assert_allclose(bn_in.var.get_value(),
                               kept + (1 - kept) * np.array([9.0, 0.25]),
                               rtol=0.1)
    assert not np.allclose(bn.mean.get_value(), 0)


def test_a_digits_spec_file_name_that_is_not_utf8_is_recorded_escaped(
        cli, tmp_path):
    """training.spec held the name's lone surrogate, which strict JSON
    readers refuse; it is written %XX, as paths are."""
    import json
    import os
    import shutil

    spec = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"d\xe9.json"))
    shutil.copy("model_store/specs/digits-cnn.json", spec)
    store = tmp_path / "store"
    code, _, err = cli("--store", store, "train", "--dataset", "digits",
                       "--name", "d", "--spec", spec, "--epochs", "1",
                       "--augment-copies", "1")
    assert code == 0, err
    raw = (store / "d" / "1" / "metadata.json").read_bytes()
    assert json.loads(raw.decode("utf-8"))["training"]["spec"] == "d%E9.json"


def test_an_epoch_that_diverged_is_not_kept_as_the_best():
    """An epoch whose weights went NaN predicts class 0 for every image
    (the argmax of NaN), so on validation images of class 0 it scored 1.0
    and was kept as the best: the good epoch before it was lost, and the
    save refused the NaN weights after all the training."""
    from model_store.transfer import new_head

    rng = np.random.RandomState(0)
    x = rng.randn(20, 4).astype(floatX)
    y = (x[:, 0] > 0).astype(np.int32)
    x_val = rng.randn(6, 4).astype(floatX)
    network = new_head(4, 2, seed=0)
    history = fit(network, x, y, TrainConfig(epochs=3, batch_size=20,
                                             lr=3e38, augment_copies=0),
                  validation=(x_val, np.zeros(6, np.int32)))
    assert history[1]["loss"] is None  # it did diverge
    values = L.get_param_values(network)
    assert all(np.isfinite(value).all() for value in values.values())
    assert [row["val_accuracy"] for row in history[1:]] == [0.0, 0.0]
