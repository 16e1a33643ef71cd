"""LED, local error density weighting (after Huang & Jain, arXiv 1310.0354), on nnU-Net's Dice + CE.

The paper weights training examples by the density of the current model's errors around them: clustered errors
merge or split objects, isolated ones rarely do. It gives the idea, not a formula. The one shipped here, per
sample, over its valid (non-ignored) voxels V:

* error map ``e(x) = [prediction(x) != y(x)]`` for x in V, else 0, without gradient. Label mode: prediction =
  argmax over the C logits (a tie between the label and another class counts as correct); region mode
  (sigmoid outputs): e = 1 where any region's ``[logit > 0]`` differs from its binary target;
* in a centred box ``W(x)`` of ``window`` voxels per axis (odd, per axis for anisotropic data, see
  :func:`led_window`): ``n_err(x) = sum_{W(x)} e``, ``n_valid(x) = |W(x) ∩ V|`` (volume border and ignored
  voxels excluded) and the local density ``rho(x) = n_err(x) / n_valid(x)``;
* ``raw(x) = min(1 + alpha * rho(x) * [n_err(x) >= 2], max_weight)``: only where rho exceeds the density of a
  single isolated error in that window (``1 / n_valid``, i.e. at least two errors in the box) does a voxel get
  extra weight, so isolated errors leave every weight at 1;
* ``w(x) = raw(x) / mean_V(raw)`` on V, 0 elsewhere: mean exactly 1 over the valid voxels of each sample and,
  as ``mean_V(raw) >= 1``, ``0 <= w <= max_weight``;
* warm-up: ``strength`` s in [0, 1] (set by the trainer per epoch) blends ``w_s = 1 + s * (w - 1)`` on V (mean
  still 1); with s = 0 the wrapped nnU-Net loss is called unchanged.

The weights multiply the voxel-wise term (CE, or BCE in region mode) only; Dice is nnU-Net's, unchanged.
Defaults: ``window=7`` (per axis, at full resolution), ``alpha=10``, ``max_weight=10``; untuned starting points.
In 3D a dense 7^3 cluster reaches the clip, a filled 7x7 sheet of errors (a missed membrane patch) gets
``1 + 10 * 49 / 343 = 2.4`` before normalisation.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss

from nnunet_ext.losses.weighted_ce import VoxelWeightedDiceCELoss

Window = Union[int, Sequence[int]]


def led_window(physical_size: float | Sequence[float], spacing: Sequence[float]) -> tuple[int, ...]:
    """Odd window in voxels per axis covering about ``physical_size`` (same unit as ``spacing``, e.g. mm) per axis:
    the odd integer nearest to ``physical_size / spacing`` (ties upwards). E.g. 2 mm at spacing (3, 0.5, 0.5) ->
    (1, 5, 5)."""
    sizes = [float(physical_size)] * len(spacing) if isinstance(physical_size, (int, float)) else list(physical_size)
    if len(sizes) != len(spacing) or not all(s > 0 and math.isfinite(s) for s in list(sizes) + list(spacing)):
        raise ValueError(f"physical_size (a number or one per axis) and spacing must be positive and finite with "
                         f"matching lengths, got {physical_size!r} and {spacing!r}")
    return tuple(_nearest_odd(s / d) for s, d in zip(sizes, spacing))


def _nearest_odd(value: float) -> int:
    """The odd integer nearest to ``value`` (``2 * floor(value / 2) + 1``: an even value goes up), at least 1."""
    return max(1, 2 * math.floor(value / 2) + 1)


def _checked_window(window: Window, n_axes: int | None = None) -> tuple[int, ...]:
    values = (window,) if isinstance(window, int) else tuple(window)
    if not values or any(isinstance(w, bool) or int(w) != w or w < 1 or w % 2 == 0 for w in values):
        raise ValueError(f"window must be an odd int >= 1 or one odd int per spatial axis (a centred box), got "
                         f"{window!r}; led_window(physical_size, spacing) converts a physical size")
    values = tuple(int(w) for w in values)
    if n_axes is not None:
        if len(values) == 1:
            values = values * n_axes
        elif len(values) != n_axes:
            raise ValueError(f"window has {len(values)} entries for {n_axes} spatial axes: give one int or "
                             f"{n_axes} ints")
    return values


def _check_knobs(alpha: float, max_weight: float) -> None:
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0 (0 switches LED off), got {alpha!r}")
    if not (math.isfinite(max_weight) and max_weight >= 1):
        raise ValueError(f"max_weight must be a finite number >= 1 (weights are clipped to it), got {max_weight!r}")


def box_sum(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Sum of (B, C, *sp) float ``x`` over a centred box of odd ``window`` per axis, zero outside the volume.

    Separable: per axis, a cumulative sum of the zero-padded axis differenced ``w`` apart (cost independent of
    the window; exact for 0/1 maps, whose partial sums are small integers)."""
    for axis, size in enumerate(window):
        if size == 1:
            continue
        dim, length = axis + 2, x.shape[axis + 2]
        pad = [0, 0] * (x.ndim - 2)
        pad[2 * (x.ndim - 1 - dim)], pad[2 * (x.ndim - 1 - dim) + 1] = size // 2 + 1, size // 2
        running = torch.cumsum(F.pad(x, pad), dim)
        x = running.narrow(dim, size, length) - running.narrow(dim, 0, length)
    return x


