"""Trainer mixin: nnU-Net's loss + Skeleton Recall (registry loss ``SkelRecall``)."""
from __future__ import annotations

from torch import nn

from nnunet_ext.losses.skeleton_recall import SoftSkeletonRecallLoss
from nnunet_ext.trainers.extra_target import ExtraTargetLossMixin
from nnunet_ext.transforms.skeleton_tube import SkeletonTubeTransform


class SkeletonRecallMixin(ExtraTargetLossMixin):
    """nnU-Net's Dice+CE (or Dice+BCE for regions) + ``skeleton_recall_weight`` * Skeleton Recall.

    The tubed skeleton is computed per augmented sample on the CPU (:class:`SkeletonTubeTransform`), one tube per
    region in region-based training; batch dice follows the plans; DDP-aware. Change the weight by subclassing:
    ``skeleton_recall_weight = 0.1`` (the default, 1.0, comes from the registry).
    """

    skeleton_recall_weight: float

    @property
    def auxiliary_loss_weight(self) -> float:
        return self.skeleton_recall_weight

    def extra_target_transform(self, regions, ignore_label) -> SkeletonTubeTransform:
        return SkeletonTubeTransform(regions=regions, ignore_label=ignore_label)

    def build_auxiliary_loss(self) -> nn.Module:
        return SoftSkeletonRecallLoss(region_mode=self.label_manager.has_regions,
                                      batch_dice=self.configuration_manager.batch_dice, ddp=self.is_ddp)
