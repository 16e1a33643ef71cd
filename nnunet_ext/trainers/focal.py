"""Trainer mixin: nnU-Net's Dice + a focal loss in place of the cross-entropy (registry loss ``Focal``; the
definition is :mod:`nnunet_ext.losses.focal`'s)."""
from __future__ import annotations

from nnunet_ext.losses.deep_supervision import extend_per_scale_loss
from nnunet_ext.losses.focal import DiceFocalLoss


class FocalMixin:
    """Dice + focal loss ``-(1 - p_t)^focal_gamma log p_t`` at every deep-supervision scale (label or region mode,
    the ignore label masked as nnU-Net masks it). Knob: ``focal_gamma`` (class attribute; 0 is nnU-Net's loss)."""

    focal_gamma: float

    def _build_loss(self):
        return extend_per_scale_loss(super()._build_loss(), lambda inner: DiceFocalLoss(inner, self.focal_gamma))