def led_weights_from_errors(errors: torch.Tensor, valid: torch.Tensor | None, window: Window, alpha: float = 10.0,
                            max_weight: float = 10.0) -> torch.Tensor:
    """LED weights (see the module docstring) from a (B, 1, *sp) error map (bool or 0/1) and an optional
    (B, 1, *sp) bool mask of valid voxels (None: all valid). Returns (B, 1, *sp) float32, no gradient."""
    if errors.ndim < 3 or errors.shape[1] != 1:
        raise ValueError(f"errors must be a (B, 1, *spatial) map, got {tuple(errors.shape)}")
    if valid is not None and valid.shape != errors.shape:
        raise ValueError(f"valid {tuple(valid.shape)} must have the shape of errors {tuple(errors.shape)}")
    window = _checked_window(window, errors.ndim - 2)
    _check_knobs(alpha, max_weight)
    with torch.no_grad():
        valid_f = torch.ones(errors.shape, dtype=torch.float32, device=errors.device) if valid is None \
            else valid.to(torch.float32)
        errors_f = errors.to(torch.float32) * valid_f
        n_err = box_sum(errors_f, window)
        n_valid = box_sum(valid_f, window)
        rho = n_err / n_valid.clamp_min(1.0)
        clustered = (n_err > 1.5).to(torch.float32)  # sums of 0/1 values: > 1.5 means at least two errors
        raw = (1.0 + alpha * rho * clustered).clamp_max(max_weight) * valid_f
        spatial = tuple(range(1, raw.ndim))
        mean = raw.sum(spatial, keepdim=True) / valid_f.sum(spatial, keepdim=True).clamp_min(1.0)
        return raw / mean.clamp_min(1.0)  # mean >= 1 where a sample has valid voxels; all-ignored samples stay 0


