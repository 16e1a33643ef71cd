"""Computes the U-Net separation-border weight map on the CPU, per augmented sample."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from batchgeneratorsv2.transforms.base.basic_transform import SegOnlyTransform

from nnunet_ext.core.weightmaps import border_weight_map, relative_spacing
from nnunet_ext.losses.extra_target import append_extra_channels


class BorderWeightTransform(SegOnlyTransform):
    """Appends the border weight map to a (1, *spatial) label map: (2, *spatial) float32 = [seg, w].

    The label channel is cast to float32 (exact for any label) so both travel in one tensor; nnU-Net's
    deep-supervision downsampling then gives a map for every scale. ``w0`` is the paper's; ``sigma`` and the
    distances are in voxels of the finest axis of ``spacing`` (the paper's pixels): with the plans' spacing
    (0.8, 0.8, 4.0) a step along the last axis counts as 5 voxels, so the border term is physical on anisotropic
    data. ``spacing=None`` counts every axis in voxels. See :func:`nnunet_ext.core.weightmaps.border_weight_map`.
    """

    n_channels = 1

    def __init__(self, w0: float = 10.0, sigma: float = 5.0, class_weights: Mapping[int, float] | None = None,
                 ignore_label: int | None = None, spacing: Sequence[float] | None = None):
        super().__init__()
        self.w0, self.sigma, self.ignore_label = w0, sigma, ignore_label
        self.class_weights = None if class_weights is None else dict(class_weights)
        self.spacing = None if spacing is None else relative_spacing(spacing)

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        if segmentation.shape[0] != 1:
            raise ValueError(f"BorderWeightTransform expects a single-channel segmentation (1, *spatial), got "
                             f"{tuple(segmentation.shape)}")
        seg = segmentation[0].cpu().numpy()
        if self.spacing is not None and len(self.spacing) != seg.ndim:
            raise ValueError(f"BorderWeightTransform has a {len(self.spacing)}D spacing {self.spacing} for a "
                             f"{seg.ndim}D patch: pass the configuration's spacing")
        weights = border_weight_map(seg, w0=self.w0, sigma=self.sigma, class_weights=self.class_weights,
                                    spacing=self.spacing, ignore_label=self.ignore_label)
        return append_extra_channels(segmentation, torch.from_numpy(weights)[None])
