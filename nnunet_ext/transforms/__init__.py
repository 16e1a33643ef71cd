"""batchgeneratorsv2 transforms that add per-sample targets to nnU-Net's data pipelines."""
from nnunet_ext.transforms.border_weight import BorderWeightTransform
from nnunet_ext.transforms.extra_target import (ConvertSegmentationToRegionsKeepingExtraChannels,
                                                insert_extra_target_transform)
from nnunet_ext.transforms.skeleton_tube import SkeletonTubeTransform

__all__ = ["BorderWeightTransform", "SkeletonTubeTransform", "ConvertSegmentationToRegionsKeepingExtraChannels",
           "insert_extra_target_transform"]
