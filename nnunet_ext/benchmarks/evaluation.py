"""Evaluation benchmark: ``nnunet-ext benchmark evaluation [--quick] [--size N] [--seed S]``.

Seconds per 3D case (default 256³, 3 labels, spacing 1.0 x 0.7 x 0.7 mm) of every metric family of
``nnunet-ext evaluate`` (:func:`nnunet_ext.evaluation.case.case_metrics`, one family at a time, all labels), of
the default families together (what ``nnunet-ext evaluate`` and the trainers' validation summary compute), of
every family, of TopCoW's merged-foreground clDice, of reading the pair (completeness check plus nnU-Net's
SimpleITK reader), and of the surface distances by KD-tree (used) vs scipy's exact distance transform (labels 1
and 3). One run each, single-threaded, in this process; wall and CPU seconds (CPU time is the robust figure on a
shared machine).

The synthetic pair (deterministic by ``--seed``): label 1, six tubes of radius 1.5-3 voxels (vessels); label 2,
25 balls of radius 3-8 voxels (lesions, nuclei); label 3, one ellipsoid of about 0.1 n³ voxels (an organ). The
prediction jitters the tubes and cuts a gap into one, misses every fifth ball, moves and rescales the others,
adds five false-positive balls and shifts and shrinks the ellipsoid.

The default (256³) takes about 50 s of CPU time (2 minutes on a busy 2-core machine); ``--quick`` (128³)
about 6 s of CPU time (15 s busy).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from nnunet_ext.benchmarks._report import native_thread_pools, package_version, print_header, table

SPACING = (1.0, 0.7, 0.7)
FAMILY_METRICS = {
    "dice": "Dice",
    "cldice": "clDice",
    "betti": "Betti0/1/2 errors",
    "surface": "HD95, HD, ASSD, NSD",
    "components": "Comp precision/recall/F1, splits, merges",
    "instance": "ARE (+precision/recall), VI split/merge",
}


def _ball(mask: np.ndarray, centre: np.ndarray, radius: float) -> None:
    lo = [max(int(np.floor(c - radius)), 0) for c in centre]
    hi = [min(int(np.ceil(c + radius)) + 1, n) for c, n in zip(centre, mask.shape)]
    if any(h <= low for low, h in zip(lo, hi)):
        return
    grids = np.ogrid[tuple(slice(low, h) for low, h in zip(lo, hi))]
    inside = sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius ** 2
    mask[tuple(slice(low, h) for low, h in zip(lo, hi))] |= inside


def _tube(mask: np.ndarray, points: np.ndarray, radius: float) -> None:
    for a, b in zip(points[:-1], points[1:]):
        steps = int(np.ceil(np.linalg.norm(b - a) / max(radius / 2, 0.5))) + 1
        for t in np.linspace(0.0, 1.0, steps):
            _ball(mask, a + t * (b - a), radius)


def synthetic_pair(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, reference) uint8 label maps of shape (n, n, n) with labels 1-3 (see the module docstring)."""
    rng = np.random.default_rng(seed)
    shape = (n, n, n)
    scale = n / 256
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    grids = np.ogrid[tuple(slice(0, k) for k in shape)]
    radii = np.array([0.22, 0.28, 0.25]) * n
    ref[sum(((g - n / 2) / r) ** 2 for g, r in zip(grids, radii)) <= 1] = 3
    pred[sum(((g - n / 2 - 2 * scale) / (0.97 * r)) ** 2 for g, r in zip(grids, radii)) <= 1] = 3
    tubes_ref, tubes_pred = np.zeros(shape, bool), np.zeros(shape, bool)
    for _ in range(6):
        points = [rng.uniform(0.05, 0.95, 3) * n]
        for _ in range(4):
            points.append(np.clip(points[-1] + rng.normal(0, 0.2, 3) * n, 2, n - 3))
        points = np.array(points)
        radius = rng.uniform(1.5, 3.0) * scale
        _tube(tubes_ref, points, radius)
        _tube(tubes_pred, points + rng.normal(0, 0.6 * scale, points.shape), radius * rng.uniform(0.8, 1.2))
    gap = np.zeros(shape, bool)
    _ball(gap, points[2], 6 * scale)
    tubes_pred &= ~gap
    ref[tubes_ref] = 1
    pred[tubes_pred] = 1
    for k in range(25):
        centre, radius = rng.uniform(0.08, 0.92, 3) * n, rng.uniform(3, 8) * scale
        blob = np.zeros(shape, bool)
        _ball(blob, centre, radius)
        ref[blob & (ref == 0)] = 2
        if k % 5:
            blob = np.zeros(shape, bool)
            _ball(blob, centre + rng.normal(0, scale, 3), radius * rng.uniform(0.85, 1.15))
            pred[blob & (pred == 0)] = 2
    for _ in range(5):
        blob = np.zeros(shape, bool)
        _ball(blob, rng.uniform(0.08, 0.92, 3) * n, rng.uniform(2, 5) * scale)
        pred[blob & (pred == 0)] = 2
    return pred, ref


