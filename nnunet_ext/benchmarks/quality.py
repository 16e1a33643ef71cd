"""Quality benchmark: ``nnunet-ext benchmark quality [--kind tubes|context|em|trees] [--budget cpu|gpu] ...``.

Trainers compared on data anyone can generate, through nnU-Net's own command line: for each generated dataset
(one per seed) ``nnUNetv2_plan_and_preprocess`` plans and preprocesses, ``nnUNetv2_train`` trains fold 0 of
every trainer, ``nnUNetv2_predict`` predicts the held-out cases and ``nnunet-ext evaluate`` scores them. The
kinds (:mod:`nnunet_ext.benchmarks._quality_kinds`), each with its default trainers and metrics:

- ``tubes`` (default; the Skeleton Recall paper's comparison): 2D and 3D tubes; nnUNetTrainer, SkelRecall,
  ClDice and every registered network; Dice, clDice, Betti errors.
- ``context``: a structure's class is set by a marker far away (planned at a small VRAM target, so that
  nnU-Net's patch never sees both; GLNet's planner at the same target covers the image); nnUNetTrainer vs
  nnUNetTrainerGLNet and nnUNetTrainerGLNet_bidirectional; Dice per class, class-agnostic Dice, structures classed
  right.
- ``em``: EM-like cells with faint membrane gaps; nnUNetTrainer, DAWMR, LED, DAWMR+LED; adapted Rand error and
  VI (split / merge) against the reference cells, membrane Dice.
- ``trees``: thin and thick 3D vessel trees (two classes, spacing (2, 1, 1)) on the same seeds; nnUNetTrainer,
  SkelRecall (weight 1 and 0.1), ClDice; Dice, clDice, Betti errors, component errors and where the Betti-0
  errors come from (breaks, false blobs, wrong-class pieces).

A trainer whose network has its own planner in ``_quality_setup.OWN_PLANS_ARCHITECTURES`` (GLNet) trains on that
planner's plans at the kind's VRAM target (``nnunet-ext plan --arch glnet``); the others on nnU-Net's default
plans. ``--trainers`` overrides the list. The markdown report gives mean ± std over seeds, the per-seed
difference to nnUNetTrainer, seconds per epoch and peak memory; a PNG plots the main metrics.

Budgets: ``--budget cpu`` (default; tubes: 41 minutes measured on a shared 2-core CPU, 57 core-minutes of CPU
time) uses the ``*_short`` trainers, halved network widths (every plans file used, e.g. ``nnUNetPlans_cpu`` and
``nnUNetPlans_GLNet_cpu``) and small cases (the report lists every reduction);
``--budget gpu`` runs nnU-Net's full schedule and plans on one GPU (days: 24 trainings of 1000 epochs). ``--dataset ID`` runs the comparison on
your nnU-Net raw dataset ($nnUNet_raw) instead: it is planned and trained inside ``--workdir`` (your
nnUNet_preprocessed and nnUNet_results are not touched); its imagesTs/labelsTs are the held-out cases if
present, else fold 0's validation cases; seeds are repeated trainings.

Results: ``WORKDIR/runs/<dataset>/seed_<k>/<trainer>/result.json`` per training (reused by a rerun with the
same settings), ``WORKDIR/results.json`` (``results_<kind>.json`` for the other kinds), the markdown
(``--output``, default ``WORKDIR/quality[_<kind>]_<budget>.md``) and the PNG next to it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from nnunet_ext.benchmarks import _quality_report as report
from nnunet_ext.benchmarks import _quality_runs as runs
from nnunet_ext.benchmarks._quality_kinds import KINDS, Kind
from nnunet_ext.benchmarks._quality_setup import (BUDGETS, DEFAULT_PLANS, Budget, Dataset, Schedule, for_kind, generated_datasets, own_plans_architecture,
                                                  parse_seeds, plans_identifier, reduced_plans_identifier,
                                                  resolve_trainers, trainer_class, user_datasets)
from nnunet_ext.benchmarks._report import cpu_name, package_version, print_header

BASELINE = "nnUNetTrainer"
_PRINT_LOCK = threading.Lock()


def say(message: str) -> None:
    """A progress line (thread-safe)."""
    with _PRINT_LOCK:
        print(f"[quality {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------- command line

def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-ext benchmark quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=list(KINDS), default="tubes",
                        help="generated data and its trainers and metrics: " + "; ".join(
                            f"{k.name}: {k.summary}" for k in KINDS.values()) + " (default tubes)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                        help="only these variants of the kind (" + "; ".join(
                            f"{k.name}: " + " ".join(v.key + ("" if v.default else f" ({v.label}; only when named)")
                                                     for v in k.variants)
                            for k in KINDS.values() if any(v.key for v in k.variants)) + "; default: all the others)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="cpu (default) or gpu")
    parser.add_argument("--dataset", type=int, action="append", default=None, metavar="ID",
                        help="your nnU-Net raw dataset ID (repeatable) instead of the generated ones")
    parser.add_argument("--configuration", default=None,
                        help="with --dataset: nnU-Net configuration (default 3d_fullres if planned, else 2d)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="one number N = seeds 0..N-1, several = those seeds (default 3)")
    parser.add_argument("--trainers", nargs="+", default=None,
                        help="trainer names (default: the kind's; tubes: nnUNetTrainer, SkelRecall, ClDice and every "
                             "registered network)")
    parser.add_argument("--dims", type=int, nargs="+", choices=(2, 3), default=None,
                        help="generated data: 2 3 (default: the kind's under the budget)")
    parser.add_argument("--epochs", type=_positive, default=None, help="epochs (overrides the budget)")
    parser.add_argument("--iterations", type=_positive, default=None, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=_positive, default=None, help="validation iterations per epoch")
    parser.add_argument("--size-2d", type=_positive, default=None, help="edge length of generated 2D cases")
    parser.add_argument("--size-3d", type=_positive, default=None, help="edge length of generated 3D cases")
    parser.add_argument("--shape", type=_positive, nargs="+", default=None, metavar="N",
                        help="shape of the generated cases of that many dimensions, axis 0 first (e.g. 32 64 64)")
    parser.add_argument("--n-train", type=_positive, default=None, help="generated training cases per dataset")
    parser.add_argument("--n-test", type=_positive, default=None, help="generated held-out cases per dataset")
    parser.add_argument("--gpu-memory-target", type=float, default=None, metavar="GB",
                        help="planning VRAM target of every plans file (default: the kind's; context 0.1 on the CPU "
                             "budget, else nnU-Net's 8)")
    parser.add_argument("--jobs", type=_positive, default=None, help="trainings at the same time (cpu 2, gpu 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: the budget's")
    parser.add_argument("--workdir", default="quality_benchmark", help="working folder (default quality_benchmark)")
    parser.add_argument("--output", default=None,
                        help="markdown report (default WORKDIR/quality_<budget>.md, quality_<kind>_<budget>.md for "
                             "the other kinds)")
    parser.add_argument("--plot", default=None, help="PNG plot (default: the markdown path with .png)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier results in WORKDIR first")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and check the arguments (parser.error on invalid combinations)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    kind = KINDS[args.kind]
    args.kind_spec = kind
    try:
        args.trainer_names = resolve_trainers(args.trainers or kind.trainers())
        args.seed_list = parse_seeds(args.seeds) if args.seeds is not None else None
    except ValueError as error:
        parser.error(str(error))
    if args.variants:
        unknown = [v for v in args.variants if v not in {variant.key for variant in kind.variants}]
        if unknown or not any(v.key for v in kind.variants):
            parser.error(f"--variants: kind {kind.name} has "
                         + (f"the variants {', '.join(v.key for v in kind.variants)}"
                            if any(v.key for v in kind.variants) else "no variants") + f", got {args.variants}")
    if args.dims is not None:
        bad = [d for d in args.dims if d not in kind.dims]
        if bad:
            parser.error(f"--dims: kind {kind.name} generates {' and '.join(f'{d}D' for d in kind.dims)} data "
                         f"only, got {bad}")
    if args.shape is not None and len(args.shape) not in kind.dims:
        parser.error(f"--shape needs {' or '.join(str(d) for d in kind.dims)} sizes for kind {kind.name}, got "
                     f"{len(args.shape)}")
    if args.gpu_memory_target is not None and not args.gpu_memory_target > 0:
        parser.error(f"--gpu-memory-target must be > 0 GB, got {args.gpu_memory_target}")
    if args.n_train is not None and args.n_train < 5:
        parser.error(f"--n-train must be >= 5 (nnU-Net's 5-fold split), got {args.n_train}")
    if args.configuration and not args.dataset:
        parser.error("--configuration applies to --dataset only (generated data: 2d for 2D, 3d_fullres for 3D)")
    if args.dataset and any(v is not None for v in (args.size_2d, args.size_3d, args.shape, args.n_train,
                                                    args.n_test, args.variants)):
        parser.error("--size-2d/--size-3d/--shape/--n-train/--n-test/--variants describe generated data; not with "
                     "--dataset")
    if (args.iterations or args.val_iterations) and args.epochs is None and args.budget == "gpu":
        parser.error("--iterations/--val-iterations need --epochs with --budget gpu (the full trainers use "
                     "nnU-Net's schedule)")
    return args


def budget_from(args: argparse.Namespace) -> Budget:
    """The chosen budget for the chosen kind, with the command line's overrides applied."""
    kind = getattr(args, "kind_spec", None) or KINDS[getattr(args, "kind", "tubes")]
    budget = for_kind(BUDGETS[args.budget], kind)
    schedules = {}
    for dim, schedule in budget.schedule.items():
        epochs = args.epochs or schedule.epochs
        if epochs is None:
            schedules[dim] = schedule
            continue
        schedules[dim] = Schedule(epochs, args.iterations or schedule.iterations or 250,
                                  args.val_iterations or schedule.val_iterations or 50)
    size = dict(budget.size)
    for dim, edge in ((2, args.size_2d), (3, args.size_3d)):
        if edge:
            size[dim] = (edge,) * dim
    if getattr(args, "shape", None):
        size[len(args.shape)] = tuple(args.shape)
    cases = {dim: (args.n_train or n_train, args.n_test or n_test) for dim, (n_train, n_test) in budget.cases.items()}
    target = dict(budget.gpu_memory_target)
    if getattr(args, "gpu_memory_target", None) is not None:
        target = {dim: args.gpu_memory_target for dim in (2, 3)}
    return dataclasses.replace(budget, schedule=schedules, size=size, cases=cases,
                               seeds=args.seed_list or budget.seeds, jobs=args.jobs or budget.jobs,
                               device=args.device or budget.device, gpu_memory_target=target)