def prediction_errors(logits: torch.Tensor, target: torch.Tensor, ignore_label: int | None = None,
                      region_mode: bool = False, ignore_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(errors, valid), both (B, 1, *sp) bool, from (B, C, *sp) logits.

    Label mode: ``target`` (B, 1, *sp) labels, voxels equal to ``ignore_label`` invalid (and never errors).
    Region mode: ``target`` (B, R, *sp) binary regions plus, with ``ignore_channel``, a last channel that is
    1 where voxels are ignored (nnU-Net's DC_and_BCE_loss layout); error = any region's ``[logit > 0]`` wrong."""
    if logits.ndim < 3 or target.ndim != logits.ndim or target.shape[0] != logits.shape[0] \
            or target.shape[2:] != logits.shape[2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must be (B, C, *spatial) "
                         "and (B, K, *spatial) with the same batch and spatial size")
    with torch.no_grad():
        logits = logits.detach()
        if region_mode:
            regions = target[:, :-1] if ignore_channel else target
            if regions.shape[1] != logits.shape[1]:
                raise ValueError(f"region mode: target has {regions.shape[1]} region channel(s) (after removing the "
                                 f"ignore channel: {ignore_channel}) for {logits.shape[1]} outputs")
            valid = target[:, -1:] == 0 if ignore_channel else torch.ones_like(target[:, :1], dtype=torch.bool)
            errors = ((logits > 0) != (regions > 0.5)).any(1, keepdim=True) & valid
        else:
            if target.shape[1] != 1:
                raise ValueError(f"label mode expects a (B, 1, *spatial) label map, got {tuple(target.shape)}")
            labels = target.long()
            valid = labels != ignore_label if ignore_label is not None else torch.ones_like(labels, dtype=torch.bool)
            labels = torch.where(valid, labels, 0)
            # argmax != label, as "the label's logit is below the maximum" (much faster than argmax on the CPU)
            errors = (logits.gather(1, labels) < logits.amax(1, keepdim=True)) & valid
    return errors, valid


def led_weights(logits: torch.Tensor, target: torch.Tensor, window: Window, alpha: float = 10.0,
                max_weight: float = 10.0, ignore_label: int | None = None, region_mode: bool = False,
                ignore_channel: bool = False) -> torch.Tensor:
    """LED weights (B, 1, *sp) for (B, C, *sp) logits and their target (see :func:`prediction_errors` for the
    label and region layouts, :func:`led_weights_from_errors` for the weighting). No gradient."""
    errors, valid = prediction_errors(logits, target, ignore_label, region_mode, ignore_channel)
    return led_weights_from_errors(errors, valid, window, alpha, max_weight)


class LEDWeightedDiceCELoss(VoxelWeightedDiceCELoss):
    """``weight_dice * Dice + weight_ce * sum_V w CE / |V|`` from an nnU-Net DC_and_CE_loss or DC_and_BCE_loss.

    output: (B, C, *sp) logits; target: what the wrapped nnU-Net loss takes (labels (B, 1, *sp), or regions
    with nnU-Net's ignore channel last). Dice, its weights and the ignore handling are the wrapped loss's; the
    cross-entropy (BCE over regions in region mode, reduced over regions as nnU-Net does) is weighted voxel by
    voxel with the LED weights w of the output's own errors (module docstring) and averaged over the valid
    voxels V of the batch. With ``strength = 0`` it returns the wrapped loss itself; with w = 1 it equals it.

    Deep supervision (nnU-Net's DeepSupervisionWrapper calls this once per scale): ``window`` is given at full
    resolution. With ``patch_size`` (the plans' patch), an output of spatial shape s uses per axis the odd
    window nearest to ``window * s / patch_size`` (ties upwards, at least 1); without it every scale uses
    ``window`` voxels.
    """

    def __init__(self, nnunet_loss: DC_and_CE_loss | DC_and_BCE_loss, window: Window = 7, alpha: float = 10.0,
                 max_weight: float = 10.0, strength: float = 1.0, patch_size: Sequence[int] | None = None):
        super().__init__(nnunet_loss)
        _check_knobs(alpha, max_weight)
        self.window = _checked_window(window)
        if patch_size is not None:
            patch_size = tuple(int(p) for p in patch_size)
            if any(p < 1 for p in patch_size) or len(self.window) not in (1, len(patch_size)):
                raise ValueError(f"patch_size must be positive ints, one per axis of the window {self.window}, "
                                 f"got {patch_size!r}")
        self.patch_size = patch_size
        self.alpha, self.max_weight = float(alpha), float(max_weight)
        self.strength = strength

    @property
    def strength(self) -> float:
        """Warm-up blend s in [0, 1]: weights ``1 + s * (w - 1)``; 0 = nnU-Net's loss unchanged."""
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        if isinstance(value, bool) or not (0.0 <= float(value) <= 1.0):
            raise ValueError(f"strength must be a number in [0, 1] (0: LED off, 1: full LED weights), got {value!r}")
        self._strength = float(value)

    @property
    def active(self) -> bool:
        return self._strength > 0

    @active.setter
    def active(self, value: bool) -> None:
        self.strength = 1.0 if value else 0.0

    def window_for(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The window used for an output of this spatial shape (see the class docstring)."""
        window = _checked_window(self.window, len(spatial_shape))
        if self.patch_size is None:
            return window
        if len(self.patch_size) != len(spatial_shape):
            raise ValueError(f"patch_size {self.patch_size} and output spatial shape {tuple(spatial_shape)} differ "
                             "in the number of axes")
        return tuple(_nearest_odd(w * s / p) for w, s, p in zip(window, spatial_shape, self.patch_size))

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._strength == 0:
            return self.nnunet_loss(output, target)
        return super().forward(output, target)

    def voxel_weights(self, logits: torch.Tensor, target: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        base = self.nnunet_loss
        window = self.window_for(logits.shape[2:])
        if self.region_mode:
            weights = led_weights(logits, target, window, self.alpha, self.max_weight, region_mode=True,
                                  ignore_channel=base.use_ignore_label)
        else:
            weights = led_weights(logits, target, window, self.alpha, self.max_weight, ignore_label=base.ignore_label)
        if self._strength < 1:
            weights = 1.0 + self._strength * (weights - 1.0)  # mean over the valid voxels stays 1
        return weights
