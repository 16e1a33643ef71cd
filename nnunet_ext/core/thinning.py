"""Thinning identical to ``skimage.morphology.skeletonize``, fast on large sparse 3D masks.

:func:`skeletonize` returns, bit for bit, what ``skimage.morphology.skeletonize`` returns: Lee et al.'s
(1994) thinning for 3D input, Zhang & Suen's for 2D input (handed to scikit-image, see below).
:func:`skeleton_coordinates` returns the same skeleton as ``np.argwhere`` of it, without building the dense
array. ``NNUNET_EXT_THINNING=skimage`` in the environment (or ``backend="skimage"``) uses scikit-image for
everything.

How scikit-image thins a 3D mask (``_compute_thin_image`` in its Lee module): the mask is padded by one zero
voxel on every side; rounds over the six border directions -y, +y, +x, -x, +z, -z (axes (z, y, x) =
(0, 1, 2); only the first four when axis 0 has length 1) repeat until a whole round deletes nothing. One
direction is one pass:

1. candidates: every foreground voxel whose neighbour in that direction is background, which is not an end
   point (exactly one foreground voxel among its 26 neighbours), whose removal keeps the Euler
   characteristic (Lee's octant table) and which is simple (its foreground 26-neighbours form at most one
   26-connected set), all judged on the image as it is at the start of the pass, in raster order;
2. sequential re-check: in raster order, each candidate is deleted if it is still simple in the *current*
   image, where earlier candidates of the same pass may already be gone.

This module takes the same decisions with less work:

- the tests of step 1 depend only on the 26 neighbours, so together they are one bit of a table indexed by
  the 26-bit neighbourhood code; the simple-point test of step 2 is a second table. Both (2^26 bits, 8 MiB
  each) are built once, vectorised, from the two half cubes (17 voxels each, sharing the middle plane): the
  Euler change is the sum of the two halves' octant terms, and the 26-components of the neighbours are the
  halves' components joined through the middle plane. They are kept in memory and cached in
  ``~/.cache/nnunet_ext/`` (``$XDG_CACHE_HOME/nnunet_ext`` if set; ``$NNUNET_EXT_CACHE_DIR`` overrides the
  folder), checked against a CRC on every load and after every build;
- the state is each foreground voxel's neighbourhood code, updated when a neighbour is deleted, and the list
  of surface voxels (those with a background face neighbour: the only ones that can be border points), so
  a pass costs O(surface), not O(volume);
- the re-check is solved as the recurrence it is: candidate i is deleted iff
  ``simple(code_i without the bits of its earlier candidate neighbours that were deleted)``. Only earlier
  candidates in its 26-neighbourhood can have changed its neighbourhood by its turn (non-candidates never
  change during a pass; later candidates are still there). The dependencies point forward in raster
  order, so the recurrence has exactly one solution; fixed-point iteration from "all deleted",
  re-evaluating only the candidates after one whose decision changed, stops at a fixed point, which is
  that solution: the deletions are scikit-image's.

The tables were checked against scikit-image's own octree lists and Euler table (geometry and values) and
against ``scipy.ndimage.label`` / ``skimage.measure.euler_number`` on random neighbourhoods;
``tests/test_thinning.py`` compares whole skeletons with scikit-image on thousands of masks.

2D: scikit-image's Zhang thinning uses its own 256-entry deletion table (25 entries differ from the rules
in Zhang & Suen's paper, so it cannot be re-derived from the paper), runs in compiled code and takes ~5 ms
on 512²; 2D is handed to it, so 2D results are scikit-image's by construction.

Memory: the tables (16 MiB; loaded from the cache they are memory-mapped read-only, so all threads and all
processes of a machine share one copy in the page cache; the cache file is only ever replaced atomically, never
written in place) and, per thread, two scratch arrays of 8 bytes per padded voxel, kept between calls up to
2^24 voxels (134 MB at most; 18 MB for 128³).
"""
from __future__ import annotations

import os
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np