def dims_from(args: argparse.Namespace) -> list[int]:
    """--dims, else the kind's default dimensionalities under the budget."""
    kind = args.kind_spec
    return list(args.dims) if args.dims else list(kind.budgets[args.budget].dims)


def check_device(device: str) -> None:
    """SystemExit with a hint if CUDA is asked for but absent."""
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise SystemExit("nnunet-ext benchmark quality: --budget gpu / --device cuda needs a CUDA device, and "
                             "torch sees none. Use --budget cpu (or --device cpu).")


# ------------------------------------------------------------------------------------------- environment

def base_env(budget: Budget) -> dict[str, str]:
    """The environment every command runs in (nnU-Net folders are added per dataset)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["nnUNet_def_n_proc"] = str(budget.processes)
    if budget.device == "cpu":
        threads = max(1, (os.cpu_count() or 1) // budget.jobs)
        # nnU-Net sets torch's threads to every core on the CPU; with several jobs, spinning OpenMP threads
        # would fight over the cores (5x slower epochs measured), so waiting threads sleep instead
        env.update({"nnUNet_n_proc_DA": "0", "nnUNet_compile": "f", "OMP_NUM_THREADS": str(threads),
                    "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"})
    return env


def schedule_env(schedule: Schedule) -> dict[str, str]:
    """NNUNET_EXT_* variables the ``*_short`` trainers read (nothing for the full schedule)."""
    if not schedule.short:
        return {}
    return {"NNUNET_EXT_EPOCHS": str(schedule.epochs), "NNUNET_EXT_ITERATIONS": str(schedule.iterations),
            "NNUNET_EXT_VAL_ITERATIONS": str(schedule.val_iterations)}


# ------------------------------------------------------------------------------------------- datasets

def _planned(dataset: Dataset, configuration: str, identifier: str = DEFAULT_PLANS) -> bool:
    """Whether the plans ``identifier`` exist and name preprocessed data for ``configuration``."""
    folder = dataset.preprocessed_root / dataset.name
    plans = folder / f"{identifier}.json"
    if not plans.exists():
        return False
    data_identifier = json.loads(plans.read_text())["configurations"].get(configuration, {}).get("data_identifier")
    return data_identifier is not None and (folder / data_identifier).is_dir()


def _configuration_of(dataset: Dataset) -> str:
    """The configuration asked for, else 3d_fullres if nnU-Net planned one, else 2d."""
    plans = json.loads((dataset.preprocessed_root / dataset.name / "nnUNetPlans.json").read_text())
    return dataset.configuration or ("3d_fullres" if "3d_fullres" in plans["configurations"] else "2d")


def _up_to_date(dataset: Dataset, marker: Path, spec: dict) -> bool:
    """Whether an earlier run prepared this dataset with the same settings."""
    if not (marker.exists() and (dataset.preprocessed_root / dataset.name / "nnUNetPlans.json").exists()):
        return False
    return json.loads(marker.read_text()) == spec and _planned(dataset, _configuration_of(dataset))


def own_plans_needed(trainers: list[str]) -> list[tuple[str, str]]:
    """(plans identifier, ``nnunet-ext plan --arch`` key) of every own-plans architecture among ``trainers``."""
    needed: dict[str, str] = {}
    for trainer in trainers:
        architecture = own_plans_architecture(trainer)
        if architecture is not None:
            needed[architecture.plans_name] = architecture.key
    return list(needed.items())


def prepare_all(datasets: list[Dataset], budget: Budget, env: dict[str, str], workdir: Path,
                trainers: list[str] | None = None) -> list[Dataset]:
    """Prepare each distinct dataset once (``budget.jobs`` at a time); the seeds of a user dataset share it.
    ``trainers`` decide which own-planner plans (GLNet's) are made besides nnU-Net's."""
    distinct = list({(d.preprocessed_root, d.dataset_id): d for d in datasets}.values())
    for dataset in distinct:  # in this thread, one at a time: generation runs in-process (numpy, scikit-image,
        # SimpleITK), and a first `make quality` from a fresh clone crashed (SIGSEGV) while two threads generated
        if dataset.generated and not _up_to_date(dataset, *_preparation(dataset, budget)):
            generate(dataset, budget)
    own = own_plans_needed(trainers or [])
    with ThreadPoolExecutor(budget.jobs) as pool:  # planning and preprocessing are subprocesses
        prepared = list(pool.map(lambda d: prepare(d, budget, env, workdir, own), distinct))
    resolved = {(d.preprocessed_root, d.dataset_id): d for d in prepared}
    return [dataclasses.replace(d, configuration=resolved[(d.preprocessed_root, d.dataset_id)].configuration,
                                dim=resolved[(d.preprocessed_root, d.dataset_id)].dim) for d in datasets]


def _kind(dataset: Dataset) -> Kind:
    return KINDS[dataset.kind]


def _target(dataset: Dataset, budget: Budget) -> float | None:
    """The planning VRAM target (GB) of the dataset's dimensionality, None for nnU-Net's default."""
    return budget.gpu_memory_target.get(dataset.dim) if dataset.dim else None


def _preparation(dataset: Dataset, budget: Budget) -> tuple[Path, dict]:
    """(marker file, settings) of a dataset's preparation: it is up to date when the marker holds the settings."""
    marker = dataset.preprocessed_root / dataset.name / "quality_prepared.json"
    cases = budget.cases.get(dataset.dim)
    size = budget.size.get(dataset.dim)
    spec = {"size": list(size) if size else None, "cases": list(cases) if cases else None, "seed": dataset.seed,
            "feature_scale": budget.feature_scale, "configuration": dataset.configuration, "kind": dataset.kind,
            "variant": dataset.variant, "gpu_memory_target": _target(dataset, budget)}
    if dataset.generated:
        spec["options"] = {k: list(v) if isinstance(v, tuple) else v
                           for k, v in _kind(dataset).variant(dataset.variant).options.items()}
    return marker, spec


def generate(dataset: Dataset, budget: Budget) -> None:
    """Write a generated dataset afresh (its raw and preprocessed folders are replaced)."""
    shutil.rmtree(dataset.raw, ignore_errors=True)
    shutil.rmtree(dataset.preprocessed_root / dataset.name, ignore_errors=True)
    n_train, n_test = budget.cases[dataset.dim]
    kind = _kind(dataset)
    kind.write(dataset.dataset_id, dataset.dim, n_train, n_test, tuple(budget.size[dataset.dim]), dataset.seed,
               str(dataset.raw_root), dataset.name.split("_", 1)[1], **kind.variant(dataset.variant).options)


def prepare(dataset: Dataset, budget: Budget, env: dict[str, str], workdir: Path,
            own_plans: list[tuple[str, str]] = ()) -> Dataset:
    """Plan and preprocess once (a generated dataset is written first by :func:`generate`), also with each planner
    of ``own_plans`` ((identifier, --arch key)); write the reduced plans. Returns it resolved."""
    marker, spec = _preparation(dataset, budget)
    log = workdir / "logs" / f"{dataset.name}_plan.log"
    env = {**env, **dataset.env()}
    target = _target(dataset, budget)
    if not _up_to_date(dataset, marker, spec):
        start = time.perf_counter()
        runs.plan_and_preprocess(dataset.dataset_id, dataset.configuration or "3d_fullres", env, log,
                                 budget.processes, gpu_memory_target=target)
        configuration = _configuration_of(dataset)
        if not _planned(dataset, configuration):
            runs.preprocess(dataset.dataset_id, configuration, env, log, budget.processes)
        for own_marker in (dataset.preprocessed_root / dataset.name).glob("quality_prepared_*.json"):
            own_marker.unlink()  # new default plans: the own plans are made again too
        marker.write_text(json.dumps(spec))
        say(f"{dataset.name}: planned and preprocessed in {time.perf_counter() - start:.0f} s")
    configuration = _configuration_of(dataset)
    folder = dataset.preprocessed_root / dataset.name
    identifiers = [DEFAULT_PLANS]
    for identifier, key in own_plans:
        own_marker = folder / f"quality_prepared_{identifier}.json"
        own_spec = {"identifier": identifier, "configuration": configuration, "gpu_memory_target": target}
        if not (own_marker.exists() and json.loads(own_marker.read_text()) == own_spec
                and _planned(dataset, configuration, identifier)):
            start = time.perf_counter()
            runs.plan_own(dataset.dataset_id, key, identifier, configuration, env, log, budget.processes, target)
            own_marker.write_text(json.dumps(own_spec))
            say(f"{dataset.name}: {identifier} planned and preprocessed in {time.perf_counter() - start:.0f} s")
        identifiers.append(identifier)
    if budget.feature_scale != 1.0:
        for identifier in identifiers:
            runs.write_reduced_plans(folder / f"{identifier}.json", budget.feature_scale,
                                     reduced_plans_identifier(identifier))
    dim = dataset.dim or (3 if configuration.startswith("3d") else 2)
    return dataclasses.replace(dataset, configuration=configuration, dim=dim)


def plans_name(budget: Budget, trainer: str = "nnUNetTrainer") -> str:
    """The plans identifier ``trainer`` (a base name) trains on under ``budget``."""
    identifier = plans_identifier(trainer.removesuffix("_short"))
    return reduced_plans_identifier(identifier) if budget.feature_scale != 1.0 else identifier


def held_out(dataset: Dataset) -> tuple[Path, Path] | None:
    """(imagesTs, labelsTs) if the dataset has both with files, else None (fold 0's validation is used)."""
    images, labels = dataset.raw / "imagesTs", dataset.raw / "labelsTs"
    if images.is_dir() and labels.is_dir() and any(labels.iterdir()) and any(images.iterdir()):
        return images, labels
    return None


def evaluation_options(dataset: Dataset, held_out_cases: bool) -> list[str]:
    """The kind's ``nnunet-ext evaluate`` options: metric families, labels, EM instances (the held-out cells of
    ``instancesTs`` where they exist, else the connected components of the non-membrane voxels)."""
    kind = _kind(dataset)
    options = []
    if kind.families:
        options += ["--families", *kind.families]
    if kind.labels:
        options += ["-l", *kind.labels]
    if kind.instances:
        instances = dataset.raw / "instancesTs"
        if held_out_cases and instances.is_dir() and any(instances.iterdir()):
            options += ["--instances-folder", str(instances)]
        options += ["--instance-labels", "0"]
    return options


# ------------------------------------------------------------------------------------------- one training

def run_config(dataset: Dataset, trainer: str, budget: Budget) -> dict:
    """What determines a run's result (a stored result is reused only if this matches)."""
    schedule = budget.schedule[dataset.dim]
    config = {"dataset": dataset.name, "seed": dataset.seed, "trainer": trainer,
              "configuration": dataset.configuration, "plans": plans_name(budget, trainer),
              "feature_scale": budget.feature_scale, "device": budget.device,
              "schedule": dataclasses.asdict(schedule),
              "size": budget.size.get(dataset.dim) if dataset.generated else None,
              "cases": list(budget.cases[dataset.dim]) if dataset.generated else None}
    if dataset.generated and dataset.kind != "tubes":
        config.update(kind=dataset.kind, variant=dataset.variant, gpu_memory_target=_target(dataset, budget))
    if config["size"] is not None:
        config["size"] = list(config["size"])
    return config


def run_one(dataset: Dataset, base_trainer: str, budget: Budget, env: dict[str, str], workdir: Path) -> dict:
    """Train fold 0, predict the held-out cases, evaluate; returns (and stores) the run's result."""
    schedule = budget.schedule[dataset.dim]
    trainer = trainer_class(base_trainer, schedule)
    folder = workdir / "runs" / dataset.name / f"seed_{dataset.seed}" / trainer
    result_file = folder / "result.json"
    config = run_config(dataset, trainer, budget)
    if result_file.exists():
        stored = json.loads(result_file.read_text())
        if stored.get("config") == config:
            say(f"{dataset.name} seed {dataset.seed} {trainer}: reusing {result_file}")
            return _reanalysed(stored, _kind(dataset), folder, {**env, **dataset.env()})
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = {**env, **dataset.env(), **schedule_env(schedule), "PYTHONHASHSEED": str(dataset.seed)}
    plans = plans_name(budget, base_trainer)
    say(f"{dataset.name} seed {dataset.seed} {trainer}: training")
    trained, peak_cuda = runs.train(dataset.dataset_id, dataset.configuration, trainer, plans, budget.device, env,
                                    folder / "train.log", folder / "peak_cuda_bytes.txt")
    fold = runs.fold_folder(dataset.results_root, dataset.name, trainer, plans, dataset.configuration)
    pair = held_out(dataset)
    predict_s = 0.0
    if pair is not None:
        prediction, reference = folder / "predictions", pair[1]
        predict_s = runs.predict(pair[0], prediction, dataset.dataset_id, dataset.configuration, trainer, plans,
                                 budget.device, env, folder / "predict.log", budget.processes).wall_s
        evaluated_cases = "held-out imagesTs/labelsTs"
    else:
        dataset_json = json.loads((dataset.raw / "dataset.json").read_text())
        prediction = fold / "validation"
        reference = runs.validation_reference(fold, dataset.preprocessed_root / dataset.name / "gt_segmentations",
                                              dataset_json["file_ending"], folder / "validation_references")
        evaluated_cases = "fold 0 validation cases"
    summary = runs.evaluate(reference, prediction, dataset.raw / "dataset.json", folder / "evaluation.json", env,
                            folder / "evaluate.log", budget.processes, evaluation_options(dataset, pair is not None))
    kind = _kind(dataset)
    metrics = kind_metrics(kind, summary)
    analysis_file = None
    if kind.analysis:
        analysis_file, means = _analyse(kind, reference, prediction, folder, env)
        metrics.update(means)
    epochs = runs.epoch_times(fold)
    result = {"config": config, "dataset": dataset.label, "dataset_name": dataset.name, "seed": dataset.seed,
              "trainer": trainer, "kind": dataset.kind, "metrics": metrics,
              "metrics_per_label": summary.get("mean", {}), "cases": len(summary["metric_per_case"]),
              "evaluated": evaluated_cases, "epoch_times_s": epochs,
              "epoch_time_s": sum(epochs) / len(epochs) if epochs else float("nan"), "epochs": len(epochs),
              "plans": plans, "train_wall_s": trained.wall_s, "train_cpu_s": trained.cpu_s,
              "predict_wall_s": predict_s, "peak_rss_bytes": trained.peak_rss_bytes,
              "peak_cuda_bytes": peak_cuda, "prediction_folder": str(prediction), "reference_folder": str(reference),
              "fold_folder": str(fold), "evaluation_file": str(folder / "evaluation.json"),
              "analysis_file": str(analysis_file) if analysis_file else None}
    result_file.write_text(json.dumps(result, indent=2))
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in report.METRICS)
    say(f"{dataset.name} seed {dataset.seed} {trainer}: train {trained.wall_s:.0f} s, {shown}")
    return result


