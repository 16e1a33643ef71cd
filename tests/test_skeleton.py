"""Tubed skeletons (nnunet_ext.core.skeleton): hand-computed cases, fast == reference, bad input, properties.

The hand-computed expectations below never call the package: the skeleton points are written out
explicitly (they are what scikit-image's thinning gives; each test also asserts that, so a change in
scikit-image shows up as a clear failure), and the tube is built by :func:`diamond_union`, a brute-force
pure-Python loop over the L1 ball of radius 2 (13 pixels in 2D, 25 voxels in 3D).

``tubed_skeleton`` thins large 3D masks with the table-driven Lee thinning of :mod:`nnunet_ext.core.thinning`
and everything else per component with scikit-image; the reference thins the whole mask with scikit-image.
The property tests at the end run both routes (the table-driven one forced on masks of every size) against
the reference on 2000+ structured multi-class label maps with ignore labels.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from skimage.morphology import skeletonize
from test_thinning import branching_tubes, structured_mask

import nnunet_ext.core.skeleton as skeleton_module
from nnunet_ext.core import thinning
from nnunet_ext.core.skeleton import (
    diamond_offsets,
    tube_indices,
    tubed_skeleton,
    tubed_skeleton_reference,
)
from nnunet_ext.testing.synthetic import tubular_case


@pytest.fixture(autouse=True, scope="module")
def private_table_cache(tmp_path_factory):
    """The thinning tables are built in (and read from) a temporary folder: the tests never touch ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv(thinning.CACHE_DIR_ENV, str(tmp_path_factory.mktemp("thinning_cache")))
    patch.delenv(thinning.BACKEND_ENV, raising=False)
    patch.setattr(thinning, "_tables_in_memory", None)
    yield
    patch.undo()


# ----------------------------------------------------------------------------------------------------
# helpers (independent of the package)
# ----------------------------------------------------------------------------------------------------

def diamond_union(points, shape, radius=2):
    """Boolean mask of every in-bounds voxel within L1 distance ``radius`` of one of ``points``."""
    mask = np.zeros(shape, bool)
    ndim = len(shape)
    for p in points:
        for off in itertools.product(range(-radius, radius + 1), repeat=ndim):
            if sum(abs(o) for o in off) > radius:
                continue
            q = tuple(a + o for a, o in zip(p, off))
            if all(0 <= c < s for c, s in zip(q, shape)):
                mask[q] = True
    return mask


def skeleton_set(mask):
    return {tuple(int(c) for c in p) for p in np.argwhere(skeletonize(mask))}


def bar5_skeleton(top, first, last):
    """Zhang's skeleton (scikit-image) of a 5-pixel-high bar, rows top..top+4, columns first..last.

    Verified empirically (scikit-image 0.26): the middle row ``top + 2`` from ``first + 2`` to
    ``last - 3``, then the thinning leaves a 2-pixel kink one row up at the right end,
    ``(top + 1, last - 2)`` and ``(top + 1, last - 1)`` (Zhang's two sub-iterations are asymmetric:
    they erode south-east before north-west, so the right end is not symmetric to the left end).
    """
    pts = {(top + 2, c) for c in range(first + 2, last - 2)}
    return pts | {(top + 1, last - 2), (top + 1, last - 1)}


# ----------------------------------------------------------------------------------------------------
# hand-computed cases, 2D
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("position", [(3, 3), (0, 0), (6, 4), (0, 6)])
@pytest.mark.parametrize("value", [1, 5, 200])
def test_2d_isolated_pixel_tube_is_the_pixel(position, value):
    # skeleton of a single pixel is the pixel; its 13-pixel diamond is intersected with the label,
    # which is only that pixel -> the output is the input (also at the image border: clipping).
    seg = np.zeros((7, 7), np.uint8)
    seg[position] = value
    out = tubed_skeleton(seg)
    assert out.dtype == seg.dtype and out.shape == seg.shape
    np.testing.assert_array_equal(out, seg)


def test_2d_large_diamond_gives_13_pixel_diamond():
    # label: L1 diamond of radius 4 around (5, 5), class 2 (41 pixels). Zhang thins it to the single
    # centre pixel, so the tube is the radius-2 diamond (13 pixels), fully inside the label.
    yy, xx = np.mgrid[:11, :11]
    seg = np.where(np.abs(yy - 5) + np.abs(xx - 5) <= 4, 2, 0).astype(np.int16)
    assert seg.sum() == 2 * 41
    assert skeleton_set(seg > 0) == {(5, 5)}
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 2, 2, 2, 0, 0, 0, 0],
        [0, 0, 0, 2, 2, 2, 2, 2, 0, 0, 0],
        [0, 0, 0, 0, 2, 2, 2, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ], np.int16)
    assert (expected > 0).sum() == 13
    out = tubed_skeleton(seg)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, expected)


