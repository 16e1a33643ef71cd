"""Computes the U-Net separation-border weight map on the CPU, per augmented sample."""
from __future__ import annotations

from typing import Mapping

import torch
from batchgeneratorsv2.transforms.base.basic_transform import SegOnlyTransform


class BorderWeightTransform(SegOnlyTransform):
    """Appends the border weight map to a (1, *spatial) label map: (2, *spatial) float32 = [seg, w].

    The label channel is cast to float32 (exact for any label) so both travel in one tensor; nnU-Net's
    deep-supervision downsampling then gives a map for every scale. ``w0`` and ``sigma`` are in voxels of
    the preprocessed patch (the paper's pixels). See :func:`nnunet_ext.weightmaps.border_weight_map`.
    """

    n_channels = 1

    def __init__(self, w0: float = 10.0, sigma: float = 5.0, class_weights: Mapping[int, float] | None = None,
                 ignore_label: int | None = None):
        super().__init__()
        self.w0, self.sigma, self.ignore_label = w0, sigma, ignore_label
        self.class_weights = None if class_weights is None else dict(class_weights)

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        from nnunet_ext.weightmaps import border_weight_map
        if segmentation.shape[0] != 1:
            raise ValueError(f"BorderWeightTransform expects a single-channel segmentation (1, *spatial), got "
                             f"{tuple(segmentation.shape)}")
        weights = border_weight_map(segmentation[0].cpu().numpy(), w0=self.w0, sigma=self.sigma,
                                    class_weights=self.class_weights, ignore_label=self.ignore_label)
        return torch.cat([segmentation.float(), torch.from_numpy(weights)[None].float()])
