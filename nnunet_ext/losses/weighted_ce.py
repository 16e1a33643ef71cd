"""nnU-Net's Dice + a voxel-weighted cross-entropy: what the border weight map and LED share."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from torch import nn


class VoxelWeightedDiceCELoss(nn.Module):
    """``weight_dice * Dice + weight_ce * sum_V w CE / |V|`` from an nnU-Net DC_and_CE_loss or DC_and_BCE_loss.

    output: (B, C, *sp) logits; target: what the wrapped nnU-Net loss takes (labels (B, 1, *sp), or regions with
    nnU-Net's ignore channel last), optionally followed by ``n_extra`` extra-target channels. Dice, its weights and
    the ignore handling are the wrapped loss's; the cross-entropy (label mode) or binary cross-entropy over regions
    (region mode, reduced over regions as nnU-Net's DC_and_BCE_loss does) is multiplied voxel by voxel by the
    weights w of :meth:`voxel_weights` and averaged over the valid voxels V of the batch. With w = 1 everywhere
    this equals nnU-Net's loss. In region mode the weights may also be per region, (B, R, *sp): they multiply each
    region's BCE before the reduction over regions (a (B, 1, *sp) map weights every region alike).
    """

    #: channels after nnU-Net's target that carry what :meth:`voxel_weights` needs
    n_extra: int = 0

    def __init__(self, nnunet_loss: DC_and_CE_loss | DC_and_BCE_loss):
        super().__init__()
        if not isinstance(nnunet_loss, (DC_and_CE_loss, DC_and_BCE_loss)):
            raise TypeError(f"expected nnU-Net's DC_and_CE_loss or DC_and_BCE_loss, got {type(nnunet_loss).__name__}")
        self.nnunet_loss = nnunet_loss
        self.region_mode = isinstance(nnunet_loss, DC_and_BCE_loss)
        if not self.region_mode and nnunet_loss.ce.weight is not None:
            raise ValueError("voxel weights do not combine with class weights in the cross-entropy (ce_kwargs "
                             "'weight'); drop them or fold them into the voxel weights")

    def voxel_weights(self, logits: torch.Tensor, target: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, *sp) weights (region mode: or (B, R, *sp), one per region) from float32 ``logits``, nnU-Net's
        ``target`` and the ``extra`` channels. Weights that carry a gradient (e.g. the focal factor) are
        differentiated through."""
        raise NotImplementedError

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        base = self.nnunet_loss
        extra = None
        if self.n_extra:
            target, extra = target[:, :-self.n_extra], target[:, -self.n_extra:]
        logits = output.float()
        weights = self.voxel_weights(logits, target, extra)
        if self.region_mode:
            ignore = base.use_ignore_label
            valid = ~target[:, -1:].bool() if ignore else None
            regions = target[:, :-1] if ignore else target
            dice = base.dc(output, regions, loss_mask=valid) if base.weight_dice != 0 else 0
            per_element = F.binary_cross_entropy_with_logits(logits, regions.float(), weight=base.ce.weight,
                                                             pos_weight=base.ce.pos_weight, reduction="none")
            per_element = per_element * weights
            per_voxel = per_element.sum(1, keepdim=True) if ignore else per_element.mean(1, keepdim=True)
        else:
            labels = target.long()
            valid = labels != base.ignore_label if base.ignore_label is not None else None
            if valid is not None:
                labels = torch.where(valid, labels, 0)
            dice = base.dc(output, labels, loss_mask=valid) if base.weight_dice != 0 else 0
            per_voxel = F.cross_entropy(logits, labels[:, 0], reduction="none",
                                        label_smoothing=base.ce.label_smoothing).unsqueeze(1) * weights
        counted = torch.ones_like(per_voxel) if valid is None else valid.to(per_voxel.dtype)
        cross_entropy = (per_voxel * counted).sum() / counted.sum().clamp_min(1)
        return base.weight_ce * cross_entropy + base.weight_dice * dice
