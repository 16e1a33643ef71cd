"""Fast thinning (nnunet_ext.core.thinning) against scikit-image, the tables against independent references.

The reference everywhere is ``skimage.morphology.skeletonize`` (the installed version): the fast 3D path
must return the same array, bit for bit. Masks: random noise of every density, blobs, even-sized blocks
(a 2x2x2 cube vanishes completely under Lee's thinning), one-plane-thick sheets along each axis and as
(1, H, W) arrays (scikit-image then uses only 4 of its 6 border directions), 26-connected curves, plates,
foreground touching the array border, branching tubes up to 64³ and two connected 128³ vessel trees.
2D masks go to scikit-image by design; they are checked to make sure the dispatch stays that way.

The table tests compare the per-neighbourhood decisions with ``scipy.ndimage.label`` (26-connected
components of the neighbours) and ``skimage.measure.euler_number`` (Euler characteristic with and without
the centre), which share no code with the tables' construction.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.measure import euler_number
from skimage.morphology import skeletonize as skimage_skeletonize

from nnunet_ext.core import thinning
from nnunet_ext.core.thinning import skeleton_coordinates, skeletonize

FAST = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


@pytest.fixture(autouse=True, scope="module")
def private_table_cache(tmp_path_factory):
    """Tables built once, in a temporary cache folder (the tests never touch ~/.cache); the fast path for
    masks of every size (by default masks under 100k voxels are handed to scikit-image)."""
    patch = pytest.MonkeyPatch()
    patch.setenv(thinning.CACHE_DIR_ENV, str(tmp_path_factory.mktemp("thinning_cache")))
    patch.delenv(thinning.BACKEND_ENV, raising=False)
    patch.setattr(thinning, "SKIMAGE_BELOW_VOXELS", 0)    # small masks too take the table-driven path
    patch.setattr(thinning, "_tables_in_memory", None)
    yield
    patch.undo()


def assert_same_as_skimage(mask: np.ndarray) -> None:
    expected = skimage_skeletonize(mask)
    got = skeletonize(mask)
    assert got.dtype == bool and got.shape == mask.shape
    if not np.array_equal(got, expected):
        diff = np.argwhere(got != expected)
        raise AssertionError(f"shape {mask.shape}, {int(mask.sum())} fg: {len(diff)} voxels differ, first {diff[:5]}")


# ----------------------------------------------------------------------------------------------------
# mask generators (numpy/scipy only)
# ----------------------------------------------------------------------------------------------------

def random_walk(shape, rng, steps, connectivity=26):
    """Voxels of a lattice random walk (26- or 6-connected steps), clipped to the array."""
    ndim = len(shape)
    moves = np.array([m for m in itertools.product((-1, 0, 1), repeat=ndim) if any(m)])
    if connectivity == 6:
        moves = moves[np.abs(moves).sum(1) == 1]
    pos = np.array([rng.integers(0, s) for s in shape])
    mask = np.zeros(shape, bool)
    for _ in range(steps):
        mask[tuple(pos)] = True
        pos = np.clip(pos + moves[rng.integers(len(moves))], 0, np.array(shape) - 1)
    return mask


def branching_tubes(shape, rng, n_branches, radius):
    """Connected tree of smooth random walks (each branch starts on an earlier one), dilated to radius."""
    size = np.array(shape, float)
    centre = np.zeros(shape, bool)
    rad = np.zeros(shape, np.float32)
    paths = []
    for _ in range(n_branches):
        if paths:                                  # start on a random point of an earlier branch
            earlier = paths[rng.integers(len(paths))]
            pos = earlier[rng.integers(len(earlier))].copy()
        else:
            pos = size * rng.uniform(0.3, 0.7, 3)
        step = rng.normal(size=3)
        r = rng.uniform(*radius)
        points = []
        for _ in range(int(1.5 * size.max())):
            step /= np.linalg.norm(step)
            points.append(pos.copy())
            pos = pos + step
            step = step + rng.normal(scale=0.2, size=3)
            if (pos < 0).any() or (pos > size - 1).any():
                break
        points = np.array(points)
        paths.append(points)
        index = tuple(np.round(points).astype(int).T)
        centre[index] = True
        rad[index] = np.maximum(rad[index], r)
    distance, nearest = ndimage.distance_transform_edt(~centre, return_indices=True)
    return distance <= rad[tuple(nearest)]


def structured_mask(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    shape = tuple(shape)
    if kind == "noise":
        return rng.random(shape) < rng.uniform(0.05, 0.97)
    if kind == "blobs":
        sigma = rng.uniform(0.5, 2.0)
        return ndimage.gaussian_filter(rng.random(shape), sigma) > rng.uniform(0.45, 0.55)
    if kind == "dilated_noise":
        seeds = rng.random(shape) < rng.uniform(0.02, 0.15)
        return ndimage.binary_dilation(seeds, ndimage.generate_binary_structure(len(shape), int(rng.integers(1, 4))))
    if kind == "blocks":       # axis-aligned boxes of random (often even) sizes, may touch the border
        mask = np.zeros(shape, bool)
        for _ in range(int(rng.integers(1, 4))):
            lo = [int(rng.integers(0, s)) for s in shape]
            hi = [min(s, a + int(rng.integers(1, 5))) for a, s in zip(lo, shape)]
            mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
        return mask
    if kind == "sheet":        # one voxel thick along a random axis
        mask = np.zeros(shape, bool)
        axis = int(rng.integers(len(shape)))
        sub = [s for i, s in enumerate(shape) if i != axis]
        pattern = ndimage.gaussian_filter(rng.random(sub), rng.uniform(0.3, 1.5)) > 0.5
        index = [slice(None)] * len(shape)
        index[axis] = int(rng.integers(shape[axis]))
        mask[tuple(index)] = pattern
        return mask
    if kind == "plate":        # two voxels thick
        mask = np.zeros(shape, bool)
        axis = int(rng.integers(len(shape)))
        index = [slice(None)] * len(shape)
        start = int(rng.integers(shape[axis]))
        index[axis] = slice(start, start + 2)
        mask[tuple(index)] = rng.random(mask[tuple(index)].shape) < rng.uniform(0.6, 1.0)
        return mask
    if kind == "curve":
        return random_walk(shape, rng, int(rng.integers(2, 4 * max(shape))), int(rng.choice([6, 26])))
    if kind == "full":
        return np.ones(shape, bool)
    raise ValueError(kind)


KINDS = ["noise", "blobs", "dilated_noise", "blocks", "sheet", "plate", "curve", "full"]


# ----------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------

def neighbourhood(code: int) -> np.ndarray:
    """3x3x3 bool cube for a code (bit k = neighbour thinning._OFFSETS[k]), centre set."""
    cube = np.zeros((3, 3, 3), bool)
    cube[1, 1, 1] = True
    for k, offset in enumerate(thinning._OFFSETS):
        if code >> k & 1:
            cube[tuple(offset + 1)] = True
    return cube


def table_bit(table: np.ndarray, code: int) -> bool:
    return bool(table[code >> 3] >> (code & 7) & 1)


def test_tables_match_scipy_label_and_euler_number():
    """simple = neighbours form <= 1 26-component; candidate = simple, not an end point, Euler-invariant."""
    candidate, simple = thinning.thinning_tables()
    rng = np.random.default_rng(0)
    codes = [int(c) for c in rng.integers(0, 1 << 26, 700)]                       # ~13 neighbours
    codes += [int(a & b & c) for a, b, c in rng.integers(0, 1 << 26, (700, 3))]    # ~3 neighbours
    codes += [int(a | b) for a, b in rng.integers(0, 1 << 26, (300, 2))]           # ~19 neighbours
    codes += [0, (1 << 26) - 1] + [1 << k for k in range(26)]
    counts = {"simple": 0, "candidate": 0}
    for code in codes:
        cube = neighbourhood(code)
        others = cube.copy()
        others[1, 1, 1] = False
        n_components = ndimage.label(others, structure=np.ones((3, 3, 3)))[1]
        euler_kept = euler_number(np.pad(cube, 1), connectivity=3) == euler_number(np.pad(others, 1), connectivity=3)
        is_simple = n_components <= 1
        is_candidate = is_simple and others.sum() != 1 and euler_kept
        assert table_bit(simple, code) == is_simple, code
        assert table_bit(candidate, code) == is_candidate, code
        counts["simple"] += is_simple
        counts["candidate"] += is_candidate
    assert min(counts.values()) > 200          # both outcomes well represented


def test_tables_cached_on_disk_and_corruption_rebuilds(tmp_path, monkeypatch):
    built = thinning.thinning_tables()
    assert thinning._crc(built) == thinning.TABLE_CRC
    monkeypatch.setenv(thinning.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(thinning, "_tables_in_memory", None)
    calls = []
    monkeypatch.setattr(thinning, "build_tables", lambda: calls.append(1) or built.copy())
    thinning.thinning_tables()                           # nothing cached there yet: built and saved
    path = thinning.table_cache_path()
    assert calls == [1] and path.parent == tmp_path and np.array_equal(np.load(path), built)
    monkeypatch.setattr(thinning, "_tables_in_memory", None)
    thinning.thinning_tables()                           # loaded from the file
    assert calls == [1]
    data = np.load(path)
    data[0, 12345] ^= 1                                  # one flipped bit: the CRC rejects the file
    np.save(path, data)
    monkeypatch.setattr(thinning, "_tables_in_memory", None)
    assert np.array_equal(thinning.thinning_tables(), built) and calls == [1, 1]
    assert np.array_equal(np.load(path), built)


def test_cached_tables_are_a_read_only_memory_map(tmp_path, monkeypatch):
    """Loaded from the cache, the tables are a read-only mapping of the file (one page-cache copy for all
    data-loader processes), equal to the built ones; a freshly built set is re-read from the file it saved."""
    import mmap

    built = thinning.thinning_tables()
    monkeypatch.setenv(thinning.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(thinning, "_tables_in_memory", None)
    monkeypatch.setattr(thinning, "build_tables", lambda: built.copy())
    for _ in range(2):                                   # built and saved, then loaded
        tables = thinning.thinning_tables()
        assert not tables.flags.writeable and np.array_equal(tables, built)
        base = tables
        while getattr(base, "base", None) is not None and not isinstance(base, mmap.mmap):
            base = base.base
        assert isinstance(base, mmap.mmap)
        monkeypatch.setattr(thinning, "_tables_in_memory", None)


def test_wrong_tables_fall_back_to_skimage(tmp_path, monkeypatch):
    monkeypatch.setenv(thinning.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(thinning, "_tables_in_memory", None)
    monkeypatch.setattr(thinning, "_tables_broken", False)
    monkeypatch.setattr(thinning, "build_tables", lambda: np.zeros((2, 1 << 23), np.uint8))
    mask = np.zeros((6, 7, 8), bool)
    mask[1:5, 1:6, 1:7] = True
    with pytest.warns(RuntimeWarning, match="falling back to scikit-image"):
        result = skeletonize(mask)
    assert np.array_equal(result, skimage_skeletonize(mask)) and result.any()
    assert not thinning.table_cache_path().exists()      # wrong tables are never cached


# ----------------------------------------------------------------------------------------------------
# whole skeletons vs scikit-image
# ----------------------------------------------------------------------------------------------------

@settings(max_examples=2400, **FAST)
@given(kind=st.sampled_from(KINDS), shape=st.tuples(*[st.integers(1, 11)] * 3), seed=st.integers(0, 2**32 - 1))
def test_random_3d_masks_equal_skimage(kind, shape, seed):
    assert_same_as_skimage(structured_mask(kind, shape, np.random.default_rng(seed)))


@settings(max_examples=300, **FAST)
@given(kind=st.sampled_from(KINDS), shape=st.tuples(st.integers(1, 3), st.integers(4, 24), st.integers(4, 24)),
       seed=st.integers(0, 2**32 - 1))
def test_thin_along_axis0_equal_skimage(kind, shape, seed):
    """1-3 planes along axis 0, including (1, H, W) arrays where scikit-image uses 4 border directions."""
    assert_same_as_skimage(structured_mask(kind, shape, np.random.default_rng(seed)))


@settings(max_examples=150, **FAST)
@given(kind=st.sampled_from(KINDS), shape=st.tuples(*[st.integers(1, 40)] * 2), seed=st.integers(0, 2**32 - 1))
def test_2d_masks_go_to_skimage(kind, shape, seed):
    assert_same_as_skimage(structured_mask(kind, shape, np.random.default_rng(seed)))


@pytest.mark.parametrize("at_border", [False, True])
def test_every_small_block_equals_skimage(at_border):
    """All boxes of 1..4 voxels per side, inside the array or against its corner (128 masks)."""
    for size in itertools.product(range(1, 5), repeat=3):
        mask = np.zeros((7, 7, 7), bool)
        start = 0 if at_border else 1
        mask[tuple(slice(start, start + s) for s in size)] = True
        assert_same_as_skimage(mask)


def test_hand_checked_cases():
    """A 2x2x2 cube vanishes: in the -y pass its 4 lower voxels are candidates (7 connected neighbours, the
    Euler characteristic stays 1) and are all deleted; in the +y pass the 4 others are candidates (3
    neighbours each) and the re-check, which repeats only the simple-point test and not the end-point test,
    deletes them one after the other down to the last, isolated one. A straight line of voxels stays: each
    inner voxel separates its two neighbours (not simple), the two ends are end points."""
    cube = np.zeros((5, 5, 5), bool)
    cube[1:3, 2:4, 1:3] = True
    line = np.zeros((3, 9, 4), bool)
    line[1, 2:7, 2] = True
    for mask, expected in [(cube, np.zeros_like(cube)), (line, line)]:
        assert np.array_equal(skimage_skeletonize(mask), expected)
        assert np.array_equal(skeletonize(mask), expected)


@pytest.mark.parametrize("seed", range(6))
def test_branching_tubes_equal_skimage(seed):
    rng = np.random.default_rng(100 + seed)
    side = (32, 48, 64)[seed % 3]
    mask = branching_tubes((side,) * 3, rng, n_branches=4 + seed, radius=(1.0, 3.5))
    assert mask.sum() > 300
    assert_same_as_skimage(mask)


@pytest.mark.parametrize("seed", [0, 1])
def test_connected_vessel_trees_128_equal_skimage(seed):
    mask = branching_tubes((128, 128, 128), np.random.default_rng(seed), n_branches=12, radius=(1.0, 3.0))
    assert ndimage.label(mask, structure=np.ones((3, 3, 3)))[1] == 1      # one tree spanning the patch
    expected = skimage_skeletonize(mask)
    assert expected.sum() > 200
    assert np.array_equal(skeletonize(mask), expected)
    assert np.array_equal(skeleton_coordinates(mask), np.argwhere(expected))


def test_thick_shapes_equal_skimage():
    grid = np.indices((40, 40, 40)) - 20
    ball = (grid ** 2).sum(0) < 17 ** 2
    assert_same_as_skimage(ball)
    assert_same_as_skimage(np.ones((24, 30, 18), bool))
    assert_same_as_skimage(ndimage.gaussian_filter(np.random.default_rng(3).random((48, 48, 48)), 2.5) > 0.5)


# ----------------------------------------------------------------------------------------------------
# interface
# ----------------------------------------------------------------------------------------------------

def test_input_dtypes_layouts_and_empty_arrays():
    rng = np.random.default_rng(7)
    labels = (rng.random((12, 10, 9)) < 0.5) * rng.integers(1, 14, (12, 10, 9))   # 13 classes
    for mask in [labels.astype(np.uint8), labels.astype(np.float32) - 0.0, np.asfortranarray(labels),
                 labels[::2, ::-1, 1:], labels.astype(np.int64).transpose(2, 0, 1)]:
        assert_same_as_skimage(mask)
    for shape in [(0, 4, 5), (3, 0, 2), (4, 5, 6)]:
        assert not skeletonize(np.zeros(shape, bool)).any() and skeletonize(np.zeros(shape, bool)).shape == shape
    assert skeletonize(np.ones((1, 1, 1), bool)).tolist() == [[[True]]]


def test_bad_dimensions_raise():
    for shape in [(5,), (2, 3, 4, 5)]:
        with pytest.raises(ValueError, match="2D .* or 3D"):
            skeletonize(np.ones(shape, bool))


def test_coordinates_equal_argwhere():
    rng = np.random.default_rng(11)
    for shape in [(9, 8, 7), (1, 12, 13), (20, 17)]:
        mask = ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.5
        coords = skeleton_coordinates(mask)
        assert coords.dtype == np.intp and coords.shape[1] == len(shape)
        assert np.array_equal(coords, np.argwhere(skimage_skeletonize(mask)))


def test_backend_switch(monkeypatch):
    import skimage.morphology

    calls = []
    real = skimage.morphology.skeletonize
    monkeypatch.setattr(skimage.morphology, "skeletonize", lambda m: calls.append(m.shape) or real(m))
    mask = np.zeros((6, 6, 6), bool)
    mask[1:5, 2:4, 1:5] = True
    skeletonize(mask)
    assert calls == []                                  # default: the fast path
    skeletonize(mask, backend="skimage")
    monkeypatch.setenv(thinning.BACKEND_ENV, "skimage")
    skeletonize(mask)
    skeleton_coordinates(mask)
    assert calls == [(6, 6, 6)] * 3
    assert np.array_equal(skeletonize(mask, backend="fast"), real(mask)) and len(calls) == 3
    monkeypatch.setenv(thinning.BACKEND_ENV, "cuda")
    with pytest.raises(ValueError, match="NNUNET_EXT_THINNING"):
        skeletonize(mask)
    with pytest.raises(ValueError, match="backend="):
        skeletonize(mask, backend="lee")


def test_small_masks_go_to_skimage_by_default(monkeypatch):
    import skimage.morphology

    monkeypatch.setattr(thinning, "SKIMAGE_BELOW_VOXELS", 100_000)
    calls = []
    real = skimage.morphology.skeletonize
    monkeypatch.setattr(skimage.morphology, "skeletonize", lambda m: calls.append(m.shape) or real(m))
    rng = np.random.default_rng(5)
    small = ndimage.gaussian_filter(rng.random((40, 40, 40)), 2) > 0.5                 # 64000 voxels
    large = branching_tubes((48, 48, 48), rng, n_branches=5, radius=(1.0, 2.5))       # 110592 voxels
    assert not thinning.fast_path_applies(small) and thinning.fast_path_applies(large)
    assert np.array_equal(skeletonize(small), real(small)) and calls == [(40, 40, 40)]
    assert np.array_equal(skeletonize(large), real(large)) and calls == [(40, 40, 40)]
    assert not thinning.fast_path_applies(large, backend="skimage") and not thinning.fast_path_applies(small[0])


def test_threads_get_their_own_scratch_arrays():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    masks = [branching_tubes((s, s, s), rng, n_branches=4, radius=(1.0, 3.0)) for s in (24, 40, 32, 48)] * 2
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(skeletonize, masks))
    for mask, result in zip(masks, results):
        assert np.array_equal(result, skimage_skeletonize(mask))


def test_no_warnings_on_the_fast_path():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        skeletonize(np.ones((5, 6, 7), bool))
