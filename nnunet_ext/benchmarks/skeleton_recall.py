"""Skeleton Recall benchmark: ``nnunet-ext benchmark skeleton_recall [--repeats N] [--quick] [--only ...]``.

Three sections, all in one run, every figure a ratio against a baseline measured in the same run on the same
inputs, CPU, single-threaded (``torch.set_num_threads(1)`` and threadpoolctl limits of 1):

1. ``tube``: :func:`~nnunet_ext.core.skeleton.tubed_skeleton` vs :func:`~nnunet_ext.core.skeleton.tubed_skeleton_reference`
   per sample on patches from :func:`~nnunet_ext.testing.synthetic.tubular_case` (2D 512², 3D 128³, one class and
   three classes, plus a denser 3D style); outputs are checked to be identical. Target: fast/ref <= 0.25 in 3D.
2. ``transforms``: per-sample time of nnU-Net's default training pipeline
   (``nnUNetTrainer.get_training_transforms``, nnU-Net's default rotation for the dimension, all mirror axes,
   three deep-supervision scales, no dummy 2D; the patch given to the pipeline is the final patch size) vs the
   same pipeline with :class:`~nnunet_ext.transforms.SkeletonTubeTransform` inserted
   (``nnUNetTrainerSkelRecall.get_training_transforms``) and vs the transform alone. Both pipelines get the
   same random draws (RNGs seeded identically per sample) and share GaussianBlur's FFT-benchmark cache.
3. ``train``: nnUNetTrainerSkelRecall vs nnUNetTrainer on a tiny synthetic dataset planned and preprocessed
   by nnU-Net in a temporary folder (2D 128² cases -> ``2d``, 3D 48³ cases -> ``3d_fullres``): (a) time of
   ``next(train_gen)`` (single-threaded data loader, one batch) and (b) ``train_step`` on a fixed batch.

Timing: each measurement is the median over ``--repeats`` calls (after warm-up); per-case figures are means
of per-sample medians. Defaults (``--repeats 5``: 8 patches per tube case, 6 patches x 3 draws for the
transforms, 5 batches / 5 train steps) take about 3.5 minutes on a 2-core CPU (45 s of it nnU-Net's planning
and preprocessing); ``--quick`` (repeats 3, fewer patches and draws) about 2.5 minutes.
``--only tube,transforms,train`` runs a subset.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from nnunet_ext.benchmarks._measure import timed
from nnunet_ext.cli.nnunet_commands import run_command
from nnunet_ext.benchmarks._report import native_thread_pools, package_version, print_header, table

SECTIONS = ("tube", "transforms", "train")


# ----------------------------------------------------------------------------------------------------- helpers

def _seed_all(seed: int) -> None:
    """Seed the global RNGs that nnU-Net's loaders and batchgeneratorsv2's transforms draw from."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)



