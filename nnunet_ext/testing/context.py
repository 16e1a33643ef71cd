"""A synthetic dataset whose labels need context far wider than nnU-Net's patch (2D and 3D).

Every case holds several (default 8) textured ellipses (ellipsoids in 3D; semi-axes min(shape)/64-/24 in 2D,
/28-/12 in 3D: 8-21 px at 512²) that all look alike, and one marker near the corner
at index 0 of every axis: a bright disc (ball) or a bright ring (spherical shell). The marker's kind sets the class
of every structure in the image: disc -> label 1, ring -> label 2. Nothing else differs::

    from nnunet_ext.testing.context import write_context_dataset
    write_context_dataset(995, dim=2, n_train=16, n_test=6)    # -> $nnUNet_raw/Dataset995_Context2D

Why a local patch cannot tell the class (numbers for the default 2D case, 512², marker outer radius 28.4 px,
margin 256 px; they scale with the image):

- ``context_case(shape, seed, kind=1)`` and ``kind=2`` give the same image voxel for voxel outside the marker zone
  (the ball of the marker's outer radius, which holds both kinds) and the same
  label up to the class value: the kind is drawn apart from everything else. So the only evidence of the class
  is inside the marker zone.
- Every structure voxel lies ``margin`` voxels or more beyond the marker zone's bounding box along some axis, so
  at Chebyshev (per-axis maximum) distance >= ``margin`` from every zone voxel. An axis-aligned window of
  P <= margin voxels per axis (nnU-Net's training patch before rotation, and every sliding window of
  ``nnUNetv2_predict``) never holds a structure voxel together with a marker voxel, nor with the place where the
  other kind's marker would be. The Euclidean distance is >= ``margin`` too (256 px, up to ~640 px at the far
  corner), so even a training patch rotated by any angle and scaled by nnU-Net's up-to-1.4 can hold both only
  for P > margin / (1.4 * sqrt(dim)): 129 px in 2D at 512², 26 voxels in 3D at 128³ (margin 64).
- Disc and ring have exactly the same number of voxels and add the same intensity (after the blur, so that their
  edges do not differ either): the image mean is the same for both kinds and the std differs only through the
  noise under the marker, so nnU-Net's per-image z-score normalisation carries no trace of the kind. Both kinds
  are rotation, mirror and scale invariant, so nnU-Net's augmentation never turns one into the other.
- Cases alternate between the kinds (the writer balances training and held-out sets). The kind is independent of
  everything such a window shows, so any model that sees only a local window (nnU-Net's network sees nothing
  outside its patch, whatever its receptive field) gets the class of half the structures right in expectation,
  while it still segments them (foreground Dice near the full one, each class's Dice about half of it). A model
  that sees the marker and the structure together (a window or global view of the whole image, e.g. GLNet's
  global branch, which still resolves the ring: 7 px outer radius, 2 px wide at 4x downsampling) can get every
  class right.
- The marker sits in a corner, so a training window that holds the whole image only keeps it in view if it is
  not shifted: nnU-Net's foreground-centred crops (a third of each batch) shift it by up to half the image and
  cut the marker (from 54% of the samples at 256² with nnU-Net's sampling), rotation and scaling sometimes do
  (10%). GLNet trainers therefore sample no foreground crops where their window holds the image
  (:mod:`nnunet_ext.trainers.glnet_sampling`).

nnU-Net 2.8.1's planner keeps a 512² image whole as its 2D patch at its default 8 GB target (and at 2 GB); it
plans 448² at ``-gpu_memory_target 1``, 320x256 at 0.5, 224² at 0.25, 128² at 0.1 and 96² at 0.05. For 128³ in
3D: 128³ at 8 GB, 96x80x80 at 2, 64³ at 1, 56x56x48 at 0.5, 48x40x40 at 0.25. So plan with a target whose patch
is <= ``margin`` (:func:`local_patch_limit`): 2D 512² at 0.25 GB or less (0.1 GB: 128², blind even under
augmentation), 3D 128³ at 1 GB or less; GLNet's window should cover the image.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from nnunet_ext.testing._texture import smooth_noise
from nnunet_ext.testing.raw_dataset import (DatasetArgumentError, check_dim, check_int, checked_counts,
                                            checked_name, checked_raw_root, checked_shape, make_case_folders,
                                            write_case, write_dataset_json, write_raw_dataset)

DISC, RING = 1, 2                  # marker kinds = the class of the structures
MIN_CONTEXT_SIZE = 64              # smallest image size per axis (the marker and a far region must fit)
DEFAULT_SHAPE = {2: (512, 512), 3: (128, 128, 128)}


def marker_geometry(shape: Sequence[int]) -> dict:
    """Where the marker goes: ``centre`` (voxel index per axis), ``outer_radius`` and ``ring_width`` (voxels).

    The outer radius is min(shape) / 18 (at least 5), the ring 2/7 of it wide, 4 voxels of border around it."""
    outer = max(5.0, min(shape) / 18.0)
    width = max(2.0, outer * 2.0 / 7.0)
    centre = np.full(len(shape), np.ceil(outer) + 4.0)
    return {"centre": centre, "outer_radius": outer, "ring_width": width}


def default_margin(shape: Sequence[int]) -> int:
    """Half the smallest size (256 at 512, 64 at 128): the Chebyshev distance kept between structures and the
    marker zone."""
    return int(min(shape) // 2)


def marker_zone(shape: Sequence[int]) -> np.ndarray:
    """Bool mask of every voxel either kind of marker may cover (the ball of the outer radius)."""
    geometry = marker_geometry(shape)
    return _radial_distance(shape, geometry["centre"]) <= geometry["outer_radius"]


def marker_mask(shape: Sequence[int], kind: int) -> np.ndarray:
    """Bool mask of the marker of ``kind``: RING = the shell of ``ring_width`` inside the outer radius, DISC = the
    same number of voxels nearest the centre (so both kinds have exactly equal volume)."""
    geometry = marker_geometry(shape)
    distance = _radial_distance(shape, geometry["centre"])
    outer, width = geometry["outer_radius"], geometry["ring_width"]
    ring = (distance <= outer) & (distance > outer - width)
    if kind == RING:
        return ring
    if kind != DISC:
        raise DatasetArgumentError(f"kind must be {DISC} (disc) or {RING} (ring), got {kind!r}")
    order = np.argsort(distance, axis=None, kind="stable")[:int(ring.sum())]
    disc = np.zeros(distance.size, bool)
    disc[order] = True
    return disc.reshape(distance.shape)


def local_patch_limit(shape: Sequence[int], margin: int | None = None) -> int:
    """The largest patch edge (voxels, every axis) whose axis-aligned windows never see a structure together with
    the marker zone: ``margin`` itself."""
    return int(default_margin(shape) if margin is None else margin)


def _dim_of(shape) -> int:
    try:
        return check_dim(len(shape))
    except TypeError:
        raise DatasetArgumentError(f"shape must be a sequence of 2 or 3 sizes, got {shape!r}") from None


def _checked_margin(shape: tuple[int, ...], margin) -> int:
    """``margin`` (default :func:`default_margin`), small enough that structures still fit far from the marker."""
    limit = int(max(shape) - _zone_end(shape)[0] - 2 * min(shape) / 12.0 - 4)
    return check_int(default_margin(shape) if margin is None else margin, "margin", 1, max(1, limit))


def _radial_distance(shape: Sequence[int], centre: np.ndarray) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))


def _zone_end(shape: Sequence[int]) -> np.ndarray:
    """Per axis, one past the last index of the marker zone's bounding box."""
    geometry = marker_geometry(shape)
    return np.floor(geometry["centre"] + geometry["outer_radius"]).astype(int) + 1


