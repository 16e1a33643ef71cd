"""Trainer mixin: a short schedule for smoke tests, demos and CPU benchmarks (the ``*_short`` trainers)."""
from __future__ import annotations

import os

import torch

from nnunet_ext.errors import UserInputError


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment, ``default`` when unset."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise UserInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class ShortScheduleMixin:
    """Epochs from ``NNUNET_EXT_EPOCHS`` (default 2), training iterations per epoch from ``NNUNET_EXT_ITERATIONS``
    (default 4), validation iterations from ``NNUNET_EXT_VAL_ITERATIONS`` (default 2); a checkpoint every epoch so
    ``--c`` can resume."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = env_int("NNUNET_EXT_EPOCHS", 2)
        self.num_iterations_per_epoch = env_int("NNUNET_EXT_ITERATIONS", 4)
        self.num_val_iterations_per_epoch = env_int("NNUNET_EXT_VAL_ITERATIONS", 2)
        self.save_every = 1
