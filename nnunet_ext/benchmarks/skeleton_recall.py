"""Skeleton Recall benchmark: ``nnunet-ext benchmark skeleton_recall [--repeats N] [--quick] [--only ...]``.

Three sections, all in one run, every figure a ratio against a baseline measured in the same run on the same
inputs, CPU, single-threaded (``torch.set_num_threads(1)`` and threadpoolctl limits of 1):

1. ``tube``: :func:`~nnunet_ext.core.skeleton.tubed_skeleton` (fast) vs
   :func:`~nnunet_ext.core.skeleton.tubed_skeleton_reference` (the straightforward implementation) and vs
   ``tubed_skeleton`` with ``NNUNET_EXT_THINNING=skimage`` (the fallback), per sample, on the same patches:
   connected 3D 128³ vessel trees (1 and 3 classes; the target, fast/ref <= 0.25, bar 0.5, is printed next to
   the ratio), sparse 3D 128³ patches of ~35 separate pieces, 2D 512² cracks (thin branching trees), and
   :func:`~nnunet_ext.testing.synthetic.tubular_case` patches (2D 512² and 3D 128³, plus a denser 3D style).
   Every output is checked to be identical to the reference. Then (1b) the first-use cost of the thinning
   tables in fresh interpreters with ``NNUNET_EXT_CACHE_DIR`` pointing at an empty temporary folder: building
   them, then loading them from that cache; with the import time and the memory the tables add.
2. ``transforms``: per-sample time of nnU-Net's default training pipeline
   (``nnUNetTrainer.get_training_transforms``, nnU-Net's default rotation for the dimension, all mirror axes,
   three deep-supervision scales, no dummy 2D; the patch given to the pipeline is the final patch size) vs the
   same pipeline with :class:`~nnunet_ext.transforms.SkeletonTubeTransform` inserted
   (``nnUNetTrainerSkelRecall.get_training_transforms``) and vs the transform alone. Both pipelines get the
   same random draws (RNGs seeded identically per sample) and share GaussianBlur's FFT-benchmark cache.
   On the connected 3D trees and the 2D cracks of section 1.
3. ``train``: nnUNetTrainerSkelRecall vs nnUNetTrainer on a tiny synthetic dataset planned and preprocessed
   by nnU-Net in a temporary folder (2D 128² cases -> ``2d``, 3D 48³ cases -> ``3d_fullres``): (a) time of
   ``next(train_gen)`` (single-threaded data loader, one batch) and (b) ``train_step`` on a fixed batch.

Timing: each measurement is the median over ``--repeats`` calls (after warm-up; in section 1 the fast, reference
and fallback calls interleaved); per-case figures are means of per-sample medians. Defaults (``--repeats 5``:
8 patches per main tube case, 2-4 per other case, 6 patches x 3 draws for the transforms, 5 batches / 5 train
steps) take about 4.5 minutes of CPU on a 2-core CPU (7 minutes wall on a busy one; 1.5-2 minutes of it
nnU-Net's planning and preprocessing); ``--quick`` (repeats 3, fewer patches and draws) about half.
``--only tube,transforms,train`` runs a subset (``--only tube --quick``: under a minute).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage
from threadpoolctl import threadpool_limits

from nnunet_ext.benchmarks._measure import environment, scratch_nnunet_folders, timed
from nnunet_ext.benchmarks._report import (milliseconds, native_thread_pools, print_header, table, versions)
from nnunet_ext.cli.nnunet_commands import run_command

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
    return milliseconds(seconds, 1)


def _print_header(args: argparse.Namespace) -> None:
    print_header("skeleton_recall", versions("torch", "numpy", "scikit-image", "nnunetv2", "batchgeneratorsv2",
                                             "connected-components-3d"),
                 [f"threads: torch intra-op {torch.get_num_threads()}, native pools (threadpoolctl) "
                  f"{native_thread_pools()}",
                  f"repeats {args.repeats} (median), quick={args.quick}, sections: {', '.join(args.only)}",
                  f"thinning: {_thinning_line()}"])


def _thinning_line() -> str:
    from nnunet_ext.core import thinning

    backend = os.environ.get(thinning.BACKEND_ENV) or "fast"
    where = thinning.table_cache_path()
    return (f"${thinning.BACKEND_ENV}={backend!r}; table cache {where} "
            f"({'present' if where.exists() else 'absent: the first fast call builds it'})")


# ------------------------------------------------------------------------------------------------ 1. tube time

#: The issue's target for tubed_skeleton / tubed_skeleton_reference on connected 3D trees, and the bar.
TARGET_RATIO, BAR_RATIO = 0.25, 0.5


@dataclass
class TubeCase:
    """Patches of one benchmark case (label maps without channel axis, plus images for the pipelines)."""
    name: str
    shape: tuple[int, ...]
    labels: list[np.ndarray]
    images: list[np.ndarray]
    target: bool = False          # the row the target applies to (connected 3D trees)
    in_transforms: bool = False   # also timed against nnU-Net's training transforms (section 2)


def _walk(start: np.ndarray, size: np.ndarray, rng: np.random.Generator, turn: float, max_steps: int) -> np.ndarray:
    """(N, ndim) centre points of a smooth unit-step random walk from ``start`` until it leaves the patch
    (or after ``max_steps`` points); the direction turns by N(0, turn) per axis and step."""
    noise = rng.normal(scale=turn, size=(max_steps, len(size)))
    direction = rng.normal(size=len(size))
    units = np.empty_like(noise)
    for i in range(max_steps):                      # sequential: each step renormalises the last direction
        direction = direction / np.sqrt(direction @ direction)
        units[i] = direction
        direction = direction + noise[i]
    positions = start + np.concatenate([np.zeros((1, len(size))), np.cumsum(units[:-1], axis=0)])
    outside = np.flatnonzero(np.any((positions < 0) | (positions > size - 1), axis=1))
    return positions[:outside[0]] if len(outside) else positions


def _ball_offsets(radius: float, ndim: int) -> np.ndarray:
    """(M, ndim) integer offsets with Euclidean norm <= radius."""
    r = int(np.floor(radius))
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * ndim, indexing="ij"), -1).reshape(-1, ndim)
    return grid[(grid ** 2).sum(1) <= radius ** 2]


def branching_structure(shape: tuple[int, ...], rng: np.random.Generator, n_branches: int,
                        radius: tuple[float, float], turn: float = 0.2, connected: bool = True,
                        max_length: int | None = None, n_classes: int = 1) -> np.ndarray:
    """uint8 label map of ``shape`` (2D or 3D): ``n_branches`` smooth random walks, each the union of balls of
    its own radius (drawn from ``radius``) around its rounded centre points, branch k carrying class
    1 + k % n_classes (later branches drawn over earlier ones).

    connected: each branch after the first starts on a point of an earlier one (one 26/8-connected tree whose
    branches run until they leave the patch: vessel trees in 3D, cracks in 2D); else every branch starts at a
    random point and stops after ``max_length`` steps (sparse separate pieces).
    """
    size = np.array(shape, dtype=float)
    label = np.zeros(shape, np.uint8)
    paths: list[np.ndarray] = []
    for k in range(n_branches):
        if connected and paths:
            earlier = paths[rng.integers(len(paths))]
            start = earlier[rng.integers(len(earlier))]
        else:
            start = size * (rng.uniform(0.3, 0.7, len(shape)) if connected else rng.uniform(0.05, 0.95, len(shape)))
        points = _walk(start, size, rng, turn, max_length or int(1.5 * size.max()))
        paths.append(points)
        centres = np.unique(np.clip(np.round(points).astype(int), 0, np.array(shape) - 1), axis=0)
        voxels = (centres[:, None, :] + _ball_offsets(rng.uniform(*radius), len(shape))[None]).reshape(-1, len(shape))
        voxels = voxels[np.all((voxels >= 0) & (voxels < np.array(shape)), axis=1)]
        label[tuple(voxels.T)] = 1 + k % n_classes
    return label


def _image_for(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A float32 image for a label map: bright structures on a smooth background with noise."""
    background = ndimage.gaussian_filter(rng.normal(size=label.shape), sigma=max(label.shape) / 16) * 3
    image = 0.2 + 0.6 * (label > 0) + 0.1 * background + rng.normal(scale=0.12, size=label.shape)
    return ndimage.gaussian_filter(image, 0.6).astype(np.float32)


