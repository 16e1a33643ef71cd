"""Pieces shared by the per-class losses: argument checks, label one-hot, batch-dice/DDP reduction."""
from __future__ import annotations

import torch
from nnunetv2.utilities.ddp_allgather import AllGatherGrad


def checked_logits(output: torch.Tensor, target: torch.Tensor, region_mode: bool,
                   only_2d_3d: bool = False) -> torch.Tensor:
    """Validate (B, C, *sp) logits against a (B, K, *sp) target; float16/bfloat16 are computed in float32.

    ``only_2d_3d``: require two or three spatial axes (losses built on 2D/3D pooling)."""
    if output.ndim < 3 or (only_2d_3d and output.ndim not in (4, 5)):
        expected = "(B, C, X, Y) or (B, C, X, Y, Z)" if only_2d_3d else "(B, C, *spatial)"
        raise ValueError(f"output must be {expected} logits, got {tuple(output.shape)}")
    if target.ndim != output.ndim or output.shape[0] != target.shape[0] or output.shape[2:] != target.shape[2:]:
        raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} differ in ndim, batch "
                         "or spatial size")
    if output.shape[1] < (1 if region_mode else 2):
        raise ValueError(f"output has {output.shape[1]} channel(s): label mode needs background plus at least "
                         "one class, region mode at least one region")
    return output if output.dtype in (torch.float32, torch.float64) else output.float()


def foreground_one_hot(labels: torch.Tensor, n_channels: int, what: str = "labels") -> torch.Tensor:
    """(B, 1, *sp) integer labels in [0, n_channels) -> (B, n_channels - 1, *sp) bool, background dropped.

    The label range is not checked here: that would read the tensor's values (a device sync on CUDA, a graph break
    under torch.compile) at every call and deep-supervision scale. nnunet-ext's trainers check the labels of the
    preprocessed dataset against dataset.json once, on the CPU, before training starts; a value >= n_channels that
    still gets here raises scatter's index error (CPU) or a device-side assert (CUDA)."""
    if labels.shape[1] != 1:
        raise ValueError(f"label mode expects a (B, 1, *spatial) map of {what}, got {tuple(labels.shape)}")
    labels = labels.long()
    one_hot = torch.zeros((labels.shape[0], n_channels, *labels.shape[2:]), dtype=torch.bool, device=labels.device)
    return one_hot.scatter_(1, labels, True)[:, 1:]


def reduce_sums(sums: list[torch.Tensor], batch_dice: bool, ddp: bool) -> list[torch.Tensor]:
    """(B, K) per-sample sums -> (K,) batch sums (all-gathered over DDP ranks when ``ddp``) or unchanged."""
    if not batch_dice:
        return sums
    sums = [s.sum(0) for s in sums]
    if ddp and torch.distributed.is_available() and torch.distributed.is_initialized():
        sums = [AllGatherGrad.apply(s).sum(0) for s in sums]
    return sums