def _analyse(kind: Kind, reference: Path, prediction: Path, folder: Path, env: dict[str, str]) -> tuple[Path, dict]:
    """(analysis file, foreground means) of the kind's per-structure analysis of a run's predictions."""
    analysis_file = folder / "analysis.json"
    analysis = runs.analyse(kind.analysis, reference, prediction, analysis_file, env, folder / "analysis.log")
    return analysis_file, analysis["foreground_mean"]


def _reanalysed(stored: dict, kind: Kind, folder: Path, env: dict[str, str]) -> dict:
    """A reused result with the kind's per-structure analysis run again on its kept predictions (seconds), so that
    measures added to the analysis reach earlier runs; the result unchanged where the predictions are gone."""
    prediction, reference = stored.get("prediction_folder"), stored.get("reference_folder")
    if not kind.analysis or not prediction or not reference or not Path(prediction).is_dir():
        return stored
    analysis_file, means = _analyse(kind, Path(reference), Path(prediction), folder, env)
    stored = {**stored, "metrics": {**stored["metrics"], **means}, "analysis_file": str(analysis_file)}
    (folder / "result.json").write_text(json.dumps(stored, indent=2))
    return stored


def kind_metrics(kind: Kind, summary: dict) -> dict:
    """The run's metrics: the evaluation's foreground mean, and for the context kind the two classes, their mean
    (as ``Dice``) and the region of both (``Dice_any``)."""
    metrics = dict(summary["foreground_mean"])
    if kind.name == "context":
        means = summary.get("mean", {})
        per_class = [means.get(str(label), {}).get("Dice", float("nan")) for label in (1, 2)]
        metrics = {"Dice": float(sum(per_class) / 2), "Dice_1": per_class[0], "Dice_2": per_class[1],
                   "Dice_any": means.get("(1, 2)", {}).get("Dice", float("nan"))}
    return metrics


