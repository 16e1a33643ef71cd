"""Connectivity conventions, Betti numbers with a connectivity choice, and TopCoW-compatible clDice.

Connectivity (:func:`resolve_connectivity`)
    ``"full"`` (default) = 8 in 2D, 26 in 3D; ``"face"`` = 4 in 2D, 6 in 3D; the numbers 4, 8, 6, 26 are
    accepted too (18 only where a caller allows it, e.g. connected components). A 3D number given for an
    array that is 2D after dropping length-1 axes is mapped to its 2D equivalent (26 -> 8, 18 -> 8, 6 -> 4):
    on a one-voxel-thick slab 26- and 8-connectivity (6- and 4-) connect the same voxels. A 2D number for a
    3D array is an error (it has no unique 3D meaning).

Betti numbers (:func:`betti_numbers`), mask padded with one voxel of background, foreground connectivity
c and the complementary background connectivity c' (2D: 8/4 or 4/8; 3D: 26/6 or 6/26)
    - 2D: b0 = c-connected foreground components; b1 = c'-connected background components - 1.
    - 3D: b0 = c-connected foreground components; b2 = c'-connected background components - 1;
      b1 = b0 + b2 - chi, chi = ``skimage.measure.euler_number(mask, connectivity=k)`` with k = 3 for
      c = 26 and k = 1 for c = 6. euler_number's ``connectivity`` is the *foreground* one (it uses the
      complementary one for the background), so k must follow c: with a mismatched k, b1 comes out wrong
      and can even be negative (``tests/test_eval_metrics.py`` shows it). chi is computed by
      :func:`euler_characteristic` (the same numbers as ``euler_number``, several times faster; tested).
    Only complementary pairs are digital-topology consistent: with them the Euler-Poincare relation
    chi = b0 - b1 + b2 holds with a non-negative b1, and Alexander duality holds (the Betti numbers of the
    background, computed with c', mirror those of the foreground: b0 <-> b2 + 1, b1 <-> b1). The default
    ``"full"`` reproduces :func:`nnunet_ext.evaluation.topology.betti_numbers` (TopCoW's 26/6 and 8/4).

TopCoW-compatible clDice (:func:`cldice_topcow`), the rules of TopCoW's evaluation code
(``topcow24_eval/metrics/seg_metrics/clDice.py``)
    - one value per case, on the *merged* binary foreground (every label > 0), not per label;
    - dimensionality as given: a 2D array is thinned with Zhang's method (skimage's 2D default), a 3D array
      with Lee's method *also when an axis has length 1* (TopCoW's "2D" test volumes are (X, Y, 1));
      only a leading length-1 channel axis of a 4D array is dropped;
    - axis order: thinning depends on it, and TopCoW thins ``sitk.GetArrayFromImage(img).transpose(2, 1, 0)``,
      i.e. (x, y, z); nnU-Net's readers return (z, y, x) (SimpleITK's order; NibabelIO transposes to it),
      so ``reverse_axes=True`` (default) reverses the spatial axes before thinning;
    - tprec = |S(P) ∩ L| / |S(P)| and tsens = |S(L) ∩ P| / |S(L)|, each **0 when its skeleton is empty**
      (e.g. a 2x2x2 block, which Lee thinning deletes entirely); clDice = 2 tprec tsens / (tprec + tsens),
      0 when tprec + tsens = 0; so both masks empty gives **0** (not NaN) and one empty gives 0.

Where the default rules (:mod:`nnunet_ext.evaluation.topology`) and TopCoW's differ: see :data:`TOPCOW_DIFFERENCES`.
"""
from __future__ import annotations

from itertools import combinations

import cc3d
import numpy as np
from skimage.morphology import skeletonize

from nnunet_ext.evaluation.topology import _as_mask, _crop, _pair

_FULL = {2: 8, 3: 26}
_FACE = {2: 4, 3: 6}
_TO_2D = {26: 8, 18: 8, 6: 4, 8: 8, 4: 4}
_COMPLEMENT = {8: 4, 4: 8, 26: 6, 6: 26}

