"""Per-component detection: connected components of prediction and reference matched one-to-one by IoU.

Components
    ``cc3d.connected_components`` of each binary mask (nonzero = foreground; length-1 axes dropped as in
    :func:`nnunet_ext.evaluation.topology.spatial_squeeze`) at ``connectivity`` (default ``"full"``: 8 in 2D,
    26 in 3D; ``"face"``: 4 / 6; 18 allowed in 3D), the same for both masks.

Overlap table (:func:`overlap_table`)
    One pass over the voxels where both masks are foreground: ``np.unique`` of the pair codes
    ``ref_id * (n_pred + 1) + pred_id`` gives every overlapping pair and its intersection (a sparse table,
    no per-component loop over the volume); component sizes by ``np.bincount``.
    IoU(r, p) = |r ∩ p| / (|r| + |p| - |r ∩ p|).

Matching (one-to-one), candidates = pairs with IoU >= ``iou_threshold`` (in (0, 1], default 0.5)
    - threshold >= 0.5: every component has at most one candidate (two components with IoU >= 0.5 to the
      same r would together cover r exactly, and a connected r covered by two disjoint pieces makes the
      pieces touch, i.e. one component), so all matchings agree;
    - ``matching="greedy"`` (default): candidates in decreasing IoU (ties: lower reference id, then lower
      prediction id), each accepted if neither side is matched yet;
    - ``matching="optimal"``: the largest number of matched pairs, ties broken by the largest total IoU
      (``scipy.optimize.linear_sum_assignment`` on each connected block of the candidate graph).
    TP = matched pairs, FP = n_pred - TP, FN = n_ref - TP; precision = TP / n_pred, recall = TP / n_ref,
    F1 = 2 TP / (n_pred + n_ref); ``Comp_matched_IoU`` = mean IoU of the matched pairs.

Splits and merges
    A pair (r, p) *overlaps* when |r ∩ p| > 0 and |r ∩ p| >= ``overlap_fraction`` * min(|r|, |p|) (default
    0: any shared voxel; e.g. 0.1 ignores boundary contacts covering under 10 % of the smaller component).
    ``Comp_split`` = reference components overlapped by >= 2 predicted components; ``Comp_merged`` =
    predicted components overlapping >= 2 reference components.

Empty cases: no reference and no predicted component: precision, recall, F1 and matched IoU NaN (means skip
the case, like nnU-Net's Dice), counts 0. Only predictions: precision 0, recall NaN, F1 0. Only reference:
precision NaN, recall 0, F1 0. No matched pair: matched IoU NaN.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import cc3d
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as graph_components

from nnunet_ext.evaluation.conventions import resolve_connectivity
from nnunet_ext.evaluation.topology import _crop, _pair

COMPONENT_KEYS = ("Comp_n_ref", "Comp_n_pred", "Comp_TP", "Comp_FP", "Comp_FN", "Comp_precision",
                  "Comp_recall", "Comp_F1", "Comp_matched_IoU", "Comp_split", "Comp_merged")


class Overlaps(NamedTuple):
    """Sparse overlap table: pair k is reference component ``ref_ids[k]`` with predicted ``pred_ids[k]``."""
    ref_ids: np.ndarray        # (K,) int64, 1..n_ref
    pred_ids: np.ndarray       # (K,) int64, 1..n_pred
    intersections: np.ndarray  # (K,) int64 voxels
    ref_sizes: np.ndarray      # (n_ref + 1,) voxels per reference id (index 0 unused)
    pred_sizes: np.ndarray     # (n_pred + 1,)

    @property
    def iou(self) -> np.ndarray:
        """(K,) IoU of each overlapping pair."""
        union = self.ref_sizes[self.ref_ids] + self.pred_sizes[self.pred_ids] - self.intersections
        return self.intersections / union


def label_components(mask: np.ndarray, connectivity: int | str = "full") -> tuple[np.ndarray, int]:
    """(component ids 1..n as uint32, n) of a 2D/3D binary mask (0 = background)."""
    mask = np.asarray(mask)
    mask = mask if mask.dtype == bool else mask != 0
    conn = resolve_connectivity(connectivity, mask.ndim, allow_18=True)
    labels, n = cc3d.connected_components(mask.astype(np.uint8), connectivity=conn, return_N=True)
    return labels, int(n)


def overlap_table(ref_components: np.ndarray, pred_components: np.ndarray, n_ref: int, n_pred: int) -> Overlaps:
    """Every overlapping (reference, prediction) component pair and its intersection, in one pass."""
    ref_components = np.asarray(ref_components).ravel()
    pred_components = np.asarray(pred_components).ravel()
    both = (ref_components > 0) & (pred_components > 0)
    codes = ref_components[both].astype(np.int64) * (n_pred + 1) + pred_components[both]
    pairs, intersections = np.unique(codes, return_counts=True)
    return Overlaps(pairs // (n_pred + 1), pairs % (n_pred + 1), intersections.astype(np.int64),
                    np.bincount(ref_components, minlength=n_ref + 1)[:n_ref + 1].astype(np.int64),
                    np.bincount(pred_components, minlength=n_pred + 1)[:n_pred + 1].astype(np.int64))


def _greedy(ref_ids: np.ndarray, pred_ids: np.ndarray, iou: np.ndarray) -> np.ndarray:
    order = np.lexsort((pred_ids, ref_ids, -iou))
    used_ref, used_pred, chosen = set(), set(), []
    for k in order:
        r, p = int(ref_ids[k]), int(pred_ids[k])
        if r not in used_ref and p not in used_pred:
            used_ref.add(r)
            used_pred.add(p)
            chosen.append(k)
    return np.asarray(chosen, dtype=np.int64)


def _optimal(ref_ids: np.ndarray, pred_ids: np.ndarray, iou: np.ndarray) -> np.ndarray:
    refs, r_index = np.unique(ref_ids, return_inverse=True)
    preds, p_index = np.unique(pred_ids, return_inverse=True)
    n_r, n_p = refs.size, preds.size
    graph = coo_matrix((np.ones(iou.size), (r_index, n_r + p_index)), shape=(n_r + n_p,) * 2)
    _, block = graph_components(graph, directed=False)
    bonus = min(n_r, n_p) + 1.0  # any extra matched pair outweighs every total-IoU difference
    chosen = []
    for b in np.unique(block[r_index]):
        ks = np.flatnonzero(block[r_index] == b)
        rows, row_inv = np.unique(r_index[ks], return_inverse=True)
        cols, col_inv = np.unique(p_index[ks], return_inverse=True)
        weight = np.zeros((rows.size, cols.size))
        weight[row_inv, col_inv] = bonus + iou[ks]
        pick = np.full((rows.size, cols.size), -1, dtype=np.int64)
        pick[row_inv, col_inv] = ks
        r_sel, c_sel = linear_sum_assignment(weight, maximize=True)
        chosen.extend(int(k) for k in pick[r_sel, c_sel] if k >= 0)
    return np.asarray(sorted(chosen), dtype=np.int64)


def match_components(overlaps: Overlaps, iou_threshold: float = 0.5, matching: str = "greedy") -> np.ndarray:
    """Indices into ``overlaps`` of the one-to-one matched pairs (IoU >= ``iou_threshold``)."""
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if matching not in ("greedy", "optimal"):
        raise ValueError(f"matching must be 'greedy' or 'optimal', got {matching!r}")
    iou = overlaps.iou
    candidates = np.flatnonzero(iou >= iou_threshold)
    if candidates.size == 0:
        return candidates
    solve = _greedy if matching == "greedy" else _optimal
    return candidates[solve(overlaps.ref_ids[candidates], overlaps.pred_ids[candidates], iou[candidates])]


def _ratio(num: float, den: float) -> float:
    return math.nan if den == 0 else float(num / den)


def component_metrics(pred_mask: np.ndarray, ref_mask: np.ndarray, iou_threshold: float = 0.5,
                      connectivity: int | str = "full", matching: str = "greedy",
                      overlap_fraction: float = 0.0) -> dict[str, float]:
    """Component detection metrics of two binary masks (keys: :data:`COMPONENT_KEYS`; see module docstring)."""
    if not 0 <= overlap_fraction <= 1:
        raise ValueError(f"overlap_fraction must be in [0, 1], got {overlap_fraction}")
    pred, ref = _pair(pred_mask, ref_mask)
    if pred.any() or ref.any():
        pred, ref = _crop(pred, ref)
    ref_cc, n_ref = label_components(ref, connectivity)
    pred_cc, n_pred = label_components(pred, connectivity)
    overlaps = overlap_table(ref_cc, pred_cc, n_ref, n_pred)
    matched = match_components(overlaps, iou_threshold, matching)
    tp = int(matched.size)
    smaller = np.minimum(overlaps.ref_sizes[overlaps.ref_ids], overlaps.pred_sizes[overlaps.pred_ids])
    touching = overlaps.intersections >= overlap_fraction * smaller  # intersections are > 0 by construction
    preds_per_ref = np.bincount(overlaps.ref_ids[touching], minlength=n_ref + 1)
    refs_per_pred = np.bincount(overlaps.pred_ids[touching], minlength=n_pred + 1)
    return {
        "Comp_n_ref": n_ref, "Comp_n_pred": n_pred, "Comp_TP": tp, "Comp_FP": n_pred - tp, "Comp_FN": n_ref - tp,
        "Comp_precision": _ratio(tp, n_pred), "Comp_recall": _ratio(tp, n_ref),
        "Comp_F1": _ratio(2 * tp, n_pred + n_ref),
        "Comp_matched_IoU": float(overlaps.iou[matched].mean()) if tp else math.nan,
        "Comp_split": int(np.count_nonzero(preds_per_ref >= 2)),
        "Comp_merged": int(np.count_nonzero(refs_per_pred >= 2)),
    }