def test_2d_thick_bar_7_high():
    # Bar rows 2..8 (7 high), columns 2..21. Zhang's skeleton (checked below): the middle row 5 from
    # column 4 to 17, then a kink one row up at the right end: (4, 18), (4, 19).
    # Tube = bar pixels within L1 distance 2 of that skeleton: rows 3..7 (middle +- 2) along the
    # straight part, never row 8 (distance 3), rows 2 only at columns 18, 19 (distance 2 from the
    # kink), and diamond-shaped (rounded) ends: at the left end column 2 only row 5 (distance 2 from
    # (5, 4)), column 3 rows 4..6.
    seg = np.zeros((11, 24), np.uint8)
    seg[2:9, 2:22] = 1
    skel = {(5, c) for c in range(4, 18)} | {(4, 18), (4, 19)}
    assert skeleton_set(seg > 0) == skel
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ], np.uint8)
    # the literal agrees with the brute-force construction
    np.testing.assert_array_equal(expected, (diamond_union(skel, seg.shape) & (seg > 0)).astype(np.uint8))
    out = tubed_skeleton(seg)
    np.testing.assert_array_equal(out, expected)
    assert not out[8].any()  # bottom row of the bar: distance 3 from the middle row
    assert out[3:8, 4:18].all()  # middle +- 2 along the straight part


@pytest.mark.parametrize("top,first,last", [(2, 2, 21), (1, 2, 11), (4, 5, 30)])
def test_2d_thick_bar_5_high(top, first, last):
    seg = np.zeros((12, 34), np.uint8)
    seg[top:top + 5, first:last + 1] = 7
    skel = bar5_skeleton(top, first, last)
    assert skeleton_set(seg > 0) == skel
    expected = np.where(diamond_union(skel, seg.shape) & (seg > 0), 7, 0)
    out = tubed_skeleton(seg)
    np.testing.assert_array_equal(out, expected)
    # a 5-high bar lies entirely within distance 2 of its middle row along the straight part
    assert (out[top:top + 5, first + 2:last - 2] == 7).all()
    # left end: column ``first`` only the middle row (distance 2), column first+1 the middle 3 rows
    np.testing.assert_array_equal(np.nonzero(out[:, first])[0], [top + 2])
    np.testing.assert_array_equal(np.nonzero(out[:, first + 1])[0], [top + 1, top + 2, top + 3])


def test_2d_ring_tube_is_a_closed_loop_inside_the_ring():
    yy, xx = np.mgrid[:21, :21]
    radius = np.hypot(yy - 10, xx - 10)
    ring = (radius >= 5) & (radius <= 8)
    seg = np.where(ring, 3, 0).astype(np.uint8)
    skel_mask = skeletonize(ring)
    # the skeleton is a closed loop: it separates the hole from the outside (background of the skeleton
    # has exactly 2 4-connected components), and it lies inside the ring
    assert ndimage.label(~skel_mask)[1] == 2
    assert not (skel_mask & ~ring).any()
    expected = np.where(diamond_union(np.argwhere(skel_mask), seg.shape) & ring, 3, 0)
    out = tubed_skeleton(seg)
    np.testing.assert_array_equal(out, expected)
    assert set(np.unique(out)) == {0, 3}
    assert not (out[~ring]).any()  # stays inside the ring
    # the tube is itself a closed loop around the hole (centre stays background, 2 background comps)
    assert out[10, 10] == 0
    assert ndimage.label(out == 0)[1] == 2
    # the ring is 4 px wide, so the tube (up to 5 px wide) covers most of it
    assert (out > 0).sum() > 0.8 * ring.sum()


def test_2d_two_separate_bars_two_classes():
    seg = np.zeros((15, 24), np.uint8)
    seg[1:6, 2:22] = 1
    seg[9:14, 2:22] = 2
    skel1, skel2 = bar5_skeleton(1, 2, 21), bar5_skeleton(9, 2, 21)
    assert skeleton_set(seg > 0) == skel1 | skel2
    expected = np.zeros_like(seg)
    expected[diamond_union(skel1, seg.shape) & (seg == 1)] = 1
    expected[diamond_union(skel2, seg.shape) & (seg == 2)] = 2
    out = tubed_skeleton(seg)
    np.testing.assert_array_equal(out, expected)
    assert set(np.unique(out[:7])) == {0, 1}
    assert set(np.unique(out[8:])) == {0, 2}
    assert (out[1:6, 4:19] == 1).all() and (out[9:14, 4:19] == 2).all()