# ------------------------------------------------------------------------------------------- report

def plans_summary(dataset: Dataset, budget: Budget, trainers: list[str] | None = None) -> str:
    """'`nnUNetPlans_cpu` 2d: patch 128x128, batch 2, spacing [1.0, 1.0], features per stage [...]' of each plans
    file the trainings used (one per distinct plans of ``trainers``; default nnU-Net's)."""
    names = list(dict.fromkeys(plans_name(budget, t) for t in (trainers or ["nnUNetTrainer"])))
    parts = []
    for name in names:
        plans = json.loads((dataset.preprocessed_root / dataset.name / f"{name}.json").read_text())
        configuration = plans["configurations"][dataset.configuration]
        kwargs = configuration["architecture"]["arch_kwargs"]
        features = kwargs.get("features_per_stage", [])
        extra = f", tile grid {kwargs['tile_grid']}" if "tile_grid" in kwargs else ""
        users = [t for t in (trainers or ["nnUNetTrainer"]) if plans_name(budget, t) == name]
        used_by = f" (for {', '.join(users)})" if len(names) > 1 else ""
        parts.append(f"`{name}`{used_by} {dataset.configuration}: patch "
                     f"{'x'.join(map(str, configuration['patch_size']))}, batch {configuration['batch_size']}, "
                     f"spacing {configuration['spacing']}, features per stage {features}{extra}")
    return "; ".join(parts)


