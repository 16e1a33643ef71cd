"""A synthetic electron-microscopy-like dataset: elongated cells, thin dark membranes, faint membrane gaps (2D/3D).

The boundary-prediction setting of DAWMR (Huang & Jain): the label is background 0 (cell interior) and membrane 1;
the cells themselves are saved beside as instances (int32 ids, membranes 0), so that a prediction's connected
components between membranes can be scored with adapted Rand error and variation of information::

    from nnunet_ext.testing.em import write_em_dataset
    write_em_dataset(993, dim=3, n_train=10, n_test=4)   # -> $nnUNet_raw/Dataset993_EMCells3D (+ instancesTs/)

How a case is made (3D defaults: shape (24, 128, 128), spacing (5, 1, 1), i.e. axis 0 five times coarser, like
serial-section TEM's 40 x 8 x 8 nm; 2D: (256, 256), spacing (1, 1)). Lengths are in physical units (the in-plane
voxel = 1) unless said otherwise:

- Cells: a Voronoi tessellation of seeds on a jittered lattice, in physical space warped by a smooth random
  displacement (3 units over 24; in 3D over 12 x elongation along axis 0, so that neurites meander slowly and
  membranes stay nearly perpendicular to the sections), with the metric compressed ``elongation`` times along
  one direction: axis 0 in 3D (neurites crossing the sections), a random direction per case in 2D. Cells are
  ``cell_diameter`` across (16 in 3D, 20 in 2D) and ``elongation`` times that long (8 in 3D: most cells cross
  the default volume, median axis-0 / in-plane extent 4.4; 1.6 in 2D). About 160 cells per 3D case, 125 per 2D.
- Label membrane: every voxel whose centre lies closer than ``membrane_thickness / 2`` voxels (default 1.5 / 2)
  to the boundary between its two nearest cells (exact bisector distance, in voxels per axis), plus the fewest
  voxels needed so that no two cells touch, even diagonally (8- / 26-connectivity). Measured in-plane thickness
  1.6 px in 2D, 1.9 px in 3D (membrane pixels per skeleton pixel); 12% (2D) / 23% (3D) of the voxels. Every
  instance is one cell interior, connected under full connectivity (a cell cut in pieces gives one instance per
  piece; pieces under ``min_cell_voxels`` become membrane). The label membrane is complete everywhere.
- Image: cytoplasm grey (0.58-0.72 per cell) with fine texture and dark organelles (ellipsoids about as dark as
  membranes: distractors); dark membranes with a Gaussian profile (sigma 0.7) integrated over the section
  thickness along axis 0, so membranes oblique to the sections get wide and faint (as in ssTEM); blur (PSF
  sigma 0.6), per-section brightness jitter (3D, 0.02) and noise (0.06). Membrane contrast to the cytoplasm
  ~0.25.
- Gaps: ``gap_rate`` gaps per cell (0.6 in 2D, 1.0 in 3D, where cells are long) at random membrane voxels,
  where the membrane fades to 15% of its contrast (Gaussian patches, sigma ``gap_radius`` = 3, at least 0.8
  voxel per axis: ~6 px across, 1-2 sections). 9% (2D) / 2.3% (3D) of the label membrane is drawn at under half
  contrast; there the image contrast is ~0.05, below the noise. The label membrane stays complete, so a model
  that follows the image merges the cells on both sides: every gap is a likely merge (adapted Rand / VI merge
  errors), the situation LED's error-density weighting is meant for.

``em_case(...)`` returns (image float32, label uint8, instances int32); ``membrane_statistics`` measures the
thickness and gap fraction of a case.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import cc3d
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from nnunet_ext.testing._texture import smooth_noise
from nnunet_ext.testing.raw_dataset import (check_dim, check_float, check_int,
                                            checked_counts, checked_name, checked_raw_root, checked_shape,
                                            checked_spacing, make_case_folders, write_case, write_dataset_json,
                                            write_raw_dataset)

DEFAULT_SHAPE = {2: (256, 256), 3: (24, 128, 128)}
DEFAULT_SPACING = {2: (1.0, 1.0), 3: (5.0, 1.0, 1.0)}
DEFAULT_CELL_DIAMETER = {2: 20.0, 3: 16.0}
DEFAULT_ELONGATION = {2: 1.6, 3: 8.0}
DEFAULT_GAP_RATE = {2: 0.6, 3: 1.0}   # gaps per cell (3D cells are long: more membrane per cell)
MEMBRANE_WIDTH = 0.7     # physical sigma of a membrane's dark profile (in-plane units)
PSF_SIGMA = 0.6          # physical blur
GAP_FADE = 0.85          # a gap's centre keeps 1 - GAP_FADE of the membrane contrast


def _metric(dim: int, elongation: float, rng: np.random.Generator) -> np.ndarray:
    """The linear map A from physical space to cell space (cells are isotropic there): compresses one direction
    ``elongation`` times (axis 0 in 3D, a random direction in 2D)."""
    if dim == 3:
        return np.diag([1.0 / elongation, 1.0, 1.0])
    angle = rng.uniform(0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    return np.eye(2) - (1.0 - 1.0 / elongation) * np.outer(direction, direction)


def _seeds(low: np.ndarray, high: np.ndarray, diameter: float, rng: np.random.Generator) -> np.ndarray:
    """Jittered lattice of cell seeds covering the box [low, high] (cell space), one per ``diameter``."""
    axes = [np.arange(lo - diameter, hi + diameter, diameter) for lo, hi in zip(low, high)]
    lattice = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(low))
    return lattice + rng.uniform(-0.35, 0.35, size=lattice.shape) * diameter


def _separate(membrane: np.ndarray, cells: np.ndarray, distance: np.ndarray) -> None:
    """Add to ``membrane`` (in place) the voxel nearer the boundary of every pair of neighbouring (full
    connectivity) non-membrane voxels of different cells."""
    ndim = cells.ndim
    for offset in itertools.product((-1, 0, 1), repeat=ndim):
        if offset <= (0,) * ndim:       # each unordered neighbour pair once
            continue
        a = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, cells.shape))
        b = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, cells.shape))
        conflict = ~membrane[a] & ~membrane[b] & (cells[a] != cells[b])
        if not conflict.any():
            continue
        a_nearer = distance[a] <= distance[b]
        membrane[a] |= conflict & a_nearer
        membrane[b] |= conflict & ~a_nearer


def _instances(cells: np.ndarray, membrane: np.ndarray, min_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """(instances int32 1..K, membrane): each cell's interior split into its full-connectivity components,
    components below ``min_voxels`` turned into membrane."""
    interior = np.where(membrane, 0, cells + 1).astype(np.uint32)
    components = cc3d.connected_components(interior, connectivity=26 if cells.ndim == 3 else 8)
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = True
    membrane = membrane | small[components]
    keep = np.flatnonzero(~small)
    lookup = np.zeros(len(sizes), np.int32)
    lookup[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
    return lookup[components], membrane


def _ellipsoid_into(target: np.ndarray, centre: np.ndarray, semi_axes: np.ndarray, rotation: np.ndarray,
                    spacing: np.ndarray, value: float) -> None:
    """Paint a soft-edged ellipsoid (physical centre/semi-axes) into ``target`` by minimum with ``value``."""
    reach = np.ceil((semi_axes.max() + 2) / spacing).astype(int)
    index = np.round(centre / spacing).astype(int)
    lo, hi = np.maximum(index - reach, 0), np.minimum(index + reach + 1, target.shape)
    if np.any(hi <= lo):
        return
    grid = np.stack(np.meshgrid(*[np.arange(a, b) * s - c for a, b, s, c in zip(lo, hi, spacing, centre)],
                                indexing="ij"), -1)
    radius = np.sqrt((((grid @ rotation) / semi_axes) ** 2).sum(-1))
    weight = np.clip((1.15 - radius) / 0.3, 0, 1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    target[box] = np.minimum(target[box], 1.0 - (1.0 - value) * weight)


def em_case(shape: Sequence[int] | None = None, seed: int = 0, spacing: Sequence[float] | None = None,
            **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One EM-like case (see the module doc). Returns (image float32, label uint8 membrane=1, instances int32),
    all of ``shape``; ``options`` as :func:`em_case_details`."""
    case = em_case_details(shape, seed, spacing, **options)
    return case["image"], case["label"], case["instances"]


