"""Adding a loss term that reads extra target channels to nnU-Net's segmentation loss."""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

Target = Union[torch.Tensor, list]


def split_extra_channels(target: Target, n_extra: int) -> tuple[Target, Target]:
    """(B, n_seg + n_extra, *sp) -> ((B, n_seg, *sp), (B, n_extra, *sp)); lists (deep supervision) elementwise."""
    if isinstance(target, (list, tuple)):
        pairs = [split_extra_channels(t, n_extra) for t in target]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    if target.shape[1] <= n_extra:
        raise ValueError(f"target has {target.shape[1]} channels, expected the segmentation plus {n_extra} extra "
                         "channels: is the extra-target transform missing from the data pipeline?")
    return target[:, :-n_extra], target[:, -n_extra:]


def rejoin_extra_channels(target: Target, extra: Target) -> Target:
    """Inverse of :func:`split_extra_channels`; ``extra`` is moved to ``target``'s device."""
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
        if not (weight >= 0 and weight == weight and weight != float("inf")):
            raise ValueError(f"auxiliary loss weight must be a finite number >= 0, got {weight}")
        if n_extra < 1:
            raise ValueError(f"n_extra must be >= 1, got {n_extra}")
        self.base, self.auxiliary, self.weight, self.n_extra = base, auxiliary, float(weight), n_extra

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seg, extra = split_extra_channels(target, self.n_extra)
        return self.base(output, seg) + self.weight * self.auxiliary(output, extra)