#: Environment variable choosing the backend: "fast" (default) or "skimage".
BACKEND_ENV = "NNUNET_EXT_THINNING"
#: Environment variable overriding the folder of the cached tables.
CACHE_DIR_ENV = "NNUNET_EXT_CACHE_DIR"
BACKENDS = ("fast", "skimage")
#: 3D masks with fewer voxels go to scikit-image even on the fast backend (same result): there its scan of
#: the whole array costs less than the fast path's ~1 ms of fixed per-call work (crossover ~50³-64³).
SKIMAGE_BELOW_VOXELS = 100_000

# Neighbour k of a voxel has offset _OFFSETS[k] (axes 0, 1, 2); k runs in raster order, so bits 0..12 are
# the neighbours before the voxel in raster order, 13..25 those after it, and 25 - k is the opposite of k.
_OFFSETS = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
                     if (a, b, c) != (0, 0, 0)], dtype=np.int64)
_N_BITS = 26
_ALIVE = np.uint32(1 << _N_BITS)          # bit 26 of a stored code: the voxel itself is foreground
_CODE_MASK = np.uint32(_ALIVE - 1)
_LISTED = np.uint32(1 << (_N_BITS + 1))  # bit 27: the voxel is in the surface list
_FACE_BITS = [k for k, o in enumerate(_OFFSETS) if abs(o).sum() == 1]
_FACE_MASK = np.uint32(sum(1 << k for k in _FACE_BITS))
# scikit-image's border order: -y, +y, +x, -x, +z, -z (its borders 4, 3, 2, 1, 5, 6).
_BORDERS = [(0, -1, 0), (0, 1, 0), (0, 0, 1), (0, 0, -1), (1, 0, 0), (-1, 0, 0)]
_BIT_WEIGHTS = np.uint32(1) << np.arange(_N_BITS, dtype=np.uint32)
_BACK_WEIGHTS = _BIT_WEIGHTS[:13]
# _CLEAR[k]: everything but the bit under which neighbour k sees the voxel (bit 25 - k)
_CLEAR = ~_BIT_WEIGHTS[::-1]
_FEW, _FEW_DELETED = 4096, 150            # below these sizes, fewer numpy calls beat less memory traffic
_BORDER_BITS = [int(np.flatnonzero((_OFFSETS == np.array(d)).all(1))[0]) for d in _BORDERS]

_TABLE_VERSION = 1
_TABLE_FILE = f"lee_thinning_tables_v{_TABLE_VERSION}.npy"
#: CRC-32 of the correct tables (of :func:`build_tables`' bytes).
TABLE_CRC = 0x4A9F1C7C
_tables_in_memory: np.ndarray | None = None
_tables_broken = False


# ------------------------------------------------------------------------------------------------ tables

def _half_geometry() -> list[tuple[int, int, int]]:
    """The 17 voxels of the lower half cube: 9 of plane -1 (raster order), then 8 of plane 0 (no centre)."""
    plane = [(-1, b, c) for b in (-1, 0, 1) for c in (-1, 0, 1)]
    middle = [(0, b, c) for b in (-1, 0, 1) for c in (-1, 0, 1) if (b, c) != (0, 0)]
    return plane + middle


