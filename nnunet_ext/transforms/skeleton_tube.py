"""Computes the Skeleton Recall target (tubed skeleton) on the CPU, per augmented sample."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import SegOnlyTransform

from nnunet_ext.core.skeleton import tubed_skeleton
from nnunet_ext.losses.extra_target import append_extra_channels


class SkeletonTubeTransform(SegOnlyTransform):
    """Appends tubed-skeleton channels to a (1, *spatial) label map.

    Label mode (``regions=None``): output (2, *spatial) = [seg, tube carrying each voxel's label].
    Region mode: output (1 + R, *spatial) = [seg, tube of region 1, ..., tube of region R], tubes 0/1,
    each computed from its region's mask. Ignore-label voxels are background for the skeleton and 0 in
    every tube. dtype of the input is kept.
    """

    def __init__(self, regions: Sequence | None = None, ignore_label: int | None = None):
        super().__init__()
        self.regions = None if regions is None else [np.atleast_1d(np.asarray(r)) for r in regions]
        self.ignore_label = ignore_label

    @property
    def n_channels(self) -> int:
        return 1 if self.regions is None else len(self.regions)

    def tubes(self, seg: np.ndarray) -> np.ndarray:
        """seg: (*spatial) label map -> (n_channels, *spatial) tubes."""
        if self.regions is None:
            return tubed_skeleton(seg, self.ignore_label)[None]
        valid = np.ones(seg.shape, bool) if self.ignore_label is None else seg != self.ignore_label
        return np.stack([tubed_skeleton((np.isin(seg, labels) & valid).view(np.uint8)) for labels in self.regions])

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        if segmentation.shape[0] != 1:
            raise ValueError(f"SkeletonTubeTransform expects a single-channel segmentation (1, *spatial), got "
                             f"{tuple(segmentation.shape)}; insert it after MoveSegAsOneHotToDataTransform.")
        tubes = torch.from_numpy(self.tubes(segmentation[0].cpu().numpy()))
        return append_extra_channels(segmentation, tubes)
