"""Trainer mixin: Dice + CE weighted by the U-Net border weight map (registry loss ``BorderWeight``)."""
from __future__ import annotations

from torch import nn

from nnunet_ext.losses.border_weighted import BorderWeightedDiceCELoss
from nnunet_ext.trainers.extra_target import ExtraTargetLossMixin
from nnunet_ext.transforms.border_weight import BorderWeightTransform


class BorderWeightMixin(ExtraTargetLossMixin):
    """nnU-Net's Dice + cross-entropy weighted per voxel by the U-Net border weight map (Ronneberger 2015).

    ``w = w_c + border_w0 * exp(-(d1 + d2)^2 / (2 border_sigma^2))`` is computed on the CPU per augmented sample
    (:class:`BorderWeightTransform`) with the configuration's spacing (sigma and distances in voxels of the finest
    axis), downsampled with the target for every deep-supervision scale; ``border_class_weights`` None balances
    class frequencies, a dict {label: weight} sets w_c. The ignore label gets weight 0 and is masked as nnU-Net
    masks it. Change the parameters by subclassing.
    """

    border_w0: float
    border_sigma: float
    border_class_weights: dict[int, float] | None

    def extra_target_transform(self, regions, ignore_label) -> BorderWeightTransform:
        return BorderWeightTransform(self.border_w0, self.border_sigma, self.border_class_weights, ignore_label,
                                     spacing=self.configuration_manager.spacing)

    def loss_with_extra_target(self, inner: nn.Module) -> nn.Module:
        return BorderWeightedDiceCELoss(inner)
