"""The extra-target channel layout, in one place, and the loss that reads it.

nnU-Net's data loader keeps only ``data`` and ``target`` of each batch, so a per-sample target computed on the CPU
(a skeleton tube, a border weight map) travels as extra channels appended to the segmentation:

- a transformed sample's segmentation is ``(n_seg + n_extra, *spatial)``: nnU-Net's own channels first (the label
  map, or the regions plus the ignore channel), the extra channels last;
- a batch target is ``(B, n_seg + n_extra, *spatial)``, or a list of those with deep supervision (nnU-Net's
  ``DownsampleSegForDSTransform`` downsamples every channel, so every scale has its extra target).

The transforms append with :func:`append_extra_channels`; losses split with :func:`split_extra_channels`; the
online validation, which must see nnU-Net's own channels only, splits and later rejoins
(:func:`rejoin_extra_channels`). Only one extra-target provider can be part of a trainer (their channels would
collide), which the trainer mixin checks when the class is made.
"""
from __future__ import annotations

import math
from typing import Union

import torch
from torch import nn

Target = Union[torch.Tensor, list]


def append_extra_channels(segmentation: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """(n_seg, *sp) segmentation + (n_extra, *sp) extra target -> (n_seg + n_extra, *sp), in a dtype that holds both
    exactly (the segmentation's integer dtype for integer extras, float32 for float extras such as weights)."""
    if extra.shape[1:] != segmentation.shape[1:]:
        raise ValueError(f"extra target {tuple(extra.shape)} and segmentation {tuple(segmentation.shape)} differ in "
                         "spatial size")
    if extra.is_floating_point():
        return torch.cat([segmentation.float(), extra.float()])
    return torch.cat([segmentation, extra.to(segmentation.dtype)])


def split_extra_channels(target: Target, n_extra: int, axis: int = 1) -> tuple[Target, Target]:
    """(..., n_seg + n_extra, *sp) -> ((..., n_seg, *sp), (..., n_extra, *sp)) along ``axis`` (1 for batches, 0 for
    one sample); lists (deep supervision) elementwise."""
    if isinstance(target, (list, tuple)):
        pairs = [split_extra_channels(t, n_extra, axis) for t in target]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    if target.shape[axis] <= n_extra:
        raise ValueError(f"target has {target.shape[axis]} channels, expected the segmentation plus {n_extra} extra "
                         "channels: is the extra-target transform missing from the data pipeline?")
    n_seg = target.shape[axis] - n_extra
    return target.narrow(axis, 0, n_seg), target.narrow(axis, n_seg, n_extra)


def rejoin_extra_channels(target: Target, extra: Target) -> Target:
    """Inverse of :func:`split_extra_channels` for batches; ``extra`` is moved to ``target``'s device."""
    if isinstance(target, (list, tuple)):
        return [rejoin_extra_channels(t, e) for t, e in zip(target, extra, strict=True)]
    extra = extra.to(target.device, non_blocking=True)
    if target.dtype != extra.dtype:
        common = torch.promote_types(target.dtype, extra.dtype)
        target, extra = target.to(common), extra.to(common)
    return torch.cat([target, extra], 1)


class AuxiliaryTermLoss(nn.Module):
    """``base(output, seg) + weight * auxiliary(output, extra)`` with seg and extra split off one target.

    output: (B, C, *spatial) logits. target: (B, n_seg + n_extra, *spatial), the extra channels last.
    Wrap it in nnU-Net's DeepSupervisionWrapper to apply it at every scale.
    """

    def __init__(self, base: nn.Module, auxiliary: nn.Module, weight: float, n_extra: int):
        super().__init__()
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"auxiliary loss weight must be a finite number >= 0, got {weight}")
        if n_extra < 1:
            raise ValueError(f"n_extra must be >= 1, got {n_extra}")
        self.base, self.auxiliary, self.weight, self.n_extra = base, auxiliary, float(weight), n_extra

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seg, extra = split_extra_channels(target, self.n_extra)
        return self.base(output, seg) + self.weight * self.auxiliary(output, extra)
