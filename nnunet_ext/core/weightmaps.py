"""Separation-border weight map of the original U-Net (Ronneberger et al., MICCAI 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

- objects: the connected components (full connectivity: 8 in 2D, 26 in 3D) of every foreground class
  separately (label > 0, the ignore label excluded; touching objects of different classes stay separate),
  or the ids of ``instances`` when given;
- d1, d2: Euclidean distances, in physical units (``spacing``), from x to the nearest and the second-nearest
  object (distance to an object = distance to its nearest voxel). The border term is added only on
  background voxels (label 0) and only when there are at least two objects;
- w_c: class-balancing weight. By default every class present (background included) gets the same total
  weight: ``w_c = n_valid / (n_classes_present * count_c)`` with n_valid the number of non-ignore voxels,
  so the map sums to n_valid over the classes alone. A dict ``{label: weight}`` sets w_c explicitly
  (labels missing from it get 1.0);
- ignore-label voxels get weight 0 (no class weight, no border term) and are not part of any object.

Fast path (:func:`border_weight_map`): each object's distance transform is computed only inside its
bounding box expanded by the margin M = sigma * sqrt(2 ln(w0 / tolerance)) (physical units; M = 0 when
tolerance >= w0), and the two smallest distances per voxel are kept with ``np.minimum`` updates.

Error bound. Outside an object's expanded box the distance to that object is > M. Inside, the distance is
exact. So the fast d1', d2' are the two smallest of a subset of the exact distances: d1' >= d1, d2' >= d2,
and the fast border term never exceeds the exact one. Where d2 <= M both nearest objects have their box
over x and every object left out is farther than M >= d2, so d1' = d1, d2' = d2 (exact). Where d2 > M the
exact term is w0 exp(-(d1 + d2)^2 / (2 sigma^2)) <= w0 exp(-M^2 / (2 sigma^2)) = tolerance. Hence

    0 <= border_weight_map(..., exact=True) - border_weight_map(...) <= tolerance   (absolute, every voxel)

(plus float32 rounding). ``exact=True`` is the reference: one full-image distance transform per object.
"""
from __future__ import annotations

import math
from typing import Sequence

import cc3d
import numpy as np
from scipy import ndimage

from nnunet_ext.core.boxes import label_boxes
from nnunet_ext.core.labelmaps import validated_label_map

__all__ = ["border_weight_map", "border_margin", "two_nearest_distances", "class_balance_weights", "relative_spacing"]


# ------------------------------------------------------------------------------------------ validation

def _validated_seg(seg: np.ndarray) -> np.ndarray:
    seg = validated_label_map(seg, "border_weight_map")
    if seg.dtype == bool:
        seg = seg.astype(np.uint8)
    if seg.size and seg.min() < 0:
        raise ValueError(f"border_weight_map expects labels >= 0, got minimum {seg.min()}. "
                         "Map negative labels (e.g. nnU-Net's -1 outside the mask) to 0 or to the ignore label first.")
    return seg


def _validated_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing has {len(spacing)} entries but seg is {ndim}D; give one spacing per spatial axis "
                         "(no channel axis).")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be finite and > 0 on every axis, got {spacing}.")
    return spacing