def hardware_line(device: str) -> str:
    """CPU model and cores, plus the GPU on CUDA."""
    line = f"{cpu_name()}, {os.cpu_count()} logical cores, {platform.platform()}"
    if device == "cuda":
        import torch
        line += f"; GPU {torch.cuda.get_device_name(0)}"
    return line


def versions_line() -> str:
    return (f"python {platform.python_version()}, nnunetv2 {package_version('nnunetv2')}, "
            f"torch {package_version('torch')}, nnunet-ext {package_version('nnunet-ext')}")


def _shape_text(shape) -> str:
    shape = tuple(shape)
    if len(set(shape)) == 1:
        return f"{shape[0]}{'²' if len(shape) == 2 else '³'}"
    return "x".join(map(str, shape))


def dataset_notes(datasets: list[Dataset], budget: Budget, trainers: list[str] | None = None) -> list[str]:
    """One line per dataset label: cases, seeds, schedule and plans."""
    notes, seen = [], set()
    for dataset in datasets:
        if dataset.label in seen:
            continue
        seen.add(dataset.label)
        seeds = sorted({d.seed for d in datasets if d.label == dataset.label})
        if dataset.generated:
            n_train, n_test = budget.cases[dataset.dim]
            variant = KINDS[dataset.kind].variant(dataset.variant)
            options = "".join(f", {k} {v}" for k, v in variant.options.items())
            target = _target(dataset, budget)
            planned = f"; planned at -gpu_memory_target {target:g}" if target is not None else ""
            data = (f"generated {variant.label} {_shape_text(budget.size[dataset.dim])}{options}, {n_train} "
                    f"training / {n_test} held-out cases per seed, seeds {seeds} (each seed a different generated "
                    f"dataset){planned}")
        else:
            evaluated = ("held-out imagesTs/labelsTs" if held_out(dataset) else
                         "fold 0's validation cases (no imagesTs/labelsTs)")
            data = (f"your dataset {dataset.name}, seeds {seeds} (repeated trainings of the same split), "
                    f"evaluated on {evaluated}")
        notes.append(f"- **{dataset.label}**: {data}; {budget.schedule[dataset.dim].describe()}; "
                     f"{plans_summary(dataset, budget, trainers)}")
    return notes


