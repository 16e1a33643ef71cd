"""border_weight_map: brute-force references (no distance transform), hand-computed geometry, fast vs exact."""
from __future__ import annotations

import itertools
import math

import cc3d
import numpy as np
import pytest

from nnunet_ext.core.weightmaps import (border_margin, border_weight_map, class_balance_weights,
                                   two_nearest_distances)


# ------------------------------------------------------------------------------------------- references

def brute_two_nearest(objects: np.ndarray, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2 by explicit distances from every voxel to every voxel of every object (physical units)."""
    spacing = np.ones(objects.ndim) if spacing is None else np.asarray(spacing, float)
    points = np.indices(objects.shape).reshape(objects.ndim, -1).T * spacing
    per_object = []
    for obj in np.unique(objects[objects > 0]):
        voxels = np.argwhere(objects == obj) * spacing
        dist = np.sqrt(((points[:, None, :] - voxels[None, :, :]) ** 2).sum(-1)).min(1)
        per_object.append(dist)
    if len(per_object) < 2:
        per_object += [np.full(points.shape[0], np.inf)] * (2 - len(per_object))
    per_object = np.sort(np.stack(per_object), axis=0)
    return per_object[0].reshape(objects.shape), per_object[1].reshape(objects.shape)


def brute_weight_map(seg, w0=10.0, sigma=5.0, class_weights=None, spacing=None, instances=None, ignore_label=None):
    """The definition, with loops/broadcasting for the distances and an explicit class-frequency count."""
    ignore = seg == ignore_label if ignore_label is not None else np.zeros(seg.shape, bool)
    if class_weights is None:
        valid = seg[~ignore]
        classes = sorted(set(valid.tolist()))
        class_weights = {c: valid.size / (len(classes) * int((valid == c).sum())) for c in classes}
    w = np.array([class_weights.get(int(v), 1.0) for v in seg.ravel()]).reshape(seg.shape)
    if instances is None:
        objects = cc3d.connected_components(np.where(ignore, 0, seg), connectivity=26 if seg.ndim == 3 else 8)
        background = seg == 0
    else:
        objects = np.where(ignore, 0, instances)
        background = (seg == 0) & (objects == 0)
    if len(np.unique(objects[objects > 0])) >= 2:
        d1, d2 = brute_two_nearest(objects, spacing)
        w[background] += w0 * np.exp(-(d1 + d2)[background] ** 2 / (2 * sigma ** 2))
    w[ignore] = 0.0
    return w


def random_blobs(shape, n, seed, radius=(1.5, 4.0), n_classes=2) -> np.ndarray:
    """Label map with n random balls (random class 1..n_classes); some overlap or touch."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.uint8)
    grid = np.indices(shape).astype(float)
    for _ in range(n):
        centre = rng.uniform(0, np.array(shape))
        r = rng.uniform(*radius)
        ball = ((grid - centre.reshape((-1,) + (1,) * len(shape))) ** 2).sum(0) <= r * r
        seg[ball] = rng.integers(1, n_classes + 1)
    return seg


def grid_spheres(size: int, per_axis: int, seed: int) -> np.ndarray:
    """per_axis^3 jittered balls in a size^3 cube (27 for per_axis=3); neighbours sometimes touch."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((size,) * 3, np.uint8)
    grid = np.indices(seg.shape).astype(float)
    step = size / per_axis
    for idx in itertools.product(range(per_axis), repeat=3):
        centre = (np.array(idx) + 0.5) * step + rng.uniform(-2, 2, 3)
        r = rng.uniform(0.3, 0.52) * step
        seg[((grid - centre[:, None, None, None]) ** 2).sum(0) <= r * r] = 1 + (sum(idx) % 2)
    return seg


# -------------------------------------------------------------------------------------- brute force

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_2d_matches_brute_force(seed):
    seg = random_blobs((24, 28), 6, seed)
    expected = brute_weight_map(seg)
    np.testing.assert_allclose(border_weight_map(seg), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(border_weight_map(seg, exact=True), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_3d_matches_brute_force(seed):
    seg = random_blobs((12, 14, 10), 5, seed, radius=(1.0, 2.5))
    expected = brute_weight_map(seg, sigma=3.0)
    np.testing.assert_allclose(border_weight_map(seg, sigma=3.0), expected, rtol=1e-5, atol=1e-4)


def test_two_nearest_distances_match_brute_force():
    seg = random_blobs((20, 22), 5, 7)
    objects = cc3d.connected_components(seg, connectivity=8)
    d1, d2, n = two_nearest_distances(objects)
    e1, e2 = brute_two_nearest(objects)
    assert n == len(np.unique(objects)) - 1
    np.testing.assert_allclose(d1, e1, atol=1e-9)
    np.testing.assert_allclose(d2, e2, atol=1e-9)


@pytest.mark.parametrize("spacing", [(1.0, 2.5), (0.7, 1.3)])
def test_anisotropic_spacing_2d(spacing):
    seg = random_blobs((22, 18), 5, 3)
    expected = brute_weight_map(seg, sigma=4.0, spacing=spacing)
    np.testing.assert_allclose(border_weight_map(seg, sigma=4.0, spacing=spacing), expected, rtol=1e-5, atol=1e-5)
    # spacing matters: the isotropic map is different
    assert not np.allclose(border_weight_map(seg, sigma=4.0), expected, atol=1e-3)


def test_anisotropic_spacing_3d():
    seg = random_blobs((8, 14, 12), 5, 11, radius=(1.0, 2.5))
    spacing = (3.0, 0.8, 1.1)
    expected = brute_weight_map(seg, sigma=3.0, spacing=spacing)
    got = border_weight_map(seg, sigma=3.0, spacing=spacing)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------- geometry

def _disc(shape, centre, radius):
    grid = np.indices(shape)
    return ((grid[0] - centre[0]) ** 2 + (grid[1] - centre[1]) ** 2) <= radius ** 2


def test_two_discs_gap_maximum():
    # disc A: centre (20, 15), radius 8 -> rightmost pixel (20, 23); disc B: centre (20, 33) -> leftmost (20, 25).
    # The gap pixel (20, 24) has d1 = d2 = 1; every other background pixel has d1 >= 1, d2 >= 1 and at least one
    # of them > 1 (row 19: A ends at column 22, so the nearest A pixel from (19, 24) is (20, 23), sqrt 2 away).
    shape = (40, 50)
    seg = (_disc(shape, (20, 15), 8) | _disc(shape, (20, 33), 8)).astype(np.uint8)
    assert seg[20, 23] == 1 and seg[20, 24] == 0 and seg[20, 25] == 1
    assert cc3d.connected_components(seg, connectivity=8).max() == 2  # the 1-pixel gap separates them
    w0, sigma = 10.0, 5.0
    border = border_weight_map(seg, w0, sigma, class_weights={0: 1.0, 1: 1.0}) - 1.0
    expected_max = w0 * math.exp(-(1 + 1) ** 2 / (2 * sigma ** 2))  # = 9.2312
    assert border.max() == pytest.approx(expected_max, rel=1e-6)
    assert np.argwhere(border == border.max()).tolist() == [[20, 24]]
    # the gap column's neighbour (19, 24): nearest A pixel (20, 23) and nearest B pixel (20, 25), both sqrt 2 away
    assert border[19, 24] == pytest.approx(w0 * math.exp(-(2 * math.sqrt(2)) ** 2 / (2 * sigma ** 2)), rel=1e-6)
    assert np.all(border[seg > 0] == 0)  # foreground gets no border term


def test_touching_objects_of_different_classes_are_separate():
    seg = np.zeros((10, 12), np.uint8)
    seg[3:7, 2:6] = 1
    seg[3:7, 6:10] = 2  # touching class-2 square
    border = border_weight_map(seg, class_weights={}) - 1.0
    np.testing.assert_allclose(border, brute_weight_map(seg, class_weights={}) - 1.0, atol=1e-5)
    # (2, 5) is at distance 1 of square 1 and sqrt 2 of square 2
    assert border[2, 5] == pytest.approx(10 * math.exp(-(1 + math.sqrt(2)) ** 2 / 50), rel=1e-6)


# -------------------------------------------------------------------------------- degenerate patches

@pytest.mark.parametrize("shape", [(16, 16), (6, 7, 8)])
def test_empty_patch(shape):
    seg = np.zeros(shape, np.int16)
    w = border_weight_map(seg)
    assert w.dtype == np.float32 and w.shape == shape
    np.testing.assert_array_equal(w, 1.0)  # one class present: n / (1 * n)
    np.testing.assert_array_equal(border_weight_map(seg, class_weights={0: 0.5}), 0.5)


def test_single_object_gets_no_border_term():
    seg = np.zeros((20, 20), np.uint8)
    seg[5:9, 5:12] = 1
    w = border_weight_map(seg, class_weights={0: 1.0, 1: 3.0})
    assert np.all(np.isfinite(w))
    np.testing.assert_array_equal(w, np.where(seg > 0, 3.0, 1.0))


def test_all_foreground():
    seg = np.ones((5, 6, 7), np.uint8)
    w = border_weight_map(seg)
    assert np.all(np.isfinite(w))
    np.testing.assert_array_equal(w, 1.0)


# ----------------------------------------------------------------------------------- class weights

def test_balanced_class_weights_by_hand():
    seg = np.zeros((10, 10), np.uint8)  # 100 voxels: 80 background, 15 of class 1, 5 of class 2
    seg[0:3, 0:5] = 1
    seg[9, 5:10] = 2
    assert class_balance_weights(seg) == pytest.approx({0: 100 / (3 * 80), 1: 100 / (3 * 15), 2: 100 / (3 * 5)})
    w = border_weight_map(seg, w0=0.0)
    assert w[5, 5] == pytest.approx(100 / 240) and w[0, 0] == pytest.approx(100 / 45) and w[9, 9] == pytest.approx(20 / 3)
    for c in (0, 1, 2):  # each present class gets the same total weight
        assert w[seg == c].sum() == pytest.approx(100 / 3, rel=1e-6)
    assert w.sum() == pytest.approx(100, rel=1e-6)
    # a class absent from the patch does not count
    seg[9, 5:10] = 0
    assert class_balance_weights(seg) == pytest.approx({0: 100 / (2 * 85), 1: 100 / (2 * 15)})


def test_class_weights_dict():
    seg = random_blobs((20, 20), 4, 5, n_classes=3)
    cw = {0: 0.5, 2: 4.0}  # label 1 and 3 missing -> 1.0
    expected = brute_weight_map(seg, class_weights=cw)
    np.testing.assert_allclose(border_weight_map(seg, class_weights=cw), expected, rtol=1e-5, atol=1e-5)
    w = border_weight_map(seg, w0=0.0, class_weights=cw)
    np.testing.assert_array_equal(w, np.vectorize(lambda v: {0: 0.5, 2: 4.0}.get(v, 1.0))(seg).astype(np.float32))


# ------------------------------------------------------------------------------------- ignore label

def test_ignore_label():
    seg = random_blobs((24, 24), 6, 9)
    seg[10:14, :] = 3  # ignore band, also cutting objects in two
    expected = brute_weight_map(seg, ignore_label=3)
    w = border_weight_map(seg, ignore_label=3)
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-5)
    assert np.all(w[seg == 3] == 0)
    # balanced weights count non-ignore voxels only
    valid = seg[seg != 3]
    classes = np.unique(valid)
    for c in classes:
        assert w[seg == c][0] >= valid.size / (len(classes) * (valid == c).sum()) - 1e-6


def test_ignore_label_voxels_are_not_objects():
    seg = np.zeros((12, 12), np.uint8)
    seg[2:4, 2:4] = 1
    seg[8:10, 8:10] = 5  # only "object" besides the square is ignore -> single object, no border term
    w = border_weight_map(seg, class_weights={0: 1.0, 1: 1.0}, ignore_label=5)
    np.testing.assert_array_equal(w, np.where(seg == 5, 0.0, 1.0))


# ----------------------------------------------------------------------------------------- instances

def test_instances():
    seg = np.zeros((20, 24), np.uint8)
    seg[4:16, 3:20] = 1  # one connected class-1 region ...
    instances = np.zeros(seg.shape, np.int32)
    instances[4:16, 3:10] = 7  # ... split into three instances; columns 10 and 15 stay background-in-foreground
    instances[4:16, 11:15] = 2
    instances[4:16, 16:20] = 40
    seg[:, 10] = 0
    seg[:, 15] = 0
    expected = brute_weight_map(seg, instances=instances)
    w = border_weight_map(seg, instances=instances)
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-5)
    # gap pixel (8, 10): instance 7 at (8, 9) and instance 2 at (8, 11), both 1 away
    border = border_weight_map(seg, class_weights={}, instances=instances) - 1.0
    assert border[8, 10] == pytest.approx(10 * math.exp(-4 / 50), rel=1e-5)
    # the same map from seg alone: the gaps already cut the region into three components
    np.testing.assert_allclose(border_weight_map(seg), w, rtol=1e-6)
    # one instance over the whole region: a single object, no border term anywhere
    one = np.where(seg > 0, 5, 0)
    np.testing.assert_array_equal(border_weight_map(seg, class_weights={}, instances=one), 1.0)


def test_instances_in_3d_with_spacing_and_ignore():
    seg = random_blobs((10, 12, 9), 4, 21, radius=(1.5, 3.0), n_classes=1)
    instances = cc3d.connected_components(seg, connectivity=6).astype(np.int64) * 3
    seg[0] = 2
    spacing = (2.0, 1.0, 1.5)
    expected = brute_weight_map(seg, sigma=3.0, spacing=spacing, instances=instances, ignore_label=2)
    got = border_weight_map(seg, sigma=3.0, spacing=spacing, instances=instances, ignore_label=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------------- fast vs exact

def _check_bound(seg, tolerance, spacing=None, sigma=5.0):
    fast = border_weight_map(seg, sigma=sigma, spacing=spacing, tolerance=tolerance).astype(np.float64)
    exact = border_weight_map(seg, sigma=sigma, spacing=spacing, exact=True).astype(np.float64)
    diff = exact - fast
    rounding = 1e-5 * np.abs(exact).max()
    assert diff.min() >= -rounding  # the fast path never overestimates
    assert diff.max() <= tolerance + rounding
    return diff


@pytest.mark.parametrize("tolerance", [1e-3, 0.5])
def test_fast_vs_exact_2d(tolerance):
    seg = random_blobs((160, 160), 40, 13, radius=(2.0, 6.0))
    diff = _check_bound(seg, tolerance)
    if tolerance == 0.5:  # a loose tolerance really drops something, and stays within the bound
        assert diff.max() > 1e-3


def test_fast_vs_exact_2d_anisotropic():
    _check_bound(random_blobs((120, 90), 25, 17, radius=(2.0, 6.0)), 0.2, spacing=(0.6, 1.7))


@pytest.mark.parametrize("tolerance", [1e-3, 0.5])
def test_fast_vs_exact_3d_27_objects(tolerance):
    seg = grid_spheres(64, 3, seed=4)
    n = cc3d.connected_components(seg, connectivity=26).max()
    assert 20 <= n <= 27
    diff = _check_bound(seg, tolerance)
    if tolerance == 0.5:
        assert diff.max() > 1e-3


def test_fast_vs_exact_3d_anisotropic():
    _check_bound(random_blobs((24, 48, 48), 12, 19, radius=(2.0, 5.0)), 0.1, spacing=(2.5, 0.8, 0.8), sigma=4.0)


def test_margin_formula():
    m = border_margin(10.0, 5.0, 1e-3)
    assert 10.0 * math.exp(-m * m / 50.0) == pytest.approx(1e-3)
    assert border_margin(1.0, 5.0, 2.0) == 0.0


# ---------------------------------------------------------------------------------------- validation

def test_validation_errors():
    seg = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match="seg\\[0\\]"):
        border_weight_map(np.zeros((1, 8, 8, 8), np.uint8))
    with pytest.raises(TypeError, match="astype"):
        border_weight_map(seg.astype(np.float32))
    with pytest.raises(ValueError, match="one spacing per spatial axis"):
        border_weight_map(seg, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="> 0"):
        border_weight_map(seg, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="sigma"):
        border_weight_map(seg, sigma=0.0)
    with pytest.raises(ValueError, match="tolerance"):
        border_weight_map(seg, tolerance=0.0)
    with pytest.raises(ValueError, match="instances must have seg's shape"):
        border_weight_map(seg, instances=np.zeros((8, 9), np.int32))
    with pytest.raises(ValueError, match="ignore_label"):
        border_weight_map(seg, ignore_label=0)
    with pytest.raises(ValueError, match="labels >= 0"):
        border_weight_map(seg.astype(np.int8) - 1)
    with pytest.raises(TypeError, match="class_weights"):
        border_weight_map(seg, class_weights=[1.0, 2.0])