def _allowed_region(shape: Sequence[int], margin: int) -> np.ndarray:
    """Voxels at least ``margin`` beyond the marker zone's bounding box along some axis (so at Chebyshev distance
    >= ``margin`` from every voxel of the zone) and >= 2 from the image border."""
    end = _zone_end(shape)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    far = np.zeros(shape, bool)
    for g, e in zip(grid, end):
        far = far | (g >= e - 1 + margin)
    inner = np.zeros(shape, bool)
    inner[tuple(slice(2, n - 2) for n in shape)] = True
    return far & inner


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    return q * np.sign(np.diag(r))


def _place_structures(shape: tuple[int, ...], allowed: np.ndarray, rng: np.random.Generator, n_structures: int,
                      semi_axes: tuple[float, float], attempts: int = 400) -> list[np.ndarray]:
    """Up to ``n_structures`` non-touching ellipsoids inside ``allowed`` (each a bool mask of ``shape``); at
    least one (a smaller one if needed)."""
    taken = np.zeros(shape, bool)
    candidates = np.argwhere(allowed)
    masks: list[np.ndarray] = []
    for attempt in range(attempts):
        if len(masks) == n_structures:
            break
        shrink = 1.0 if attempt < attempts // 2 else 0.6
        axes = rng.uniform(*semi_axes, size=len(shape)) * shrink
        rotation = _random_rotation(rng, len(shape))
        centre = candidates[rng.integers(len(candidates))].astype(float)
        reach = int(np.ceil(axes.max())) + 1
        lo = np.maximum(centre.astype(int) - reach, 0)
        hi = np.minimum(centre.astype(int) + reach + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.stack(np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, centre)], indexing="ij"), -1)
        inside = ((grid @ rotation) / axes) ** 2
        mask_box = inside.sum(-1) <= 1.0
        if not mask_box.any() or not allowed[box][mask_box].all():
            continue
        # keep 3 voxels between structures, so that every structure is its own component
        if ndimage.binary_dilation(mask_box, iterations=3).__and__(taken[box]).any():
            continue
        mask = np.zeros(shape, bool)
        mask[box] = mask_box
        taken |= mask
        masks.append(mask)
    if not masks:
        raise DatasetArgumentError(f"no structure fits between the marker and the image border for shape {shape}: "
                                   "use a larger shape or a smaller margin")
    return masks


