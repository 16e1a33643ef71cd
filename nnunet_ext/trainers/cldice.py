"""Trainer mixin: nnU-Net's loss mixed with clDice (registry loss ``ClDice``)."""
from __future__ import annotations

from nnunet_ext.losses.cldice import SoftClDiceLoss
from nnunet_ext.losses.deep_supervision import extend_per_scale_loss
from nnunet_ext.losses.mixed import WeightedSumLoss


class ClDiceMixin:
    """``(1 - cldice_alpha) * nnU-Net's Dice+CE + cldice_alpha * clDice`` at every deep-supervision scale.

    clDice (Shit et al., CVPR 2021) per foreground class (per region in region-based training) with the
    memory-efficient soft skeleton of ``cldice_iterations`` iterations; the ignore label is masked in the sums;
    batch dice as the plans say; DDP-aware. Change alpha or iterations by subclassing.
    """

    cldice_alpha: float
    cldice_iterations: int

    def _build_loss(self):
        if not 0 <= self.cldice_alpha <= 1:
            raise ValueError(f"cldice_alpha must lie in [0, 1], got {self.cldice_alpha}")
        lm = self.label_manager
        cldice = SoftClDiceLoss(region_mode=lm.has_regions, iterations=self.cldice_iterations,
                                batch_dice=self.configuration_manager.batch_dice, ddp=self.is_ddp,
                                ignore_label=None if lm.has_regions else lm.ignore_label,
                                region_ignore_channel=lm.has_regions and lm.ignore_label is not None)
        return extend_per_scale_loss(
            super()._build_loss(),
            lambda inner: WeightedSumLoss([(1 - self.cldice_alpha, inner), (self.cldice_alpha, cldice)]))
