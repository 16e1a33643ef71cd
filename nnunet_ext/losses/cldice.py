"""Soft clDice loss (Shit et al., CVPR 2021) with a memory-efficient soft skeleton.

Morphology on (B, C, X, Y) or (B, C, X, Y, Z) tensors, every channel independently:

- :func:`soft_erode`: elementwise minimum of axis-wise 3-wide min-pools (a cross-shaped structuring element);
- :func:`soft_dilate`: full 3^n max-pool (stride 1, padding 1);
- :func:`soft_open`: ``soft_dilate(soft_erode(x))``.

Soft skeleton: ``skel = relu(x - open(x))``, then per iteration ``x = erode(x)``, ``delta = relu(x - open(x))``,
``skel = skel + relu(delta - skel * delta)``. :func:`soft_skeletonize_reference` computes it literally (autograd
then holds every pooling output, pooling index and elementwise result: about 30 input-sized float32 equivalents
per iteration). :func:`soft_skeletonize` returns the same values and gradients with a custom autograd Function:

- forward, without autograd: E_k = erode^k(x) is computed once per k (the literal version erodes twice per
  iteration, ``open(E_k) = dilate(E_{k+1})``), with min/max of shifted slices instead of pooling (bit-identical
  values: min and max are exact); it keeps E_1..E_{n+1} and the partial skeletons skel_0..skel_{n-1}
  (2n + 1 tensors of x's size) for backward;
- backward, from iteration n down to 0: recomputes that iteration's ops (dilate, relu, skeleton update; then the
  erosion E_k -> E_{k+1}) from the stored tensors with the same pooling ops as the reference and applies the
  gradient formulas autograd uses for them (the pooling backward op through the same argmax indices, relu's
  mask, ``torch.minimum``'s even split at ties), so ties are routed exactly as in the reference; the gradient
  w.r.t. E_{k+1} is summed from its two uses (dilation at iteration k, everything after) before going through
  the erosion. Nothing in it calls ``torch.autograd.grad``, so torch.compile traces forward and backward
  without a graph break.

Unlike the public clDice code, ``iterations`` is honoured and the loss is computed per class, then averaged.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from nnunet_ext.losses._common import checked_logits, foreground_one_hot, reduce_sums

__all__ = ["soft_erode", "soft_dilate", "soft_open", "soft_skeletonize", "soft_skeletonize_reference",
           "SoftClDiceLoss"]


# ------------------------------------------------------------------------------------------------- morphology

def _check_ndim(x: torch.Tensor, what: str) -> int:
    """Number of spatial dims (2 or 3) of a (B, C, *spatial) tensor; ValueError otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (4, 5):
        raise ValueError(f"{what} expects a (B, C, X, Y) or (B, C, X, Y, Z) tensor, got shape {tuple(x.shape)}; "
                         "add the batch and channel axes (x[None, None]) or use one of those layouts")
    return x.ndim - 2


def _axis_min_pool(x: torch.Tensor, axis: int, n_spatial: int) -> torch.Tensor:
    """3-wide min-pool along spatial axis ``axis`` (0-based), stride 1, same size: ``-maxpool(-x)``."""
    kernel = [1] * n_spatial
    padding = [0] * n_spatial
    kernel[axis], padding[axis] = 3, 1
    pool = F.max_pool2d if n_spatial == 2 else F.max_pool3d
    return -pool(-x, kernel_size=tuple(kernel), stride=1, padding=tuple(padding))


def soft_erode(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *sp) -> (B, C, *sp): minimum over the cross (each voxel and its 2 * n axis neighbours)."""
    n = _check_ndim(x, "soft_erode")
    if x.numel() == 0:
        return x.clone()
    out = _axis_min_pool(x, 0, n)
    for axis in range(1, n):
        out = torch.minimum(out, _axis_min_pool(x, axis, n))
    return out


def soft_dilate(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *sp) -> (B, C, *sp): maximum over the 3^n box around each voxel."""
    n = _check_ndim(x, "soft_dilate")
    if x.numel() == 0:
        return x.clone()
    pool = F.max_pool2d if n == 2 else F.max_pool3d
    return pool(x, kernel_size=3, stride=1, padding=1)


def soft_open(x: torch.Tensor) -> torch.Tensor:
    """(B, C, *sp) -> (B, C, *sp): ``soft_dilate(soft_erode(x))``."""
    return soft_dilate(soft_erode(x))


# ---------------------------------------------------------------------------------------------- soft skeleton

def _check_iterations(iterations: Any) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0 (number of erosions after the first opening), "
                         f"got {iterations!r}")
    return iterations


