"""Topology metrics on constructed shapes: Betti numbers, Betti errors, clDice (hand-computed values)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays
from skimage.measure import euler_number

from nnunet_ext.evaluation import betti_errors, betti_numbers, cldice, spatial_squeeze, topology_metrics


def _grid2(n: int = 21) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    return y, x


def _grid3(n: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.mgrid[:n, :n, :n] - (n - 1) / 2
    return z, y, x


def disc(r: float = 6) -> np.ndarray:
    y, x = _grid2()
    return x ** 2 + y ** 2 <= r ** 2


def ring() -> np.ndarray:
    return disc(7) & ~disc(3)


def two_blobs() -> np.ndarray:
    mask = np.zeros((20, 20), bool)
    mask[2:6, 2:6] = True
    mask[10:15, 12:18] = True
    return mask


def ball(r: float = 8) -> np.ndarray:
    z, y, x = _grid3()
    return x ** 2 + y ** 2 + z ** 2 <= r ** 2


def hollow_sphere() -> np.ndarray:
    return ball(10) & ~ball(6)


def torus(big: float = 9, small: float = 3) -> np.ndarray:
    z, y, x = _grid3()
    return (np.sqrt(x ** 2 + y ** 2) - big) ** 2 + z ** 2 <= small ** 2


def two_rods() -> np.ndarray:
    mask = np.zeros((20, 20, 20), bool)
    mask[2:18, 4:6, 4:6] = True
    mask[2:18, 12:14, 12:14] = True
    return mask


# --- Betti numbers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,expected", [
    (ring, (1, 1)), (two_blobs, (2, 0)), (disc, (1, 0)), (lambda: np.zeros((9, 9), bool), (0, 0)),
    (ball, (1, 0, 0)), (torus, (1, 1, 0)), (hollow_sphere, (1, 0, 1)), (two_rods, (2, 0, 0)),
    (lambda: np.zeros((5, 6, 7), np.uint8), (0, 0, 0)),
])
def test_betti_numbers_of_constructed_shapes(make, expected):
    assert betti_numbers(make()) == expected


def test_betti_numbers_touch_the_border_and_accept_int_masks():
    # a frame along the image border: the one-voxel background padding makes its hole a hole
    frame = np.ones((10, 10), np.int64)
    frame[2:-2, 2:-2] = 0
    assert betti_numbers(frame) == (1, 1)
    assert betti_numbers(np.ones((6, 6, 6), np.uint8) * 3) == (1, 0, 0)  # nonzero is foreground


def test_connectivity_conventions():
    # 2D: diagonal neighbours are one component (8-conn); the 4-connected background pixel they enclose
    # is a hole
    diamond = np.zeros((5, 5), bool)
    diamond[[1, 2, 2, 3], [2, 1, 3, 2]] = True
    assert betti_numbers(diamond) == (1, 1)
    # 3D: cubes touching at a corner are one component (26-conn)
    cubes = np.zeros((6, 6, 6), bool)
    cubes[1:3, 1:3, 1:3] = True
    cubes[3:5, 3:5, 3:5] = True
    assert betti_numbers(cubes) == (1, 0, 0)
    # crossing rods: one component, no tunnel
    cross = np.zeros((11, 11, 11), bool)
    cross[5, 5, :] = cross[5, :, 5] = cross[:, 5, 5] = True
    assert betti_numbers(cross) == (1, 0, 0)


@settings(max_examples=60, deadline=None)
@given(arrays(bool, (7, 8)))
def test_2d_betti_numbers_agree_with_the_euler_number(mask):
    b0, b1 = betti_numbers(mask)
    assert b0 - b1 == euler_number(np.pad(mask, 1), connectivity=2)


# --- Betti errors --------------------------------------------------------------------------------------

def test_betti_errors():
    assert betti_errors(ring(), disc(7)) == (0, 1)
    assert betti_errors(disc(7), ring()) == (0, 1)
    assert betti_errors(two_blobs(), two_blobs()) == (0, 0)
    assert betti_errors(np.zeros((20, 20), bool), two_blobs()) == (2, 0)
    assert betti_errors(torus(), hollow_sphere()) == (0, 1, 1)
    assert betti_errors(two_rods(), np.zeros((20, 20, 20))) == (2, 0, 0)


def test_shape_mismatch_and_too_many_dimensions_name_the_fix():
    with pytest.raises(ValueError, match="resample the prediction"):
        betti_errors(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="resample the prediction"):
        cldice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"seg\[0\]"):
        betti_numbers(np.zeros((2, 4, 4, 4)))


# --- clDice --------------------------------------------------------------------------------------------

def _line(length: int = 16) -> np.ndarray:
    mask = np.zeros((3, length + 4), bool)
    mask[1, 2:2 + length] = True
    return mask


def test_cldice_line_with_a_gap():
    ref = _line(16)                    # a one-pixel line is its own skeleton: |S(L)| = 16
    pred = ref.copy()
    pred[1, 9:11] = False              # 2-pixel gap: |S(P)| = 14, all inside L
    tprec, tsens = 14 / 14, 14 / 16    # |S(P) ∩ L| / |S(P)|, |S(L) ∩ P| / |S(L)|
    expected = 2 * tprec * tsens / (tprec + tsens)
    assert expected == pytest.approx(14 / 15)
    assert cldice(pred, ref) == pytest.approx(expected)
    assert cldice(ref, pred) == pytest.approx(expected)  # symmetric: tprec and tsens swap
    assert betti_errors(pred, ref) == (1, 0)


def test_cldice_false_positive_branch():
    ref = np.zeros((8, 20), bool)
    ref[2, 2:12] = True                # 10 pixels
    pred = ref.copy()
    pred[5, 4:9] = True                # a separate 5-pixel false positive line
    tprec, tsens = 10 / 15, 10 / 10
    assert 2 * tprec * tsens / (tprec + tsens) == pytest.approx(0.8)
    assert cldice(pred, ref) == pytest.approx(0.8)


def test_cldice_disjoint_skeletons_is_zero():
    ref = np.zeros((5, 12), bool)
    ref[1, 1:11] = True
    pred = np.zeros_like(ref)
    pred[3, 1:11] = True               # parallel, no overlap: tprec = tsens = 0
    assert cldice(pred, ref) == 0.0


def test_cldice_tiny_blob_is_its_own_skeleton():
    ref = np.zeros((6, 6, 6), bool)
    ref[2:4, 2:4, 2:4] = True          # a 2x2x2 cube thins away completely in 3D
    pred = np.zeros_like(ref)
    pred[2, 2, 2] = True               # a single voxel is its own skeleton
    assert cldice(ref, ref) == 1.0
    tprec, tsens = 1 / 1, 1 / 8        # S(L) falls back to the 8-voxel cube
    assert 2 * tprec * tsens / (tprec + tsens) == pytest.approx(2 / 9)
    assert cldice(pred, ref) == pytest.approx(2 / 9)


def test_cldice_empty_cases():
    empty = np.zeros((10, 10), bool)
    assert math.isnan(cldice(empty, empty))      # like nnU-Net's Dice
    assert cldice(empty, disc()[:10, :10]) == 0.0
    assert cldice(two_blobs(), np.zeros((20, 20), np.uint8)) == 0.0


@settings(max_examples=40, deadline=None)
@given(arrays(bool, (8, 9)), arrays(bool, (8, 9)))
def test_cldice_is_symmetric_bounded_and_one_on_itself(a, b):
    value = cldice(a, b)
    if not a.any() and not b.any():
        assert math.isnan(value)
        return
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(cldice(b, a))
    if a.any():
        assert cldice(a, a) == 1.0


def test_cldice_3d_shapes():
    assert cldice(torus(), torus()) == 1.0
    assert 0.0 < cldice(ball(7), ball(8)) <= 1.0


# --- dimensionality -----------------------------------------------------------------------------------

def test_2d_image_read_as_3d_is_evaluated_as_2d():
    mask = ring()
    for shape in [(1, 1, *mask.shape), (1, *mask.shape), (*mask.shape, 1), (mask.shape[0], 1, mask.shape[1])]:
        reshaped = mask.reshape(shape)
        assert spatial_squeeze(reshaped).shape == mask.shape
        assert betti_numbers(reshaped) == (1, 1)
    # a 3D image with nnU-Net's channel axis stays 3D
    assert betti_numbers(torus()[None]) == (1, 1, 0)
    assert spatial_squeeze(np.zeros((1, 1, 1))).shape == (1, 1)


def test_topology_metrics_keys_2d_vs_3d():
    ref2 = ring().astype(np.uint8)
    metrics2 = topology_metrics(ref2[None, None], ref2[None, None], [1])  # nnU-Net's (1, 1, X, Y)
    assert list(metrics2) == [1]
    assert metrics2[1] == {"Dice": 1.0, "clDice": 1.0, "Betti0_error": 0, "Betti1_error": 0}
    ref3 = torus().astype(np.uint8)
    metrics3 = topology_metrics(ref3[None], ref3[None], [1])
    assert metrics3[1] == {"Dice": 1.0, "clDice": 1.0, "Betti0_error": 0, "Betti1_error": 0, "Betti2_error": 0}


def test_topology_metrics_labels_regions_and_empty_classes():
    ref = np.zeros((20, 20), np.uint8)
    ref[2, 2:18] = 1
    ref[8, 2:18] = 2
    pred = ref.copy()
    pred[8, 9:11] = 0                  # break label 2
    metrics = topology_metrics(pred, ref, [1, 2, [1, 2], 3])
    assert set(metrics) == {1, 2, (1, 2), 3}
    assert metrics[1] == {"Dice": 1.0, "clDice": 1.0, "Betti0_error": 0, "Betti1_error": 0}
    assert metrics[2]["Betti0_error"] == 1 and metrics[2]["clDice"] == pytest.approx(14 / 15)
    assert metrics[2]["Dice"] == pytest.approx(2 * 14 / (2 * 14 + 2))
    assert metrics[(1, 2)]["Betti0_error"] == 1
    # label absent from both: Dice and clDice NaN (nnU-Net's convention), Betti errors 0
    assert math.isnan(metrics[3]["Dice"]) and math.isnan(metrics[3]["clDice"])
    assert metrics[3]["Betti0_error"] == metrics[3]["Betti1_error"] == 0


def test_topology_metrics_ignore_label():
    ref = np.zeros((20, 20), np.uint8)
    ref[2, 2:18] = 1
    ref[10:16, 10:16] = 9              # ignore region
    pred = np.zeros_like(ref)
    pred[2, 2:18] = 1
    pred[12:14, 12:14] = 1             # false positive blob, inside the ignore region only
    counted = topology_metrics(pred, ref, [1])[1]
    assert counted["Betti0_error"] == 1 and counted["Dice"] < 1 and counted["clDice"] < 1
    ignored = topology_metrics(pred, ref, [1], ignore_label=9)[1]
    assert ignored == {"Dice": 1.0, "clDice": 1.0, "Betti0_error": 0, "Betti1_error": 0}
