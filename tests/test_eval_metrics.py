"""Evaluation metrics against hand-computed values: surface distances, component detection, EM instance
metrics, Betti numbers with a connectivity choice and TopCoW-compatible clDice."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import euler_number

from nnunet_ext.evaluation import topology
from nnunet_ext.evaluation.components import (
    component_metrics,
    label_components,
    match_components,
    overlap_table,
)
from nnunet_ext.evaluation.conventions import (
    betti_errors,
    betti_numbers,
    cldice_topcow,
    euler_characteristic,
    resolve_connectivity,
)
from nnunet_ext.evaluation.instances import instance_metrics
from nnunet_ext.evaluation.surface import (
    benchmark_surface,
    surface_distances,
    surface_metrics,
    surface_voxels,
)


def _h(*p: float) -> float:
    """Entropy in bits of a distribution."""
    return -sum(x * math.log2(x) for x in p if x > 0)


# --- surface voxels ------------------------------------------------------------------------------------

def test_surface_voxels_full_and_face_neighbourhoods():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    mask[1, 1] = False                   # notch at a corner
    ring = mask.copy()
    ring[2:5, 2:5] = False               # the 5x5 square's border pixels (15 without the notch)
    assert np.array_equal(surface_voxels(mask, "face"), ring)
    full = ring.copy()
    full[2, 2] = True                    # its diagonal neighbour (1, 1) is background: full surface only
    assert np.array_equal(surface_voxels(mask, "full"), full)
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True           # every voxel but the centre touches the outside through a face
    expected = cube.copy()
    expected[2, 2, 2] = False
    assert np.array_equal(surface_voxels(cube, "full"), expected)
    assert np.array_equal(surface_voxels(cube, "face"), expected)
    assert surface_voxels(np.ones((4, 4, 4), bool)).sum() == 64 - 8  # outside the image is background


# --- surface metrics: hand-computed --------------------------------------------------------------------

def _lines(shift_rows: int, shift_cols: int) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((5, 12), bool)
    ref[2, 0:10] = True                  # a one-pixel line is all surface
    pred = np.zeros_like(ref)
    pred[2 + shift_rows, shift_cols:10 + shift_cols] = True
    return pred, ref


def test_surface_metrics_anisotropic_2d_lines_along_the_fine_axis():
    pred, ref = _lines(0, 1)             # shifted by one column; spacing (rows 2.0 mm, columns 0.5 mm)
    # each direction: nine coinciding pixels (0 mm) and one end pixel 0.5 mm from the other line
    # P95 of [0]*9 + [0.5]: rank 0.95 * 9 = 8.55 -> 0 + 0.55 * 0.5 = 0.275
    m = surface_metrics(pred, ref, (2.0, 0.5), tolerance=0.25)
    assert m["HD95"] == pytest.approx(0.275)
    assert m["HD"] == pytest.approx(0.5)
    assert m["ASSD"] == pytest.approx((0.5 + 0.5) / 20)
    assert m["NSD"] == pytest.approx(18 / 20)
    assert surface_metrics(pred, ref, (2.0, 0.5), tolerance=0.5)["NSD"] == 1.0
    # the pooled-percentile convention (medpy) would give 0.5: rank 0.95 * 19 = 18.05 of 18 zeros and two 0.5
    assert np.percentile([0.0] * 18 + [0.5] * 2, 95) == pytest.approx(0.5)


def test_surface_metrics_anisotropic_2d_lines_along_the_coarse_axis():
    pred, ref = _lines(1, 0)             # one row apart: every distance is the 2.0 mm row spacing
    m = surface_metrics(pred, ref, (2.0, 0.5), tolerance=1.99)
    assert (m["HD95"], m["HD"], m["ASSD"], m["NSD"]) == pytest.approx((2.0, 2.0, 2.0, 0.0))
    assert surface_metrics(pred, ref, (2.0, 0.5), tolerance=2.0)["NSD"] == 1.0
    assert surface_metrics(pred, ref)["HD95"] == pytest.approx(1.0)  # default spacing 1


def test_surface_metrics_single_pixels_and_unequal_surface_sizes():
    ref = np.zeros((6, 6), bool)
    ref[0, 0] = True
    pred = np.zeros_like(ref)
    pred[3, 4] = True
    m = surface_metrics(pred, ref, (2.0, 1.0), tolerance=7.25)
    d = math.sqrt(6 ** 2 + 4 ** 2)      # 7.21 mm
    assert (m["HD95"], m["HD"], m["ASSD"]) == pytest.approx((d, d, d))
    assert m["NSD"] == 1.0 and surface_metrics(pred, ref, (2.0, 1.0), tolerance=7.2)["NSD"] == 0.0
    # |S_P| = 2, |S_R| = 1: d(S_P -> S_R) = [0, 3], d(S_R -> S_P) = [0]
    pred = np.zeros_like(ref)
    pred[0, 0] = pred[0, 3] = True
    m = surface_metrics(pred, ref, tolerance=1.0)
    assert m["HD95"] == pytest.approx(0.95 * 3)  # max(P95([0, 3]), P95([0]))
    assert m["ASSD"] == pytest.approx(3 / 3)     # pooled mean; the mean of the two means would be 0.75
    assert m["NSD"] == pytest.approx(2 / 3)
    d_pred, d_ref = surface_distances(pred, ref)
    assert sorted(d_pred) == [0.0, 3.0] and list(d_ref) == [0.0]


@pytest.mark.parametrize("connectivity", ["full", "face"])
def test_surface_metrics_anisotropic_3d_shifted_cube(connectivity):
    ref = np.zeros((6, 5, 5), bool)
    ref[1:4, 1:4, 1:4] = True
    pred = np.zeros_like(ref)
    pred[2:5, 1:4, 1:4] = True           # shifted by one voxel along axis 0 (2.5 mm)
    # surfaces: the 26 non-centre voxels of each cube. Per direction: 9 voxels on the far face are 2.5 mm away,
    # the voxel over the other cube's centre is 1 mm from its in-plane neighbours, 16 voxels coincide.
    m = surface_metrics(pred, ref, (2.5, 1.0, 1.0), tolerance=1.0, connectivity=connectivity)
    assert m["HD95"] == pytest.approx(2.5)   # rank 0.95 * 25 = 23.75 lies among the nine 2.5 values
    assert m["HD"] == pytest.approx(2.5)
    assert m["ASSD"] == pytest.approx(2 * (9 * 2.5 + 1.0) / 52)
    assert m["NSD"] == pytest.approx(2 * 17 / 52)
    assert surface_metrics(pred, ref, (2.5, 1.0, 1.0), tolerance=2.5)["NSD"] == 1.0


def test_kdtree_and_distance_transform_agree_on_random_anisotropic_masks():
    rng = np.random.default_rng(0)
    for ndim, trial in [(2, t) for t in range(6)] + [(3, t) for t in range(6)]:
        a = ndimage.binary_dilation(rng.random((16,) * ndim) > 0.97, iterations=2)
        b = ndimage.binary_dilation(rng.random((16,) * ndim) > 0.97, iterations=2)
        if not (a.any() and b.any()):
            continue
        spacing = tuple(rng.uniform(0.3, 3.0, ndim))
        kd = surface_metrics(a, b, spacing, tolerance=1.5, method="kdtree")
        edt = surface_metrics(a, b, spacing, tolerance=1.5, method="edt")
        assert kd == pytest.approx(edt, abs=1e-9)
        # cropping is lossless: the same masks inside a larger empty volume
        big_a, big_b = np.pad(a, 5), np.pad(b, 5)
        assert surface_metrics(big_a, big_b, spacing, tolerance=1.5) == pytest.approx(kd, abs=1e-9)


def test_surface_metrics_empty_cases():
    empty = np.zeros((10, 20), bool)
    blob = empty.copy()
    blob[2:5, 3:9] = True
    both = surface_metrics(empty, empty, (2.0, 0.5))
    assert all(math.isnan(v) for v in both.values())
    diagonal = math.sqrt((9 * 2.0) ** 2 + (19 * 0.5) ** 2)
    for pred, ref in ((empty, blob), (blob, empty)):
        m = surface_metrics(pred, ref, (2.0, 0.5))
        assert (m["HD95"], m["HD"], m["ASSD"], m["NSD"]) == pytest.approx((diagonal, diagonal, diagonal, 0.0))
        assert math.isnan(surface_metrics(pred, ref, empty_distance="nan")["HD95"])
        assert surface_metrics(pred, ref, empty_distance=90)["ASSD"] == 90.0  # TopCoW's upper bound


def test_surface_metrics_drop_length_one_axes_with_their_spacing():
    pred, ref = _lines(0, 1)
    expected = surface_metrics(pred, ref, (2.0, 0.5), tolerance=0.25)
    # nnU-Net's 2D image: (1, X, Y) with spacing (999, sx, sy); with its channel axis: (1, 1, X, Y)
    assert surface_metrics(pred[None], ref[None], (999.0, 2.0, 0.5), tolerance=0.25) == expected
    assert surface_metrics(pred[None, None], ref[None, None], (999.0, 2.0, 0.5), tolerance=0.25) == expected
    assert surface_metrics(pred, ref, (2.0, 0.5), percentile=100)["HD100"] == expected["HD"]


def test_surface_metrics_name_the_fix():
    a = np.zeros((4, 4), bool)
    with pytest.raises(ValueError, match="one spacing per spatial axis"):
        surface_metrics(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="resample the prediction"):
        surface_metrics(a, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="positive"):
        surface_metrics(a, a, (1.0, -1.0))
    with pytest.raises(ValueError, match="tolerance"):
        surface_metrics(a, a, tolerance=-1)
    with pytest.raises(ValueError, match="method"):
        surface_metrics(a, a, method="fast")
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(a, a)


def test_benchmark_surface_reports_times_and_agreeing_metrics():
    result = benchmark_surface((24, 24, 24), spacing=(2.0, 1.0, 1.0))
    assert result["seconds_kdtree"] > 0 and result["seconds_edt"] > 0
    assert result["surface_voxels_ref"] > 0
    assert result["metrics_kdtree"] == pytest.approx(result["metrics_edt"], abs=1e-9)


# --- components ----------------------------------------------------------------------------------------

def _split_merge_case() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((15, 13), bool)
    ref[1:4, 1:5] = True     # A, 12 px
    ref[1:4, 8:12] = True    # B, 12 px
    ref[6:9, 1:11] = True    # C, 30 px
    ref[11:14, 1:5] = True   # D, 12 px
    pred = np.zeros_like(ref)
    pred[1:4, 1:12] = True   # M, 33 px: merges A and B (IoU 12/33 each)
    pred[6:9, 1:5] = True    # P1, 12 px: C split in two (IoU 12/30 each)
    pred[6:9, 7:11] = True   # P2, 12 px
    pred[11:14, 1:6] = True  # D', 15 px: matches D (IoU 12/15)
    pred[11:13, 9:11] = True  # E, 4 px: false positive
    return pred, ref


def test_components_split_and_merge_case():
    pred, ref = _split_merge_case()
    m = component_metrics(pred, ref)
    assert (m["Comp_n_ref"], m["Comp_n_pred"]) == (4, 5)
    assert (m["Comp_TP"], m["Comp_FP"], m["Comp_FN"]) == (1, 4, 3)
    assert (m["Comp_precision"], m["Comp_recall"], m["Comp_F1"]) == pytest.approx((1 / 5, 1 / 4, 2 / 9))
    assert m["Comp_matched_IoU"] == pytest.approx(12 / 15)
    assert (m["Comp_split"], m["Comp_merged"]) == (1, 1)
    # at IoU >= 0.3 greedy adds C-P1 (0.4; P2 ties, the lower id wins) and A-M (12/33; B ties)
    m = component_metrics(pred, ref, iou_threshold=0.3)
    assert (m["Comp_TP"], m["Comp_FP"], m["Comp_FN"]) == (3, 2, 1)
    assert m["Comp_F1"] == pytest.approx(6 / 9)
    assert m["Comp_matched_IoU"] == pytest.approx((12 / 15 + 12 / 30 + 12 / 33) / 3)


def test_optimal_matching_finds_more_pairs_than_greedy():
    ref = np.zeros((3, 22), bool)
    ref[1, 0:10] = True      # r1, 10 px
    ref[1, 12:20] = True     # r2, 8 px
    pred = np.zeros_like(ref)
    pred[1, 0:3] = True      # p2, 3 px: IoU(r1, p2) = 3/10
    pred[1, 4:16] = True     # p1, 12 px: IoU(r1, p1) = 6/16, IoU(r2, p1) = 4/16
    greedy = component_metrics(pred, ref, iou_threshold=0.25)
    optimal = component_metrics(pred, ref, iou_threshold=0.25, matching="optimal")
    assert greedy["Comp_TP"] == 1 and greedy["Comp_matched_IoU"] == pytest.approx(6 / 16)
    assert optimal["Comp_TP"] == 2 and optimal["Comp_matched_IoU"] == pytest.approx((3 / 10 + 4 / 16) / 2)
    assert (greedy["Comp_split"], greedy["Comp_merged"]) == (1, 1)


def test_matching_is_unique_from_iou_one_half():
    rng = np.random.default_rng(1)
    for _ in range(15):
        ref = ndimage.binary_dilation(rng.random((20, 20)) > 0.95)
        pred = ndimage.binary_dilation(rng.random((20, 20)) > 0.95) | (ref & (rng.random((20, 20)) > 0.3))
        ref_cc, n_ref = label_components(ref)
        pred_cc, n_pred = label_components(pred)
        overlaps = overlap_table(ref_cc, pred_cc, n_ref, n_pred)
        candidates = overlaps.iou >= 0.5
        assert np.bincount(overlaps.ref_ids[candidates]).max(initial=0) <= 1
        assert np.bincount(overlaps.pred_ids[candidates]).max(initial=0) <= 1
        assert sorted(match_components(overlaps, 0.5)) == sorted(match_components(overlaps, 0.5, "optimal"))


def test_overlap_fraction_ignores_boundary_contacts():
    ref = np.zeros((5, 14), bool)
    ref[1:4, 1:9] = True     # R, 24 px
    ref[1:4, 10:13] = True   # S, 9 px
    pred = ref.copy()
    pred[1:4, 10:13] = False
    pred[2, 9:11] = True     # Q = R plus a 2-pixel spur that touches S in one pixel
    pred[1:4, 12] = True     # T, 3 px inside S
    m = component_metrics(pred, ref)
    assert (m["Comp_split"], m["Comp_merged"], m["Comp_TP"]) == (1, 1, 1)
    m = component_metrics(pred, ref, overlap_fraction=0.2)  # 1 px < 0.2 * min(9, 26)
    assert (m["Comp_split"], m["Comp_merged"], m["Comp_TP"]) == (0, 0, 1)


def test_overlap_table_matches_a_brute_force_count():
    rng = np.random.default_rng(2)
    ref_cc, n_ref = label_components(rng.random((9, 10, 11)) > 0.6, "face")
    pred_cc, n_pred = label_components(rng.random((9, 10, 11)) > 0.6, "face")
    overlaps = overlap_table(ref_cc, pred_cc, n_ref, n_pred)
    brute = {(r, p): int(np.count_nonzero((ref_cc == r) & (pred_cc == p)))
             for r in range(1, n_ref + 1) for p in range(1, n_pred + 1)}
    brute = {k: v for k, v in brute.items() if v}
    assert dict(zip(zip(overlaps.ref_ids.tolist(), overlaps.pred_ids.tolist()), overlaps.intersections.tolist())) \
        == brute
    assert overlaps.ref_sizes[1:].tolist() == [int(np.count_nonzero(ref_cc == r)) for r in range(1, n_ref + 1)]


def test_components_3d_split_rod_and_connectivity():
    ref = np.zeros((20, 10, 16), bool)
    ref[2:18, 4:6, 4:6] = True           # rod 1, 64 voxels
    ref[2:18, 4:6, 10:12] = True         # rod 2
    pred = ref.copy()
    pred[9:11, 4:6, 4:6] = False         # rod 1 cut in two 28-voxel pieces: IoU 28/64 < 0.5
    m = component_metrics(pred, ref)
    assert (m["Comp_n_ref"], m["Comp_n_pred"], m["Comp_TP"]) == (2, 3, 1)
    assert (m["Comp_precision"], m["Comp_recall"]) == pytest.approx((1 / 3, 1 / 2))
    assert (m["Comp_split"], m["Comp_merged"]) == (1, 0)
    cubes = np.zeros((6, 6, 6), bool)
    cubes[1:3, 1:3, 1:3] = True
    cubes[3:5, 3:5, 3:5] = True          # touching at a corner
    assert [label_components(cubes, c)[1] for c in ("full", 18, "face")] == [1, 2, 2]
    edge = np.zeros((6, 6, 6), bool)
    edge[1:3, 1:3, 1:3] = True
    edge[3:5, 3:5, 1:3] = True           # touching along an edge
    assert [label_components(edge, c)[1] for c in (26, 18, 6)] == [1, 1, 2]
    assert component_metrics(cubes, cubes, connectivity="face")["Comp_TP"] == 2
    assert component_metrics(cubes[None], cubes[None])["Comp_TP"] == 1  # length-1 axes dropped


def test_components_empty_cases():
    empty = np.zeros((6, 6), bool)
    blob = empty.copy()
    blob[1:3, 1:3] = True
    m = component_metrics(empty, empty)
    assert all(math.isnan(m[k]) for k in ("Comp_precision", "Comp_recall", "Comp_F1", "Comp_matched_IoU"))
    assert (m["Comp_TP"], m["Comp_FP"], m["Comp_FN"]) == (0, 0, 0)
    m = component_metrics(blob, empty)   # only predictions
    assert (m["Comp_precision"], m["Comp_F1"], m["Comp_FP"]) == (0.0, 0.0, 1) and math.isnan(m["Comp_recall"])
    m = component_metrics(empty, blob)   # only reference
    assert (m["Comp_recall"], m["Comp_F1"], m["Comp_FN"]) == (0.0, 0.0, 1) and math.isnan(m["Comp_precision"])
    with pytest.raises(ValueError, match="iou_threshold"):
        component_metrics(blob, blob, iou_threshold=0)
    with pytest.raises(ValueError, match="2D neighbourhood"):
        component_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), connectivity=8)


# --- EM instance metrics -------------------------------------------------------------------------------

def test_instance_metrics_split_with_missed_voxels():
    ref = np.zeros((3, 8), int)
    ref[1, 1:6] = 1                      # one 5-voxel object
    pred = np.zeros_like(ref)
    pred[1, 1:3] = 1                     # X = voxels 1, 2
    pred[1, 5:7] = 1                     # Y = voxel 5 (voxel 6 lies in reference background: not counted)
    # voxels 3, 4 predicted background. Default: each its own segment -> columns X 2, 1, 1, Y 1
    # ordered pairs: both 2*1 = 2; reference 5*4 = 20; prediction 2
    m = instance_metrics(pred, ref, connectivity=4)
    assert m["ARE_precision"] == pytest.approx(2 / 2)
    assert m["ARE_recall"] == pytest.approx(2 / 20)
    assert m["ARE"] == pytest.approx(1 - 2 * 2 / (20 + 2))
    assert m["VI_split"] == pytest.approx(_h(2 / 5, 1 / 5, 1 / 5, 1 / 5)) and m["VI_merge"] == 0.0
    assert m["VI"] == pytest.approx(m["VI_split"])
    # scikit-image's own rule: predicted background is one segment -> columns X 2, background 2, Y 1
    seg = instance_metrics(pred, ref, connectivity=4, prediction_background="segment")
    assert (seg["ARE_precision"], seg["ARE_recall"], seg["ARE"]) == pytest.approx((1.0, 4 / 20, 1 - 8 / 24))
    assert seg["VI_split"] == pytest.approx(_h(2 / 5, 2 / 5, 1 / 5))


def test_instance_metrics_pure_split_and_pure_merge():
    ref = np.array([[1, 1, 1, 1, 0]])
    split = np.array([[1, 1, 2, 2, 0]])   # two instance ids, 2 + 2
    m = instance_metrics(split, ref, pred_is_instances=True)
    # pairs: both 2 + 2 = 4, reference 12, prediction 4
    assert (m["ARE_precision"], m["ARE_recall"], m["ARE"]) == pytest.approx((1.0, 1 / 3, 0.5))
    assert (m["VI_split"], m["VI_merge"]) == pytest.approx((1.0, 0.0))
    two = np.array([[1, 1, 0, 1, 1]])     # two reference components (2 + 2)
    merged = np.array([[1, 1, 1, 1, 1]])  # one predicted component
    m = instance_metrics(merged, two)
    assert (m["ARE_precision"], m["ARE_recall"], m["ARE"]) == pytest.approx((4 / 12, 1.0, 0.5))
    assert (m["VI_split"], m["VI_merge"]) == pytest.approx((0.0, 1.0))


def test_instance_metrics_mixed_case():
    ref = np.array([[1, 1, 1, 0, 2, 2, 2]])         # A (3), B (3)
    pred = np.array([[5, 5, 5, 5, 5, 9, 9]])        # X: A + 1 voxel of B (+ a background voxel), Y: 2 of B
    m = instance_metrics(pred, ref, pred_is_instances=True, ref_is_instances=True)
    # table A-X 3, B-X 1, B-Y 2: both 6 + 0 + 2 = 8; reference 6 + 6 = 12; prediction 4*3 + 2*1 = 14
    assert m["ARE_precision"] == pytest.approx(8 / 14)
    assert m["ARE_recall"] == pytest.approx(8 / 12)
    assert m["ARE"] == pytest.approx(1 - 16 / 26)
    assert m["VI_split"] == pytest.approx(3 / 6 * _h(1 / 3, 2 / 3))   # B is split 1 : 2
    assert m["VI_merge"] == pytest.approx(4 / 6 * _h(3 / 4, 1 / 4))   # X merges 3 of A with 1 of B
    assert m["VI"] == pytest.approx(m["VI_split"] + m["VI_merge"])
    # huge instance ids give the same values
    big = instance_metrics(pred * 10 ** 9, ref * 10 ** 10, pred_is_instances=True, ref_is_instances=True)
    assert big == pytest.approx(m)


def test_instance_metrics_background_conventions():
    ref = np.array([[1, 1, 0, 0]])
    pred = np.array([[1, 1, 1, 0]])
    # ignore_background=False: background is one segment in both maps; table A-X 2, bg-X 1, bg-bg 1
    m = instance_metrics(pred, ref, ignore_background=False)
    assert (m["ARE_precision"], m["ARE_recall"]) == pytest.approx((2 / 6, 2 / 4))
    assert m["ARE"] == pytest.approx(1 - 4 / 10)
    assert m["VI_split"] == pytest.approx(2 / 4 * 1.0)
    assert m["VI_merge"] == pytest.approx(3 / 4 * _h(2 / 3, 1 / 3))
    # default: reference background ignored, the false positive voxel does not count
    assert instance_metrics(pred, ref)["ARE"] == pytest.approx(0.0)
    # an empty prediction of a one-object reference: singletons ARE 1, scikit-image's segment rule ARE 0
    full = np.ones((3, 3), int)
    empty = np.zeros((3, 3), int)
    m = instance_metrics(empty, full)
    assert (m["ARE"], m["ARE_recall"]) == (1.0, 0.0) and math.isnan(m["ARE_precision"])
    assert m["VI_split"] == pytest.approx(math.log2(9))
    assert instance_metrics(empty, full, prediction_background="segment")["ARE"] == 0.0
    assert all(math.isnan(v) for v in instance_metrics(full, empty).values())
    assert all(math.isnan(v) for v in instance_metrics(empty, empty, ignore_background=False).values())
    assert instance_metrics(full, empty, ignore_background=False)["ARE"] == pytest.approx(0.0)  # one segment each
    with pytest.raises(ValueError, match="ignore_background=True"):
        instance_metrics(full, full, ignore_background=False, prediction_background="singletons")


def test_instance_metrics_3d_reference_instances_that_touch():
    ref = np.zeros((4, 4, 4), int)
    ref[1:3, 1:3, 1] = 7
    ref[1:3, 1:3, 2] = 3                 # two touching instances of 4 voxels: components would merge them
    pred = (ref > 0).astype(np.uint8)    # one predicted component of 8 voxels
    m = instance_metrics(pred, ref, ref_is_instances=True)
    # both 12 + 12 = 24, reference 24, prediction 8*7 = 56
    assert (m["ARE_precision"], m["ARE_recall"]) == pytest.approx((24 / 56, 1.0))
    assert m["ARE"] == pytest.approx(1 - 48 / 80)
    assert (m["VI_split"], m["VI_merge"]) == pytest.approx((0.0, 1.0))
    # as a label map, cc3d keeps the two labels apart; a binary reference is one component
    assert instance_metrics(pred, ref)["ARE"] == pytest.approx(m["ARE"])
    assert instance_metrics(pred, ref > 0)["ARE"] == pytest.approx(0.0)


# --- Betti numbers with a connectivity choice ----------------------------------------------------------

def test_resolve_connectivity():
    assert [resolve_connectivity(c, 3) for c in ("full", "face", 26, 6)] == [26, 6, 26, 6]
    assert [resolve_connectivity(c, 2) for c in ("full", "face", 8, 4, 26, 6)] == [8, 4, 8, 4, 8, 4]
    assert resolve_connectivity(18, 3, allow_18=True) == 18
    for bad in (18, 5, "diagonal"):
        with pytest.raises(ValueError):
            resolve_connectivity(bad, 3)


def test_betti_numbers_face_connectivity():
    diamond = np.zeros((5, 5), bool)
    diamond[[1, 2, 2, 3], [2, 1, 3, 2]] = True
    assert betti_numbers(diamond, "full") == (1, 1)   # 8-connected ring around a 4-connected hole
    assert betti_numbers(diamond, "face") == (4, 0)   # four pixels; the hole leaks diagonally (8-connected)
    ring3d = np.zeros((3, 5, 5), bool)
    ring3d[1, [1, 2, 2, 3], [2, 1, 3, 2]] = True
    assert betti_numbers(ring3d, 26) == (1, 1, 0)
    assert betti_numbers(ring3d, 6) == (4, 0, 0)
    shell = np.ones((3, 3, 3), bool)
    shell[1, 1, 1] = False
    assert betti_numbers(shell, 26) == betti_numbers(shell, 6) == (1, 0, 1)
    assert betti_numbers(diamond[None], 6) == betti_numbers(diamond, 4)  # a one-voxel slab is 2D
    assert betti_errors(diamond, np.zeros((5, 5)), "face") == (4, 0)


def test_euler_number_connectivity_must_follow_the_foreground():
    corner = np.zeros((4, 4, 4), np.uint8)
    corner[1, 1, 1] = corner[2, 2, 2] = 1   # two voxels touching at a corner, no tunnel anywhere
    assert betti_numbers(corner, 26) == (1, 0, 0)
    assert betti_numbers(corner, 6) == (2, 0, 0)
    # b1 = b0 + b2 - chi with the mismatched Euler connectivity is wrong: -1 for 26/6, +1 for 6/26
    assert 1 + 0 - euler_number(corner, connectivity=1) == -1
    assert 2 + 0 - euler_number(corner, connectivity=3) == 1


def test_betti_numbers_duality_and_default_agreement():
    rng = np.random.default_rng(3)
    for _ in range(40):
        mask = rng.random((5, 6, 5)) > 0.5
        assert betti_numbers(mask) == topology.betti_numbers(mask)
        for fg, bg in ((26, 6), (6, 26)):
            b0, b1, b2 = betti_numbers(mask, fg)
            assert min(b0, b1, b2) >= 0
            # Alexander duality: the background (inside a two-voxel frame) with the complementary connectivity
            assert betti_numbers(~np.pad(mask, 2), bg) == (b2 + 1, b1, b0)
        mask2 = rng.random((7, 8)) > 0.5
        for fg, k in ((8, 2), (4, 1)):
            b0, b1 = betti_numbers(mask2, fg)
            assert b0 - b1 == euler_number(np.pad(mask2, 1), connectivity=k)


# --- TopCoW-compatible clDice --------------------------------------------------------------------------

def _xyz(rows: list[list[int]]) -> np.ndarray:
    """A TopCoW-style (X, Y, 1) test volume."""
    return np.array(rows)[:, :, None]


def test_cldice_topcow_published_values():
    # TopCoW's T-shaped test volume (x, y, z order): tprec 5/5, tsens 3/4 -> 2 * 0.75 / 1.75 = 6/7
    gt = _xyz([[0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    pred = _xyz([[0, 0, 0, 1, 0]] * 5)
    assert cldice_topcow(pred, gt, reverse_axes=False) == pytest.approx(6 / 7)
    zyx_pred, zyx_gt = pred.transpose(2, 1, 0), gt.transpose(2, 1, 0)  # as nnU-Net's readers return it
    assert cldice_topcow(zyx_pred, zyx_gt) == pytest.approx(6 / 7)
    assert cldice_topcow(zyx_pred[None], zyx_gt[None]) == pytest.approx(6 / 7)  # channel axis dropped
    # Lee thinning depends on the axis order: without reversing, the reference skeleton differs (tsens 3/5)
    assert cldice_topcow(zyx_pred, zyx_gt, reverse_axes=False) == pytest.approx(0.75)
    # Reinke et al. 2021 (Fig. 51), TopCoW's label-6 volumes: clDice 0.86 and 0.67 (tsens 3/4 and 1/2)
    fig_gt = _xyz([[0, 0, 0], [6, 6, 6], [6, 6, 6], [6, 0, 0], [6, 0, 0], [0, 0, 0]])
    pred_1 = _xyz([[0, 0, 0], [6, 6, 6], [6, 6, 6], [6, 0, 0], [0, 0, 0], [0, 0, 0]])
    pred_2 = _xyz([[0, 0, 0], [6, 6, 6], [6, 6, 6], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert cldice_topcow(pred_1, fig_gt, reverse_axes=False) == pytest.approx(2 * 0.75 / 1.75)
    assert cldice_topcow(pred_2, fig_gt, reverse_axes=False) == pytest.approx(2 * 0.5 / 1.5)


def test_cldice_topcow_rules_by_hand():
    ref = np.zeros((3, 22, 1), bool)
    ref[1, 2:18] = True                  # a one-voxel line is its own (Lee) skeleton: |S(L)| = 16
    pred = ref.copy()
    pred[1, 9:11] = False                # 2-voxel gap: |S(P)| = 14, inside L
    assert cldice_topcow(pred, ref) == pytest.approx(2 * 1 * (14 / 16) / (1 + 14 / 16))
    assert cldice_topcow(pred[:, :, 0], ref[:, :, 0]) == pytest.approx(14 / 15)  # 2D array: Zhang
    two_labels = ref.astype(int)
    two_labels[1, 10:18] = 2             # labels are merged: the same line in two classes
    assert cldice_topcow(pred, two_labels) == pytest.approx(14 / 15)
    cube = np.zeros((4, 4, 4), bool)
    cube[1:3, 1:3, 1:3] = True           # Lee thinning deletes a 2x2x2 block: empty skeleton -> 0
    assert cldice_topcow(cube, cube) == 0.0
    assert topology.cldice(cube, cube) == 1.0   # default rule: the block is its own skeleton
    empty = np.zeros((4, 4, 4), bool)
    assert cldice_topcow(empty, empty) == 0.0 and math.isnan(topology.cldice(empty, empty))
    line = np.zeros((4, 4, 4), bool)
    line[1, 1, :] = True
    assert cldice_topcow(line, empty) == 0.0 and cldice_topcow(empty, line) == 0.0
    with pytest.raises(ValueError, match="resample the prediction"):
        cldice_topcow(empty, np.zeros((4, 4, 5)))


def test_cldice_topcow_does_not_see_a_missed_blob_without_skeleton():
    ref = np.zeros((6, 12, 8), bool)
    ref[1, 1:11, 1] = True               # a 10-voxel line (its own skeleton)
    ref[3:5, 3:5, 4:6] = True            # a 2x2x2 blob: Lee thinning deletes it
    pred = np.zeros_like(ref)
    pred[1, 1:11, 1] = True              # the blob is missed
    assert cldice_topcow(pred, ref) == 1.0   # S(L) = the line only: tsens = 10/10
    # default rule: the blob is its own skeleton, S(L) = 10 + 8 voxels: tsens = 10/18, tprec = 1
    assert topology.cldice(pred, ref) == pytest.approx(2 * (10 / 18) / (1 + 10 / 18))


def test_euler_characteristic_matches_scikit_image():
    rng = np.random.default_rng(4)
    for trial in range(60):
        shape = (5, 6, 7) if trial % 2 else (9, 8)
        mask = np.pad(rng.random(shape) > rng.uniform(0.2, 0.8), 1)
        assert euler_characteristic(mask, "full") == euler_number(mask, connectivity=mask.ndim)
        assert euler_characteristic(mask, "face") == euler_number(mask, connectivity=1)
    # by hand: a 3x3x3 shell has chi = 2 (a sphere), a ring of 8 pixels chi = 0 (one component, one hole)
    shell = np.pad(np.ones((3, 3, 3), bool), 1)
    shell[2, 2, 2] = False
    ring = np.pad(np.ones((3, 3), bool), 1)
    ring[2, 2] = False
    assert euler_characteristic(shell) == euler_characteristic(shell, "face") == 2
    assert euler_characteristic(ring) == euler_characteristic(ring, "face") == 0
    diagonal = np.zeros((4, 4), bool)
    diagonal[1, 1] = diagonal[2, 2] = True   # one 8-connected component, two 4-connected ones
    assert (euler_characteristic(diagonal), euler_characteristic(diagonal, "face")) == (1, 2)