def _timed(function, *args, **kwargs) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = function(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def _reading_seconds(pred: np.ndarray, ref: np.ndarray) -> tuple[float, tuple[float, float]]:
    """(wall seconds to write both as .nii.gz, (wall, CPU) seconds to check and read both with nnU-Net's reader)."""
    import SimpleITK as sitk
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ext.evaluation.reading import read_segmentation
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, f"{name}.nii.gz") for name in ("pred", "ref")]
        start = time.perf_counter()
        for array, path in zip((pred, ref), paths):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(SPACING[::-1])
            sitk.WriteImage(image, path, useCompression=True)
        written = time.perf_counter() - start
        reader = SimpleITKIO()
        wall, cpu, _ = _timed(lambda: [read_segmentation(reader, p) for p in paths])
        return written, (wall, cpu)


def run(size: int, seed: int) -> list[list[object]]:
    """Every measurement; returns the table rows (also printed)."""
    from nnunet_ext.evaluation.case import DEFAULT_FAMILIES, FAMILIES, EvaluationSettings, case_metrics
    from nnunet_ext.evaluation.surface import surface_metrics

    seconds, _, (pred, ref) = _timed(synthetic_pair, size, seed)
    voxels = {label: (int(np.count_nonzero(ref == label)), int(np.count_nonzero(pred == label))) for label in (1, 2, 3)}
    print(f"synthetic pair {size}³ in {seconds:.1f} s; voxels (reference, prediction): "
          + ", ".join(f"label {k} {v}" for k, v in voxels.items()))
    labels = [1, 2, 3]
    rows: list[list[object]] = []
    per_family: dict[str, tuple[float, float]] = {}
    for family in FAMILIES:
        settings = EvaluationSettings(families=(family,))
        per_family[family] = _timed(case_metrics, pred, ref, labels, settings, SPACING)[:2]
    default_seconds: dict[str, float] = {}
    wall, cpu_default, metrics = _timed(case_metrics, pred, ref, labels, EvaluationSettings(), SPACING,
                                        seconds=default_seconds)
    for family in FAMILIES:
        share = f"{100 * per_family[family][1] / cpu_default:.0f} %" if family in DEFAULT_FAMILIES else "(off)"
        rows.append([f"{family} ({FAMILY_METRICS[family]})", *(f"{t:.2f}" for t in per_family[family]), share])
    topcow = _timed(case_metrics, pred, ref, labels, EvaluationSettings(families=("cldice",), convention="topcow"),
                    SPACING)[:2]
    rows.append(["cldice, --convention topcow (clDice_TopCoW, merged foreground)", *(f"{t:.2f}" for t in topcow),
                 "(off)"])
    rows.append([f"default families together ({' + '.join(DEFAULT_FAMILIES)})", f"{wall:.2f}", f"{cpu_default:.2f}",
                 "100 %"])
    every = _timed(case_metrics, pred, ref, labels, EvaluationSettings(families=FAMILIES), SPACING)[:2]
    rows.append(["every family (default convention)", *(f"{t:.2f}" for t in every), ""])
    written, read = _reading_seconds(pred, ref)
    rows.append(["reading the pair (completeness check + nnU-Net's SimpleITK reader)", f"{read[0]:.2f}",
                 f"{read[1]:.2f}", ""])
    table(f"Evaluation time per 3D case ({size}³, 3 labels, spacing {SPACING} mm), one run, single-threaded",
          ["family (metrics)", "wall s", "CPU s", "of default (CPU)"], rows,
          [f"writing the pair as .nii.gz took {written:.2f} s (not part of an evaluation); CPU s = this process's "
           "CPU time (robust on a shared machine)",
           "default families, wall time inside each: "
           + ", ".join(f"{k} {v:.2f} s" for k, v in default_seconds.items()),
           "case values of the default run: Dice "
           + ", ".join(f"{k} {metrics[k]['Dice']:.3f}" for k in labels)
           + "; HD95 " + ", ".join(f"{k} {metrics[k]['HD95']:.2f} mm" for k in labels)])
    surface_rows = []
    for label, what in ((1, "tubes"), (3, "ellipsoid")):
        timings, results = [], []
        for method in ("kdtree", "edt"):
            _, cpu, out = _timed(surface_metrics, pred == label, ref == label, SPACING, method=method)
            timings.append(cpu)
            results.append(out)
        same = all(abs(results[0][k] - results[1][k]) < 1e-9 for k in results[0])
        surface_rows.append([f"label {label} ({what})", f"{timings[0]:.2f}", f"{timings[1]:.2f}",
                             f"{timings[1] / max(timings[0], 1e-9):.1f}x", "yes" if same else "NO"])
    table(f"Surface distances of one label ({size}³): scipy cKDTree on the surface voxels (used) vs scipy's exact "
          "distance transform", ["label", "KD-tree CPU s", "EDT CPU s", "EDT / KD-tree", "identical metrics"],
          surface_rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnunet-ext benchmark evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="128³ instead of 256³ (about 10 s)")
    parser.add_argument("--size", type=int, default=None, help="edge length of the cubic case (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pair (default 0)")
    args = parser.parse_args(argv)
    size = args.size or (128 if args.quick else 256)
    if size < 32:
        parser.error("--size must be at least 32")
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        print_header("evaluation", ", ".join(f"{p} {package_version(p)}" for p in
                                             ("numpy", "scipy", "scikit-image", "connected-components-3d",
                                              "nnunetv2")),
                     [f"native thread pools: {native_thread_pools()}", f"case: {size}³, labels 1-3, seed {args.seed}"])
        run(size, args.seed)
    return 0
