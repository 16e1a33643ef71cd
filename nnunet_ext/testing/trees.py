"""Synthetic 3D vessel trees: branching, one class per tree, thick (radius several voxels) or thin, anisotropic.

Made for the Skeleton Recall / clDice comparisons on thick vessels (issue 16)::

    from nnunet_ext.testing.trees import write_thick_tree_dataset
    write_thick_tree_dataset(994, n_train=10, n_test=4)          # -> $nnUNet_raw/Dataset994_ThickTrees3D
    write_thick_tree_dataset(992, n_train=10, n_test=4, radius=(1.0, 2.0))   # ThinTrees3D

Geometry, all in physical units (mm) so that vessels are round in mm although the voxels are not (default spacing
(2, 1, 1): axis 0 twice as coarse; the default shape (48, 96, 96) is a 94 x 95 x 95 mm box):

- ``n_classes`` trees (default 2, think arteries and veins), tree k of class k. Each root enters through a face
  normal to axis 2 (trees alternate between the low and the high face) and grows inwards as a smooth random
  walk; at its end it splits into two children turned 25-45 degrees to either side, recursively, for ``depth``
  generations (default 4: up to 15 segments, 7 bifurcations and 8 end branches per tree; at the default shape
  and at (32, 64, 64) nearly all fit). A tree without any bifurcation is grown anew.
- Radius: ``radius[1]`` at the root down to ``radius[0]`` in the last generation in geometric steps (default
  4.5, 3.9, 3.4, 3.0 mm), +-5% along a segment: 3-4.5 voxels in-plane, 1.5-2.25 voxels along axis 0; ~2.3% of
  the voxels are vessel at the default shape, ~4.7% at (32, 64, 64). The thin variant: e.g. ``radius=(1, 2)``
  (~0.35% / 0.7% vessel); the voxels nearest the centreline always belong to the label, so a thin tree stays
  one 26-connected component on 2 mm voxels.
- A new segment is kept only if it stays inside the box (its radius away from every face but the root's) and
  keeps 2 mm of clearance from every other segment (junctions apart): trees never touch, and each class is one
  connected tree without loops. A segment that does not fit after 30 tries (each a little shorter) ends its
  branch.

Image: vessels bright (class 1 at 1.0, class 2 at 0.8 of it), a soft 1 mm edge, intensity dips to 0.45 along 15% of
60% of the segments (so that connectivity is not trivial, as in ``tubular_case``), three dim round blobs
(radius 2-4 mm, 0.35) in the background as false-positive bait, smooth background shading, blur (0.5 mm) and
noise (0.1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from nnunet_ext.testing._texture import smooth_noise
from nnunet_ext.testing.raw_dataset import (DatasetArgumentError, check_float, check_int, check_range,
                                            checked_counts, checked_name, checked_raw_root, checked_shape,
                                            checked_spacing, make_case_folders, write_case, write_dataset_json,
                                            write_raw_dataset)

DEFAULT_SHAPE = (48, 96, 96)
DEFAULT_SPACING = (2.0, 1.0, 1.0)
STEP = 0.5            # mm between centreline samples
CLEARANCE = 2.0       # mm kept between different segments' surfaces
CLASS_INTENSITY = (1.0, 0.8, 0.65, 0.5)


@dataclass
class Segment:
    """One branch: centreline ``points`` (N, 3) in mm, ``radii`` (N,), its class and generation."""
    points: np.ndarray
    radii: np.ndarray
    label: int
    generation: int


def _turn(direction: np.ndarray, angle: float, rng: np.random.Generator) -> np.ndarray:
    """``direction`` turned by ``angle`` radians towards a random perpendicular direction."""
    perpendicular = rng.normal(size=3)
    perpendicular -= perpendicular @ direction * direction
    perpendicular /= np.linalg.norm(perpendicular)
    return np.cos(angle) * direction + np.sin(angle) * perpendicular


def _walk(start: np.ndarray, direction: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    """(N, 3) points of a smooth random walk of ``length`` mm from ``start``."""
    points, position = [start], start.astype(float)
    for _ in range(max(2, int(length / STEP))):
        direction = _turn(direction, abs(rng.normal(scale=0.04)), rng)
        position = position + STEP * direction
        points.append(position)
    return np.array(points)


class _Forest:
    """The accepted segments and a fast clearance check against them."""

    def __init__(self, extent: np.ndarray):
        self.extent = extent
        self.segments: list[Segment] = []
        self._points = np.zeros((0, 3))
        self._radii = np.zeros(0)
        self._tree: cKDTree | None = None

    def fits(self, points: np.ndarray, radii: np.ndarray, is_root: bool) -> bool:
        start = 2 * radii[0] + CLEARANCE + 1.0 if is_root else 0.0   # the root enters through its face
        along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
        inside = (points >= radii[:, None]) & (points <= self.extent - radii[:, None])
        if not inside[along >= start].all():
            return False
        if self._tree is None:
            return True
        free = along > 2.5 * radii[0] + CLEARANCE           # junction: the first bit of a child touches its parent
        if not free.any():
            return True
        reach = radii[free].max() + self._radii.max() + CLEARANCE
        for point, radius, neighbours in zip(points[free], radii[free],
                                             self._tree.query_ball_point(points[free], reach)):
            if neighbours and np.any(np.linalg.norm(self._points[neighbours] - point, axis=1)
                                     < radius + self._radii[neighbours] + CLEARANCE):
                return False
        return True

    def add(self, segment: Segment) -> None:
        self.segments.append(segment)
        self._rebuild()

    def truncate(self, n_segments: int) -> None:
        """Forget every segment after the first ``n_segments``."""
        del self.segments[n_segments:]
        self._rebuild()

    def _rebuild(self) -> None:
        self._points = np.concatenate([np.zeros((0, 3))] + [s.points for s in self.segments])
        self._radii = np.concatenate([np.zeros(0)] + [s.radii for s in self.segments])
        self._tree = cKDTree(self._points) if len(self._points) else None


def _grow_tree(forest: _Forest, label: int, radii: np.ndarray, depth: int, rng: np.random.Generator,
               tries: int) -> None:
    """Add one tree of class ``label`` to ``forest``: a root entering through an axis-2 face, then bifurcations
    breadth first; a segment that does not fit in ``tries`` (each a little shorter) ends its branch."""
    extent = forest.extent
    side = (label - 1) % 2                              # 0: enters at the axis-2 low face, 1: at the high face
    pending = []
    for attempt in range(tries):
        start = np.array([rng.uniform(0.3, 0.7) * extent[0], rng.uniform(0.2, 0.8) * extent[1],
                          extent[2] if side else 0.0])
        direction = _turn(np.array([0.0, 0.0, -1.0 if side else 1.0]), rng.uniform(0, 0.35), rng)
        points = _walk(start, direction, rng.uniform(0.25, 0.35) * extent[2] * 0.98 ** attempt, rng)
        r = radii[0] * (1 + 0.05 * np.sin(np.linspace(0, rng.uniform(2, 6), len(points))))
        if forest.fits(points, r, is_root=True):
            forest.add(Segment(points, r, label, 0))
            pending.append(forest.segments[-1])
            break
    while pending:
        parent = pending.pop(0)
        generation = parent.generation + 1
        if generation >= depth:
            continue
        end = parent.points[-1]
        heading = parent.points[-1] - parent.points[-4]
        heading /= np.linalg.norm(heading)
        for sign in (1, -1):
            for attempt in range(tries):
                direction = _turn(heading, sign * rng.uniform(np.radians(25), np.radians(45)), rng)
                length = rng.uniform(0.2, 0.3) * extent[2] * 0.85 ** parent.generation * 0.97 ** attempt
                points = _walk(end, direction, length, rng)
                r = radii[generation] * (1 + 0.05 * np.sin(np.linspace(0, rng.uniform(2, 6), len(points))))
                if forest.fits(points, r, is_root=False):
                    forest.add(Segment(points, r, parent.label, generation))
                    pending.append(forest.segments[-1])
                    break


def tree_segments(shape: Sequence[int], spacing: Sequence[float], rng: np.random.Generator, n_classes: int,
                  radius: tuple[float, float], depth: int, tries: int = 30, regrowths: int = 10) -> list[Segment]:
    """The centrelines of ``n_classes`` branching trees in the box ``(shape - 1) * spacing`` mm. A tree with no
    bifurcation (where ``depth`` > 1 asks for some) is grown anew, up to ``regrowths`` times."""
    forest = _Forest((np.array(shape) - 1) * np.array(spacing))
    radii = radius[1] * (radius[0] / radius[1]) ** (np.arange(depth) / max(1, depth - 1))
    for label in range(1, n_classes + 1):
        for _ in range(regrowths):
            kept = len(forest.segments)
            _grow_tree(forest, label, radii, depth, rng, tries)
            grown = forest.segments[kept:]
            if grown and (depth == 1 or sum(s.generation == 1 for s in grown) == 2):
                break
            forest.truncate(kept)
    return forest.segments


def thick_tree_case(shape: Sequence[int] = DEFAULT_SHAPE, seed: int = 0, n_classes: int = 2,
                    radius: tuple[float, float] = (3.0, 4.5), spacing: Sequence[float] = DEFAULT_SPACING,
                    depth: int = 4, dip_fraction: float = 0.15, n_distractors: int = 3, noise: float = 0.1
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One case (see the module doc): (image float32, label uint8 with classes 1..n_classes), both of ``shape``.

    ``radius`` (low, high) and everything geometric in mm; ``spacing`` per numpy axis (axis 0 first)."""
    shape = checked_shape(shape, 3)
    seed = check_int(seed, "seed", 0)
    n_classes = check_int(n_classes, "n_classes (--n-classes)", 1, len(CLASS_INTENSITY))
    radius = check_range(radius, "radius (--radius)")
    spacing = np.array(checked_spacing(spacing, 3))
    depth = check_int(depth, "depth", 1, 8)
    dip_fraction = check_float(dip_fraction, "dip_fraction", 0.0, 1.0)
    n_distractors = check_int(n_distractors, "n_distractors", 0, 1000)
    noise = check_float(noise, "noise", 0.0)
    extent = (np.array(shape) - 1) * spacing
    if 2 * radius[1] + 2 * CLEARANCE >= min(extent):
        raise DatasetArgumentError(f"radius {radius} mm does not fit a {tuple(extent)} mm box (shape {shape} x "
                                   f"spacing {tuple(spacing)}): use a larger shape or a smaller radius")
    rng = np.random.default_rng(seed)
    segments = tree_segments(shape, spacing, rng, n_classes, radius, depth)

    # centreline samples: position, radius, class, brightness (dips along some segments)
    points = np.concatenate([s.points for s in segments])
    radii = np.concatenate([s.radii for s in segments])
    labels = np.concatenate([np.full(len(s.points), s.label) for s in segments])
    brightness = []
    for s in segments:
        b = np.full(len(s.points), CLASS_INTENSITY[s.label - 1])
        n_dip = int(dip_fraction * len(s.points))
        if n_dip and rng.random() < 0.6:
            start = rng.integers(0, len(s.points) - n_dip + 1)
            b[start:start + n_dip] *= 0.45
        brightness.append(b)
    brightness = np.concatenate(brightness)

    # distance from every voxel centre to the tube surfaces (the union of the samples' balls)
    voxels = np.indices(shape, dtype=np.float32).reshape(3, -1).T * spacing.astype(np.float32)
    reach = radii.max() + 2.0
    distance, nearest = cKDTree(points).query(voxels, k=8, distance_upper_bound=reach)
    valid = np.isfinite(distance)
    safe = np.where(valid, nearest, 0)
    surface = np.where(valid, distance - radii[safe], np.inf)        # < 0 inside a tube
    best = np.argmin(surface, axis=1)
    rows = np.arange(len(voxels))
    signed = surface[rows, best]
    owner = safe[rows, best]
    label = np.where(signed <= 0, labels[owner], 0).astype(np.uint8).reshape(shape)
    # the voxels nearest the centreline samples (0.5 mm apart) belong to the tube too: thin trees on coarse
    # voxels stay connected
    centreline = np.clip(np.round(points / spacing).astype(int), 0, np.array(shape) - 1)
    label[tuple(centreline.T)] = labels
    vessel = (np.clip(0.5 - signed, 0, 1) * np.where(np.isfinite(signed), brightness[owner], 0)).reshape(shape)

    blobs = np.zeros(shape, np.float32)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    for _ in range(n_distractors):
        centre, r = rng.uniform(0.15, 0.85, 3) * extent, rng.uniform(2.0, 4.0)
        d = np.sqrt(sum(((g * s) - c) ** 2 for g, s, c in zip(grid, spacing, centre)))
        blobs = np.maximum(blobs, np.clip(r + 0.5 - d, 0, 1) * 0.35)
    blobs[label > 0] = 0
    background = 0.08 * smooth_noise(shape, rng, 16.0 / spacing)
    image = 0.15 + 0.65 * np.maximum(vessel, blobs) + background
    image = ndimage.gaussian_filter(image, 0.5 / spacing) + rng.normal(scale=noise, size=shape)
    return image.astype(np.float32), label