def _validated_instances(instances: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.shape != shape:
        raise ValueError(f"instances must have seg's shape {shape}, got {instances.shape}.")
    if instances.dtype == bool:
        instances = instances.astype(np.uint8)
    if not np.issubdtype(instances.dtype, np.integer):
        raise TypeError(f"instances must be an integer id map (0 = none), got dtype {instances.dtype}. "
                        "Cast it first, e.g. instances.astype(np.int32).")
    if instances.size and instances.min() < 0:
        raise ValueError(f"instance ids must be >= 0 (0 = no instance), got minimum {instances.min()}.")
    return instances


def relative_spacing(spacing: Sequence[float]) -> tuple[float, ...]:
    """``spacing`` divided by its smallest entry: distances in voxels of the finest axis, physical ratios kept.
    (0.8, 0.8, 4.0) -> (1.0, 1.0, 5.0)."""
    spacing = _validated_spacing(spacing, len(spacing))
    finest = min(spacing)
    return tuple(s / finest for s in spacing)


def border_margin(w0: float, sigma: float, tolerance: float) -> float:
    """Physical distance M beyond which the border term is <= tolerance: w0 exp(-M^2/(2 sigma^2)) = tolerance.

    0 when tolerance >= w0 (the term never exceeds w0).
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be finite and > 0, got {sigma}.")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be finite and > 0, got {tolerance}; use exact=True for the exact map.")
    if w0 <= tolerance:
        return 0.0
    return sigma * math.sqrt(2.0 * math.log(w0 / tolerance))


# --------------------------------------------------------------------------------------------- pieces

def two_nearest_distances(objects: np.ndarray, spacing: Sequence[float] | None = None,
                          margin: float | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Distances (physical units) from every voxel to its nearest and second-nearest object.

    objects: (X, Y[, Z]) integer id map, 0 = no object. margin: None = exact (full-image distance transform
    per object); a number M = each object's transform only inside its bounding box grown by floor(M / spacing)
    + 1 voxels per side, so objects left out of a voxel are farther than M (their distance reads as inf).
    Returns (d1, d2, n_objects); d1, d2 float64 of objects' shape, inf where fewer objects were seen.
    """
    objects = np.asarray(objects)
    spacing = _validated_spacing(spacing, objects.ndim)
    d1 = np.full(objects.shape, np.inf)
    d2 = np.full(objects.shape, np.inf)
    ids, boxes = label_boxes(objects)
    if margin is not None:
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0 or None, got {margin}.")
        pad = [int(math.floor(margin / s)) + 1 for s in spacing]
    full = tuple(slice(0, n) for n in objects.shape)
    for obj_id, box in zip(ids, boxes):
        if margin is None:
            grown = full
        else:
            grown = tuple(slice(max(b.start - p, 0), min(b.stop + p, n))
                          for b, p, n in zip(box, pad, objects.shape))
        dist = ndimage.distance_transform_edt(objects[grown] != obj_id, sampling=spacing)
        near, second = d1[grown], d2[grown]  # views
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    return d1, d2, len(ids)


def class_balance_weights(seg: np.ndarray, ignore_label: int | None = None) -> dict[int, float]:
    """{label: n_valid / (n_classes_present * count_label)} over the non-ignore voxels (background included)."""
    seg = _validated_seg(seg)
    values = seg[seg != ignore_label] if ignore_label is not None else seg.ravel()
    counts = np.bincount(values.ravel().astype(np.intp, copy=False))
    present = np.flatnonzero(counts)
    if present.size == 0:
        return {}
    return {int(c): float(values.size / (present.size * counts[c])) for c in present}


# ------------------------------------------------------------------------------------------------ map

def border_weight_map(seg: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
                      class_weights: dict[int, float] | None = None, spacing: Sequence[float] | None = None,
                      instances: np.ndarray | None = None, ignore_label: int | None = None, *,
                      tolerance: float = 1e-3, exact: bool = False) -> np.ndarray:
    """U-Net border weight map w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2)); see the module docstring.

    seg: (X, Y) or (X, Y, Z) integer label map (>= 0) without channel axis. sigma and the distances are in
    physical units of ``spacing`` (default 1 per axis = voxels). class_weights: None = balanced
    (n_valid / (n_classes_present * count_c)), or {label: w_c} with missing labels at 1.0. instances: same
    shape, integer ids (0 = none) used as the objects instead of per-class connected components. The border
    term is added on background voxels (seg == 0, and instances == 0 when given) when >= 2 objects exist;
    ignore-label voxels are 0 and belong to no object.
    tolerance: absolute bound on the fast path's error (it underestimates the border term by at most this);
    exact=True: full-image distance transform per object (slow reference).
    Returns float32, seg's shape.
    """
    seg = _validated_seg(seg)
    spacing_t = _validated_spacing(spacing, seg.ndim)
    if not (math.isfinite(w0) and w0 >= 0):
        raise ValueError(f"w0 must be finite and >= 0, got {w0}.")
    margin = border_margin(w0, sigma, tolerance)
    if ignore_label is not None and int(ignore_label) <= 0:
        raise ValueError(f"ignore_label must be a positive label (0 is background), got {ignore_label}.")
    ignore = (seg == ignore_label) if ignore_label is not None else None

    # class weights: a lookup table over the labels
    if class_weights is None:
        class_weights = class_balance_weights(seg, ignore_label)
    elif not isinstance(class_weights, dict):
        raise TypeError(f"class_weights must be a dict {{label: weight}} or None, got {type(class_weights).__name__}.")
    lut = np.ones(int(seg.max(initial=0)) + 1, dtype=np.float64)
    for label, weight in class_weights.items():
        if not math.isfinite(float(weight)):
            raise ValueError(f"class_weights[{label}] must be finite, got {weight}.")
        if 0 <= int(label) < lut.size:
            lut[int(label)] = float(weight)
    weights = lut[seg]
    if ignore is not None:
        weights[ignore] = 0.0

    # objects
    if instances is not None:
        objects = _validated_instances(instances, seg.shape)
        if ignore is not None:
            objects = np.where(ignore, 0, objects)
        background = (seg == 0) & (objects == 0)
    else:
        labels = seg if ignore is None else np.where(ignore, 0, seg)
        objects = cc3d.connected_components(labels, connectivity=26 if seg.ndim == 3 else 8)
        background = seg == 0

    if w0 > 0 and background.any():
        d1, d2, n_objects = two_nearest_distances(objects, spacing_t, None if exact else margin)
        if n_objects >= 2:
            total = d1[background] + d2[background]  # inf where fewer than two objects are within reach
            weights[background] += w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))
    return weights.astype(np.float32)