def _median_pair(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int,
                 warmup: int = 1) -> tuple[float, float]:
    """Medians (seconds) of ``repeats`` calls of fn_a and fn_b, interleaved (a, b, a, b, ...) after warm-up."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(timed(fn_a))
        times_b.append(timed(fn_b))
    return statistics.median(times_a), statistics.median(times_b)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _print_header(args: argparse.Namespace) -> None:
    pools = native_thread_pools()
    print_header("skeleton_recall",
                 f"torch {torch.__version__}, numpy {np.__version__}, scikit-image {package_version('scikit-image')}, "
                 f"nnunetv2 {package_version('nnunetv2')}, batchgeneratorsv2 {package_version('batchgeneratorsv2')}, "
                 f"cc3d {package_version('connected-components-3d')}",
                 [f"threads: torch intra-op {torch.get_num_threads()}, native pools (threadpoolctl) {pools}",
                  f"repeats {args.repeats} (median), quick={args.quick}, sections: {', '.join(args.only)}"])


# ------------------------------------------------------------------------------------------------ 1. tube time

@dataclass
class TubeCase:
    """Patches of one benchmark case (label maps without channel axis, plus images for the pipelines)."""
    name: str
    shape: tuple[int, ...]
    labels: list[np.ndarray]
    images: list[np.ndarray]


def _make_cases(quick: bool) -> list[TubeCase]:
    from nnunet_ext.testing.synthetic import TubeStyle, tubular_case

    n_main, n_multi, n_dense = (4, 2, 1) if quick else (8, 4, 2)
    dense = TubeStyle(n_tubes=12, radius=(2.0, 4.0))
    specs = [("2D 512², 1 class", (512, 512), 1, n_main, TubeStyle()),
             ("2D 512², 3 classes", (512, 512), 3, n_multi, TubeStyle()),
             ("3D 128³, 1 class", (128, 128, 128), 1, n_main, TubeStyle()),
             ("3D 128³, 3 classes", (128, 128, 128), 3, n_multi, TubeStyle()),
             ("3D 128³, dense (12 tubes, r 2-4)", (128, 128, 128), 1, n_dense, dense)]
    cases = []
    for name, shape, n_classes, n, style in specs:
        pairs = [tubular_case(shape, n_classes, seed=1000 + s, style=style) for s in range(n)]
        cases.append(TubeCase(name, shape, [p[1] for p in pairs], [p[0] for p in pairs]))
    return cases


def bench_tube(cases: list[TubeCase], repeats: int) -> bool:
    """Section 1. Returns whether every fast tube equals the reference."""
    from nnunet_ext.core.skeleton import tubed_skeleton, tubed_skeleton_reference

    rows, all_identical = [], True
    for case in cases:
        fast_t, ref_t, per_patch, identical = [], [], [], True
        for label in case.labels:
            seg = label.astype(np.int16)
            identical &= bool(np.array_equal(tubed_skeleton(seg), tubed_skeleton_reference(seg)))
            t_fast, t_ref = _median_pair(lambda: tubed_skeleton(seg), lambda: tubed_skeleton_reference(seg), repeats)
            fast_t.append(t_fast)
            ref_t.append(t_ref)
            per_patch.append(t_fast / t_ref)
        fg = 100 * float(np.mean([(lab > 0).mean() for lab in case.labels]))
        ratio = float(np.mean(fast_t) / np.mean(ref_t))
        all_identical &= identical
        rows.append([case.name, len(case.labels), f"{fg:.2f}", _ms(np.mean(ref_t)), _ms(np.mean(fast_t)),
                     f"{ratio:.3f}", f"{min(per_patch):.2f}-{max(per_patch):.2f}", "yes" if identical else "NO"])
        if not identical:
            print(f"WARNING: tubed_skeleton differs from tubed_skeleton_reference on {case.name}")
    table("1. Tube time per sample: tubed_skeleton (fast) vs tubed_skeleton_reference (ref)",
           ["case", "patches", "fg %", "ref ms", "fast ms", "fast/ref", "per-patch range", "identical"], rows,
           ["ms = mean over patches of the per-patch median; fast/ref = ratio of those means; "
            "target fast/ref <= 0.25 for 3D 128³."])
    return all_identical


# ---------------------------------------------------------------------------------------- 2. transforms time

def _blur_transforms(pipeline) -> list:
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform

    found = []
    for step in pipeline.transforms:
        inner = getattr(step, "transform", step)
        if isinstance(inner, GaussianBlurTransform):
            found.append(inner)
    return found


def _pipeline_args(shape: tuple[int, ...]) -> tuple:
    nd = len(shape)
    rotation = (-math.pi, math.pi) if nd == 2 else (-math.pi / 6, math.pi / 6)  # nnU-Net's defaults
    ds_scales = [[1.0] * nd, [0.5] * nd, [0.25] * nd]
    return shape, rotation, ds_scales, tuple(range(nd)), False


def bench_transforms(cases: list[TubeCase], repeats: int, n_patches: int, n_draws: int) -> None:
    """Section 2: nnU-Net's training pipeline vs the same + SkeletonTubeTransform vs the transform alone."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.trainers import nnUNetTrainerSkelRecall
    from nnunet_ext.transforms import SkeletonTubeTransform

    rows = []
    for case in (c for c in cases if c.name.endswith("1 class")):
        args = _pipeline_args(case.shape)
        base = nnUNetTrainer.get_training_transforms(*args)
        ours = nnUNetTrainerSkelRecall.get_training_transforms(*args)
        tube = SkeletonTubeTransform()
        base_blur, ours_blur = _blur_transforms(base), _blur_transforms(ours)
        for b, o in zip(base_blur, ours_blur):  # one FFT-vs-conv benchmark cache for both pipelines
            o.benchmark_use_fft = b.benchmark_use_fft

        def sample(image: np.ndarray, label: np.ndarray) -> dict:
            return {"image": torch.from_numpy(image)[None].clone(),
                    "segmentation": torch.from_numpy(label.astype(np.int16))[None].clone()}

        def run(pipeline, image: np.ndarray, label: np.ndarray, seed: int) -> float:
            data = sample(image, label)
            _seed_all(seed)
            start = time.perf_counter()
            pipeline(**data)
            return time.perf_counter() - start

        # warm-up: fills GaussianBlur's FFT benchmark cache and torch's kernels for every shape used
        for w in range(12):
            run(base, case.images[0], case.labels[0], 10_000 + w)
            run(ours, case.images[0], case.labels[0], 10_000 + w)

        t_base, t_ours, t_tube = [], [], []
        for p in range(min(n_patches, len(case.labels))):
            image, label = case.images[p], case.labels[p]
            for d in range(n_draws):
                seed = 100 * p + d
                tb, to, tt = [], [], []
                for _ in range(repeats):
                    tb.append(run(base, image, label, seed))
                    to.append(run(ours, image, label, seed))
                    tt.append(run(tube, image, label, seed))
                t_base.append(statistics.median(tb))
                t_ours.append(statistics.median(to))
                t_tube.append(statistics.median(tt))
        mb, mo, mt = np.mean(t_base), np.mean(t_ours), np.mean(t_tube)
        rows.append([case.name.split(",")[0], len(t_base), _ms(mb), _ms(np.median(t_base)), _ms(mt), _ms(mo),
                     _ms(mo - mb), f"{mt / mb:.2f}", f"{mo / mb:.2f}"])
    table("2. Per-sample CPU time: nnU-Net default training transforms (DA) vs SkeletonTubeTransform",
           ["patch", "samples", "DA mean ms", "DA median ms", "tube alone ms", "DA+tube ms", "added ms",
            "tube/DA", "(DA+tube)/DA"], rows,
           ["samples = patches x random draws, each the median of the repeats; DA = "
            "nnUNetTrainer.get_training_transforms, DA+tube = nnUNetTrainerSkelRecall.get_training_transforms "
            "(same draws);",
            "tube alone = SkeletonTubeTransform on the un-augmented patch; ratios use the means (throughput). "
            "DA is cheap when no rotation/scaling is drawn (crop only), expensive otherwise."])