def _make_cases(quick: bool) -> list[TubeCase]:
    from nnunet_ext.testing.synthetic import TubeStyle, tubular_case

    n_main, n_multi, n_dense = (3, 1, 1) if quick else (8, 4, 2)
    cube, square = (128, 128, 128), (512, 512)
    structures = [  # name, shape, patches, generator keyword arguments, target, in_transforms
        ("3D 128³ connected tree, 1 class", cube, n_main, dict(n_branches=12, radius=(1.0, 3.0)), True, True),
        ("3D 128³ connected tree, 3 classes", cube, n_multi,
         dict(n_branches=12, radius=(1.0, 3.0), n_classes=3), True, False),
        ("3D 128³ sparse, ~35 separate pieces", cube, n_multi,
         dict(n_branches=40, radius=(1.0, 2.5), connected=False, max_length=25, n_classes=3), False, False),
        ("2D 512² cracks (thin branching), 1 class", square, n_main,
         dict(n_branches=10, radius=(0.5, 1.8), turn=0.3), False, True),
    ]
    cases = []
    for name, shape, n, kwargs, target, in_transforms in structures:
        labels = [branching_structure(shape, np.random.default_rng(2000 + s), **kwargs) for s in range(n)]
        images = [_image_for(label, np.random.default_rng(3000 + s)) for s, label in enumerate(labels)]
        cases.append(TubeCase(name, shape, labels, images, target, in_transforms))
    dense = TubeStyle(n_tubes=12, radius=(2.0, 4.0))
    tubes = [("3D 128³ tubular_case, 1 class", cube, 1, n_multi, TubeStyle()),
             ("3D 128³ tubular_case dense (12 tubes, r 2-4)", cube, 1, n_dense, dense),
             ("2D 512² tubular_case, 1 class", square, 1, n_multi, TubeStyle()),
             ("2D 512² tubular_case, 3 classes", square, 3, n_multi, TubeStyle())]
    for name, shape, n_classes, n, style in tubes:
        pairs = [tubular_case(shape, n_classes, seed=1000 + s, style=style) for s in range(n)]
        cases.append(TubeCase(name, shape, [p[1] for p in pairs], [p[0] for p in pairs]))
    return cases