def _euler_terms(configs: np.ndarray, geometry: list[tuple[int, int, int]]) -> np.ndarray:
    """8x the change of the Euler characteristic at the 4 lower corners of the centre voxel when it is added.

    configs: (n,) uint32 bit sets of the half cube (bit i = voxel ``geometry[i]``). The Euler characteristic
    of the union of closed unit cubes (the 26-connected foreground) is a sum over lattice vertices of
    ``[any] - 1/2 #edges + 1/4 #faces - 1/8 #cubes`` present at the vertex (an edge, face or cube is present
    when one of the 4, 2 or 1 voxels around it is). Adding the centre changes only the terms of elements it
    touches that were absent: 8x the change at one corner is ``8 [octant empty] - 1 - 4 #(its 3 edges at
    that corner whose other 3 voxels are empty) + 2 #(its 3 faces whose other voxel is empty)``.
    Returns (n,) int64; this is Lee's table of Euler changes, summed over the half's 4 octants.
    """
    bit = {g: 1 << i for i, g in enumerate(geometry)}
    total = np.zeros(len(configs), dtype=np.int64)

    def empty(cells: list[tuple[int, int, int]]) -> np.ndarray:
        return (configs & np.uint32(sum(bit[c] for c in cells))) == 0

    for r in ((-1, 0), (0, 1)):
        for c in ((-1, 0), (0, 1)):
            octant = [(a, b, d) for a in (-1, 0) for b in r for d in c if (a, b, d) != (0, 0, 0)]
            total += 8 * empty(octant) - 1
            for axis in range(3):
                # the corner's edge along `axis` on the centre's side: shared by the 4 voxels that have the
                # centre's coordinate on `axis`
                edge = [v for v in octant if v[axis] == 0]
                total -= 4 * empty(edge)
                # face normal to `axis` through the corner: shared by the 2 voxels that agree with the
                # centre on the other two axes
                face = [v for v in octant if all(v[k] == 0 for k in range(3) if k != axis)]
                total += 2 * empty(face)
    return total


def _half_components(present: np.ndarray, geometry: list[tuple[int, int, int]]):
    """26-components of the half cube's voxels.

    Returns (isolated, partition): isolated (n,) int = number of components with no voxel in the middle
    plane; partition (n,) uint32 = the partition of the middle plane's 8 voxels into components, 4 bits per
    voxel: the smallest middle index in its component, 8 if absent.
    """
    m = present.shape[1]
    absent = np.where(np.ascontiguousarray(present.T), np.int8(0), np.int8(127))   # (m, n): label floor
    label = np.maximum(np.arange(m, dtype=np.int8)[:, None], absent)
    pairs = [(u, v) for u in range(m) for v in range(u + 1, m)
             if max(abs(a - b) for a, b in zip(geometry[u], geometry[v])) == 1]
    while True:               # min-label propagation between present 26-neighbours until stable
        before = label.copy()
        for u, v in pairs:
            low = np.minimum(label[u], label[v])
            np.maximum(low, absent[u], out=label[u])                # absent voxels keep 127
            np.maximum(low, absent[v], out=label[v])
        if np.array_equal(before, label):
            break
    label = np.ascontiguousarray(label.T)
    middle = label[:, 9:]
    roots = present[:, :9] & (label[:, :9] == np.arange(9, dtype=np.int8))
    reaches_middle = (middle[:, None, :] == np.arange(9, dtype=np.int8)[None, :, None]).any(2)
    isolated = (roots & ~reaches_middle).sum(1)
    first = np.argmax(middle[:, :, None] == middle[:, None, :], axis=2).astype(np.uint32)
    first[~present[:, 9:]] = 8
    partition = np.bitwise_or.reduce(first << (4 * np.arange(8, dtype=np.uint32)), axis=1)
    return isolated, partition


def _join_blocks(p: int, q: int) -> int:
    """Number of blocks of the finest partition coarser than both (4-bit-coded partitions of 8 voxels)."""
    parent = list(range(9))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for code in (p, q):
        for j in range(8):
            r = (code >> (4 * j)) & 15
            if r != 8:
                parent[find(j)] = find(r)
    members = [j for j in range(8) if ((p >> (4 * j)) & 15) != 8]
    return len({find(j) for j in members})


