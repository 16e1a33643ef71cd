"""Topology metrics of binary masks: clDice and Betti-number errors (TopCoW conventions).

Dimensionality
    Every axis of length 1 is dropped first (:func:`spatial_squeeze`): nnU-Net's readers return
    ``(C, X, Y, Z)`` with ``C == 1`` for segmentations, and 2D images as ``(1, 1, X, Y)``; both become
    their real 2D/3D shape. A 3D volume that is one voxel thick along an axis is therefore evaluated as
    2D. That is lossless: with the connectivities below, a one-voxel-thick slab has the same Betti
    numbers in 2D and in 3D (b2 is always 0 there). The decision uses the shape only, so prediction and
    reference (same shape) always get the same dimensionality.

Betti numbers (:func:`betti_numbers`), after padding the mask with one voxel of background
    - 2D: b0 = 8-connected foreground components; b1 = 4-connected background components - 1.
    - 3D: b0 = 26-connected foreground components; b2 = 6-connected background components - 1;
      b1 = b0 + b2 - Euler number (``skimage.measure.euler_number(mask, connectivity=3)``).

clDice (:func:`cldice`), S = skeleton (``skimage.morphology.skeletonize``, 2D and 3D)
    tprec = |S(P) ∩ L| / |S(P)|, tsens = |S(L) ∩ P| / |S(L)|, clDice = 2 tprec tsens / (tprec + tsens).
    Empty cases:
    - prediction and reference both empty: NaN, like nnU-Net's Dice (``tp + fp + fn == 0`` gives NaN in
      ``nnunetv2.evaluation.evaluate_predictions.compute_metrics``); means then skip the case
      (``np.nanmean``), exactly as nnU-Net's means skip empty-empty Dice values;
    - exactly one of them empty: 0.0;
    - tprec + tsens == 0 (no overlap of skeletons and masks): 0.0;
    - a foreground component whose skeleton is empty (blobs of a few voxels, e.g. a 2x2x2 cube, thin
      away completely in 3D) is its own skeleton, so that it still counts.
    Betti errors are always defined (empty masks have all Betti numbers 0), never NaN.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import cc3d
import numpy as np
from skimage.measure import euler_number
from skimage.morphology import skeletonize

METRIC_KEYS_2D = ("Dice", "clDice", "Betti0_error", "Betti1_error")
METRIC_KEYS_3D = METRIC_KEYS_2D + ("Betti2_error",)


def spatial_squeeze(array: np.ndarray) -> np.ndarray:
    """Drop every length-1 axis (channel axis, singleton slice axis); returns a 2D or 3D array."""
    array = np.asarray(array)
    squeezed = np.squeeze(array)
    if squeezed.ndim < 2:  # a single row/voxel: keep it as a 2D image
        squeezed = squeezed.reshape((1,) * (2 - squeezed.ndim) + squeezed.shape)
    if squeezed.ndim > 3:
        raise ValueError(
            f"expected a 2D or 3D segmentation (optionally with length-1 axes such as nnU-Net's channel axis), "
            f"got shape {array.shape}. Pass a single channel, e.g. seg[0].")
    return squeezed


def _as_mask(mask: np.ndarray) -> np.ndarray:
    mask = spatial_squeeze(mask)
    return mask if mask.dtype == bool else mask != 0


def _pair(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if np.shape(pred_mask) != np.shape(ref_mask):
        raise ValueError(f"prediction shape {np.shape(pred_mask)} differs from reference shape "
                         f"{np.shape(ref_mask)}: resample the prediction onto the reference grid first.")
    return _as_mask(pred_mask), _as_mask(ref_mask)


def _crop(*masks: np.ndarray) -> tuple[np.ndarray, ...]:
    """Crop all masks to the bounding box of their union plus a one-voxel margin (topology unchanged)."""
    union = np.logical_or.reduce(masks)
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hit = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(hit[0] - 1, 0), hit[-1] + 2))
    return tuple(m[tuple(box)] for m in masks)


def betti_numbers(mask: np.ndarray) -> tuple[int, ...]:
    """(b0, b1) of a 2D mask, (b0, b1, b2) of a 3D mask (nonzero = foreground; see module docstring)."""
    mask = _as_mask(mask)
    if not mask.any():
        return (0,) * mask.ndim
    padded = np.pad(_crop(mask)[0], 1).astype(np.uint8)
    background = 1 - padded
    if mask.ndim == 2:
        _, b0 = cc3d.connected_components(padded, connectivity=8, return_N=True)
        _, n_background = cc3d.connected_components(background, connectivity=4, return_N=True)
        return int(b0), int(n_background) - 1
    _, b0 = cc3d.connected_components(padded, connectivity=26, return_N=True)
    _, n_background = cc3d.connected_components(background, connectivity=6, return_N=True)
    b2 = int(n_background) - 1
    b1 = int(b0) + b2 - int(euler_number(padded, connectivity=3))
    return int(b0), b1, b2


def betti_errors(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[int, ...]:
    """|b_pred - b_ref| per Betti number: (e0, e1) in 2D, (e0, e1, e2) in 3D."""
    pred, ref = _pair(pred_mask, ref_mask)
    return tuple(abs(p - r) for p, r in zip(betti_numbers(pred), betti_numbers(ref)))


def _skeleton(mask: np.ndarray) -> np.ndarray:
    """Skeleton of a mask; components that thin away completely are kept whole."""
    skeleton = skeletonize(mask)
    components, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=8 if mask.ndim == 2 else 26,
                                              return_N=True)
    if n:
        with_skeleton = np.zeros(n + 1, bool)
        with_skeleton[components[skeleton]] = True
        with_skeleton[0] = True  # background
        skeleton = skeleton | ~with_skeleton[components]
    return skeleton


def cldice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """clDice of two binary masks (NaN if both empty, 0.0 if one is; see module docstring)."""
    pred, ref = _pair(pred_mask, ref_mask)
    pred_any, ref_any = pred.any(), ref.any()
    if not pred_any and not ref_any:
        return float("nan")
    if not pred_any or not ref_any:
        return 0.0
    pred, ref = _crop(pred, ref)
    skel_pred, skel_ref = _skeleton(pred), _skeleton(ref)
    tprec = np.count_nonzero(skel_pred & ref) / np.count_nonzero(skel_pred)
    tsens = np.count_nonzero(skel_ref & pred) / np.count_nonzero(skel_ref)
    if tprec + tsens == 0:
        return 0.0
    return float(2 * tprec * tsens / (tprec + tsens))


def _hashable(label_or_region) -> Hashable:
    if isinstance(label_or_region, (list, tuple, np.ndarray)):
        return tuple(int(i) for i in label_or_region)
    return int(label_or_region)


def topology_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray,
                     labels_or_regions: Sequence[int | Sequence[int]],
                     ignore_label: int | None = None) -> dict[Hashable, dict[str, float]]:
    """Per label/region: Dice, clDice, Betti0_error, Betti1_error (and Betti2_error in 3D).

    ``pred_labels``/``ref_labels`` are label maps of equal shape (length-1 axes are dropped, see
    :func:`spatial_squeeze`); a region is a sequence of labels (keys become tuples). Dice is nnU-Net's
    own (``compute_tp_fp_fn_tn``, NaN if both masks are empty, ignore-label voxels excluded). For the
    topology metrics, voxels where the reference has ``ignore_label`` are set to background in both masks.
    """
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask

    if np.shape(pred_labels) != np.shape(ref_labels):
        raise ValueError(f"prediction shape {np.shape(pred_labels)} differs from reference shape "
                         f"{np.shape(ref_labels)}: resample the prediction onto the reference grid first.")
    pred, ref = spatial_squeeze(pred_labels), spatial_squeeze(ref_labels)
    ignore = ref == ignore_label if ignore_label is not None else None
    results: dict[Hashable, dict[str, float]] = {}
    for key in map(_hashable, labels_or_regions):
        mask_ref = region_or_label_to_mask(ref, key)
        mask_pred = region_or_label_to_mask(pred, key)
        tp, fp, fn, _ = compute_tp_fp_fn_tn(mask_ref, mask_pred, ignore)
        metrics = {"Dice": float("nan") if tp + fp + fn == 0 else float(2 * tp / (2 * tp + fp + fn))}
        if ignore is not None:
            mask_ref, mask_pred = mask_ref & ~ignore, mask_pred & ~ignore
        metrics["clDice"] = cldice(mask_pred, mask_ref)
        for i, error in enumerate(betti_errors(mask_pred, mask_ref)):
            metrics[f"Betti{i}_error"] = int(error)
        results[key] = metrics
    return results