def _with_backend(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    """fn run with ``$NNUNET_EXT_THINNING`` set to ``backend`` (restored afterwards)."""
    from nnunet_ext.core.thinning import BACKEND_ENV

    def call() -> object:
        with environment({BACKEND_ENV: backend}):
            return fn()
    return call


def _medians(fns: list[Callable[[], object]], repeats: int, warmup: int = 1) -> list[float]:
    """Median seconds of ``repeats`` calls of each fn, interleaved (a, b, c, a, b, c, ...) after warm-up."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t.append(timed(fn))
    return [statistics.median(t) for t in times]


def _verdict(ratio: float) -> str:
    if ratio <= TARGET_RATIO:
        return "met"
    return "bar met, target missed" if ratio <= BAR_RATIO else "MISSED"


def bench_tube(cases: list[TubeCase], repeats: int) -> bool:
    """Section 1. Returns whether every fast tube (and every fallback tube) equals the reference."""
    from nnunet_ext.core.skeleton import tubed_skeleton, tubed_skeleton_reference

    rows, all_identical, target_ratios = [], True, []
    for case in cases:
        fast_t, ref_t, fall_t, per_patch, identical, components = [], [], [], [], True, []
        connectivity = np.ones((3,) * len(case.shape))
        for label in case.labels:
            seg = label.astype(np.int16)
            reference = tubed_skeleton_reference(seg)
            fast = partial(tubed_skeleton, seg)
            fallback = _with_backend("skimage", fast)
            identical &= bool(np.array_equal(fast(), reference))
            identical &= bool(np.array_equal(fallback(), reference))
            components.append(ndimage.label(seg > 0, structure=connectivity)[1])
            t_fast, t_ref, t_fall = _medians([fast, partial(tubed_skeleton_reference, seg), fallback], repeats)
            fast_t.append(t_fast)
            ref_t.append(t_ref)
            fall_t.append(t_fall)
            per_patch.append(t_fast / t_ref)
        fg = 100 * float(np.mean([(lab > 0).mean() for lab in case.labels]))
        ratio = float(np.mean(fast_t) / np.mean(ref_t))
        if case.target:
            target_ratios.append((case.name, ratio))
        all_identical &= identical
        rows.append([case.name, len(case.labels), f"{fg:.2f}", f"{np.mean(components):.0f}", _ms(np.mean(ref_t)),
                     _ms(np.mean(fast_t)), f"{ratio:.3f}", f"{min(per_patch):.2f}-{max(per_patch):.2f}",
                     f"{np.mean(fall_t) / np.mean(ref_t):.3f}",
                     f"<= {TARGET_RATIO} (bar {BAR_RATIO}): {_verdict(ratio)}" if case.target else "-",
                     "yes" if identical else "NO"])
        if not identical:
            print(f"WARNING: tubed_skeleton differs from tubed_skeleton_reference on {case.name}")
    table("1. Tube time per sample: tubed_skeleton (fast) vs tubed_skeleton_reference (ref), same patches",
          ["case", "patches", "fg %", "comps", "ref ms", "fast ms", "fast/ref", "per-patch range",
           "skimage-fallback/ref", "target fast/ref", "identical"], rows,
          ["ms = mean over patches of the per-patch median; fast/ref = ratio of those means; comps = mean number "
           "of 26-/8-connected foreground components;",
           "skimage-fallback = tubed_skeleton with NNUNET_EXT_THINNING=skimage (per-component scikit-image "
           "thinning); identical = fast and fallback both equal ref on every patch (bit for bit).",
           "Fast path: table-driven Lee thinning for 3D masks >= "
           f"{_fast_threshold()} voxels; 2D: scikit-image's Zhang thinning per component, dilation as a scatter."])
    for name, ratio in target_ratios:
        print(f"  target on {name}: fast/ref {ratio:.3f}, target <= {TARGET_RATIO}x, bar {BAR_RATIO}x: "
              f"{_verdict(ratio)}")
    return all_identical


def _fast_threshold() -> int:
    from nnunet_ext.core.thinning import SKIMAGE_BELOW_VOXELS
    return SKIMAGE_BELOW_VOXELS


# Run in fresh interpreters by bench_first_use: prints one "RESULT {json}" line.
_FIRST_USE_CODE = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np
import cc3d, scipy.ndimage, skimage.morphology  # what nnunet_ext.core.skeleton imports anyway
dependencies_s = time.perf_counter() - start

def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0

start = time.perf_counter()
from nnunet_ext.core import thinning
import_s = time.perf_counter() - start
anon, file_ = status_kib("RssAnon"), status_kib("RssFile")
start = time.perf_counter()
tables = thinning.thinning_tables()
tables_s = time.perf_counter() - start
anon, file_ = status_kib("RssAnon") - anon, status_kib("RssFile") - file_
from nnunet_ext.core.skeleton import tubed_skeleton
seg = np.load(sys.argv[1])
start = time.perf_counter()
tubed_skeleton(seg)
second = time.perf_counter()
tubed_skeleton(seg)
end = time.perf_counter()
print("RESULT " + json.dumps({"dependencies_s": dependencies_s, "import_s": import_s, "tables_s": tables_s,
                              "anon_mib": anon / 1024, "file_mib": file_ / 1024,
                              "first_call_s": second - start, "second_call_s": end - second,
                              "fast": tables is not None, "bytecode": not sys.dont_write_bytecode,
                              "table_bytes": int(tables.nbytes) if tables is not None else 0,
                              "file_bytes": thinning.table_cache_path().stat().st_size
                              if thinning.table_cache_path().exists() else 0}))
"""


def _first_use_run(cache_dir: Path, pycache: Path, patch: Path) -> dict:
    from nnunet_ext.core.thinning import BACKEND_ENV, CACHE_DIR_ENV

    env = {**os.environ, CACHE_DIR_ENV: str(cache_dir), "PYTHONPYCACHEPREFIX": str(pycache),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)   # as installed: bytecode cached (first run writes it)
    env.pop(BACKEND_ENV, None)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _FIRST_USE_CODE, str(patch)], env=env, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - start
    for text_line in reversed(done.stdout.splitlines()):
        if text_line.startswith("RESULT "):
            return {**json.loads(text_line[len("RESULT "):]), "wall_s": wall}
    raise RuntimeError(f"first-use worker failed with exit code {done.returncode}:\n{done.stderr[-3000:]}")