def reduction_notes(budget: Budget, dims: list[int], generated: bool, trainers: list[str] | None = None
                    ) -> list[str]:
    """What this budget changes against nnU-Net's defaults (schedule, plans, data if generated, the rest);
    ``trainers`` name the plans files reduced (default: nnU-Net's only)."""
    notes = []
    short = [f"{dim}D {budget.schedule[dim].describe()}" for dim in dims if budget.schedule[dim].short]
    if short:
        notes.append(f"schedule: {'; '.join(short)} instead of 1000 epochs x 250 iterations (50 validation "
                     f"iterations), through the `*_short` trainers")
    if budget.feature_scale != 1.0:
        reduced = list(dict.fromkeys(plans_name(budget, t) for t in (trainers or ["nnUNetTrainer"])))
        source = "nnU-Net's own plans" + (" and its own planner's for GLNet" if len(reduced) > 1 else "")
        notes.append(f"plans: {source} (patch, batch "
                     f"size, spacing, network topology unchanged) with every stage's feature count scaled by "
                     f"{budget.feature_scale:g}, as {', '.join(f'`{n}`' for n in reduced)} (the lists above)")
    return notes + ([budget.data_note] if generated and budget.data_note else []) + list(budget.reductions)


def markdown(results: list[dict], failures: list[str], datasets: list[Dataset], budget: Budget,
             argv: list[str], wall_s: float, cpu_s: float, kind: Kind | None = None,
             trainers: list[str] | None = None, extra_sections: list[str] = ()) -> str:
    """The whole report (``cpu_s``: CPU seconds of every command this run started)."""
    kind = kind or KINDS["tubes"]
    title = "" if kind.name == "tubes" else f": {kind.name}"
    lines = [f"# nnunet-ext quality benchmark{title} ({budget.name} budget)", "",
             f"Command: `{' '.join(['nnunet-ext benchmark quality', *argv])}`", "",
             f"- date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, total wall time {wall_s / 60:.1f} min; CPU time "
             f"of the commands it ran {cpu_s / 60:.1f} core-minutes (about {cpu_s / 60 / (os.cpu_count() or 1):.1f} "
             f"min on {os.cpu_count()} otherwise idle cores; more wall time means the machine was shared)",
             f"- hardware: {hardware_line(budget.device)}; device `{budget.device}`, {budget.jobs} training(s) at a "
             f"time",
             f"- {versions_line()}", *dataset_notes(datasets, budget, trainers)]
    if any(d.generated for d in datasets):
        lines += [f"- {note}" for note in kind.notes]
    reduced = reduction_notes(budget, sorted({d.dim for d in datasets}), any(d.generated for d in datasets), trainers)
    if reduced:
        lines += ["", "Reduced against nnU-Net's defaults in this budget:", *[f"- {r}" for r in reduced]]
    lines += ["", "Metrics: `nnunet-ext evaluate` of each training's predictions against the references "
                  "(foreground mean over labels), then mean ± sample std over seeds. " + kind.metrics_text +
                  " s / epoch: mean of nnU-Net's logged epoch time "
                  "(training + validation iterations). Peak RSS: largest resident set size of a process of the "
                  "`nnUNetv2_train` run (os.wait4; includes loading data and the final validation; never below this benchmark process's own, a few hundred MB)."
                  + (" Peak CUDA: `torch.cuda.max_memory_allocated()` of the training process." if budget.device ==
                     "cuda" else "")]
    for label, rows in report.group(results).items():
        baseline = next((t for t in rows if t.removesuffix("_short") == BASELINE), next(iter(rows)))
        for table in kind.tables:
            metrics = [m for m in table.metrics if any(m in r["metrics"] for t in rows.values() for r in t)]
            if not metrics:
                continue
            if table.heading is None:
                lines += ["", f"## {label}", "", report.results_table(rows, metrics)]
            else:
                lines += ["", f"### {label}: {table.heading.lower()}", ""]
                lines += ([table.note, ""] if table.note else []) + [report.results_table(rows, metrics, cost=False)]
            if len(rows) > 1:
                lines += ["", f"Per-seed difference to `{baseline}` (same dataset seed), mean ± std over seeds:", "",
                          report.differences_table(rows, baseline, metrics)]
    lines += list(extra_sections)
    if failures:
        lines += ["", "## Failed runs", "", *[f"- {f}" for f in failures]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- main

def _clean(workdir: Path) -> None:
    subs = ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "runs", "logs", "user", "results.json"]
    for sub in subs + [p.name for p in workdir.glob("results_*.json")]:
        path = workdir / sub
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _print_banner(budget: Budget, trainers: list[str], workdir: Path, kind: str = "tubes") -> None:
    print_header("quality", f"nnunetv2 {package_version('nnunetv2')}, torch {package_version('torch')}",
                 [f"kind {kind}, budget {budget.name}, device {budget.device}, {budget.jobs} training(s) at a time, "
                  f"seeds {list(budget.seeds)}", f"trainers: {', '.join(trainers)}", f"workdir {workdir}"])