def soft_skeletonize_reference(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """(B, C, *sp) -> (B, C, *sp) soft skeleton, computed literally (autograd keeps every intermediate)."""
    _check_ndim(x, "soft_skeletonize_reference")
    iterations = _check_iterations(iterations)
    skel = F.relu(x - soft_open(x))
    for _ in range(iterations):
        x = soft_erode(x)
        delta = F.relu(x - soft_open(x))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def _axis_extreme_values(x: torch.Tensor, dim: int, minimum: bool) -> torch.Tensor:
    """3-wide min (``minimum``) or max along tensor dim ``dim`` from shifted slices, no autograd.

    In place on views of one clone (``clamp_`` with a tensor bound is an elementwise min/max), so no shifted
    copies are made; ``out=`` on a non-contiguous view would break a torch.compile graph."""
    out = x.clone()
    n = x.shape[dim]
    if n > 1:
        bound = "max" if minimum else "min"
        out.narrow(dim, 1, n - 1).clamp_(**{bound: x.narrow(dim, 0, n - 1)})  # out[i] vs x[i - 1]
        out.narrow(dim, 0, n - 1).clamp_(**{bound: x.narrow(dim, 1, n - 1)})  # out[i] vs x[i + 1]
    return out


def _erode_values(x: torch.Tensor) -> torch.Tensor:
    """soft_erode's values (bit-identical: min is exact) without pooling indices; for no-grad use."""
    out = _axis_extreme_values(x, 2, minimum=True)
    for dim in range(3, x.ndim):
        out.clamp_(max=_axis_extreme_values(x, dim, minimum=True))
    return out


def _dilate_values(x: torch.Tensor) -> torch.Tensor:
    """soft_dilate's values (the 3^n box max is separable and exact) without pooling indices; no-grad use."""
    out = x
    for dim in range(2, x.ndim):
        out = _axis_extreme_values(out, dim, minimum=False)
    return out


def _skeleton_forward(x: torch.Tensor, iterations: int,
                      keep: bool) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Soft skeleton without autograd, each erosion computed once, morphology from shifted slices.

    Returns (skeleton, eroded, partial): with ``keep``, eroded = [E_1, ..., E_{n+1}] (E_k = erode^k(x)) and
    partial = [skel_0, ..., skel_{n-1}], what backward needs; else both lists are empty.
    """
    eroded, partial = [], []
    current = x
    nxt = _erode_values(current)
    skel = F.relu(current - _dilate_values(nxt))  # == soft_open(x)
    for _ in range(iterations):
        if keep:
            eroded.append(nxt)
            partial.append(skel)
        current, nxt = nxt, _erode_values(nxt)
        delta = F.relu(current - _dilate_values(nxt))
        skel = skel + F.relu(delta - skel * delta)
    if keep:
        eroded.append(nxt)
    return skel, eroded, partial


def _pool_with_indices(x: torch.Tensor, kernel: list[int], padding: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stride-1 max-pool of (B, C, *sp) ``x`` and its argmax indices (what the pool's autograd node keeps)."""
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    return pool(x, kernel_size=kernel, stride=1, padding=padding, return_indices=True)


def _pool_backward(grad: torch.Tensor, x: torch.Tensor, kernel: list[int], padding: list[int],
                   indices: torch.Tensor) -> torch.Tensor:
    """The gradient w.r.t. ``x`` of a stride-1 max-pool: autograd's own pooling backward op, which sends each
    output's gradient to its argmax (``indices``), so ties go where the reference sends them."""
    n = x.ndim - 2
    backward = (torch.ops.aten.max_pool2d_with_indices_backward if n == 2
                else torch.ops.aten.max_pool3d_with_indices_backward)
    return backward(grad, x, kernel, [1] * n, padding, [1] * n, False, indices)


def _relu_backward(grad: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """Gradient through ``result = relu(input)``: ``grad`` where the result is positive, else 0 (as autograd)."""
    return torch.where(result > 0, grad, torch.zeros_like(grad))


def _dilate_with_backward(x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(soft_dilate(x), the function mapping d loss / d soft_dilate(x) to d loss / d x via the pooling indices)."""
    n = x.ndim - 2
    kernel, padding = [3] * n, [1] * n
    dilated, indices = _pool_with_indices(x, kernel, padding)
    return dilated, lambda g: _pool_backward(g, x, kernel, padding, indices)


def _erode_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d loss / d x from ``grad`` = d loss / d soft_erode(x), as autograd differentiates :func:`soft_erode`.

    soft_erode is ``minimum(...minimum(p_0, p_1)..., p_{n-1})`` with ``p_a = -maxpool_a(-x)`` (3-wide along axis
    a); torch.minimum gives its gradient to the smaller input and half to each at a tie."""
    n = x.ndim - 2
    negated = -x
    pooled, routes = [], []
    for axis in range(n):
        kernel, padding = [1] * n, [0] * n
        kernel[axis], padding[axis] = 3, 1
        values, indices = _pool_with_indices(negated, kernel, padding)
        pooled.append(-values)
        routes.append((kernel, padding, indices))
    running = [pooled[0]]  # q_0 = p_0, q_a = minimum(q_{a-1}, p_a)
    for axis in range(1, n - 1):
        running.append(torch.minimum(running[-1], pooled[axis]))
    grads = [None] * n
    g = grad
    for axis in range(n - 1, 0, -1):
        left, right = running[axis - 1], pooled[axis]
        tie = torch.where(left == right, g / 2, g)
        grads[axis] = tie.masked_fill(left < right, 0)
        g = tie.masked_fill(left > right, 0)
    grads[0] = g
    total = None
    for g_axis, (kernel, padding, indices) in zip(grads, routes):
        part = _pool_backward(-g_axis, negated, kernel, padding, indices)  # through the pool of -x
        total = -part if total is None else total - part
    return total


class _SoftSkeleton(torch.autograd.Function):
    """Soft skeleton storing E_1..E_{n+1} and skel_0..skel_{n-1}; backward recomputes one iteration at a time."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, iterations: int) -> torch.Tensor:
        skel, eroded, partial = _skeleton_forward(x, iterations, keep=True)
        ctx.iterations = iterations
        ctx.save_for_backward(x, *eroded, *partial)
        return skel

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_skel: torch.Tensor) -> tuple[torch.Tensor, None]:
        n = ctx.iterations
        saved = ctx.saved_tensors
        eroded = saved[:n + 2]            # E_0 (the input) .. E_{n+1}
        partial = saved[n + 2:]           # skel_0 .. skel_{n-1}
        grad_s = grad_skel                # d loss / d skel_k, k going down from n
        grad_next: torch.Tensor | None = None  # d loss / d E_{k+1} from iterations > k and erosions above
        for k in range(n, -1, -1):
            e_k, e_k1 = eroded[k], eroded[k + 1]
            dilated, dilate_backward = _dilate_with_backward(e_k1)
            delta = F.relu(e_k - dilated)
            del dilated
            if k > 0:  # skel_k = s + relu(delta - s * delta), s = skel_{k-1}
                s_prev = partial[k - 1]
                g_u = _relu_backward(grad_s, F.relu(delta - s_prev * delta))
                g_product = -g_u
                grad_delta = g_u + g_product * s_prev
                grad_s = grad_s + g_product * delta
            else:  # skel_0 = delta
                grad_delta = grad_s
            g_k = _relu_backward(grad_delta, delta)  # d / d E_k of delta = relu(E_k - dilate(E_{k+1}))
            del delta, grad_delta
            g_k1 = dilate_backward(-g_k)
            grad_e_k1 = g_k1 if grad_next is None else grad_next.add_(g_k1)
            del g_k1
            g_erode = _erode_backward(grad_e_k1, e_k)  # E_{k+1} = erode(E_k): route its gradient back to E_k
            del grad_e_k1
            grad_next = g_k.add_(g_erode)
            del g_erode
        return grad_next, None


def soft_skeletonize(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """(B, C, *sp) -> (B, C, *sp) soft skeleton; same values and gradients as the reference, less memory.

    With autograd, keeps 2 * iterations + 1 tensors of x's size for backward (the reference keeps roughly 15
    times more) plus one iteration's graph while back-propagating; without (x not requiring grad, or under
    ``torch.no_grad``) keeps nothing.
    """
    _check_ndim(x, "soft_skeletonize")
    iterations = _check_iterations(iterations)
    if x.numel() == 0:
        return x.clone()
    if torch.is_grad_enabled() and x.requires_grad:
        return _SoftSkeleton.apply(x, iterations)
    with torch.no_grad():
        return _skeleton_forward(x, iterations, keep=False)[0]


# ------------------------------------------------------------------------------------------------------ loss

class SoftClDiceLoss(nn.Module):
    """``1 - mean_c clDice_c``, ``clDice_c = 2 Tprec Tsens / (Tprec + Tsens)`` per class (or region).

    ``Tprec = (sum S(P) L + s) / (sum S(P) + s)``, ``Tsens = (sum S(L) P + s) / (sum S(L) + s)`` with P the
    predicted probabilities, L the binary target and S the soft skeleton (:func:`soft_skeletonize`; the target's
    skeleton without autograd). A class absent from target and prediction gives clDice 1 (no NaN).

    Args:
        region_mode: False: output (B, C, *sp) logits of C mutually exclusive labels (softmax), target
            (B, 1, *sp) label map; background channel 0 excluded. True: output (B, R, *sp) logits of R regions
            (sigmoid), target (B, R, *sp) binary, every region counts.
        iterations: soft-skeleton iterations (>= 0); should reach about the largest structure radius.
        smooth: s above, > 0.
        batch_dice: sum over the batch before dividing (nnU-Net's ``batch_dice``); else per sample, averaged.
        ddp: with batch_dice, the four sums are all-gathered across DDP ranks (gradients flow back).
        ignore_label: label mode: voxels with this label are left out of the sums (see below).
        region_ignore_channel: region mode: target has one extra last channel, 1 where the voxel is ignored
            (nnU-Net's layout for regions with an ignore label); target (B, R + 1, *sp).

    Ignored voxels (sparse annotations): the prediction's skeleton S(P) is computed on the whole prediction, as
    without an ignore label, and the ignored voxels are masked in the sums (``sum S(P)`` runs over valid voxels
    only). Zeroing P there before skeletonizing would erode S(P) at every border of the annotated area and, for
    scattered annotations, turn S(P) into the annotation pattern itself. The target is unknown at ignored voxels:
    L is 0 there, so S(L) lies in the annotated voxels.
    """

    #: skeleton function (x, iterations) -> skeleton; the benchmark swaps in the reference here.
    skeletonize: Callable[[torch.Tensor, int], torch.Tensor] = staticmethod(soft_skeletonize)

    def __init__(self, region_mode: bool = False, iterations: int = 10, smooth: float = 1.0,
                 batch_dice: bool = False, ddp: bool = False, ignore_label: int | None = None,
                 region_ignore_channel: bool = False):
        super().__init__()
        _check_iterations(iterations)
        if not smooth > 0:
            raise ValueError(f"smooth must be > 0 (it makes empty classes finite), got {smooth}")
        if ignore_label is not None and (isinstance(ignore_label, bool) or not isinstance(ignore_label, int)):
            raise ValueError(f"ignore_label must be an int or None, got {ignore_label!r}")
        if region_mode and ignore_label is not None:
            raise ValueError("ignore_label is for label mode; in region mode pass region_ignore_channel=True and "
                             "give the ignore mask as the target's last channel")
        if region_ignore_channel and not region_mode:
            raise ValueError("region_ignore_channel=True needs region_mode=True; in label mode use ignore_label")
        self.region_mode, self.iterations, self.smooth = region_mode, iterations, float(smooth)
        self.batch_dice, self.ddp = batch_dice, ddp
        self.ignore_label, self.region_ignore_channel = ignore_label, region_ignore_channel

    def _probs_and_target(self, logits: torch.Tensor,
                          target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(P, L, valid): P and L (B, K, *sp) in logits' dtype, L zeroed at ignored voxels; valid (B, 1, *sp) in
        logits' dtype (1 = annotated), None without an ignore label."""
        n_channels = logits.shape[1]
        valid: torch.Tensor | None = None
        if self.region_mode:
            expected = n_channels + (1 if self.region_ignore_channel else 0)
            if target.shape[1] != expected:
                extra = " plus the ignore channel" if self.region_ignore_channel else ""
                raise ValueError(f"region mode: target has {target.shape[1]} channels, expected {expected} "
                                 f"({n_channels} regions{extra})")
            if self.region_ignore_channel:
                valid = ~target[:, -1:].bool()
                target = target[:, :-1]
            probs = torch.sigmoid(logits)
            labels = target.bool()
        else:
            if target.shape[1] != 1:
                raise ValueError(f"label mode expects a (B, 1, *spatial) label map, got {tuple(target.shape)}")
            labels_int = target.long()
            if self.ignore_label is not None:
                valid = labels_int != self.ignore_label
                labels_int = labels_int.masked_fill(~valid, 0)
            labels = foreground_one_hot(labels_int, n_channels, what="target labels")
            probs = torch.softmax(logits, 1)[:, 1:]
        if valid is not None:
            labels = labels & valid
            valid = valid.to(probs.dtype)
        return probs, labels.to(probs.dtype), valid

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """output (B, C, *sp) logits, target (B, 1 | R | R + 1, *sp) -> scalar loss in [0, 1]."""
        logits = checked_logits(output, target, self.region_mode, only_2d_3d=True)
        probs, labels, valid = self._probs_and_target(logits, target)
        skel_pred = self.skeletonize(probs, self.iterations)
        with torch.no_grad():
            skel_true = self.skeletonize(labels, self.iterations)
        axes = tuple(range(2, output.ndim))
        # L and S(L) are 0 at ignored voxels, so only sum S(P) needs the mask
        counted_pred = skel_pred if valid is None else skel_pred * valid
        sums = [(skel_pred * labels).sum(axes), counted_pred.sum(axes), (skel_true * probs).sum(axes),
                skel_true.sum(axes)]
        sums = reduce_sums(sums, self.batch_dice, self.ddp)
        s = self.smooth
        tprec = (sums[0] + s) / (sums[1] + s)
        tsens = (sums[2] + s) / (sums[3] + s)
        cl_dice = 2 * tprec * tsens / (tprec + tsens)
        return 1 - cl_dice.mean()

