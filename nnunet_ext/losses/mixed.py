"""A weighted sum of loss modules that all read the same (output, target)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class WeightedSumLoss(nn.Module):
    """``sum_i weight_i * loss_i(output, target)``; terms with weight 0 are not evaluated.

    output: (B, C, *spatial) logits; target: whatever every term accepts (nnU-Net's target layout).
    """

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]):
        super().__init__()
        if not terms:
            raise ValueError("WeightedSumLoss needs at least one (weight, loss) term")
        for weight, _ in terms:
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"loss weights must be finite and >= 0, got {weight}")
        if not any(weight > 0 for weight, _ in terms):
            raise ValueError("at least one loss weight must be > 0")
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList([loss for _, loss in terms])

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(w * loss(output, target) for w, loss in zip(self.weights, self.terms) if w > 0)