def bench_first_use(case: TubeCase, root: Path) -> None:
    """Section 1b: cost of the thinning tables in fresh interpreters, with an empty and a filled cache folder."""
    folder = Path(tempfile.mkdtemp(prefix="tables_", dir=root))
    patch = folder / "patch.npy"
    np.save(patch, case.labels[0].astype(np.int16))
    runs = [("empty cache folder (tables built, saved)", _first_use_run(folder / "cache", folder / "pyc", patch)),
            ("cache filled (tables loaded, memory-mapped)", _first_use_run(folder / "cache", folder / "pyc", patch))]
    rows = [[name, _ms(r["import_s"]), _ms(r["tables_s"]), f"{r['anon_mib']:.1f}", f"{r['file_mib']:.1f}",
             _ms(r["first_call_s"]), _ms(r["second_call_s"]), f"{r['wall_s']:.2f}"] for name, r in runs]
    size = runs[0][1]["file_bytes"] / 2 ** 20
    table(f"1b. First use of the thinning tables (fresh python, NNUNET_EXT_CACHE_DIR = a new temporary folder; "
          f"tubed_skeleton on one '{case.name}' patch)",
          ["run", "import thinning ms", "get tables ms", "RssAnon +MiB", "RssFile +MiB", "1st tube ms",
           "2nd tube ms", "process s"], rows,
          [f"tables: 2 x 2^26 bits = {runs[1][1]['table_bytes'] / 2 ** 20:.0f} MiB (cache file {size:.1f} MiB); "
           "loaded from the cache they are a read-only memory map (RssFile: page cache shared by every process "
           "of the machine, e.g. all data-loader workers), built ones live in private memory until saved;",
           "import thinning = importing nnunet_ext.core.thinning after numpy, scipy.ndimage, skimage.morphology "
           "and cc3d (which the tube code imports anyway; no new dependency); the first run compiles bytecode into "
           "a temporary PYTHONPYCACHEPREFIX, the second reads it;",
           "get tables = thinning_tables(); 1st tube = the first tubed_skeleton call of the process (includes "
           "scratch allocation and lazy imports), 2nd tube = the next one; process s = the whole interpreter run.",
           "The cache folder defaults to ~/.cache/nnunet_ext ($XDG_CACHE_HOME/nnunet_ext); "
           "NNUNET_EXT_CACHE_DIR overrides it."])


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


