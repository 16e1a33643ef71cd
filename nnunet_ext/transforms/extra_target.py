"""Putting an extra-target transform into nnU-Net's data pipelines.

The extra channels' layout is :mod:`nnunet_ext.losses.extra_target`'s. The transform is inserted after the spatial
augmentation and the label clean-up and before region conversion and deep-supervision downsampling, so that
nnU-Net's own ``DownsampleSegForDSTransform`` produces it at every deep-supervision scale. Region conversion is
swapped for a subclass that converts nnU-Net's channel and passes the extra channels through.
"""
from __future__ import annotations

from typing import Sequence

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

from nnunet_ext.losses.extra_target import split_extra_channels


class ConvertSegmentationToRegionsKeepingExtraChannels(ConvertSegmentationToRegionsTransform):
    """Region conversion of channel 0; the last ``n_extra`` channels are appended unchanged.

    (1 + n_extra, *spatial) -> (n_regions + n_extra, *spatial), bool (the extra channels must be binary)
    or, when the extra channels are floating point, that float dtype.
    """

    def __init__(self, regions: Sequence, n_extra: int):
        super().__init__(regions, channel_in_seg=0)
        self.n_extra = n_extra

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        seg, extra = split_extra_channels(segmentation, self.n_extra, axis=0)
        regions = super()._apply_to_segmentation(seg, **params)
        if extra.is_floating_point():
            return torch.cat([regions.to(extra.dtype), extra])
        return torch.cat([regions, extra.bool()])


def insert_extra_target_transform(pipeline: ComposeTransforms, transform: BasicTransform, n_extra: int,
                                  regions: Sequence | None, ignore_label: int | None) -> ComposeTransforms:
    """Insert ``transform`` before region conversion / deep-supervision downsampling (else at the end) and
    make region conversion keep the ``n_extra`` channels it appends. Modifies and returns ``pipeline``."""
    steps = pipeline.transforms
    position = next((i for i, t in enumerate(steps)
                     if isinstance(t, (ConvertSegmentationToRegionsTransform, DownsampleSegForDSTransform))),
                    len(steps))
    steps.insert(position, transform)
    for i, step in enumerate(steps):
        if type(step) is ConvertSegmentationToRegionsTransform:
            all_regions = list(regions) + ([ignore_label] if ignore_label is not None else [])
            steps[i] = ConvertSegmentationToRegionsKeepingExtraChannels(all_regions, n_extra)
    return pipeline