def em_case_details(shape: Sequence[int] | None = None, seed: int = 0, spacing: Sequence[float] | None = None,
                    cell_diameter: float | None = None, elongation: float | None = None,
                    membrane_thickness: float = 1.5, gap_rate: float | None = None, gap_radius: float = 3.0,
                    noise: float = 0.06, min_cell_voxels: int = 8, dim: int = 3) -> dict[str, np.ndarray]:
    """One EM-like case as a dict: ``image`` float32, ``label`` uint8 (membrane 1), ``instances`` int32 and
    ``strength`` float32 (the drawn membrane contrast, 1 = full, 1 - GAP_FADE at a gap's centre).

    ``shape`` (default by ``dim``, or the dim of ``shape``) and ``spacing`` per numpy axis (axis 0 first, default
    (5, 1, 1) in 3D); ``cell_diameter``, ``gap_radius`` in physical units; ``membrane_thickness`` in voxels (the
    label's); ``gap_rate`` gaps per cell; ``noise`` the Gaussian noise std (cytoplasm ~0.65, membranes ~0.25).
    """
    dim = check_dim(len(shape)) if shape is not None else check_dim(dim)
    shape = checked_shape(DEFAULT_SHAPE[dim] if shape is None else shape, dim)
    spacing = np.array(checked_spacing(DEFAULT_SPACING[dim] if spacing is None else spacing, dim))
    seed = check_int(seed, "seed", 0)
    diameter = check_float(DEFAULT_CELL_DIAMETER[dim] if cell_diameter is None else cell_diameter,
                           "cell_diameter", 2.0)
    elongation = check_float(DEFAULT_ELONGATION[dim] if elongation is None else elongation, "elongation", 1.0, 20.0)
    thickness = check_float(membrane_thickness, "membrane_thickness", 0.5, 6.0)
    gap_rate = check_float(DEFAULT_GAP_RATE[dim] if gap_rate is None else gap_rate, "gap_rate", 0.0, 20.0)
    gap_radius = check_float(gap_radius, "gap_radius", 0.0, strict_minimum=True)
    noise = check_float(noise, "noise", 0.0)
    min_cell_voxels = check_int(min_cell_voxels, "min_cell_voxels", 1)
    rng = np.random.default_rng(seed)

    # geometry: warped, anisotropic Voronoi cells in physical space
    index = np.indices(shape, dtype=np.float32).reshape(dim, -1).T
    physical = index * spacing
    metric = _metric(dim, elongation, rng)
    # smooth displacement, 3 units over 24 (in 3D over 12 x elongation along axis 0: neurites meander slowly,
    # so the membranes stay nearly perpendicular to the sections)
    length = np.array([24.0] * dim) if dim == 2 else np.array([12.0 * elongation, 24.0, 24.0])
    warp = np.stack([3.0 * smooth_noise(shape, rng, length / spacing).ravel() for _ in range(dim)], -1)
    cell_space = (physical + warp) @ metric.T
    seeds = _seeds(cell_space.min(0), cell_space.max(0), diameter, rng)
    distances, nearest = cKDTree(seeds).query(cell_space, k=2)
    normal = seeds[nearest[:, 1]] - seeds[nearest[:, 0]]
    normal_length = np.linalg.norm(normal, axis=1)
    to_bisector = (distances[:, 1] ** 2 - distances[:, 0] ** 2) / (2 * normal_length)     # in cell space
    physical_normal = (normal / normal_length[:, None]) @ metric                          # A^T n, per row
    physical_normal_length = np.linalg.norm(physical_normal, axis=1)
    distance_phys = to_bisector / physical_normal_length
    physical_normal /= physical_normal_length[:, None]
    distance_vox = distance_phys / np.linalg.norm(physical_normal * spacing, axis=1)

    cells = nearest[:, 0].reshape(shape)
    distance_vox = distance_vox.reshape(shape)
    membrane = distance_vox < thickness / 2
    _separate(membrane, cells, distance_vox)
    instances, membrane = _instances(cells, membrane, min_cell_voxels)
    n_cells = int(instances.max())

    # image: cytoplasm per cell, texture, organelles, membranes (section-integrated), gaps, blur, noise
    cytoplasm = rng.uniform(0.58, 0.72, size=len(seeds))[cells]
    cytoplasm += 0.035 * smooth_noise(shape, rng, 2.0 / spacing)
    organelles = np.ones(shape, np.float32)
    interior = np.argwhere((instances > 0) & (distance_phys.reshape(shape) > 3.0))
    for _ in range(int(round(0.8 * n_cells)) if len(interior) else 0):
        centre = interior[rng.integers(len(interior))] * spacing
        semi_axes = rng.uniform(1.2, 2.5, dim) * np.array([1.5] + [1.0] * (dim - 1))
        q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
        _ellipsoid_into(organelles, centre, semi_axes, q * np.sign(np.diag(r)), spacing, 0.55)
    section = spacing[0] if dim == 3 else 0.0
    width = np.sqrt(MEMBRANE_WIDTH ** 2 + (section * physical_normal[:, 0]) ** 2 / 12.0).reshape(shape)
    profile = (MEMBRANE_WIDTH / width) * np.exp(-0.5 * (distance_phys.reshape(shape) / width) ** 2)
    strength = 1.0 - GAP_FADE * _gap_field(shape, spacing, membrane, gap_radius,
                                           int(round(gap_rate * n_cells)), rng)
    image = cytoplasm * organelles - 0.42 * strength * profile
    image = ndimage.gaussian_filter(image, PSF_SIGMA / spacing)
    if dim == 3:
        image += rng.normal(scale=0.02, size=(shape[0],) + (1,) * (dim - 1))
    image += rng.normal(scale=noise, size=shape)
    return {"image": image.astype(np.float32), "label": membrane.astype(np.uint8), "instances": instances,
            "strength": strength.astype(np.float32)}


