"""Focal loss (Lin et al., ICCV 2017) in place of nnU-Net's cross-entropy, Dice unchanged.

GLNet's official code trains with a focal loss (gamma 3 in the code, 6 in the paper); here it is a loss of its
own, so every architecture can use it (``nnUNetTrainerGLNetFocal``, ``nnUNetTrainerFocal``, ...).

Per valid voxel (label mode, softmax over the C classes) with ``p_t`` the probability of the voxel's label:
``FL = -(1 - p_t)^gamma * log(p_t)``, i.e. the cross-entropy scaled by the modulating factor ``(1 - p_t)^gamma``,
which is differentiated through (the gradient is the focal loss's, not a re-weighted CE's). Region mode (sigmoid
outputs, nnU-Net's region-based training): the same per region with ``p_t = sigmoid(z)`` where the region's
target is 1, else ``1 - sigmoid(z)`` (the sigmoid focal loss with alpha off), reduced over regions as nnU-Net's
DC_and_BCE_loss reduces its BCE. Averaged over the valid (non-ignored) voxels of the batch, like nnU-Net's CE;
``gamma = 0`` is nnU-Net's Dice + CE exactly. No class-balancing alpha: nnU-Net's Dice already balances classes.
"""
from __future__ import annotations

import math

import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss

from nnunet_ext.losses.weighted_ce import VoxelWeightedDiceCELoss


def check_gamma(gamma: float) -> float:
    """``gamma`` as a float, or a ValueError naming the allowed range."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"focal gamma must be a finite number >= 0 (0 is plain cross-entropy; Lin et al. use 2, "
                         f"GLNet's code 3), got {gamma!r}")
    return float(gamma)


def modulating_factor(log_p_target: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(1 - p_t)^gamma`` from ``log p_t`` (any shape), with its gradient. ``1 - p_t`` is floored at the smallest
    normal float so that ``gamma < 1`` has a finite gradient where ``p_t`` rounds to 1 (there it is ~0 anyway)."""
    if gamma == 0:
        return torch.ones_like(log_p_target)
    one_minus = -torch.expm1(log_p_target)  # 1 - p_t, accurate where p_t is close to 1
    return one_minus.clamp_min(torch.finfo(one_minus.dtype).tiny).pow(gamma)


class DiceFocalLoss(VoxelWeightedDiceCELoss):
    """``weight_dice * Dice + weight_ce * mean_V FL`` from an nnU-Net DC_and_CE_loss or DC_and_BCE_loss.

    output: (B, C, *sp) logits; target: what the wrapped nnU-Net loss takes (labels (B, 1, *sp), or regions
    (B, R, *sp) with nnU-Net's ignore channel last). Dice, the term weights and the ignore handling are the wrapped
    loss's; its cross-entropy becomes the focal loss of the module docstring. Returns a 0-dim tensor.
    """

    def __init__(self, nnunet_loss: DC_and_CE_loss | DC_and_BCE_loss, gamma: float = 2.0):
        super().__init__(nnunet_loss)
        self.gamma = check_gamma(gamma)
        if not self.region_mode and nnunet_loss.ce.label_smoothing:
            raise ValueError("the focal loss is defined on the label's probability; it does not combine with "
                             f"label smoothing (ce_kwargs label_smoothing={nnunet_loss.ce.label_smoothing})")
        if self.region_mode and (nnunet_loss.ce.weight is not None or nnunet_loss.ce.pos_weight is not None):
            raise ValueError("the focal loss does not combine with BCE weights (bce_kwargs weight / pos_weight); "
                             "drop them")

    def voxel_weights(self, logits: torch.Tensor, target: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """The modulating factor: (B, 1, *sp) in label mode, (B, R, *sp) in region mode."""
        if self.region_mode:
            regions = target[:, :-1] if self.nnunet_loss.use_ignore_label else target
            signed = torch.where(regions > 0.5, logits, -logits)  # log p_t = log sigmoid(+-z)
            return modulating_factor(torch.nn.functional.logsigmoid(signed), self.gamma)
        labels = target.long()
        if self.nnunet_loss.ignore_label is not None:
            labels = torch.where(labels == self.nnunet_loss.ignore_label, 0, labels)  # masked out later
        log_p_target = torch.log_softmax(logits, 1).gather(1, labels)
        return modulating_factor(log_p_target, self.gamma)
