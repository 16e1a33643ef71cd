"""Torch losses, one module per loss; they know nothing of trainers or networks.

- :mod:`~nnunet_ext.losses.skeleton_recall`: Skeleton Recall (soft recall of the tubed skeleton);
- :mod:`~nnunet_ext.losses.cldice`: soft clDice with a memory-efficient soft skeleton;
- :mod:`~nnunet_ext.losses.border_weighted`: nnU-Net's Dice + border-weighted CE;
- :mod:`~nnunet_ext.losses.extra_target`: the extra-target channel layout and the auxiliary-term loss;
- :mod:`~nnunet_ext.losses.mixed`, :mod:`~nnunet_ext.losses.deep_supervision`: how terms and outputs combine.
"""
from nnunet_ext.losses.cldice import SoftClDiceLoss, soft_skeletonize
from nnunet_ext.losses.extra_target import AuxiliaryTermLoss, rejoin_extra_channels, split_extra_channels
from nnunet_ext.losses.mixed import WeightedSumLoss
from nnunet_ext.losses.skeleton_recall import SoftSkeletonRecallLoss

__all__ = ["AuxiliaryTermLoss", "SoftClDiceLoss", "SoftSkeletonRecallLoss", "WeightedSumLoss", "soft_skeletonize",
           "split_extra_channels", "rejoin_extra_channels"]