def write_thick_tree_dataset(dataset_id: int, n_train: int = 10, n_test: int = 4,
                             shape: Sequence[int] = DEFAULT_SHAPE, seed: int = 0,
                             spacing: Sequence[float] = DEFAULT_SPACING, raw_root: str | None = None,
                             name: str | None = None, overwrite: bool = False, n_classes: int = 2,
                             radius: tuple[float, float] = (3.0, 4.5), depth: int = 4,
                             one_label: bool = False) -> str:
    """Write ``Dataset{ID}_{name}`` (default ``ThickTrees3D``, or ``ThinTrees3D`` when ``radius[1] < 2.5``) in
    nnU-Net raw format with ``spacing`` in the images; returns its folder.

    Labels: background 0, ``tree_k`` k; with ``one_label`` every tree is ``vessel`` 1 (the same images and trees:
    a control in which no class has to be told apart). Case i is ``thick_tree_case(shape, seed * 100003 + i,
    ...)``. Every
    argument is checked before anything is written; an existing dataset id raises UserInputError unless
    ``overwrite``, which replaces exactly that dataset's folder(s).
    """
    dataset_id = check_int(dataset_id, "dataset_id", 1, 999)
    shape = checked_shape(shape, 3)
    spacing = checked_spacing(spacing, 3)
    n_train, n_test = checked_counts(n_train, n_test)
    seed = check_int(seed, "seed", 0)
    n_classes = check_int(n_classes, "n_classes (--n-classes)", 1, len(CLASS_INTENSITY))
    radius = check_range(radius, "radius (--radius)")
    depth = check_int(depth, "depth", 1, 8)
    extent = (np.array(shape) - 1) * np.array(spacing)
    if 2 * radius[1] + 2 * CLEARANCE >= min(extent):
        raise DatasetArgumentError(f"radius {radius} mm does not fit a {tuple(extent)} mm box (shape {shape} x "
                                   f"spacing {tuple(spacing)}): use a larger shape or a smaller radius")
    name = checked_name(name or ("ThickTrees3D" if radius[1] >= 2.5 else "ThinTrees3D"))
    raw_root = checked_raw_root(raw_root)

    def fill(folder: str) -> None:
        make_case_folders(folder)
        for i in range(n_train + n_test):
            image, label = thick_tree_case(shape, seed * 100003 + i, n_classes, radius, spacing, depth)
            if one_label:
                label = (label > 0).astype(label.dtype)
            write_case(folder, "Tr" if i < n_train else "Ts", f"tree_{i:04d}", image, label, spacing)
        labels = ({"vessel": 1} if one_label else {f"tree_{k}": k for k in range(1, n_classes + 1)})
        write_dataset_json(folder, {"background": 0, **labels},
                           n_train, name, f"nnunet-ext synthetic branching vessel trees, radius {radius} mm, "
                           f"spacing {list(spacing)}, depth {depth}, seed={seed}"
                           + (", every tree one label" if one_label else ""))

    return write_raw_dataset(raw_root, dataset_id, name, overwrite, fill)
