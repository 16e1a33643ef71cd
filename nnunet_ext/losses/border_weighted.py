"""nnU-Net's Dice + cross-entropy weighted per voxel by the U-Net border weight map."""
from __future__ import annotations

import torch

from nnunet_ext.losses.weighted_ce import VoxelWeightedDiceCELoss


class BorderWeightedDiceCELoss(VoxelWeightedDiceCELoss):
    """``weight_dice * Dice + weight_ce * sum_x w(x) CE(x) / n`` from an nnU-Net Dice+CE (or Dice+BCE) loss.

    output: (B, C, *sp) logits; target: (B, n_seg + 1, *sp) = nnU-Net's target followed by the weight map w (the
    extra-target layout of :mod:`nnunet_ext.losses.extra_target`). Dice, its weights and the ignore-label handling
    are those of the given nnU-Net loss; the (binary) cross-entropy is multiplied by w voxel by voxel and averaged
    over the n non-ignored voxels (:class:`VoxelWeightedDiceCELoss`). With w = 1 everywhere this equals nnU-Net's
    loss.
    """

    n_extra = 1

    def voxel_weights(self, logits: torch.Tensor, target: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        return extra.float()