def build_tables() -> np.ndarray:
    """Build the two thinning tables. Returns (2, 2^23) uint8: row 0 = candidate bits, row 1 = simple bits.

    Bit ``code`` (byte ``code >> 3``, bit ``code & 7``) belongs to the neighbourhood whose neighbour k is
    foreground iff bit k of ``code`` is set (k in the order of ``_OFFSETS``), with the centre foreground.
    simple: the foreground neighbours form at most one 26-connected set. candidate: simple, not an end
    point (exactly one neighbour) and Euler invariant.

    code = lower plane (bits 0..8) | middle plane (9..16) << 9 | upper plane (17..25) << 17. The upper half
    cube is the mirror image of the lower one (axis 0 flipped) with the same bit numbering, so one set of
    half-cube terms, indexed [middle, plane], serves both halves.
    """
    geometry = _half_geometry()
    configs = np.arange(1 << 17, dtype=np.uint32)
    present = ((configs[:, None] >> np.arange(17, dtype=np.uint32)) & 1).astype(bool)
    euler = _euler_terms(configs, geometry).reshape(256, 512).astype(np.int8)      # [middle, plane]
    isolated, partition = _half_components(present, geometry)
    isolated = isolated.reshape(256, 512).astype(np.int8)
    partition = partition.reshape(256, 512)
    count = present.sum(1).reshape(256, 512).astype(np.int8)
    middle_count = count[:, 0]                                       # plane empty: only the middle voxels
    out = np.zeros((2, 512, 256, 64), dtype=np.uint8)                # [table, upper plane, middle, lower/8]
    for b in range(256):
        kinds, ids = np.unique(partition[b], return_inverse=True)
        assert len(kinds) < 16, "signature packing below assumes < 16 partition kinds per middle plane"
        # blocks of the join of the two halves' middle-plane partitions, per pair of partition kinds
        joined = np.array([[_join_blocks(int(p), int(q)) for q in kinds] for p in kinds], dtype=np.int8)
        # every term is symmetric in the two planes, and a plane enters only through its signature
        # (isolated components, partition kind, Euler term, voxel count): one table row per signature
        signature = ((isolated[b].astype(np.int64) * 16 + ids) * 128 + euler[b] + 64) * 32 + count[b]
        _, first, row_of = np.unique(signature, return_index=True, return_inverse=True)
        comps = isolated[b][first, None] + isolated[b][None, :] + joined[ids[first, None], ids[None, :]]
        simple = comps <= 1
        neighbours = count[b][first, None] + count[b][None, :] - middle_count[b]
        candidate = simple & (neighbours != 1) & (euler[b][first, None] + euler[b][None, :] == 0)
        out[0, :, b] = np.packbits(candidate, axis=1, bitorder="little")[row_of]
        out[1, :, b] = np.packbits(simple, axis=1, bitorder="little")[row_of]
    return out.reshape(2, -1)


def table_cache_path() -> Path:
    """Where the tables are cached on disk: ``$NNUNET_EXT_CACHE_DIR`` or ``~/.cache/nnunet_ext`` (XDG)."""
    folder = os.environ.get(CACHE_DIR_ENV)
    if not folder:
        folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"),
                              "nnunet_ext")
    return Path(folder) / _TABLE_FILE


def _crc(tables: np.ndarray) -> int:
    return zlib.crc32(tables.data)


def _load(path: Path) -> np.ndarray | None:
    """The cached tables, memory-mapped read-only (the page cache holds one copy for every process on the
    machine, e.g. all of nnU-Net's data-loader workers); None if missing, unreadable or failing the CRC."""
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if mapped.shape != (2, 1 << 23) or mapped.dtype != np.uint8:
        return None
    tables = np.asarray(mapped)          # a plain read-only ndarray view of the mapping
    if _crc(tables) != TABLE_CRC:
        return None
    return tables


def _save(path: Path, tables: np.ndarray) -> None:
    import tempfile  # only here: keeps the module's import light

    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
            temporary = f.name
            np.save(f, tables, allow_pickle=False)
        os.replace(temporary, path)           # atomic: concurrent workers never see half a file
    except OSError:                           # read-only or full cache folder: keep the tables in memory only
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)