#: The rule-by-rule differences between the default rules and TopCoW's (``--convention topcow`` applies the
#: right column; README table): (what, default, TopCoW).
TOPCOW_DIFFERENCES = (
    ("clDice is computed on", "each label / region (key clDice)",
     "the merged foreground (all evaluated labels), one value per case (key clDice_TopCoW)"),
    ("(X, Y, 1) volume", "length-1 axes dropped: 2D, Zhang thinning", "kept 3D: Lee thinning of a one-voxel slab"),
    ("axis order for thinning", "nnU-Net's array order (z, y, x)", "(x, y, z) (TopCoW transposes SimpleITK arrays)"),
    ("component whose skeleton is empty", "the component is its own skeleton (still counts)",
     "contributes no skeleton; an empty skeleton makes tprec/tsens 0"),
    ("clDice, both masks empty", "NaN (skipped by means, like nnU-Net's Dice)", "0"),
    ("clDice, one mask empty", "0", "0"),
    ("HD95 / HD / ASSD, one mask empty", "the image's field-of-view diagonal in mm", "90 mm (HD95_UPPER_BOUND)"),
    ("label in neither mask", "Dice/clDice/surface NaN, Betti errors 0 (counted in means)",
     "not scored: Betti errors NaN too (skipped by means)"),
    ("foreground mean", "mean over labels of the per-label means over cases (nnU-Net)",
     "mean over cases of the per-case mean over the labels present (class average)"),
    ("Betti numbers", "b0, b1, b2 with 26/6 (3D) or 8/4 (2D); --connectivity face: 6/26, 4/8",
     "TopCoW 2024 reports b0 only (26-connected); b1, b2 are still given"),
)


def resolve_connectivity(connectivity: int | str, ndim: int, allow_18: bool = False) -> int:
    """Neighbourhood size (4/8 in 2D, 6/26 or 18 in 3D) for ``connectivity`` on an ``ndim``-D array."""
    if ndim not in (2, 3):
        raise ValueError(f"connectivity is defined for 2D and 3D arrays, got {ndim}D")
    if isinstance(connectivity, str):
        name = connectivity.lower()
        if name not in ("full", "face"):
            raise ValueError(f"connectivity must be 'full', 'face' or a number (4, 8, 6, 26), got {connectivity!r}")
        return (_FULL if name == "full" else _FACE)[ndim]
    connectivity = int(connectivity)
    valid = {4, 8, 6, 26} | ({18} if allow_18 else set())
    if connectivity not in valid:
        raise ValueError(f"connectivity {connectivity} is not one of {sorted(valid)} (or 'full'/'face')")
    if ndim == 2:
        return _TO_2D[connectivity]
    if connectivity in (4, 8):
        raise ValueError(f"connectivity {connectivity} is a 2D neighbourhood but the mask is 3D: use 26 or 6 "
                         "('full' or 'face')")
    return connectivity


def background_connectivity(foreground_connectivity: int) -> int:
    """The complementary background connectivity: 8 <-> 4 in 2D, 26 <-> 6 in 3D."""
    if foreground_connectivity not in _COMPLEMENT:
        raise ValueError(f"Betti numbers need connectivity 4/8 (2D) or 6/26 (3D), got {foreground_connectivity}")
    return _COMPLEMENT[foreground_connectivity]


def _count_any(mask: np.ndarray, axes: tuple[int, ...]) -> int:
    """Number of windows of two voxels along each of ``axes`` (one along the others) holding any foreground."""
    for axis in axes:
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        mask = mask[tuple(lo)] | mask[tuple(hi)]
    return int(np.count_nonzero(mask))


def _count_all(mask: np.ndarray, axes: tuple[int, ...]) -> int:
    """Number of windows of two voxels along each of ``axes`` (one along the others) that are all foreground."""
    for axis in axes:
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        mask = mask[tuple(lo)] & mask[tuple(hi)]
    return int(np.count_nonzero(mask))


