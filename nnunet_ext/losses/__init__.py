"""Loss terms added to nnU-Net's own Dice+CE."""
from nnunet_ext.losses.auxiliary import AuxiliaryTermLoss, rejoin_extra_channels, split_extra_channels
from nnunet_ext.losses.skeleton_recall import SoftSkeletonRecallLoss

__all__ = ["AuxiliaryTermLoss", "SoftSkeletonRecallLoss", "split_extra_channels", "rejoin_extra_channels"]
