"""Loss terms added to nnU-Net's own Dice+CE."""
from nnunet_ext.losses.auxiliary import AuxiliaryTermLoss, rejoin_extra_channels, split_extra_channels
from nnunet_ext.losses.cldice import SoftClDiceLoss, soft_skeletonize
from nnunet_ext.losses.mixed import WeightedSumLoss
from nnunet_ext.losses.skeleton_recall import SoftSkeletonRecallLoss

__all__ = ["AuxiliaryTermLoss", "SoftClDiceLoss", "SoftSkeletonRecallLoss", "WeightedSumLoss", "soft_skeletonize",
           "split_extra_channels", "rejoin_extra_channels"]
