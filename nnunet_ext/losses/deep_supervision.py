"""Deep supervision: extending nnU-Net's per-scale loss, and full-resolution deep supervision for networks whose
outputs all have the target's resolution (UNet++'s heads, GLNet's branches, DAWMR's iterations)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper


def extend_per_scale_loss(loss: torch.nn.Module,
                          extend: Callable[[torch.nn.Module], torch.nn.Module]) -> torch.nn.Module:
    """Replace the per-scale loss inside nnU-Net's deep-supervision wrapper by ``extend(loss)``, keeping the
    wrapper's class (e.g. :class:`FullResolutionDeepSupervision`) and weights; without a wrapper ``extend(loss)``.
    A :class:`NetworkAuxiliaryLoss` (a term for the whole step) stays outside."""
    if isinstance(loss, NetworkAuxiliaryLoss):
        return NetworkAuxiliaryLoss(extend_per_scale_loss(loss.loss, extend), loss.get_network)
    if isinstance(loss, DeepSupervisionWrapper):
        return type(loss)(extend(loss.loss), loss.weight_factors)
    return extend(loss)


class FullResolutionDeepSupervision(DeepSupervisionWrapper):
    """``sum_k w_k * loss(outputs[k], target)`` over outputs that all share one full-resolution target.

    outputs: list of K (B, C, *spatial) logits; target: a list of 1 (the data loader then makes one target
    instead of K identical ones) or of K targets. Unlike nnU-Net's wrapper, a length mismatch is an error rather
    than a silent truncation, and every weight must be > 0 (DDP needs a gradient for every head). A schedule that
    freezes a head may set its weight to 0 afterwards (``weight_factors``): that output's loss is then skipped.
    """

    def __init__(self, loss: torch.nn.Module, weight_factors: Sequence[float]):
        if not weight_factors or any(not w > 0 for w in weight_factors):
            raise ValueError(f"every deep-supervision weight must be > 0, got {list(weight_factors)}")
        super().__init__(loss, weight_factors)

    def forward(self, outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        if not isinstance(outputs, (list, tuple)) or not isinstance(targets, (list, tuple)):
            raise TypeError("FullResolutionDeepSupervision expects a list of outputs and a list of targets; is the "
                            "network's deep supervision off while the trainer's is on?")
        if len(outputs) != len(self.weight_factors) or len(targets) not in (1, len(outputs)):
            raise ValueError(f"expected {len(self.weight_factors)} outputs and 1 or that many targets, got "
                             f"{len(outputs)} outputs and {len(targets)} targets")
        if len(targets) == 1:
            targets = list(targets) * len(outputs)
        return sum(w * self.loss(o, t) for w, o, t in zip(self.weight_factors, outputs, targets) if w)


class NetworkAuxiliaryLoss(torch.nn.Module):
    """``loss(output, target) + network.auxiliary_loss``: a term the network computes in its own training forward
    pass (e.g. GLNet's feature regularisation), read from the module ``get_network()`` returns (the network inside
    DDP / torch.compile wrappers). ``auxiliary_loss`` None (evaluation) adds nothing."""

    def __init__(self, loss: torch.nn.Module, get_network: Callable[[], torch.nn.Module]):
        super().__init__()
        self.loss = loss
        self.get_network = get_network

    def forward(self, output, target) -> torch.Tensor:
        total = self.loss(output, target)
        term = getattr(self.get_network(), "auxiliary_loss", None)
        return total if term is None else total + term