def test_2d_two_touching_classes_share_one_skeleton():
    # one 5-high bar, left half class 1, right half class 4: the skeleton is that of the binarised bar,
    # each tube pixel carries the class of its own pixel.
    seg = np.zeros((9, 24), np.uint8)
    seg[2:7, 2:12] = 1
    seg[2:7, 12:22] = 4
    skel = bar5_skeleton(2, 2, 21)
    assert skeleton_set(seg > 0) == skel
    tube = diamond_union(skel, seg.shape) & (seg > 0)
    expected = np.where(tube, seg, 0)
    out = tubed_skeleton(seg)
    np.testing.assert_array_equal(out, expected)
    assert (out[2:7, 4:12] == 1).all() and (out[2:7, 12:19] == 4).all()


def test_2d_ignore_label_half_covered_bar():
    # 5-high bar rows 2..6, columns 2..21; columns 12..21 carry the ignore label 9. Foreground is the
    # 5x10 bar (columns 2..11): its skeleton is (4, 4..8) plus the kink (3, 9), (3, 10). The diamonds
    # around (3, 10) / (4, 8) reach columns 12 and 11, but ignore pixels are always 0 in the output.
    seg = np.zeros((9, 24), np.int16)
    seg[2:7, 2:22] = 1
    seg[2:7, 12:22] = 9
    skel = bar5_skeleton(2, 2, 11)
    assert skel == {(4, c) for c in range(4, 9)} | {(3, 9), (3, 10)}
    fg = seg == 1
    assert skeleton_set(fg) == skel
    expected = np.where(diamond_union(skel, seg.shape) & fg, 1, 0)
    out = tubed_skeleton(seg, ignore_label=9)
    np.testing.assert_array_equal(out, expected)
    assert not out[:, 12:].any()
    assert diamond_union(skel, seg.shape)[:, 12].any()  # the tube would reach into the ignore area
    # ignore == background for the skeleton
    np.testing.assert_array_equal(out, tubed_skeleton(np.where(seg == 9, 0, seg)))
    # without ignore_label, 9 is an ordinary class: the whole bar is one object and 9s appear
    plain = tubed_skeleton(seg)
    np.testing.assert_array_equal(plain, np.where(diamond_union(bar5_skeleton(2, 2, 21), seg.shape) & (seg > 0),
                                                  seg, 0))
    assert (plain == 9).any()


def test_ignore_label_only_map_gives_zeros():
    seg = np.full((6, 7), 3, np.uint8)
    out = tubed_skeleton(seg, ignore_label=3)
    assert out.dtype == np.uint8 and not out.any()
    seg3 = np.full((4, 5, 6), 3, np.uint8)
    assert not tubed_skeleton(seg3, ignore_label=3).any()


# ----------------------------------------------------------------------------------------------------
# hand-computed cases, 3D
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("position", [(3, 3, 3), (0, 0, 0), (6, 0, 5)])
def test_3d_isolated_voxel(position):
    seg = np.zeros((7, 7, 7), np.int32)
    seg[position] = 11
    out = tubed_skeleton(seg)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, seg)


def test_3d_thin_line_is_its_own_tube():
    # a 1-voxel-thick line along z: Lee keeps it (endpoints included); the tube restricted to the label
    # is the line itself.
    seg = np.zeros((7, 7, 14), np.uint8)
    seg[3, 3, 2:12] = 2
    assert skeleton_set(seg > 0) == {(3, 3, z) for z in range(2, 12)}
    np.testing.assert_array_equal(tubed_skeleton(seg), seg)