def thinning_tables() -> np.ndarray | None:
    """The (2, 2^23) uint8 tables of :func:`build_tables`: from memory, else the disk cache, else built
    (and cached). None if a build here does not give the expected tables (then scikit-image is used)."""
    global _tables_in_memory, _tables_broken
    if _tables_in_memory is None and not _tables_broken:
        path = table_cache_path()
        tables = _load(path)
        if tables is None:
            tables = build_tables()
            if _crc(tables) != TABLE_CRC:
                _tables_broken = True
                warnings.warn(f"nnunet_ext thinning: the tables built here have CRC {_crc(tables):#x}, expected "
                              f"{TABLE_CRC:#x}; falling back to scikit-image (set {BACKEND_ENV}=skimage to "
                              "silence this, and please report it)", RuntimeWarning, stacklevel=3)
                return None
            _save(path, tables)
            mapped = _load(path)              # share the cached copy like every later process will
            if mapped is not None:
                tables = mapped
        _tables_in_memory = tables
    return _tables_in_memory


#: Scratch arrays up to this many (padded) voxels are kept per thread between calls (8 bytes a voxel).
_SCRATCH_MAX_VOXELS = 1 << 24
_scratch = threading.local()


def _scratch_arrays(size: int) -> tuple[np.ndarray, np.ndarray]:
    """All-zero uint32 ``codes`` and int32 ``slot`` arrays of ``size``; reused (no page faults) when small."""
    if size > _SCRATCH_MAX_VOXELS:
        return np.zeros(size, dtype=np.uint32), np.zeros(size, dtype=np.int32)
    if getattr(_scratch, "codes", None) is None or len(_scratch.codes) < size:
        _scratch.codes = np.zeros(size, dtype=np.uint32)
        _scratch.slot = np.zeros(size, dtype=np.int32)
    return _scratch.codes[:size], _scratch.slot[:size]


def _drop_scratch() -> None:
    _scratch.codes = _scratch.slot = None


def _lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Bits of a packed table at ``codes`` (uint32, < 2^26). Returns bool, shape of codes."""
    return ((table[codes >> 3] >> (codes & 7).astype(np.uint8)) & 1).view(bool)


# -------------------------------------------------------------------------------------------------- thinning

def _recheck(cands: np.ndarray, codes: np.ndarray, slot: np.ndarray, back: np.ndarray,
             simple: np.ndarray) -> np.ndarray:
    """scikit-image's sequential re-check of one pass, solved without a per-voxel loop.

    cands: (C,) flat indices in raster order; codes: (C,) their 26-bit codes at the start of the pass;
    slot: int32 scratch array over the padded volume, all zero (left all zero); back: (13,) flat offsets of
    the neighbours before a voxel (bits 0..12). Returns (C,) bool: deleted.

    Candidate i is deleted iff ``simple(codes[i] minus bit k for each earlier candidate neighbour k that was
    deleted)``. Fixed-point iteration from "all deleted": a first sweep over all candidates, then only the
    candidates after (in raster order) one whose decision changed, until no decision changes.
    """
    n = len(cands)
    slot[cands] = np.arange(1, n + 1, dtype=np.int32)
    pred = slot[cands[None, :] + back[:, None]] - 1                  # (13, C): earlier candidate or -1
    has_pred = pred >= 0
    deleted = np.ones(n + 1, dtype=bool)
    deleted[n] = False                                               # index -1: "no candidate there"
    weights = _BACK_WEIGHTS[:, None]
    live = codes & ~(has_pred * weights).sum(0, dtype=np.uint32)
    new = _lookup(simple, live)
    changed = np.flatnonzero(~new)
    deleted[:n] = new
    forward = -back[::-1]
    while len(changed):
        mark = np.zeros(n + 1, dtype=bool)
        mark[slot[cands[changed][None, :] + forward[:, None]]] = True   # slot 0: not a candidate
        active = np.flatnonzero(mark[1:])
        if not len(active):
            break
        live = codes[active] & ~(deleted[pred[:, active]] * weights).sum(0, dtype=np.uint32)
        new = _lookup(simple, live)
        changed = active[new != deleted[active]]
        deleted[active] = new
    slot[cands] = 0
    return deleted[:n]


def _lee_flat_indices(mask: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Flat indices (into ``mask.ravel()``, ascending) of the Lee skeleton of a C-contiguous 3D bool mask."""
    shape = np.array(mask.shape, dtype=np.int64)
    padded_shape = tuple(int(n) for n in shape + 2)
    strides = np.array([padded_shape[1] * padded_shape[2], padded_shape[2], 1], dtype=np.int64)
    offsets = _OFFSETS @ strides
    flat = np.flatnonzero(mask)                       # much faster than np.nonzero on large masks
    if len(flat) == 0:
        return flat
    rows, x = np.divmod(flat, shape[2])
    z, y = np.divmod(rows, shape[1])
    fg = (z + 1) * strides[0] + (y + 1) * strides[1] + (x + 1)
    codes, slot = _scratch_arrays(int(np.prod(padded_shape)))
    try:
        skeleton = _thin_lee_flat(fg, offsets, codes, slot, tables, mask.shape[0] == 1)
    except BaseException:
        _drop_scratch()                               # the buffers may not be all zero any more
        raise
    rows, x = np.divmod(skeleton, strides[1])
    z, y = np.divmod(rows, padded_shape[1])
    return ((z - 1) * shape[1] + (y - 1)) * shape[2] + (x - 1)


