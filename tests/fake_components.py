"""A fake network and a fake loss, registered by the tests to show that registration alone is enough."""
from __future__ import annotations

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_ext.losses.deep_supervision import extend_per_scale_loss
from nnunet_ext.losses.mixed import WeightedSumLoss


class FakeNet(PlainConvUNet):
    """PlainConvUNet under another name (nnU-Net's deep-supervision layout)."""


class ForegroundMass(torch.nn.Module):
    """Mean softmax foreground probability: (B, C, *sp) logits -> scalar (the target is not read)."""

    def forward(self, output: torch.Tensor, target) -> torch.Tensor:
        return torch.softmax(output.float(), 1)[:, 1:].mean()


class FakeLossMixin:
    """nnU-Net's loss + ``fake_weight`` * mean foreground probability at every scale."""

    fake_weight: float

    def _build_loss(self):
        return extend_per_scale_loss(super()._build_loss(),
                                     lambda inner: WeightedSumLoss([(1.0, inner), (self.fake_weight,
                                                                                   ForegroundMass())]))