# ------------------------------------------------------------------------------------------ 3. training step

@dataclass
class _Dataset:
    dataset_id: int
    dim: int
    configuration: str


_DATASETS = (_Dataset(981, 2, "2d"), _Dataset(982, 3, "3d_fullres"))


def _prepare_datasets(root: Path) -> None:
    from nnunet_ext.testing.synthetic import write_tubular_dataset

    for ds in _DATASETS:
        write_tubular_dataset(ds.dataset_id, dim=ds.dim, n_train=10, n_test=0, seed=ds.dataset_id,
                              raw_root=str(root / "raw"))
    # one call for both datasets (each call pays interpreter start-up and worker spawns); -npfp 1 because the
    # default spawns 8 fingerprint workers, which costs ~30 s on 2 cores; nnUNet_n_proc_DA=0 breaks planning
    env = {**os.environ, "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1", "OMP_NUM_THREADS": "1"}
    run_command(["nnUNetv2_plan_and_preprocess", "-d", *[str(ds.dataset_id) for ds in _DATASETS],
                 "-c", *sorted({ds.configuration for ds in _DATASETS}), "-np", "1", "-npfp", "1"], env)


def _build_trainer(cls: type, folder: Path, configuration: str):
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net's run_training adds this key; the trainer pops it
    dataset_json = json.loads((folder / "dataset.json").read_text())
    _seed_all(0)  # identical initial weights for both trainers
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = cls(plans, configuration, 0, dataset_json, device=torch.device("cpu"))
        trainer.initialize()
        train_gen, _ = trainer.get_dataloaders()
    return trainer, train_gen


def _loss_call(trainer, batch: dict) -> Callable[[], None]:
    """fn() running the trainer's loss forward+backward on a fixed (detached) network output."""
    with torch.no_grad():
        output = trainer.network(batch["data"])
    output = [o.detach().requires_grad_() for o in output] if isinstance(output, (list, tuple)) \
        else output.detach().requires_grad_()

    def call() -> None:
        trainer.loss(output, batch["target"]).backward()
    return call


