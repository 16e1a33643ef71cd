"""U-Net border weight map benchmark: ``nnunet-ext benchmark border_weight [--repeats N] [--quick] [--tolerance T]``.

Time of :func:`~nnunet_ext.core.weightmaps.border_weight_map` (fast path: each object's distance transform on its
bounding box grown by the margin where the border term can still exceed ``tolerance``) vs the same function
with ``exact=True`` (one full-image distance transform per object), measured in the same run on the same
3D 128³ label maps with 5, 27 and 64 objects (random balls of two classes, non-overlapping, about a quarter
of them touching a previous ball of the other class, so they stay separate objects). Also reports the
largest absolute difference of the two maps, which must be <= tolerance (the documented bound).
w0 = 10, sigma = 5 voxels, balanced class weights. CPU, single-threaded (threadpoolctl limits of 1).

Section 2 (``overhead``): per-sample CPU time of nnU-Net's default training transforms vs the same pipeline
with :class:`~nnunet_ext.transforms.BorderWeightTransform` inserted (``nnUNetTrainerBorderWeight``), same
random draws, on touching-blob label patches (2D 512², 3D 128³).

Section 3 (``separation``): on a generated 2D touching-blobs dataset, nnU-Net plans and preprocesses, then
``nnUNetTrainer_short`` and ``nnUNetTrainerBorderWeight_short`` train with the same short schedule
(``--epochs`` x ``--iterations``) on the CPU, predict the held-out cases, and the fraction of touching blob
pairs that the prediction separates is reported with Dice (one seed; a short CPU run, not a converged model).

Timing: median of ``--repeats`` interleaved calls (default 3) after one call of each (used for the
difference). Defaults take about 1.5 minutes on a 2-core CPU; ``--quick`` (1 repeat, no 64-object case)
about 20 s. Target: exact/fast >= 3 at 27 objects.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import random

import cc3d
import numpy as np
import torch
from threadpoolctl import threadpool_limits

from nnunet_ext.benchmarks._measure import timed
from nnunet_ext.benchmarks._report import milliseconds, native_thread_pools, print_header, table, versions

SHAPE = (128, 128, 128)
#: objects -> radius range (voxels) of the balls
CASES = {5: (9.0, 16.0), 27: (6.0, 11.0), 64: (4.0, 8.0)}
SECTIONS = ("map", "overhead", "separation")


def random_balls(shape: tuple[int, ...], n: int, radius: tuple[float, float], seed: int,
                 touching_every: int = 4) -> np.ndarray:
    """(X, Y, Z) uint8 map of n non-overlapping balls, labels 1/2; every ``touching_every``-th ball is put
    against a previous one (centre distance r1 + r2) with the other label, so the two touch but stay two objects.
    """
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, np.uint8)
    grid = np.indices(shape, dtype=np.float32)
    upper = np.array(shape, float)
    placed: list[tuple[np.ndarray, float, int]] = []
    for i in range(n):
        for _ in range(10_000):
            r = float(rng.uniform(*radius))
            parent = None
            if placed and i % touching_every == touching_every - 1:
                parent = int(rng.integers(len(placed)))
                c0, r0, l0 = placed[parent]
                direction = rng.normal(size=len(shape))
                centre, label = c0 + direction / np.linalg.norm(direction) * (r0 + r), 3 - l0
            else:
                centre, label = rng.uniform(r + 1, upper - r - 1), int(rng.integers(1, 3))
            if np.any(centre < r + 1) or np.any(centre > upper - r - 1):
                continue
            # at least 3 voxels from every ball but the parent
            if all(np.linalg.norm(centre - c) >= r + rc + 3.0 for j, (c, rc, _) in enumerate(placed) if j != parent):
                break
        else:
            raise RuntimeError(f"could not place {n} balls of radius {radius} in {shape}; lower the radii")
        placed.append((centre, r, label))
        box = tuple(slice(max(int(c - r) - 1, 0), min(int(c + r) + 2, s)) for c, s in zip(centre, shape))
        sub = grid[(slice(None),) + box]
        ball = ((sub - centre.reshape((-1,) + (1,) * len(shape)).astype(np.float32)) ** 2).sum(0) <= r * r
        seg[box][ball & (seg[box] == 0)] = label
    return seg



_ms = milliseconds


def _print_header(args: argparse.Namespace) -> None:
    print_header("border_weight", versions("numpy", "scipy", "connected-components-3d"),
                 [f"threads: native pools (threadpoolctl) {native_thread_pools()}",
                  f"repeats {args.repeats} (median), quick={args.quick}, objects {args.objects}, "
                  f"tolerance {args.tolerance}"])


def bench(objects: list[int], repeats: int, tolerance: float) -> bool:
    """Prints the table; returns whether every fast map is within ``tolerance`` of the exact one."""
    from nnunet_ext.core.weightmaps import border_margin, border_weight_map

    w0, sigma = 10.0, 5.0
    rows, within = [], True
    for n in objects:
        seg = random_balls(SHAPE, n, CASES.get(n, (4.0, 8.0)), seed=n)
        found = int(cc3d.connected_components(seg, connectivity=26).max())
        fast_map = border_weight_map(seg, w0, sigma, tolerance=tolerance)
        exact_map = border_weight_map(seg, w0, sigma, exact=True)
        diff = exact_map.astype(np.float64) - fast_map
        ok = bool(np.abs(diff).max() <= tolerance + 1e-5 * np.abs(exact_map).max())
        within &= ok
        t_fast, t_exact = [], []
        for _ in range(repeats):
            t_fast.append(timed(lambda: border_weight_map(seg, w0, sigma, tolerance=tolerance)))
            t_exact.append(timed(lambda: border_weight_map(seg, w0, sigma, exact=True)))
        fast, exact = statistics.median(t_fast), statistics.median(t_exact)
        rows.append([f"{n} balls", found, f"{100 * (seg > 0).mean():.1f}", _ms(exact), _ms(fast),
                     f"{exact / fast:.1f}", f"{fast / exact:.3f}", f"{np.abs(diff).max():.2e}",
                     f"{(diff < -1e-5).sum()}", "yes" if ok else "NO"])
    margin = border_margin(w0, sigma, tolerance)
    table(f"Border weight map, 3D {'x'.join(map(str, SHAPE))}: border_weight_map (fast) vs exact=True "
          f"(full EDT per object)",
          ["case", "objects", "fg %", "exact ms", "fast ms", "exact/fast", "fast/exact", "max |diff|",
           "fast > exact", f"<= tol {tolerance:g}"], rows,
          [f"w0 {w0:g}, sigma {sigma:g}, tolerance {tolerance:g} -> margin M = sigma*sqrt(2 ln(w0/tol)) = {margin:.2f} "
           "voxels; ms = median; objects = 26-connected components per class.",
           "Bound: 0 <= exact - fast <= w0 exp(-M^2/(2 sigma^2)) = tolerance (fast > exact counts voxels where the "
           "fast map is larger: must be 0). Target exact/fast >= 3 at 27 objects."])
    return within


def _seeded(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bench_overhead(repeats: int) -> None:
    """Per-sample time of nnU-Net's default training transforms with and without the border weight map."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.testing.synthetic import touching_blobs_case
    from nnunet_ext.transforms import BorderWeightTransform, insert_extra_target_transform

    torch.set_num_threads(1)
    rows = []
    for shape, rotation, scales in [((512, 512), (-np.pi, np.pi), [[1, 1], [0.5, 0.5], [0.25, 0.25]]),
                                    ((128, 128, 128), (-0.52, 0.52), [[1] * 3, [0.5] * 3, [0.25] * 3])]:
        args = (shape, rotation, scales, tuple(range(len(shape))), False)
        kwargs = dict(use_mask_for_norm=[False], is_cascaded=False, foreground_labels=[1], regions=None,
                      ignore_label=None)
        plain = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        # what nnUNetTrainerBorderWeight's pipeline is: nnU-Net's with the map inserted (spacing 1 here)
        weighted = insert_extra_target_transform(nnUNetTrainer.get_training_transforms(*args, **kwargs),
                                                 BorderWeightTransform(), 1, None, None)
        n_blobs, radius = (40, (12.0, 24.0)) if len(shape) == 2 else (27, (8.0, 14.0))
        times = {"plain": [], "weighted": []}
        for seed in range(3):
            image, label, _ = touching_blobs_case(shape, n_blobs, radius, seed=seed)
            for draw in range(repeats + 1):
                for name, pipeline in (("plain", plain), ("weighted", weighted)):
                    _seeded(1000 * seed + draw)
                    sample = {"image": torch.from_numpy(image)[None], "segmentation": torch.from_numpy(
                        label.astype(np.int16))[None]}
                    elapsed = timed(lambda: pipeline(**sample))
                    if draw:
                        times[name].append(elapsed)
        da, with_map = statistics.mean(times["plain"]), statistics.mean(times["weighted"])
        rows.append(["x".join(map(str, shape)), len(times["plain"]), _ms(da), _ms(with_map), _ms(with_map - da),
                     f"{with_map / da:.2f}"])
    table("2. Per-sample CPU time: nnU-Net default training transforms (DA) vs DA + BorderWeightTransform",
          ["patch", "samples", "DA ms", "DA+map ms", "added ms", "(DA+map)/DA"], rows,
          ["same random draws for both pipelines; touching-blob label patches; means over samples"])


