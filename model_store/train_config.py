"""Training settings and their defaults, without Theano.

The command line builds ``imgclass train --help`` from these objects, so
that each default is written once, here, and ``--help`` does not load
Theano; ``model_store.train`` (which does) re-exports :class:`TrainConfig`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from model_store.errors import ConfigError

LR_SCHEDULES = ("constant", "cosine")
# The update rules of model_store.updates.OPTIMIZERS (which imports Theano;
# a test keeps the two in step).
OPTIMIZER_NAMES = ("adam", "momentum", "sgd")


MAX_SEED = 2**32 - 1  # the largest seed NumPy's RandomState takes


# Augmented copies are made up front and held in memory with the images.
MAX_AUGMENT_COPIES = 100

# Every epoch is a line on stderr and a row of the version's metadata
# (training.history), and the shipped models train 12 to 40; 10,000 leaves
# room for tiny data while a typo (10^20) stops at once instead of running
# for ever and writing a history of millions of rows.
MAX_EPOCHS = 10_000

# The network trains in float32 (Theano's floatX), where a smaller --lr is
# 0 (or a subnormal: the weights barely move) and a larger one infinity:
# training nothing, or diverging after every epoch has run.
LR_RANGE = (float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings; recorded in the model's metadata. The defaults
    are those of ``--dataset digits``.

    Attributes:
        epochs: passes over the (augmented) training set.
        batch_size: examples per update.
        lr: learning rate.
        seed: seeds weights, shuffling, augmentation and dropout.
        optimizer: ``adam``, ``momentum`` or ``sgd``.
        augment_copies: random variants made of each training image
            (0: the plain images, for folder training).
        lr_schedule: ``constant``, or ``cosine``: epoch ``e`` of ``E``
            (from 1) uses ``lr * (1 + cos(pi * (e - 1) / E)) / 2``.
    """
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.001
    seed: int = 0
    optimizer: str = "adam"
    augment_copies: int = 8
    lr_schedule: str = "constant"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "augment_copies"):
            value = getattr(self, name)
            least = 0 if name == "augment_copies" else 1
            kind = "non-negative" if least == 0 else "positive"
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"--{name.replace('_', '-')} must be a "
                                  f"{kind} integer, got {value!r}")
        if self.epochs > MAX_EPOCHS:
            raise ConfigError(f"--epochs must be at most {MAX_EPOCHS} (each "
                              f"epoch is a row of the model's training "
                              f"history), got {self.epochs}")
        if self.augment_copies > MAX_AUGMENT_COPIES:
            raise ConfigError(f"--augment-copies must be at most "
                              f"{MAX_AUGMENT_COPIES} (every copy of every "
                              f"image is held in memory), got "
                              f"{self.augment_copies}; train more --epochs "
                              f"instead")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed <= MAX_SEED:  # NumPy's RandomState
            raise ConfigError(f"--seed must be an integer from 0 to "
                              f"{MAX_SEED}, got {self.seed!r}")
        if not 0 < self.lr < np.inf:
            raise ConfigError(f"--lr must be positive and finite, got "
                              f"{self.lr!r}")
        if not LR_RANGE[0] <= self.lr <= LR_RANGE[1]:
            raise ConfigError(f"--lr must be from {LR_RANGE[0]:.3g} to "
                              f"{LR_RANGE[1]:.3g} (the network trains in "
                              f"float32), got {self.lr!r}")
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ConfigError(f"--optimizer must be one of "
                              f"{', '.join(OPTIMIZER_NAMES)}, got "
                              f"{self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"--lr-schedule must be one of "
                              f"{', '.join(LR_SCHEDULES)}, got "
                              f"{self.lr_schedule!r}")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (from 1)."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * (1 + np.cos(np.pi * (epoch - 1) / self.epochs)) / 2


# The defaults of each kind of training (the command line's come from here).
DIGITS_DEFAULTS = TrainConfig()
# The settings fashion-cnn@1 was trained with (train --dataset fashion-mnist).
FASHION_DEFAULTS = TrainConfig(epochs=20, batch_size=128, lr=0.002,
                               lr_schedule="cosine")
# --data: random resized crops and flips of each image.
_FOLDER_COPIES = 3
SPEC_DEFAULTS = TrainConfig(augment_copies=_FOLDER_COPIES)
BASE_DEFAULTS = TrainConfig(epochs=40, lr=0.003,
                            augment_copies=_FOLDER_COPIES)
