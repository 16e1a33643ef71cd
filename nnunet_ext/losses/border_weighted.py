"""nnU-Net's Dice + cross-entropy weighted per voxel by the U-Net border weight map."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from torch import nn

from nnunet_ext.losses.auxiliary import split_extra_channels


class BorderWeightedDiceCELoss(nn.Module):
    """``weight_dice * Dice + weight_ce * sum_x w(x) CE(x) / n`` from an nnU-Net Dice+CE (or Dice+BCE) loss.

    output: (B, C, *sp) logits; target: (B, n_seg + 1, *sp) = nnU-Net's target followed by the weight map w.
    Dice, its weights and the ignore-label handling are those of the given nnU-Net loss; the cross-entropy
    (label mode) or binary cross-entropy over regions (region mode, reduced over regions exactly as nnU-Net's
    DC_and_BCE_loss does) is multiplied by w voxel by voxel and averaged over the n non-ignored voxels.
    With w = 1 everywhere this equals nnU-Net's loss.
    """

    def __init__(self, nnunet_loss: DC_and_CE_loss | DC_and_BCE_loss):
        super().__init__()
        if not isinstance(nnunet_loss, (DC_and_CE_loss, DC_and_BCE_loss)):
            raise TypeError(f"expected nnU-Net's DC_and_CE_loss or DC_and_BCE_loss, got {type(nnunet_loss).__name__}")
        self.nnunet_loss = nnunet_loss
        self.region_mode = isinstance(nnunet_loss, DC_and_BCE_loss)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seg, weights = split_extra_channels(target, 1)
        weights = weights[:, 0].float()
        base = self.nnunet_loss
        logits = output.float()
        if self.region_mode:
            valid = ~seg[:, -1:].bool() if base.use_ignore_label else None
            regions = seg[:, :-1] if base.use_ignore_label else seg
            dice = base.dc(output, regions, loss_mask=valid)
            per_element = F.binary_cross_entropy_with_logits(logits, regions.float(), reduction="none")
            # as nnU-Net's DC_and_BCE_loss: summed over regions with an ignore channel, else averaged
            per_voxel = per_element.sum(1) if base.use_ignore_label else per_element.mean(1)
        else:
            labels = seg.long()
            valid = labels != base.ignore_label if base.ignore_label is not None else None
            if valid is not None:
                labels = torch.where(valid, labels, 0)
            dice = base.dc(output, labels, loss_mask=valid)
            per_voxel = F.cross_entropy(logits, labels[:, 0], reduction="none")
        counted = torch.ones_like(per_voxel) if valid is None else valid[:, 0].to(per_voxel.dtype)
        cross_entropy = (per_voxel * weights * counted).sum() / counted.sum().clamp_min(1)
        return base.weight_ce * cross_entropy + base.weight_dice * dice