def _gap_field(shape: tuple[int, ...], spacing: np.ndarray, membrane: np.ndarray, radius: float, n_gaps: int,
               rng: np.random.Generator) -> np.ndarray:
    """Max of Gaussian bumps at ``n_gaps`` random membrane voxels, sigma ``radius`` physical units (at least 0.8
    voxel per axis, so that a gap spans 1-2 sections of an anisotropic volume)."""
    field = np.zeros(shape, np.float32)
    candidates = np.argwhere(membrane)
    if n_gaps == 0 or len(candidates) == 0:
        return field
    sigma = np.maximum(radius, 0.8 * spacing)
    reach = np.ceil(2.5 * sigma / spacing).astype(int)
    for centre in candidates[rng.choice(len(candidates), size=min(n_gaps, len(candidates)), replace=False)]:
        lo, hi = np.maximum(centre - reach, 0), np.minimum(centre + reach + 1, shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        squared = sum(((g - c) * s / w) ** 2 for g, c, s, w in zip(grid, centre, spacing, sigma))
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        field[box] = np.maximum(field[box], np.exp(-0.5 * squared))
    return field


def membrane_statistics(label: np.ndarray, instances: np.ndarray, strength: np.ndarray | None = None
                        ) -> dict[str, float]:
    """Figures of a case: ``membrane_fraction``, ``cells``, ``thickness_voxels`` (in-plane: membrane pixels per
    pixel of their 2D skeleton, per section in 3D) and, given ``strength``, ``gap_fraction`` (the share of label
    membrane drawn at under half contrast)."""
    from skimage.morphology import skeletonize
    membrane = label == 1
    sections = membrane if membrane.ndim == 3 else membrane[None]
    skeleton = sum(int(skeletonize(section).sum()) for section in sections)
    figures = {"membrane_fraction": float(membrane.mean()), "cells": int(len(np.unique(instances)) - 1),
               "thickness_voxels": float(membrane.sum() / max(1, skeleton))}
    if strength is not None:
        figures["gap_fraction"] = float((strength[membrane] < 0.5).mean())
    return figures


def write_em_dataset(dataset_id: int, dim: int = 3, n_train: int = 10, n_test: int = 4,
                     shape: Sequence[int] | None = None, seed: int = 0, spacing: Sequence[float] | None = None,
                     raw_root: str | None = None, name: str | None = None, overwrite: bool = False,
                     gap_rate: float | None = None) -> str:
    """Write ``Dataset{ID}_{name}`` (default ``EMCells{dim}D``) in nnU-Net raw format; returns its folder.

    Labels ``{"background": 0, "membrane": 1}`` (the trainers recognise a membrane dataset by the label name and
    report adapted Rand error / VI); the images carry ``spacing``; ``instancesTs/`` holds the held-out cases'
    cells (int32 ids, membranes 0, same file names as labelsTs). Case i is ``em_case(shape, seed * 100003 + i,
    spacing)``. Every argument is checked before anything is written; an existing dataset id raises
    UserInputError unless ``overwrite``, which replaces exactly that dataset's folder(s).
    """
    dataset_id = check_int(dataset_id, "dataset_id", 1, 999)
    dim = check_dim(dim)
    shape = checked_shape(DEFAULT_SHAPE[dim] if shape is None else shape, dim)
    spacing = checked_spacing(DEFAULT_SPACING[dim] if spacing is None else spacing, dim)
    n_train, n_test = checked_counts(n_train, n_test)
    seed = check_int(seed, "seed", 0)
    gap_rate = check_float(DEFAULT_GAP_RATE[dim] if gap_rate is None else gap_rate, "gap_rate", 0.0, 20.0)
    name = checked_name(name or f"EMCells{dim}D")
    raw_root = checked_raw_root(raw_root)

    def fill(folder: str) -> None:
        make_case_folders(folder, instances=True)
        for i in range(n_train + n_test):
            image, label, instances = em_case(shape, seed * 100003 + i, spacing, gap_rate=gap_rate)
            write_case(folder, "Tr" if i < n_train else "Ts", f"em_{i:04d}", image, label, spacing, instances)
        write_dataset_json(folder, {"background": 0, "membrane": 1}, n_train, name,
                           f"nnunet-ext synthetic EM-like cells, dim={dim}, seed={seed}, spacing={list(spacing)}: "
                           "label 1 = membrane (boundary prediction), instancesTs = the cells (int32, membranes 0)",
                           channel_names={"0": "EM"})

    return write_raw_dataset(raw_root, dataset_id, name, overwrite, fill)
