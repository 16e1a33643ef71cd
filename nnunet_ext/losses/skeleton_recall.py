"""Skeleton Recall loss (Kirchhoff et al., ECCV 2024)."""
from __future__ import annotations

import torch
from torch import nn

from nnunet_ext.losses._common import checked_logits, foreground_one_hot, reduce_sums


class SoftSkeletonRecallLoss(nn.Module):
    """``1 - mean_c recall_c`` with ``recall_c = (sum_i p_ci t_ci + smooth) / (sum_i t_ci + smooth)``.

    p: softmax (label mode) or sigmoid (region mode) of the logits; t: the tubed skeleton of class c.
    The paper writes the loss as ``-mean_c recall_c``; we add 1 so it lies in [0, 1] (same gradient).
    Classes with an empty tube have recall 1 (no NaN, no gradient).

    Args:
        region_mode: False: output (B, C, *sp) logits for C mutually exclusive labels, tube (B, 1, *sp)
            holding each tube voxel's label in [0, C); the background channel 0 is excluded.
            True: output (B, R, *sp) logits of R regions, tube (B, R, *sp) binary; every region counts.
        batch_dice: sum over the batch before dividing (nnU-Net's ``batch_dice`` from the plans);
            otherwise recall per sample and class, averaged.
        smooth: added to numerator and denominator.
        ddp: with batch_dice, sums are all-gathered across DDP ranks (gradients flow back), so the loss
            equals the single-process loss on the whole global batch.
    """

    def __init__(self, region_mode: bool = False, batch_dice: bool = False, smooth: float = 1e-5,
                 ddp: bool = False):
        super().__init__()
        if not smooth > 0:
            raise ValueError(f"smooth must be > 0 (it defines recall 1 for empty tubes), got {smooth}")
        self.region_mode, self.batch_dice, self.smooth, self.ddp = region_mode, batch_dice, smooth, ddp

    def _one_hot_tube(self, tube: torch.Tensor, n_channels: int) -> torch.Tensor:
        if self.region_mode:
            if tube.shape[1] != n_channels:
                raise ValueError(f"region mode: tube has {tube.shape[1]} channels, output has {n_channels}")
            return tube.bool()
        return foreground_one_hot(tube, n_channels, what="tube labels")

    def forward(self, output: torch.Tensor, tube: torch.Tensor) -> torch.Tensor:
        """output (B, C, *sp) logits, tube (B, 1 | C, *sp) -> scalar loss in [0, 1]."""
        logits = checked_logits(output, tube, self.region_mode)
        probs = torch.sigmoid(logits) if self.region_mode else torch.softmax(logits, 1)[:, 1:]
        target = self._one_hot_tube(tube, output.shape[1])
        axes = tuple(range(2, output.ndim))
        covered, total = reduce_sums([(probs * target).sum(axes), target.sum(axes, dtype=probs.dtype)],
                                     self.batch_dice, self.ddp)
        recall = (covered + self.smooth) / (total + self.smooth)
        return 1 - recall.mean()