def test_3d_thick_rod_square_section():
    # rod with 5x5 cross-section (x, y in 3..7), z in 2..13; Lee's skeleton is the axis (5, 5, z),
    # z = 4..11 (shortened by 2 at each end). Tube = rod voxels with
    # |x - 5| + |y - 5| + dist(z, [4, 11]) <= 2: the 13-voxel 2D diamond in every slice z = 4..11,
    # 5 voxels at z = 3 and 12, 1 voxel at z = 2 and 13.
    seg = np.zeros((11, 11, 16), np.uint8)
    seg[3:8, 3:8, 2:14] = 4
    assert skeleton_set(seg > 0) == {(5, 5, z) for z in range(4, 12)}
    expected = np.zeros_like(seg)
    for x, y, z in itertools.product(range(11), range(11), range(16)):
        dz = max(0, 4 - z, z - 11)
        if seg[x, y, z] and abs(x - 5) + abs(y - 5) + dz <= 2:
            expected[x, y, z] = 4
    out = tubed_skeleton(seg)
    np.testing.assert_array_equal(out, expected)
    per_slice = (out > 0).sum(axis=(0, 1))
    np.testing.assert_array_equal(per_slice, [0, 0, 1, 5] + [13] * 8 + [5, 1, 0, 0])
    assert (out > 0).sum() == 13 * 8 + 2 * 5 + 2 * 1


def test_3d_rod_two_classes_and_ignore():
    # two parallel 5x5 rods: class 1 (x in 1..5), class 2 (x in 9..13), along z 2..13; in rod 2 the
    # slices z >= 8 carry the ignore label 3, so rod 2 is a 5x5x6 block (z 2..7) for the skeleton,
    # which Lee thins to (11, 5, 4), (11, 5, 5).
    seg = np.zeros((15, 11, 16), np.uint8)
    seg[1:6, 3:8, 2:14] = 1
    seg[9:14, 3:8, 2:14] = 2
    seg[9:14, 3:8, 8:14] = 3
    skel1 = {(3, 5, z) for z in range(4, 12)}
    skel2 = {(11, 5, 4), (11, 5, 5)}
    assert skeleton_set((seg > 0) & (seg != 3)) == skel1 | skel2
    expected = np.zeros_like(seg)
    expected[diamond_union(skel1, seg.shape) & (seg == 1)] = 1
    expected[diamond_union(skel2, seg.shape) & (seg == 2)] = 2
    out = tubed_skeleton(seg, ignore_label=3)
    np.testing.assert_array_equal(out, expected)
    assert not out[seg == 3].any()
    assert set(np.unique(out)) == {0, 1, 2}
    # the 3D diamond around (11, 5, 5) has 25 voxels; (11, 5, 7) is its tip along +z
    assert len(diamond_offsets(3)) == 25 and out[11, 5, 7] == 2 and out[11, 5, 8] == 0


def test_3d_tiny_cube_has_empty_skeleton():
    # surprise worth pinning: Lee's thinning (scikit-image) deletes a 2x2x2 cube entirely, so tiny 3D
    # objects get no tube at all (same in the reference).
    seg = np.zeros((6, 6, 6), np.uint8)
    seg[2:4, 2:4, 2:4] = 1
    assert not skeletonize(seg > 0).any()
    assert not tubed_skeleton(seg).any()
    np.testing.assert_array_equal(tubed_skeleton(seg), tubed_skeleton_reference(seg))


@pytest.mark.parametrize("shape", [(5, 6), (1, 1), (4, 5, 6), (1, 3, 2)])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.int64, np.uint16, bool])
@pytest.mark.parametrize("ignore_label", [None, 2])
def test_empty_map_gives_zeros(shape, dtype, ignore_label):
    seg = np.zeros(shape, dtype)
    for fn in (tubed_skeleton, tubed_skeleton_reference):
        out = fn(seg, ignore_label=ignore_label)
        assert out.shape == shape and out.dtype == np.dtype(dtype)
        assert not out.any()


def test_diamond_offsets_sizes():
    assert len(diamond_offsets(2)) == 13 and len(diamond_offsets(3)) == 25
    assert {tuple(o) for o in diamond_offsets(2)} == {
        (dx, dy) for dx in range(-2, 3) for dy in range(-2, 3) if abs(dx) + abs(dy) <= 2}


# ----------------------------------------------------------------------------------------------------
# fast == reference on generated cases
# ----------------------------------------------------------------------------------------------------