def context_case(shape: Sequence[int] = DEFAULT_SHAPE[2], seed: int = 0, kind: int | None = None,
                 margin: int | None = None, n_structures: int = 8,
                 semi_axes: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One case: (image float32, label uint8), both of ``shape`` (2D or 3D, each size >= 64).

    ``kind`` DISC (1) or RING (2) is the marker and the label of every structure; None draws it from ``seed``
    (from a separate stream: the same seed with either kind gives the same image outside the marker zone).
    ``margin`` (default half the smallest size) is the Chebyshev distance in voxels kept between the structures
    and the marker zone. ``n_structures`` ellipses/ellipsoids with semi-axes in ``semi_axes`` voxels (default
    min(shape)/64 .. /24 in 2D, /28 .. /12 in 3D) are placed at random in the far region.
    """
    shape = checked_shape(shape, _dim_of(shape), MIN_CONTEXT_SIZE)
    seed = check_int(seed, "seed", 0)
    margin = _checked_margin(shape, margin)
    n_structures = check_int(n_structures, "n_structures", 1, 1000)
    if kind is None:
        kind = DISC + int(np.random.default_rng([seed, 1]).integers(2))
    if kind not in (DISC, RING):
        raise DatasetArgumentError(f"kind must be {DISC} (disc), {RING} (ring) or None, got {kind!r}")
    if semi_axes is None:
        low, high = (64.0, 24.0) if len(shape) == 2 else (28.0, 12.0)
        semi_axes = (min(shape) / low, min(shape) / high)
    semi_axes = (max(2.0, float(semi_axes[0])), max(2.0, float(semi_axes[1])))

    rng = np.random.default_rng([seed, 0])       # everything except the kind
    structures = _place_structures(shape, _allowed_region(shape, margin), rng, n_structures, semi_axes)
    label = np.zeros(shape, np.uint8)
    brightness = np.zeros(shape, np.float32)
    for mask in structures:
        label[mask] = kind
        brightness[mask] = rng.uniform(0.5, 0.65)
    brightness += 0.06 * smooth_noise(shape, rng, 3.0) * (label > 0)        # texture inside the structures
    background = 0.06 * smooth_noise(shape, rng, min(shape) / 8.0)         # slow background shading
    noise = rng.normal(scale=0.1, size=shape).astype(np.float32)
    image = ndimage.gaussian_filter(0.2 + brightness + background + noise, 0.7)
    # the marker goes on after the blur: sharp-edged, so that disc and ring change the intensity histogram (and
    # nnU-Net's z-score normalisation) in exactly the same way, and nothing outside the zone
    return (image + 0.8 * marker_mask(shape, kind)).astype(np.float32), label


def write_context_dataset(dataset_id: int, dim: int = 2, n_train: int = 16, n_test: int = 6,
                          shape: Sequence[int] | None = None, seed: int = 0, raw_root: str | None = None,
                          name: str | None = None, overwrite: bool = False, margin: int | None = None,
                          n_structures: int = 8) -> str:
    """Write ``Dataset{ID}_{name}`` (default ``Context{dim}D``) in nnU-Net raw format; returns its folder.

    Labels: background 0, ``near_disc`` 1, ``near_ring`` 2. Cases alternate between the kinds (training and
    held-out sets each balanced), case i is ``context_case(shape, seed * 100003 + i, kind=1 + i % 2)``.
    Every argument is checked before anything is written; an existing dataset id raises UserInputError unless
    ``overwrite``, which replaces exactly that dataset's folder(s).
    """
    dataset_id = check_int(dataset_id, "dataset_id", 1, 999)
    dim = check_dim(dim)
    shape = checked_shape(DEFAULT_SHAPE[dim] if shape is None else shape, dim, MIN_CONTEXT_SIZE)
    n_train, n_test = checked_counts(n_train, n_test)
    seed = check_int(seed, "seed", 0)
    name = checked_name(name or f"Context{dim}D")
    margin = _checked_margin(shape, margin)
    n_structures = check_int(n_structures, "n_structures", 1, 1000)
    raw_root = checked_raw_root(raw_root)

    def fill(folder: str) -> None:
        make_case_folders(folder)
        for i in range(n_train + n_test):
            split = "Tr" if i < n_train else "Ts"
            index = i if split == "Tr" else i - n_train
            image, label = context_case(shape, seed * 100003 + i, kind=DISC + index % 2, margin=margin,
                                        n_structures=n_structures)
            write_case(folder, split, f"context_{i:04d}", image, label)
        write_dataset_json(folder, {"background": 0, "near_disc": DISC, "near_ring": RING}, n_train, name,
                           f"nnunet-ext synthetic long-range context, dim={dim}, seed={seed}: every structure's "
                           f"class is the kind of the marker in the corner (disc 1, ring 2), at Chebyshev distance "
                           f">= {margin} voxels from every structure", shape=list(shape), margin=margin)

    return write_raw_dataset(raw_root, dataset_id, name, overwrite, fill)
