"""Synthetic nnU-Net raw datasets of tubular structures (vessel-like curves), 2D and 3D.

Deterministic by seed. Used by the tests, the demo and the benchmarks::

    from nnunet_ext.testing.synthetic import write_tubular_dataset
    write_tubular_dataset(990, dim=2, n_train=12, n_test=3, seed=0)   # -> $nnUNet_raw/Dataset990_Tubes2D

Each case: an image (float32, one channel) with bright curved tubes of varying radius, intensity dips
along the tubes (so connectivity is not trivial), smooth background and noise; a label map where every
tube carries a class in 1..n_classes. Optionally an ignore label painted over random boxes, or
region-based labels (a "any tube" region containing every class).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from nnunet_ext.testing.raw_dataset import (MAX_DATASET_ID, check_dim, check_int, checked_counts, checked_name,
                                            checked_raw_root, checked_shape, make_case_folders, write_case,
                                            write_dataset_json, write_raw_dataset)



@dataclass(frozen=True)
class TubeStyle:
    """Geometry of the generated tubes (lengths in pixels/voxels)."""
    n_tubes: int = 5
    radius: tuple[float, float] = (1.0, 2.5)
    step_turn: float = 0.25          # random change of direction per unit step
    dip_fraction: float = 0.15       # fraction of a tube's length with dimmed intensity


def _curve(shape: np.ndarray, rng: np.random.Generator, style: TubeStyle) -> np.ndarray:
    """(N, ndim) points of a smooth random walk that starts inside the image."""
    position = rng.uniform(0.1, 0.9, len(shape)) * shape
    direction = rng.normal(size=len(shape))
    points = []
    for _ in range(int(2 * shape.max())):
        direction = direction / np.linalg.norm(direction)
        points.append(position.copy())
        position = position + direction
        direction = direction + rng.normal(scale=style.step_turn, size=len(shape))
        if np.any(position < 0) or np.any(position > shape - 1):
            break
    return np.array(points)


def tubular_case(shape: Sequence[int], n_classes: int = 1, seed: int = 0,
                 style: TubeStyle = TubeStyle()) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case. Returns (image float32, label uint8), both of ``shape`` (2D or 3D)."""
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be 2D or 3D, got {shape}")
    rng = np.random.default_rng(seed)
    shape_arr = np.array(shape, dtype=float)
    label = np.zeros(shape, np.uint8)
    brightness = np.zeros(shape, np.float32)
    for k in range(style.n_tubes):
        points = _curve(shape_arr, rng, style)
        centre = np.zeros(shape, bool)
        idx = np.clip(np.round(points).astype(int), 0, np.array(shape) - 1)
        centre[tuple(idx.T)] = True
        dimmed = np.zeros(shape, bool)
        n_dip = int(style.dip_fraction * len(idx))
        if n_dip > 0 and len(idx) > n_dip:
            start = rng.integers(0, len(idx) - n_dip)
            dimmed[tuple(idx[start:start + n_dip].T)] = True
        distance, nearest = ndimage.distance_transform_edt(~centre, return_indices=True)
        tube = distance <= rng.uniform(*style.radius)
        label[tube] = 1 + k % n_classes
        intensity = np.where(dimmed[tuple(nearest)], 0.45, 1.0) * rng.uniform(0.7, 1.0)
        brightness[tube] = np.maximum(brightness[tube], intensity[tube])
    background = ndimage.gaussian_filter(rng.normal(size=shape), sigma=max(shape) / 16) * 3
    image = 0.2 + 0.6 * brightness + 0.1 * background + rng.normal(scale=0.12, size=shape)
    return ndimage.gaussian_filter(image, 0.6).astype(np.float32), label


def _checked_shape(shape: Sequence[int] | None, dim, default: dict[int, tuple[int, ...]]) -> tuple[int, ...]:
    """``default[dim]`` when ``shape`` is None, else ``shape`` checked against ``dim`` (2 or 3)."""
    dim = check_dim(dim)
    return default[dim] if shape is None else checked_shape(shape, dim)