def _paint_ignore(label, ignore_label, seed):
    rng = np.random.default_rng(seed)
    label = label.copy()
    for _ in range(2):
        lo = rng.integers(0, np.array(label.shape) // 2)
        box = tuple(slice(int(a), int(a) + max(2, s // 4)) for a, s in zip(lo, label.shape))
        label[box] = ignore_label
    return label


@pytest.mark.parametrize("shape", [(96, 96), (40, 40, 40)], ids=["2d", "3d"])
@pytest.mark.parametrize("n_classes", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("with_ignore", [False, True])
def test_fast_equals_reference_tubular(shape, n_classes, seed, with_ignore):
    _, label = tubular_case(shape, n_classes, seed)
    assert label.any()
    ignore = None
    if with_ignore:
        ignore = n_classes + 1
        label = _paint_ignore(label, ignore, seed)
    fast = tubed_skeleton(label, ignore)
    ref = tubed_skeleton_reference(label, ignore)
    assert fast.dtype == ref.dtype == label.dtype
    np.testing.assert_array_equal(fast, ref)
    assert fast.any()
    if ignore is not None:
        assert not fast[label == ignore].any()


class _CountingSkeletonize:
    def __init__(self):
        self.calls = 0

    def __call__(self, image, **kwargs):
        self.calls += 1
        return skeletonize(image, **kwargs)


# sparse noise: many small far-apart components -> thinned one by one on their bounding boxes;
# dense noise (above the percolation threshold: ~0.41 for 8-connected 2D sites, ~0.10 for 26-connected
# 3D sites) -> one giant component whose box is the foreground's box -> a single thinning of that box.
@pytest.mark.parametrize("shape,density,path", [
    ((96, 96), 0.002, "components"), ((96, 96), 0.01, "components"),
    ((96, 96), 0.6, "union"), ((96, 96), 0.8, "union"),
    ((32, 32, 32), 0.002, "components"), ((32, 32, 32), 0.01, "components"),
    ((32, 32, 32), 0.3, "union"), ((32, 32, 32), 0.6, "union"),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_equals_reference_noise(monkeypatch, shape, density, path, seed):
    rng = np.random.default_rng(seed)
    label = np.where(rng.random(shape) < density, rng.integers(1, 6, shape), 0).astype(np.uint8)
    ref = tubed_skeleton_reference(label)
    counter = _CountingSkeletonize()
    monkeypatch.setattr(skeleton_module, "skeletonize", counter)
    fast = tubed_skeleton(label)
    monkeypatch.undo()
    np.testing.assert_array_equal(fast, ref)
    # check that the intended code path was exercised
    n_components = ndimage.label(label > 0, structure=np.ones((3,) * len(shape)))[1]
    if path == "components":
        assert n_components > 10
        assert counter.calls == n_components
    else:
        assert counter.calls == 1


def _flat_plate_cases():
    # (name, seg): 3D maps with a component confined to ONE plane along axis 0 while the array has
    # more than one plane along axis 0.
    plate = np.zeros((2, 6, 8), np.uint8)
    plate[0, 1:5, 1:7] = 1  # 4x6 plate: reference skeleton is EMPTY, the per-box one is a line
    square = np.zeros((2, 7, 7), np.uint8)
    square[0, 1:6, 1:6] = 1  # 5x5 plate: reference keeps 1 voxel, the per-box one 3
    mixed = np.zeros((8, 12, 12), np.uint8)
    mixed[3, 1:6, 1:7] = 2  # flat plate in plane 3 (per-component path) ...
    mixed[1:7, 8:11, 8:11] = 1  # ... next to a thick block
    union = np.zeros((4, 9, 9), np.uint8)
    union[2, 1:8, 1:8] = 1  # all the foreground in one plane: the union-box path
    union[2, 3:6, 3:6] = 2
    return [("plate4x6", plate), ("plate5x5", square), ("per_component", mixed), ("union_box", union)]


# Regression: scikit-image's Lee thinning runs only 4 of its 6 border directions on an array that is one
# plane thick along axis 0; crops of such components must still be thinned like the whole array.
@pytest.mark.parametrize("name,seg", _flat_plate_cases(), ids=[c[0] for c in _flat_plate_cases()])
def test_3d_component_in_a_single_axis0_plane_matches_reference(name, seg):
    np.testing.assert_array_equal(tubed_skeleton(seg), tubed_skeleton_reference(seg))


def test_3d_single_plane_array_is_consistent():
    # when the whole array has one plane along axis 0, reference and crops both thin "as 2D": equal
    seg = np.zeros((1, 8, 9), np.uint8)
    seg[0, 1:6, 1:8] = 1
    np.testing.assert_array_equal(tubed_skeleton(seg), tubed_skeleton_reference(seg))
    assert tubed_skeleton(seg).any()


@pytest.mark.parametrize("seed", range(3))
def test_fast_equals_reference_noise_with_ignore(seed):
    rng = np.random.default_rng(100 + seed)
    for shape in [(64, 64), (24, 24, 24)]:
        label = rng.integers(0, 5, shape).astype(np.int16)  # 4 is the ignore label
        label[rng.random(shape) < 0.5] = 0
        np.testing.assert_array_equal(tubed_skeleton(label, 4), tubed_skeleton_reference(label, 4))


def test_fast_equals_reference_non_contiguous_input():
    _, label = tubular_case((40, 48), 2, 5)
    for view in (label.T, label[::-1], label[:, ::2]):
        np.testing.assert_array_equal(tubed_skeleton(view), tubed_skeleton_reference(view))
    _, label3 = tubular_case((20, 24, 28), 2, 5)
    view = label3.transpose(2, 0, 1)
    np.testing.assert_array_equal(tubed_skeleton(view), tubed_skeleton_reference(view))


# ----------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [tubed_skeleton, tubed_skeleton_reference])
@pytest.mark.parametrize("shape", [(5,), (1, 4, 4, 4), (2, 3, 4, 5), ()])
def test_wrong_ndim_raises(fn, shape):
    with pytest.raises(ValueError, match="channel axis"):
        fn(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("fn", [tubed_skeleton, tubed_skeleton_reference])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.complex64])
def test_float_dtype_raises(fn, dtype):
    with pytest.raises(TypeError, match="integer label map"):
        fn(np.zeros((4, 4), dtype))


def test_list_input_is_accepted():
    seg = [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    np.testing.assert_array_equal(tubed_skeleton(seg), np.array(seg))


# ----------------------------------------------------------------------------------------------------
# hypothesis properties
# ----------------------------------------------------------------------------------------------------

@st.composite
def label_maps(draw):
    ndim = draw(st.sampled_from([2, 3]))
    max_side = 24 if ndim == 2 else 12
    shape = tuple(draw(st.integers(1, max_side)) for _ in range(ndim))
    n_classes = draw(st.integers(1, 13))
    ignore = draw(st.sampled_from([None, n_classes + 1, n_classes]))
    top = n_classes if ignore is None or ignore <= n_classes else ignore
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.int32, np.int64]))
    kind = draw(st.sampled_from(["elements", "blobs"]))
    if kind == "elements":
        seg = draw(arrays(dtype, shape, elements=st.integers(0, top)))
    else:
        # smooth random blobs: tube-ish / blob-ish objects, each blob one class
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=draw(st.floats(0.5, 2.0)))
        threshold = np.quantile(field, draw(st.floats(0.3, 0.95)))
        seg = np.where(field > threshold, rng.integers(1, top + 1, shape), 0).astype(dtype)
        seg = ndimage.median_filter(seg, size=2) if draw(st.booleans()) else seg
    return np.asarray(seg, dtype), ignore


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_maps())
@example((np.zeros((24, 24), np.uint8), None))
@example((np.zeros((12, 12, 12), np.uint8), 2))
@example((np.pad(np.ones((1, 1), np.uint8), 5), None))
@example((np.pad(np.full((1, 1, 1), 3, np.uint8), 4), None))
@example((np.ones((24, 24), np.uint8), None))
@example((np.full((12, 12, 12), 13, np.int16), None))
@example((np.full((10, 10), 14, np.int16), 14))
@example((np.arange(144).reshape(12, 12).astype(np.int32) % 15, 14))
def test_properties(case):
    seg, ignore = case
    out = tubed_skeleton(seg, ignore)
    ref = tubed_skeleton_reference(seg, ignore)
    assert out.shape == seg.shape and out.dtype == seg.dtype
    np.testing.assert_array_equal(out, ref)
    fg = seg > 0
    if ignore is not None:
        fg &= seg != ignore
        assert not out[seg == ignore].any()
    tube = out != 0
    assert not (tube & ~fg).any()  # tube within the foreground
    np.testing.assert_array_equal(out[tube], seg[tube])  # carries the label
    if not fg.any():
        assert not tube.any()
    if seg.ndim == 2 and fg.any():
        # Zhang never deletes a whole component, so a non-empty 2D foreground gives a non-empty tube
        assert tube.any()


# ----------------------------------------------------------------------------------------------------
# the table-driven thinning inside tubed_skeleton: dispatch and equality with the reference
# ----------------------------------------------------------------------------------------------------

class _CountingCoordinates:
    """Wraps thinning.skeleton_coordinates (the table-driven route of skeleton_points) and counts its calls."""

    def __init__(self):
        self.calls = 0
        self.real = thinning.skeleton_coordinates

    def __call__(self, mask, **kwargs):
        self.calls += 1
        return self.real(mask, **kwargs)


def _labelled(mask: np.ndarray, n_classes: int, how: str, rng: np.random.Generator) -> np.ndarray:
    """Classes 1..n_classes on a boolean mask: one class per 26/8-connected component, random per voxel
    (classes touching everywhere), or smooth class regions cutting through the objects."""
    if how == "components":
        comps, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
        return np.r_[0, rng.integers(1, n_classes + 1, n)][comps]
    if how == "voxels":
        return np.where(mask, rng.integers(1, n_classes + 1, mask.shape), 0)
    field = ndimage.gaussian_filter(rng.random(mask.shape), 1.5)
    bins = np.quantile(field, np.linspace(0, 1, n_classes + 1)[1:-1])
    return np.where(mask, 1 + np.digitize(field, bins), 0)


def _with_ignore(seg: np.ndarray, ignore: int, how: str, rng: np.random.Generator) -> np.ndarray:
    """Paint the ignore label over random boxes (touching the border or not) or scattered voxels."""
    seg = seg.copy()
    if how == "boxes":
        for _ in range(int(rng.integers(1, 3))):
            lo = [int(rng.integers(0, n)) for n in seg.shape]
            hi = [min(n, a + int(rng.integers(1, max(2, n // 2) + 1))) for a, n in zip(lo, seg.shape)]
            seg[tuple(slice(a, b) for a, b in zip(lo, hi))] = ignore
    elif how == "voxels":
        seg[rng.random(seg.shape) < rng.uniform(0.02, 0.3)] = ignore
    else:                                            # the ignore label over part of the objects only
        seg[(seg > 0) & (rng.random(seg.shape) < 0.5)] = ignore
    return seg


MASK_KINDS = ["noise", "blobs", "dilated_noise", "blocks", "sheet", "plate", "curve", "full"]


@st.composite
def structured_label_maps(draw):
    """(seg, ignore_label): a structured mask (thin curves, one-voxel sheets, two-voxel plates, even-sized
    blocks, blobs, noise, full arrays; all may touch the border), labelled with 1..13 classes, with or without
    an ignore label (a value above the classes, or one of the classes themselves)."""
    ndim = draw(st.sampled_from([2, 3, 3]))
    side = st.integers(1, 40) if ndim == 2 else st.integers(1, 12)
    shape = tuple(draw(side) for _ in range(ndim))
    if ndim == 3 and draw(st.integers(0, 4)) == 0:   # flat arrays: one plane thick along a random axis
        flat_axis = draw(st.integers(0, 2))
        shape = tuple(1 if a == flat_axis else n for a, n in enumerate(shape))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    mask = structured_mask(draw(st.sampled_from(MASK_KINDS)), shape, rng)
    n_classes = draw(st.integers(1, 13))
    seg = _labelled(mask, n_classes, draw(st.sampled_from(["components", "voxels", "regions"])), rng)
    ignore = draw(st.sampled_from([None, n_classes + 1, n_classes]))
    if ignore is not None and ignore > n_classes:
        seg = _with_ignore(seg, ignore, draw(st.sampled_from(["boxes", "voxels", "objects"])), rng)
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.int32, np.int64]))
    return seg.astype(dtype), ignore


def _check_tube(seg: np.ndarray, ignore: int | None) -> None:
    out = tubed_skeleton(seg, ignore)
    ref = tubed_skeleton_reference(seg, ignore)
    assert out.shape == seg.shape and out.dtype == seg.dtype
    if not np.array_equal(out, ref):
        diff = np.argwhere(out != ref)
        raise AssertionError(f"shape {seg.shape}, ignore {ignore}: {len(diff)} voxels differ, first {diff[:5]}")


@settings(max_examples=2000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured_label_maps())
@example((np.pad(np.full((1, 6, 1), 3, np.uint8), ((0, 0), (0, 0), (0, 4))), None))     # one-plane line
@example((np.pad(np.ones((1, 5, 5), np.int16), ((1, 1), (0, 3), (2, 0))), 2))          # flat plate
@example((np.full((4, 6, 8), 5, np.int32), 5))                                           # all ignore
@example((np.ones((2, 2, 2), np.uint8), None))                                           # vanishing cube
def test_structured_label_maps_fast_path_equals_reference(case):
    """tubed_skeleton with the table-driven thinning forced on 3D masks of every size (by default it starts
    at 100k voxels) equals the reference on >= 2000 structured label maps, 2D ones included."""
    seg, ignore = case
    counter = _CountingCoordinates()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(thinning, "SKIMAGE_BELOW_VOXELS", 0)
        patch.setattr(thinning, "skeleton_coordinates", counter)
        _check_tube(seg, ignore)
    fg = (seg > 0) & (seg != ignore) if ignore is not None else seg > 0
    assert counter.calls == (1 if seg.ndim == 3 and fg.any() else 0)     # 3D: the table-driven route ran


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(structured_label_maps())
def test_structured_label_maps_skimage_fallback_equals_reference(case):
    """NNUNET_EXT_THINNING=skimage: per-component scikit-image thinning, never the tables; same result."""
    seg, ignore = case
    counter = _CountingCoordinates()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(thinning, "SKIMAGE_BELOW_VOXELS", 0)
        patch.setattr(thinning, "skeleton_coordinates", counter)
        patch.setenv(thinning.BACKEND_ENV, "skimage")
        _check_tube(seg, ignore)
    assert counter.calls == 0


def _large_cases():
    """3D label maps of >= 100k voxels (the default fast path): trees, flat and one-plane-thick arrays."""
    rng = np.random.default_rng(21)
    tree = branching_tubes((48, 48, 48), rng, n_branches=6, radius=(1.0, 3.0))
    classes = np.where(tree, rng.integers(1, 14, tree.shape), 0)                  # 13 classes, touching
    plane = ndimage.gaussian_filter(rng.random((1, 320, 320)), 2.0) > 0.5         # one plane thick
    slab = np.zeros((3, 200, 200), bool)
    slab[1] = ndimage.gaussian_filter(rng.random((200, 200)), 1.5) > 0.5           # a sheet inside a slab
    border = np.zeros((50, 50, 50), np.int16)
    border[:12, :, :7] = 2                                                         # blocks on the border
    border[30:, 40:, 45:] = 3
    border[20:26, 0:30, 20:23] = 4
    return [("tree_13_classes", classes.astype(np.uint8), None),
            ("tree_ignore_boxes", _with_ignore(classes, 14, "boxes", rng).astype(np.int16), 14),
            ("tree_ignore_is_a_class", classes.astype(np.int32), 7),
            ("one_plane", plane.astype(np.uint8) * 3, None),
            ("sheet_in_slab", _with_ignore(slab.astype(np.uint8), 9, "voxels", rng), 9),
            ("border_blocks", border, 3)]


LARGE_CASES = _large_cases()


@pytest.mark.parametrize("name,seg,ignore", LARGE_CASES, ids=[c[0] for c in LARGE_CASES])
def test_large_3d_maps_take_the_fast_path_and_equal_reference(name, seg, ignore, monkeypatch):
    counter = _CountingCoordinates()
    monkeypatch.setattr(thinning, "skeleton_coordinates", counter)
    assert seg.size >= thinning.SKIMAGE_BELOW_VOXELS
    _check_tube(seg, ignore)
    assert counter.calls == 1
    assert tubed_skeleton(seg, ignore).any()


def test_tube_indices_clip_at_the_border_like_the_dilation():
    """Every in-bounds voxel within L1 distance 2 of a point, nothing else, for points on edges and corners."""
    for shape, points in [((5, 4), [(0, 0), (4, 3), (2, 0)]), ((3, 1, 6), [(0, 0, 0), (2, 0, 5), (1, 0, 2)]),
                          ((1, 1), [(0, 0)])]:
        got = np.zeros(shape, bool)
        got.reshape(-1)[tube_indices(np.array(points), shape)] = True
        np.testing.assert_array_equal(got, diamond_union(points, shape))


@pytest.mark.parametrize("shape", [(1, 1, 5), (1, 5, 1), (5, 1, 1), (1, 5)])
def test_separate_voxels_on_a_line(shape):
    """Regression: cc3d 4.1 raises on such bool masks (and mislabels background pixels of some 2D bool masks
    at connectivity 8); the components are labelled from a uint8 view. Each voxel is its own skeleton and
    tube (Lee and Zhang keep isolated points)."""
    seg = np.zeros(5, np.uint8)
    seg[[0, 2, 4]] = [1, 2, 3]
    seg = seg.reshape(shape)
    np.testing.assert_array_equal(tubed_skeleton(seg), seg)
    np.testing.assert_array_equal(tubed_skeleton_reference(seg), seg)