def bench_train(root: Path, repeats: int) -> None:
    """Section 3: data loading and train_step of nnUNetTrainerSkelRecall vs nnUNetTrainer."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.trainers import nnUNetTrainerSkelRecall

    start = time.perf_counter()
    _prepare_datasets(root)
    print(f"\n(section 3: synthetic datasets planned and preprocessed in {time.perf_counter() - start:.0f} s)")
    rows = []
    for ds in _DATASETS:
        folder = next((root / "preprocessed").glob(f"Dataset{ds.dataset_id:03d}_*"))
        trainers = [_build_trainer(cls, folder, ds.configuration) for cls in (nnUNetTrainer, nnUNetTrainerSkelRecall)]
        cm = trainers[0][0].configuration_manager
        batch_size, patch = trainers[0][0].batch_size, "x".join(map(str, cm.patch_size))

        calls = [0, 0]

        def loader(which: int) -> Callable[[], dict]:
            def call() -> dict:
                calls[which] += 1
                _seed_all(calls[which])  # the loaders alternate; the k-th call of each gets the same seed
                return next(trainers[which][1])
            return call

        t_load = _median_pair(loader(0), loader(1), repeats)
        batches = []
        for _, gen in trainers:
            _seed_all(12345)
            batches.append(next(gen))
        t_step = _median_pair(lambda: trainers[0][0].train_step(batches[0]),
                              lambda: trainers[1][0].train_step(batches[1]), repeats)
        t_loss = _median_pair(_loss_call(*trainers[0][:1], batches[0]), _loss_call(*trainers[1][:1], batches[1]),
                              repeats)
        target_shapes = [tuple(t.shape) for t in batches[1]["target"]]
        rows.append([ds.configuration, f"{patch}, bs {batch_size}", _ms(t_load[0]), _ms(t_load[1]),
                     f"{t_load[1] / t_load[0]:.2f}", _ms(t_step[0]), _ms(t_step[1]), f"{t_step[1] / t_step[0]:.2f}",
                     _ms(t_loss[0]), _ms(t_loss[1]), _ms(t_load[1] - t_load[0] + t_loss[1] - t_loss[0]),
                     f"{(t_load[1] + t_step[0] + t_loss[1] - t_loss[0]) / (t_load[0] + t_step[0]):.3f}"])
        print(f"({ds.configuration}: SkelRecall targets {target_shapes})")
    table("3. Training on the CPU: nnUNetTrainerSkelRecall (SR) vs nnUNetTrainer (base), per batch",
           ["config", "patch, batch", "load base ms", "load SR ms", "load SR/base", "step base ms", "step SR ms",
            "step SR/base", "loss base ms", "loss SR ms", "added ms/iter", "iter SR/base"], rows,
           ["load = next(train_gen) with nnUNet_n_proc_DA=0 (single-threaded, includes the DA of the whole batch); "
            "step = train_step (forward, loss, backward, clip, SGD) on one fixed batch; nnUNet_compile=f;",
            "loss = the trainer's loss (all deep-supervision scales) forward+backward on a fixed network output, "
            "i.e. the step's only extra work (the step itself varies by several % between calls on this CPU);",
            "added ms/iter = (load SR - load base) + (loss SR - loss base); iter SR/base = (load SR + step base + "
            "loss SR - loss base) / (load base + step base): the per-iteration cost ratio without the step's noise.",
            "Synthetic datasets: 10 cases of 2D 128² / 3D 48³ (nnU-Net plans the patch and batch size)."])


# ------------------------------------------------------------------------------------------------------ main

def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nnunet-ext benchmark skeleton_recall",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per measurement, median taken (default 5, --quick 3)")
    parser.add_argument("--quick", action="store_true", help="fewer patches, draws and repeats (about half the time)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, from {', '.join(SECTIONS)} (default all)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str]) -> int:
    """Run the benchmark; prints the tables. Returns 0 (1 if a fast tube differed from the reference)."""
    args = _parse(argv)
    root = Path(tempfile.mkdtemp(prefix="nnunet_ext_bench_"))
    env_keys = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_compile", "nnUNet_n_proc_DA",
                "nnUNet_def_n_proc")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    os.environ.update({"nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
                       "nnUNet_results": str(root / "results"), "nnUNet_compile": "f", "nnUNet_n_proc_DA": "0",
                       "nnUNet_def_n_proc": "1"})
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    total = time.perf_counter()
    status = 0
    try:
        with threadpool_limits(limits=1):
            _print_header(args)
            cases = []
            if {"tube", "transforms"} & set(args.only):
                start = time.perf_counter()
                cases = _make_cases(args.quick)
                print(f"(generated {sum(len(c.labels) for c in cases)} patches with tubular_case in "
                      f"{time.perf_counter() - start:.0f} s)")
            if "tube" in args.only:
                status = 0 if bench_tube(cases, args.repeats) else 1
            if "transforms" in args.only:
                n_patches, n_draws = (3, 2) if args.quick else (6, 3)
                bench_transforms(cases, args.repeats, n_patches, n_draws)
            if "train" in args.only:
                bench_train(root, args.repeats)
    finally:
        torch.set_num_threads(saved_threads)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal benchmark time {time.perf_counter() - total:.0f} s")
    return status
