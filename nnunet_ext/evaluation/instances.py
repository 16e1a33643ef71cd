"""EM instance metrics from scikit-image: adapted Rand error and variation of information (split and merge).

Instances
    By default the connected components of each label map (``cc3d.connected_components`` at
    ``connectivity``, default ``"full"``: 8 / 26; voxels of different labels never join, so a binary mask
    gives its components and a semantic map its per-class components); with ``ref_is_instances`` /
    ``pred_is_instances`` the map's own ids are the instances (0 = background). Length-1 axes are dropped.

Counted voxels
    ``ignore_background=True`` (default; SNEMI3D/CREMI, and scikit-image's ``adapted_rand_error`` default
    ``ignore_labels=(0,)``): only voxels inside reference instances count. scikit-image's
    ``variation_of_information`` ignores nothing unless told, so both metrics are computed here on the same
    counted voxels (passed with ``ignore_labels=()``). ``False``: every voxel counts and background is one
    segment in both maps.
    ``prediction_background`` (only with ``ignore_background``): ``"singletons"`` (default, as the SNEMI3D/CREMI
    reference scripts do) makes each counted voxel that the prediction calls background its own segment, so a
    missed object is penalised; ``"segment"`` keeps it one segment, scikit-image's behaviour, where an empty
    prediction of a one-object reference scores ARE = 0 (all its voxels "agree" as label 0).

Definitions (verified against hand-computed pair counts on scikit-image 0.26; the tests pin them down).
Contingency n_ij = voxels of reference instance i and predicted segment j, a_i = sum_j n_ij,
b_j = sum_i n_ij, over the counted voxels; pairs are ordered voxel pairs, n (n - 1)
    - ``ARE_precision`` = sum n_ij (n_ij - 1) / sum_j b_j (b_j - 1): of the voxel pairs the prediction puts
      together, the fraction the reference also puts together (low when the prediction *merges*).
      scikit-image returns it as its **third** value, which its docs call ``rec``.
    - ``ARE_recall`` = sum n_ij (n_ij - 1) / sum_i a_i (a_i - 1): of the pairs the reference puts together,
      the fraction the prediction keeps together (low when the prediction *splits*). scikit-image's **second**
      value, documented as ``prec`` (the names in its docs are swapped).
    - ``ARE`` = 1 - F with F = 2 sum n_ij (n_ij - 1) / (sum a_i (a_i - 1) + sum b_j (b_j - 1)) (alpha = 0.5).
    - ``VI_split`` = H(prediction | reference), ``VI_merge`` = H(reference | prediction), in bits;
      ``VI`` = their sum. ``skimage.metrics.variation_of_information(ref, pred)`` returns
      (H(pred | ref), H(ref | pred)) in this order.
Empty cases: every metric NaN when both maps are empty, and with ``ignore_background`` whenever the reference
is empty (no voxel is counted: false-positive objects are invisible under that convention, read the component
metrics for them). ARE_recall is NaN when no two counted voxels share a reference instance, ARE_precision when no two share
a predicted segment (e.g. a missed object with singletons: precision NaN, recall 0, ARE 1), ARE when both.
"""
from __future__ import annotations

import math
import warnings

import cc3d
import numpy as np
from skimage.metrics import adapted_rand_error, variation_of_information

from nnunet_ext.evaluation.conventions import resolve_connectivity
from nnunet_ext.evaluation.topology import spatial_squeeze

INSTANCE_KEYS = ("ARE", "ARE_precision", "ARE_recall", "VI", "VI_split", "VI_merge")


def _instances(labels: np.ndarray, is_instances: bool, connectivity: int | str) -> np.ndarray:
    if is_instances:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iub" or (labels.dtype.kind == "i" and labels.min(initial=0) < 0):
            raise ValueError("instance maps must hold non-negative integer ids (0 = background)")
        return labels.astype(np.int64, copy=False)
    conn = resolve_connectivity(connectivity, labels.ndim, allow_18=True)
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    elif labels.dtype.kind == "f":  # cc3d wants integer labels (nnU-Net's readers return float32)
        labels = labels.astype(np.int64)
    return cc3d.connected_components(np.ascontiguousarray(labels), connectivity=conn).astype(np.int64, copy=False)


def _crop_nonzero(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    union = np.logical_or.reduce([np.asarray(a) != 0 for a in arrays])
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(max(hit[0] - 1, 0), hit[-1] + 2))
    return tuple(np.asarray(a)[tuple(box)] for a in arrays)


def instance_metrics(pred: np.ndarray, ref: np.ndarray, pred_is_instances: bool = False,
                     ref_is_instances: bool = False, connectivity: int | str = "full",
                     ignore_background: bool = True, prediction_background: str | None = None) -> dict[str, float]:
    """ARE, ARE_precision, ARE_recall, VI, VI_split, VI_merge of two label maps (see module docstring).

    ``pred``/``ref``: equal shapes, 2D/3D (length-1 axes dropped); label maps whose connected components are
    the instances, or instance maps (``*_is_instances``). ``prediction_background``: ``"singletons"`` (default
    with ``ignore_background``) or ``"segment"``."""
    if np.shape(pred) != np.shape(ref):
        raise ValueError(f"prediction shape {np.shape(pred)} differs from reference shape {np.shape(ref)}: "
                         "resample the prediction onto the reference grid first.")
    if prediction_background is None:
        prediction_background = "singletons" if ignore_background else "segment"
    if prediction_background not in ("singletons", "segment"):
        raise ValueError(f"prediction_background must be 'singletons' or 'segment', got {prediction_background!r}")
    if prediction_background == "singletons" and not ignore_background:
        raise ValueError("prediction_background='singletons' needs ignore_background=True: with every voxel counted, "
                         "background is one segment in both maps")
    ref, pred = spatial_squeeze(ref), spatial_squeeze(pred)
    if ignore_background and (np.any(ref) or np.any(pred)):
        # only voxels inside reference instances count, and the box of all nonzero voxels (plus a one-voxel
        # margin) holds every component of both maps whole: cropping to it changes nothing but the time
        ref, pred = _crop_nonzero(ref, pred)
    ref_inst = _instances(ref, ref_is_instances, connectivity)
    pred_inst = _instances(pred, pred_is_instances, connectivity)
    ref_any = bool(ref_inst.any())
    if not ref_any and (ignore_background or not pred_inst.any()):
        return dict.fromkeys(INSTANCE_KEYS, math.nan)
    counted = ref_inst > 0 if ignore_background else np.ones(ref_inst.shape, bool)
    true, test = ref_inst[counted], pred_inst[counted]
    # compact ids keep scikit-image's sparse tables small whatever the instance ids are
    true = np.unique(true, return_inverse=True)[1].ravel()
    test = np.unique(test, return_inverse=True)[1].ravel()
    if prediction_background == "singletons":
        background = pred_inst[counted] == 0
        test[background] = test.max() + 1 + np.arange(np.count_nonzero(background))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        are, skimage_second, skimage_third = adapted_rand_error(true, test, ignore_labels=())
    split, merge = (max(float(h), 0.0) if abs(h) > 1e-12 else 0.0  # sparse-sum round-off around 0 bits
                    for h in variation_of_information(true, test, ignore_labels=()))
    return {"ARE": float(are), "ARE_precision": float(skimage_third), "ARE_recall": float(skimage_second),
            "VI": float(split + merge), "VI_split": float(split), "VI_merge": float(merge)}