def _training_pipeline(trainer_class: type, args: tuple):
    """``trainer_class``'s training transforms for these arguments. nnU-Net calls get_training_transforms on
    the trainer (a static method in nnUNetTrainer, an instance method in the extra-target mixins); building
    the pipeline reads no trainer state, so an instance made without ``__init__`` (no plans) serves."""
    return trainer_class.__new__(trainer_class).get_training_transforms(*args)


def bench_transforms(cases: list[TubeCase], repeats: int, n_patches: int, n_draws: int) -> None:
    """Section 2: nnU-Net's training pipeline vs the same + SkeletonTubeTransform vs the transform alone."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.trainers import nnUNetTrainerSkelRecall
    from nnunet_ext.transforms import SkeletonTubeTransform

    rows = []
    for case in (c for c in cases if c.in_transforms):
        args = _pipeline_args(case.shape)
        base = _training_pipeline(nnUNetTrainer, args)
        ours = _training_pipeline(nnUNetTrainerSkelRecall, args)
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
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    total = time.perf_counter()
    status = 0
    try:
        with scratch_nnunet_folders(subfolders=True, nnUNet_compile="f", nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1") \
                as root, threadpool_limits(limits=1):
            _print_header(args)
            cases = []
            if {"tube", "transforms"} & set(args.only):
                start = time.perf_counter()
                cases = _make_cases(args.quick)
                print(f"(generated {sum(len(c.labels) for c in cases)} patches (branching_structure, tubular_case) "
                      f"in {time.perf_counter() - start:.0f} s)")
            if "tube" in args.only:
                status = 0 if bench_tube(cases, args.repeats) else 1
                bench_first_use(next(c for c in cases if c.target), root)
            if "transforms" in args.only:
                n_patches, n_draws = (3, 2) if args.quick else (6, 3)
                bench_transforms(cases, args.repeats, n_patches, n_draws)
            if "train" in args.only:
                bench_train(root, args.repeats)
    finally:
        torch.set_num_threads(saved_threads)
    print(f"\ntotal benchmark time {time.perf_counter() - total:.0f} s")
    return status