def bench_separation(epochs: int, iterations: int) -> None:
    """Short CPU training of nnUNetTrainer_short vs nnUNetTrainerBorderWeight_short on touching blobs."""
    import shutil
    import tempfile
    from pathlib import Path

    import SimpleITK as sitk

    from nnunet_ext.cli.nnunet_commands import run_command

    from nnunet_ext.testing.synthetic import separated_touching_pairs, write_touching_blobs_dataset

    work = Path(tempfile.mkdtemp(prefix="nnunet_ext_border_"))
    env = {**os.environ, "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "pre"),
           "nnUNet_results": str(work / "res"), "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1",
           "nnUNet_compile": "f", "NNUNET_EXT_EPOCHS": str(epochs), "NNUNET_EXT_ITERATIONS": str(iterations),
           "NNUNET_EXT_VAL_ITERATIONS": "2"}
    def call(*command: str) -> None:
        run_command(command, env)

    try:
        raw = Path(write_touching_blobs_dataset(987, dim=2, n_train=16, n_test=6, shape=(96, 96), seed=0,
                                                raw_root=str(work / "raw")))
        call("nnUNetv2_plan_and_preprocess", "-d", "987", "-c", "2d", "-np", "1", "-npfp", "1")
        rows = []
        for trainer in ("nnUNetTrainer_short", "nnUNetTrainerBorderWeight_short"):
            start = time.perf_counter()
            call("nnUNetv2_train", "987", "2d", "0", "-tr", trainer, "-device", "cpu")
            train_s = time.perf_counter() - start
            out = work / f"pred_{trainer}"
            call("nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", "987", "-c", "2d", "-tr",
                 trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1")
            touching = separated = 0
            dices = []
            for case in sorted((raw / "instancesTs").glob("*.nii.gz")):
                instances = np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(case))))
                prediction = np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(out / case.name))))
                t, s_ = separated_touching_pairs(prediction, instances)
                touching, separated = touching + t, separated + s_
                p, r = prediction > 0, instances > 0
                dices.append(2 * (p & r).sum() / max(p.sum() + r.sum(), 1))
            rows.append([trainer, f"{train_s:.0f}", touching, separated, f"{separated / max(touching, 1):.3f}",
                         f"{np.mean(dices):.4f}"])
        table(f"3. Touching blobs (2D 96², 16 training / 6 held-out cases), {epochs} epochs x {iterations} "
              "iterations on the CPU, fold 0", ["trainer", "train s", "touching pairs", "separated",
                                                 "fraction separated", "Dice"], rows,
              ["separated: both blobs predicted and no predicted component touches both (8-connectivity)"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nnunet-ext benchmark border_weight",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per map, median taken (default 3, "
                                                                  "--quick 1)")
    parser.add_argument("--quick", action="store_true", help="1 repeat and no 64-object case (about 20 s)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run ({', '.join(SECTIONS)})")
    parser.add_argument("--epochs", type=int, default=8, help="separation: training epochs (default 8)")
    parser.add_argument("--iterations", type=int, default=20, help="separation: iterations per epoch (default 20)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="absolute error bound of the fast path (default 1e-3, the function's default)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if not args.tolerance > 0:
        parser.error("--tolerance must be > 0")
    args.objects = [5, 27] if args.quick else [5, 27, 64]
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str]) -> int:
    """Run the benchmark; prints the table. Returns 0 (1 if a fast map exceeded the error bound)."""
    args = _parse(argv)
    total = time.perf_counter()
    with threadpool_limits(limits=1):
        _print_header(args)
        ok = bench(args.objects, args.repeats, args.tolerance) if "map" in args.only else True
        if "overhead" in args.only:
            bench_overhead(args.repeats)
        if "separation" in args.only:
            bench_separation(args.epochs, args.iterations)
    print(f"\ntotal benchmark time {time.perf_counter() - total:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    import sys
    raise SystemExit(main(sys.argv[1:]))