def euler_characteristic(mask: np.ndarray, connectivity: str = "full") -> int:
    """Euler characteristic chi of a 2D/3D binary mask whose border voxels are background (pad it first).

    ``"full"`` (8 / 26-connected foreground): the mask is the union of closed unit squares/cubes, one per
    voxel, and chi = vertices - edges + faces - cubes of that union, a cell counting when any voxel around it
    is foreground (a vertex has 2^n voxels around it, an edge 2^(n-1), ...). ``"face"`` (4 / 6-connected): the
    complex with a vertex per foreground voxel, an edge per face-adjacent foreground pair, a square per 2x2 and
    a cube per 2x2x2 block of foreground. Both equal ``skimage.measure.euler_number`` (connectivity ndim / 1).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim not in (2, 3):
        raise ValueError(f"euler_characteristic takes a 2D or 3D mask, got shape {mask.shape}")
    if connectivity not in ("full", "face"):
        raise ValueError(f"connectivity must be 'full' or 'face', got {connectivity!r}")
    count = _count_any if connectivity == "full" else _count_all
    dims = tuple(range(mask.ndim))
    chi = 0
    # cells of dimension k span k axes; in the "full" complex a cell spanning axes A is the window of two voxels
    # along every axis outside A; in the "face" complex it is the window of two voxels along every axis in A
    for k in range(mask.ndim + 1):
        for spanned in combinations(dims, k):
            window = tuple(a for a in dims if a not in spanned) if connectivity == "full" else spanned
            chi += (-1) ** k * count(mask, window)
    return chi


def betti_numbers(mask: np.ndarray, connectivity: int | str = "full") -> tuple[int, ...]:
    """(b0, b1) of a 2D mask, (b0, b1, b2) of a 3D mask; length-1 axes dropped (nonzero = foreground)."""
    mask = _as_mask(mask)
    fg = resolve_connectivity(connectivity, mask.ndim)
    bg = background_connectivity(fg)
    if not mask.any():
        return (0,) * mask.ndim
    padded = np.pad(_crop(mask)[0], 1).astype(np.uint8)
    _, b0 = cc3d.connected_components(padded, connectivity=fg, return_N=True)
    _, n_background = cc3d.connected_components(1 - padded, connectivity=bg, return_N=True)
    if mask.ndim == 2:
        return int(b0), int(n_background) - 1
    b2 = int(n_background) - 1
    chi = euler_characteristic(padded, "full" if fg == 26 else "face")
    return int(b0), int(b0) + b2 - chi, b2


def betti_errors(pred_mask: np.ndarray, ref_mask: np.ndarray, connectivity: int | str = "full") -> tuple[int, ...]:
    """|b_pred - b_ref| per Betti number, (e0, e1) in 2D and (e0, e1, e2) in 3D, at ``connectivity``."""
    pred, ref = _pair(pred_mask, ref_mask)
    return tuple(abs(p - r) for p, r in
                 zip(betti_numbers(pred, connectivity), betti_numbers(ref, connectivity)))


def _topcow_mask(labels: np.ndarray, reverse_axes: bool) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim == 4 and array.shape[0] == 1:  # nnU-Net's channel axis
        array = array[0]
    if array.ndim not in (2, 3):
        raise ValueError(f"TopCoW clDice takes a 2D or 3D label map (or (1, X, Y, Z) with a channel axis), got shape "
                         f"{np.shape(labels)}. Pass a single channel, e.g. seg[0].")
    mask = array > 0  # TopCoW merges all labels into one foreground
    return mask.transpose(tuple(range(mask.ndim))[::-1]) if reverse_axes else mask


def _topcow_skeleton_score(skeleton: np.ndarray, other: np.ndarray) -> float:
    n = np.count_nonzero(skeleton)
    return 0.0 if n == 0 else np.count_nonzero(skeleton & other) / n


def cldice_topcow(pred_labels: np.ndarray, ref_labels: np.ndarray, reverse_axes: bool = True) -> float:
    """TopCoW's clDice of the merged foreground (0 if both are empty; see module docstring).

    ``pred_labels``/``ref_labels``: label maps of equal shape, 2D, 3D or (1, *3D); ``reverse_axes``: the arrays are
    in nnU-Net's (z, y, x) order and are reversed to TopCoW's (x, y, z) before thinning (False: already x, y, z).
    """
    if np.shape(pred_labels) != np.shape(ref_labels):
        raise ValueError(f"prediction shape {np.shape(pred_labels)} differs from reference shape "
                         f"{np.shape(ref_labels)}: resample the prediction onto the reference grid first.")
    pred, ref = _topcow_mask(pred_labels, reverse_axes), _topcow_mask(ref_labels, reverse_axes)
    if not pred.any() and not ref.any():
        return 0.0
    # thinning is local and keeps raster order under translation: cropping with a one-voxel margin is lossless
    pred, ref = _crop(pred, ref)
    method = "zhang" if pred.ndim == 2 else "lee"
    tprec = _topcow_skeleton_score(skeletonize(pred, method=method), ref)
    tsens = _topcow_skeleton_score(skeletonize(ref, method=method), pred)
    if tprec + tsens == 0:
        return 0.0
    return float(2 * tprec * tsens / (tprec + tsens))
