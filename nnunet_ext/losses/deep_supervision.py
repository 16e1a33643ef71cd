"""Deep supervision for networks whose outputs all have the target's resolution (UNet++'s heads)."""
from __future__ import annotations

from typing import Sequence

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper


class FullResolutionDeepSupervision(DeepSupervisionWrapper):
    """``sum_k w_k * loss(outputs[k], target)`` over outputs that all share one full-resolution target.

    outputs: list of K (B, C, *spatial) logits; target: a list of 1 (the data loader then makes one target
    instead of K identical ones) or of K targets. Unlike nnU-Net's wrapper, a length mismatch is an error rather
    than a silent truncation, and every weight must be > 0 (DDP needs a gradient for every head).
    """

    def __init__(self, loss: torch.nn.Module, weight_factors: Sequence[float]):
        if not weight_factors or any(not w > 0 for w in weight_factors):
            raise ValueError(f"every deep-supervision weight must be > 0, got {list(weight_factors)}")
        super().__init__(loss, weight_factors)

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        if not isinstance(outputs, (list, tuple)) or not isinstance(targets, (list, tuple)):
            raise TypeError("FullResolutionDeepSupervision expects a list of outputs and a list of targets; is the "
                            "network's deep supervision off while the trainer's is on?")
        if len(outputs) != len(self.weight_factors) or len(targets) not in (1, len(outputs)):
            raise ValueError(f"expected {len(self.weight_factors)} outputs and 1 or that many targets, got "
                             f"{len(outputs)} outputs and {len(targets)} targets")
        if len(targets) == 1:
            targets = list(targets) * len(outputs)
        return sum(w * self.loss(o, t) for w, o, t in zip(self.weight_factors, outputs, targets))