def _thin_lee_flat(fg: np.ndarray, offsets: np.ndarray, codes: np.ndarray, slot: np.ndarray,
                   tables: np.ndarray, single_plane: bool) -> np.ndarray:
    """The thinning loop on flat indices of the padded volume. fg: (N,) ascending foreground indices;
    offsets: (26,) flat neighbour offsets; codes (uint32) and slot (int32): all-zero scratch arrays over the
    padded volume, returned all zero. Returns the flat indices of the skeleton, ascending."""
    candidate_table, simple_table = tables
    codes[fg] = _ALIVE                               # the image, for building the codes
    if len(fg) < _FEW:                               # one call on an (N, 26) gather
        own = ((codes[fg[:, None] + offsets[None, :]] != 0) * _BIT_WEIGHTS).sum(1, dtype=np.uint32) | _ALIVE
    else:                                            # 26 calls on (N,) gathers: less memory traffic
        own = np.full(len(fg), _ALIVE, dtype=np.uint32)
        for k in range(_N_BITS):
            own |= (codes[fg + offsets[k]] != 0).astype(np.uint32) << np.uint32(k)
    on_surface = (own & _FACE_MASK) != _FACE_MASK
    own[on_surface] |= _LISTED
    codes[fg] = own
    surface = fg[on_surface]
    face_offsets = offsets[_FACE_BITS]
    borders = _BORDER_BITS[:4] if single_plane else _BORDER_BITS
    unchanged = 0
    compact = False
    while unchanged < len(borders):
        unchanged = 0
        for bit in borders:
            current = codes[surface]
            if compact:                               # drop the voxels deleted since the last pass
                alive = current >= _ALIVE
                surface, current = surface[alive], current[alive]
                compact = False
            at_border = (current & np.uint32(1 << bit)) == 0
            border_idx, border_codes = surface[at_border], current[at_border] & _CODE_MASK
            is_cand = _lookup(candidate_table, border_codes)
            cands = border_idx[is_cand]
            if len(cands) == 0:
                unchanged += 1
                continue
            order = np.argsort(cands)
            cands, cand_codes = cands[order], border_codes[is_cand][order]
            gone = cands[_recheck(cands, cand_codes, slot, offsets[:13], simple_table)]
            if len(gone) == 0:
                unchanged += 1
                continue
            compact = True
            # neighbours forget the deleted voxels: neighbour k clears bit 25 - k
            if len(gone) < _FEW_DELETED:                   # one call; ufunc.at handles repeated targets
                np.bitwise_and.at(codes, (gone[:, None] + offsets[None, :]).ravel(),
                                  np.broadcast_to(_CLEAR, (len(gone), _N_BITS)).ravel())
            else:                                          # 26 calls, each with distinct targets
                for k in range(_N_BITS):
                    codes[gone + offsets[k]] &= _CLEAR[k]
            codes[gone] = 0
            # interior voxels uncovered by the deletions join the surface list (once each)
            exposed = (gone[:, None] + face_offsets[None, :]).ravel()
            state = codes[exposed]
            exposed = exposed[(state >= _ALIVE) & ((state & _LISTED) == 0)]
            if len(exposed):
                codes[exposed] |= _LISTED
                order = np.arange(1, len(exposed) + 1, dtype=np.int32)
                slot[exposed] = order
                exposed = exposed[slot[exposed] == order]
                slot[exposed] = 0
                surface = np.concatenate([surface, exposed])
    skeleton = fg[codes[fg] >= _ALIVE]
    codes[fg] = 0                                    # only foreground entries were ever set
    return skeleton