def output_names(kind: str, budget: Budget) -> tuple[str, str]:
    """(default markdown name, results file name): quality_cpu.md / results.json for tubes,
    quality_<kind>_cpu.md / results_<kind>.json for the other kinds."""
    if kind == "tubes":
        return f"quality_{budget.name}.md", "results.json"
    return f"quality_{kind}_{budget.name}.md", f"results_{kind}.json"


def extra_sections(kind: Kind, datasets: list[Dataset], budget: Budget, env: dict[str, str],
                   workdir: Path) -> list[str]:
    """Markdown the kind adds after its tables (trees: the tube checks of
    :mod:`nnunet_ext.benchmarks._thick_vessels` on the first seed of each generated variant); [] if it has none
    or they fail."""
    if kind.name != "trees":
        return []
    first = {}
    for dataset in sorted((d for d in datasets if d.generated), key=lambda d: d.seed):
        first.setdefault(dataset.variant, dataset)
    if not first:
        return []
    chosen = list(first.values())
    output = workdir / "logs" / "tube_checks.md"
    env = {**env, **chosen[0].env()}  # raw and preprocessed roots are shared by every generated dataset
    try:
        runs.tube_checks([d.name for d in chosen], chosen[0].configuration, plans_name(budget), output, env,
                         workdir / "logs" / "tube_checks.log")
    except runs.StepFailed as error:
        say(f"tube checks failed: {error}")
        return []
    return ["", output.read_text().rstrip()]