def _labels_json(n_classes: int, regions: bool, ignore_label: bool) -> tuple[dict, list | None]:
    if regions:
        if n_classes < 2:
            raise ValueError("region-based labels need n_classes >= 2")
        labels: dict = {"background": 0, "any_tube": list(range(1, n_classes + 1))}
        labels.update({f"tube_{c}": c for c in range(2, n_classes + 1)})
        order = list(range(1, n_classes + 1))
    else:
        labels = {"background": 0, **{f"tube_{c}": c for c in range(1, n_classes + 1)}}
        order = None
    if ignore_label:
        labels["ignore"] = n_classes + 1
    return labels, order


def write_tubular_dataset(dataset_id: int, dim: int = 2, n_train: int = 10, n_test: int = 2,
                          shape: Sequence[int] | None = None, n_classes: int = 1, seed: int = 0,
                          ignore_label: bool = False, regions: bool = False, name: str | None = None,
                          raw_root: str | None = None, style: TubeStyle | None = None,
                          overwrite: bool = False) -> str:
    """Write ``Dataset{ID}_{name}`` in nnU-Net raw format; returns its folder.

    imagesTr/labelsTr hold ``n_train`` cases, imagesTs/labelsTs ``n_test`` held-out cases. ``raw_root``
    defaults to ``$nnUNet_raw``. ``ignore_label`` paints the label n_classes+1 over random boxes;
    ``regions`` writes region-based labels (an "any_tube" region of all classes plus classes 2..n).

    Every argument is checked before anything is written (ValueError naming the argument). An existing dataset
    id raises UserInputError unless ``overwrite``, which replaces exactly that dataset's folder(s).
    """
    dataset_id = check_int(dataset_id, "dataset_id", 1, MAX_DATASET_ID)
    shape = _checked_shape(shape, dim, {2: (128, 128), 3: (48, 48, 48)})
    n_train, n_test = checked_counts(n_train, n_test)
    n_classes = check_int(n_classes, "n_classes (--n-classes)", 1, 254 if ignore_label else 255)
    seed = check_int(seed, "seed (--seed)", 0)
    if regions and n_classes < 2:
        raise ValueError(f"region-based labels (--regions) need n_classes >= 2 (--n-classes 2), got {n_classes}")
    name = checked_name(name or f"Tubes{dim}D")
    raw_root = checked_raw_root(raw_root)
    style = style or (TubeStyle(radius=(1.5, 3.0)) if dim == 2 else TubeStyle(n_tubes=4, radius=(1.0, 2.2)))
    labels, order = _labels_json(n_classes, regions, ignore_label)

    def fill(folder: str) -> None:
        make_case_folders(folder)
        rng = np.random.default_rng(seed)
        for i in range(n_train + n_test):
            image, label = tubular_case(shape, n_classes, seed=seed * 100003 + i, style=style)
            if ignore_label:
                lo = rng.integers(0, np.array(shape) // 2)
                box = tuple(slice(int(a), int(a) + max(2, s // 5)) for a, s in zip(lo, shape))
                label[box] = n_classes + 1
            split = "Tr" if i < n_train else "Ts"
            case = f"tube_{i:04d}"
            write_case(folder, split, case, image, label)
        extra = {} if order is None else {"regions_class_order": order}
        write_dataset_json(folder, labels, n_train, name, f"nnunet-ext synthetic tubes, dim={dim}, seed={seed}",
                           **extra)

    return write_raw_dataset(raw_root, dataset_id, name, overwrite, fill)


def touching_blobs_case(shape: Sequence[int], n_blobs: int = 8, radius: tuple[float, float] = (5.0, 9.0),
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Touching cell-like blobs, 2D or 3D. Returns (image float32, label uint8, instances int32).

    Most blobs are placed against an earlier one; where two blobs meet, the label has a one-voxel
    background gap (as in the U-Net paper's cell images) that the image shows only as a faint dip.
    ``instances`` numbers the blobs (0 = background, gaps excluded); ``label`` is ``instances > 0``.
    """
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be 2D or 3D, got {shape}")
    rng = np.random.default_rng(seed)
    size = np.array(shape, dtype=float)
    centres, radii = [], []
    for _ in range(n_blobs):
        r = rng.uniform(*radius)
        if centres and rng.random() < 0.7:
            anchor = rng.integers(len(centres))
            direction = rng.normal(size=len(shape))
            centre = centres[anchor] + direction / np.linalg.norm(direction) * (radii[anchor] + r) * 0.9
        else:
            centre = rng.uniform(0.15, 0.85, len(shape)) * size
        centres.append(np.clip(centre, 0, size - 1))
        radii.append(r)
    grid = np.indices(shape, dtype=np.float32)
    scaled = np.stack([np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre))) / r
                       for centre, r in zip(centres, radii)])
    instances = np.where(scaled.min(0) <= 1, scaled.argmin(0) + 1, 0).astype(np.int32)
    boundary = np.zeros(shape, bool)
    padded = np.pad(instances, 1)
    for offset in np.ndindex(*([3] * len(shape))):  # the lower id gives way wherever two blobs are neighbours
        neighbour = padded[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
        boundary |= (instances > 0) & (neighbour > instances)
    instances[boundary] = 0
    blob = instances > 0
    image = 0.2 + 0.6 * blob + 0.35 * boundary + rng.normal(scale=0.1, size=shape)
    image = ndimage.gaussian_filter(image, 0.7).astype(np.float32)
    return image, blob.astype(np.uint8), instances


def write_touching_blobs_dataset(dataset_id: int, dim: int = 2, n_train: int = 10, n_test: int = 2,
                                 shape: Sequence[int] | None = None, n_blobs: int | None = None, seed: int = 0,
                                 name: str | None = None, raw_root: str | None = None,
                                 overwrite: bool = False) -> str:
    """Write ``Dataset{ID}_{name}`` of touching blobs (binary label) in nnU-Net raw format; returns its folder.

    Besides imagesTr/labelsTr/imagesTs/labelsTs, ``instancesTs`` holds the blobs' instance ids for
    evaluating separation (:func:`separated_touching_pairs`). Arguments are checked and an existing id is
    handled as in :func:`write_tubular_dataset`.
    """
    dataset_id = check_int(dataset_id, "dataset_id", 1, MAX_DATASET_ID)
    shape = _checked_shape(shape, dim, {2: (96, 96), 3: (40, 40, 40)})
    n_train, n_test = checked_counts(n_train, n_test)
    n_blobs = check_int(n_blobs if n_blobs is not None else (10 if dim == 2 else 8), "n_blobs", 1, 2**31 - 1)
    seed = check_int(seed, "seed", 0)
    name = checked_name(name or f"Blobs{dim}D")
    raw_root = checked_raw_root(raw_root)
    radius = (5.0, 9.0) if dim == 2 else (4.0, 7.0)

    def fill(folder: str) -> None:
        make_case_folders(folder, instances=True)
        for i in range(n_train + n_test):
            image, label, instances = touching_blobs_case(shape, n_blobs, radius, seed=seed * 100003 + i)
            split, case = ("Tr" if i < n_train else "Ts"), f"blobs_{i:04d}"
            write_case(folder, split, case, image, label, instances=instances)
        write_dataset_json(folder, {"background": 0, "cell": 1}, n_train, name,
                           f"nnunet-ext synthetic touching blobs, dim={dim}, seed={seed}")

    return write_raw_dataset(raw_root, dataset_id, name, overwrite, fill)


def separated_touching_pairs(prediction: np.ndarray, instances: np.ndarray) -> tuple[int, int]:
    """(touching pairs, pairs the prediction separates).

    Touching: two instances within two voxels of each other (across a one-voxel gap). Separated: both
    are predicted (overlap the foreground) and no connected component of the prediction touches both.
    """
    structure = ndimage.generate_binary_structure(instances.ndim, instances.ndim)
    components, _ = ndimage.label(prediction > 0, structure)
    touching = separated = 0
    for i in range(1, int(instances.max()) + 1):
        own = instances == i
        if not own.any():
            continue
        near = ndimage.binary_dilation(own, structure, iterations=2)
        for j in np.unique(instances[near]):
            if j <= i:
                continue
            touching += 1
            ci, cj = set(np.unique(components[own])) - {0}, set(np.unique(components[instances == j])) - {0}
            separated += bool(ci) and bool(cj) and not (ci & cj)
    return touching, separated