# ------------------------------------------------------------------------------------------------- public

def _backend(backend: str | None) -> str:
    chosen = backend if backend is not None else os.environ.get(BACKEND_ENV, "fast") or "fast"
    if chosen not in BACKENDS:
        source = "backend=" if backend is not None else f"${BACKEND_ENV}="
        raise ValueError(f"thinning backend {source}{chosen!r} is unknown; use one of {BACKENDS}")
    return chosen


def _checked(mask: np.ndarray, caller: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim not in (2, 3):
        raise ValueError(f"{caller} needs a 2D (X, Y) or 3D (X, Y, Z) mask, got shape {mask.shape}; "
                         "drop channel/batch axes first")
    return mask


def fast_path_applies(mask: np.ndarray, backend: str | None = None) -> bool:
    """Whether :func:`skeletonize` would take the table-driven path for ``mask`` (else it calls scikit-image):
    backend "fast", a 3D mask of at least ``SKIMAGE_BELOW_VOXELS`` voxels, and tables that checked out."""
    return (_backend(backend) == "fast" and np.ndim(mask) == 3 and np.size(mask) >= SKIMAGE_BELOW_VOXELS
            and not _tables_broken)


def _fast_tables(mask: np.ndarray, backend: str | None) -> np.ndarray | None:
    """The tables if the fast 3D path applies to ``mask``, else None (scikit-image is used)."""
    return thinning_tables() if fast_path_applies(mask, backend) else None


def skeletonize(mask: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """Skeleton of a binary mask, identical to ``skimage.morphology.skeletonize(mask)``.

    mask: (X, Y) or (X, Y, Z) array, nonzero = foreground. Returns a bool array of the same shape.
    backend: "fast" (table-driven Lee thinning for 3D masks of at least ``SKIMAGE_BELOW_VOXELS`` voxels,
    scikit-image for 2D and smaller 3D masks) or "skimage"; None (default) reads ``$NNUNET_EXT_THINNING``
    (unset: "fast"). The first fast call of a process memory-maps the tables from the disk cache (~10 ms) or, the
    first time on a machine, builds and caches them (~0.5 s).
    """
    mask = _checked(mask, "skeletonize")
    tables = _fast_tables(mask, backend)
    if tables is None:
        from skimage.morphology import skeletonize as skimage_skeletonize
        return skimage_skeletonize(mask)
    mask = np.ascontiguousarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=bool)
    out.reshape(-1)[_lee_flat_indices(mask, tables)] = True
    return out


def skeleton_coordinates(mask: np.ndarray, *, backend: str | None = None) -> np.ndarray:
    """Coordinates of the skeleton: (K, ndim) intp, equal to ``np.argwhere(skeletonize(mask))`` (raster order).

    Cheaper than that in 3D (no dense skeleton, no ``np.argwhere``, which alone takes ~6 ms on 128³).
    """
    mask = _checked(mask, "skeleton_coordinates")
    tables = _fast_tables(mask, backend)
    if tables is None:
        from skimage.morphology import skeletonize as skimage_skeletonize
        flat = np.flatnonzero(skimage_skeletonize(mask))
    else:
        flat = _lee_flat_indices(np.ascontiguousarray(mask, dtype=bool), tables)
    return np.stack(np.unravel_index(flat, mask.shape), axis=1).astype(np.intp, copy=False)