def _run_all(datasets: list[Dataset], trainers: list[str], budget: Budget, env: dict[str, str],
             workdir: Path) -> tuple[list[dict], list[str]]:
    """Every (dataset, trainer), ``budget.jobs`` at a time, 3D first (the longest)."""
    units = sorted(((d, t) for d in datasets for t in trainers), key=lambda u: -u[0].dim)
    results, failures = [], []

    def one(unit: tuple[Dataset, str]) -> None:
        try:
            results.append(run_one(*unit, budget, env, workdir))
        except runs.StepFailed as error:
            failures.append(f"{unit[0].name} seed {unit[0].seed} {unit[1]}: {error}")
            say(f"FAILED {failures[-1]}")

    with ThreadPoolExecutor(budget.jobs) as pool:
        list(pool.map(one, units))
    order = {(d.label, d.seed, trainer_class(t, budget.schedule[d.dim])): i
             for i, (d, t) in enumerate((d, t) for d in sorted(datasets, key=lambda d: d.dim) for t in trainers)}
    results.sort(key=lambda r: order.get((r["dataset"], r["seed"], r["trainer"]), len(order)))
    return results, failures


def main(argv: list[str]) -> int:
    """Run the comparison; writes the markdown, the PNG and the results JSON. Returns 0, 1 if a run failed."""
    args = parse_args(argv)
    kind = args.kind_spec
    budget = budget_from(args)
    check_device(budget.device)
    workdir = Path(args.workdir).resolve()
    if args.fresh:
        _clean(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    default_output, results_name = output_names(kind.name, budget)
    output = Path(args.output).resolve() if args.output else workdir / default_output
    plot_file = Path(args.plot).resolve() if args.plot else output.with_suffix(".png")
    try:
        datasets = (user_datasets(workdir, args.dataset, budget.seeds, args.configuration, kind.name) if args.dataset
                    else generated_datasets(workdir, dims_from(args), budget.seeds, kind, args.variants))
    except ValueError as error:
        print(f"nnunet-ext benchmark quality: {error}", file=sys.stderr)
        return 2
    _print_banner(budget, args.trainer_names, workdir, kind.name)
    start = time.perf_counter()
    env = base_env(budget)
    try:
        datasets = prepare_all(datasets, budget, env, workdir, args.trainer_names)
    except runs.StepFailed as error:
        print(f"nnunet-ext benchmark quality: planning failed: {error}", file=sys.stderr)
        return 1
    results, failures = _run_all(datasets, args.trainer_names, budget, env, workdir)
    sections = extra_sections(kind, datasets, budget, env, workdir) if results else []
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    (workdir / results_name).write_text(json.dumps({"kind": kind.name, "results": results, "failures": failures,
                                                    "wall_s": wall, "cpu_s": cpu}, indent=2))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown(results, failures, datasets, budget, argv, wall, cpu, kind, args.trainer_names,
                               sections))
    if results:
        report.plot(results, plot_file, list(kind.tables[0].metrics))
    print(output.read_text())
    say(f"wrote {output} and {plot_file} in {wall / 60:.1f} min")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
