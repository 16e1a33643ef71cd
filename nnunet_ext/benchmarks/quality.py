"""Quality benchmark: ``nnunet-ext benchmark quality [--budget cpu|gpu] [--dataset ID] [--seeds N] ...``.

The comparison of the Skeleton Recall paper (Kirchhoff et al., ECCV 2024), reproduced on data anyone can
generate: for each generated tubular dataset (2D and 3D, one per seed) nnU-Net's own command line plans and
preprocesses (``nnUNetv2_plan_and_preprocess``), trains fold 0 of every trainer (``nnUNetv2_train``),
predicts the held-out cases (``nnUNetv2_predict``) and ``nnunet-ext evaluate`` scores them (Dice, clDice,
Betti errors). Trainers: nnUNetTrainer, nnUNetTrainerSkelRecall, nnUNetTrainerClDice and every network of
the registry (``--trainers`` overrides). The markdown report gives mean ± std over seeds, the per-seed
difference to nnUNetTrainer, seconds per epoch and peak memory; a PNG plots the same.

Budgets: ``--budget cpu`` (default; 41 minutes measured on a shared 2-core CPU, 57 core-minutes of CPU time)
uses the ``*_short`` trainers, halved network widths and small cases (the report lists every reduction);
``--budget gpu`` runs nnU-Net's full schedule and plans on one GPU (days: 24 trainings of 1000 epochs). ``--dataset ID`` runs the comparison on
your nnU-Net raw dataset ($nnUNet_raw) instead: it is planned and trained inside ``--workdir`` (your
nnUNet_preprocessed and nnUNet_results are not touched); its imagesTs/labelsTs are the held-out cases if
present, else fold 0's validation cases; seeds are repeated trainings.

Results: ``WORKDIR/runs/<dataset>/seed_<k>/<trainer>/result.json`` per training (reused by a rerun with the
same settings), ``WORKDIR/results.json``, the markdown (``--output``) and the PNG next to it.
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
from nnunet_ext.benchmarks._quality_setup import (BUDGETS, Budget, Dataset, Schedule, generated_datasets,
                                                  parse_seeds, resolve_trainers, trainer_class, user_datasets)
from nnunet_ext.benchmarks._report import cpu_name, package_version, print_header
from nnunet_ext.testing.synthetic import write_tubular_dataset

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
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="cpu", help="cpu (default) or gpu")
    parser.add_argument("--dataset", type=int, action="append", default=None, metavar="ID",
                        help="your nnU-Net raw dataset ID (repeatable) instead of the generated ones")
    parser.add_argument("--configuration", default=None,
                        help="with --dataset: nnU-Net configuration (default 3d_fullres if planned, else 2d)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="one number N = seeds 0..N-1, several = those seeds (default 3)")
    parser.add_argument("--trainers", nargs="+", default=None,
                        help="trainer names (default: nnUNetTrainer, SkelRecall, ClDice and every registered network)")
    parser.add_argument("--dims", type=int, nargs="+", choices=(2, 3), default=[2, 3], help="generated data: 2 3")
    parser.add_argument("--epochs", type=_positive, default=None, help="epochs (overrides the budget)")
    parser.add_argument("--iterations", type=_positive, default=None, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=_positive, default=None, help="validation iterations per epoch")
    parser.add_argument("--size-2d", type=_positive, default=None, help="edge length of generated 2D cases")
    parser.add_argument("--size-3d", type=_positive, default=None, help="edge length of generated 3D cases")
    parser.add_argument("--n-train", type=_positive, default=None, help="generated training cases per dataset")
    parser.add_argument("--n-test", type=_positive, default=None, help="generated held-out cases per dataset")
    parser.add_argument("--jobs", type=_positive, default=None, help="trainings at the same time (cpu 2, gpu 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: the budget's")
    parser.add_argument("--workdir", default="quality_benchmark", help="working folder (default quality_benchmark)")
    parser.add_argument("--output", default=None, help="markdown report (default WORKDIR/quality_<budget>.md)")
    parser.add_argument("--plot", default=None, help="PNG plot (default: the markdown path with .png)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier results in WORKDIR first")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and check the arguments (parser.error on invalid combinations)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.trainer_names = resolve_trainers(args.trainers)
        args.seed_list = parse_seeds(args.seeds) if args.seeds is not None else None
    except ValueError as error:
        parser.error(str(error))
    if args.n_train is not None and args.n_train < 5:
        parser.error(f"--n-train must be >= 5 (nnU-Net's 5-fold split), got {args.n_train}")
    if args.configuration and not args.dataset:
        parser.error("--configuration applies to --dataset only (generated data: 2d for 2D, 3d_fullres for 3D)")
    if args.dataset and any(v is not None for v in (args.size_2d, args.size_3d, args.n_train, args.n_test)):
        parser.error("--size-2d/--size-3d/--n-train/--n-test describe generated data; not with --dataset")
    if (args.iterations or args.val_iterations) and args.epochs is None and args.budget == "gpu":
        parser.error("--iterations/--val-iterations need --epochs with --budget gpu (the full trainers use "
                     "nnU-Net's schedule)")
    return args


def budget_from(args: argparse.Namespace) -> Budget:
    """The chosen budget with the command line's overrides applied."""
    budget = BUDGETS[args.budget]
    schedules = {}
    for dim, schedule in budget.schedule.items():
        epochs = args.epochs or schedule.epochs
        if epochs is None:
            schedules[dim] = schedule
            continue
        schedules[dim] = Schedule(epochs, args.iterations or schedule.iterations or 250,
                                  args.val_iterations or schedule.val_iterations or 50)
    size = {2: args.size_2d or budget.size[2], 3: args.size_3d or budget.size[3]}
    cases = {dim: (args.n_train or n_train, args.n_test or n_test) for dim, (n_train, n_test) in budget.cases.items()}
    return dataclasses.replace(budget, schedule=schedules, size=size, cases=cases,
                               seeds=args.seed_list or budget.seeds, jobs=args.jobs or budget.jobs,
                               device=args.device or budget.device)


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

def _planned(dataset: Dataset, configuration: str) -> bool:
    """Whether the plans exist and name preprocessed data for ``configuration``."""
    folder = dataset.preprocessed_root / dataset.name
    plans = folder / "nnUNetPlans.json"
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


def prepare_all(datasets: list[Dataset], budget: Budget, env: dict[str, str], workdir: Path) -> list[Dataset]:
    """Prepare each distinct dataset once (``budget.jobs`` at a time); the seeds of a user dataset share it."""
    distinct = list({(d.preprocessed_root, d.dataset_id): d for d in datasets}.values())
    for dataset in distinct:  # in this thread, one at a time: generation runs in-process (numpy, scikit-image,
        # SimpleITK), and a first `make quality` from a fresh clone crashed (SIGSEGV) while two threads generated
        if dataset.generated and not _up_to_date(dataset, *_preparation(dataset, budget)):
            generate(dataset, budget)
    with ThreadPoolExecutor(budget.jobs) as pool:  # planning and preprocessing are subprocesses
        prepared = list(pool.map(lambda d: prepare(d, budget, env, workdir), distinct))
    resolved = {(d.preprocessed_root, d.dataset_id): d for d in prepared}
    return [dataclasses.replace(d, configuration=resolved[(d.preprocessed_root, d.dataset_id)].configuration,
                                dim=resolved[(d.preprocessed_root, d.dataset_id)].dim) for d in datasets]


def _preparation(dataset: Dataset, budget: Budget) -> tuple[Path, dict]:
    """(marker file, settings) of a dataset's preparation: it is up to date when the marker holds the settings."""
    marker = dataset.preprocessed_root / dataset.name / "quality_prepared.json"
    cases = budget.cases.get(dataset.dim)
    spec = {"size": budget.size.get(dataset.dim), "cases": list(cases) if cases else None, "seed": dataset.seed,
            "feature_scale": budget.feature_scale, "configuration": dataset.configuration}
    return marker, spec


def generate(dataset: Dataset, budget: Budget) -> None:
    """Write a generated dataset afresh (its raw and preprocessed folders are replaced)."""
    shutil.rmtree(dataset.raw, ignore_errors=True)
    shutil.rmtree(dataset.preprocessed_root / dataset.name, ignore_errors=True)
    n_train, n_test = budget.cases[dataset.dim]
    write_tubular_dataset(dataset.dataset_id, dim=dataset.dim, n_train=n_train, n_test=n_test,
                          shape=(budget.size[dataset.dim],) * dataset.dim, seed=dataset.seed,
                          name=dataset.name.split("_", 1)[1], raw_root=str(dataset.raw_root))


def prepare(dataset: Dataset, budget: Budget, env: dict[str, str], workdir: Path) -> Dataset:
    """Plan and preprocess once (a generated dataset is written first by :func:`generate`); write the reduced
    plans. Returns it resolved."""
    marker, spec = _preparation(dataset, budget)
    log = workdir / "logs" / f"{dataset.name}_plan.log"
    env = {**env, **dataset.env()}
    if not _up_to_date(dataset, marker, spec):
        start = time.perf_counter()
        runs.plan_and_preprocess(dataset.dataset_id, dataset.configuration or "3d_fullres", env, log,
                                 budget.processes)
        configuration = _configuration_of(dataset)
        if not _planned(dataset, configuration):
            runs.preprocess(dataset.dataset_id, configuration, env, log, budget.processes)
        marker.write_text(json.dumps(spec))
        say(f"{dataset.name}: planned and preprocessed in {time.perf_counter() - start:.0f} s")
    configuration = _configuration_of(dataset)
    if budget.feature_scale != 1.0:
        runs.write_reduced_plans(dataset.preprocessed_root / dataset.name / "nnUNetPlans.json", budget.feature_scale)
    dim = dataset.dim or (3 if configuration.startswith("3d") else 2)
    return dataclasses.replace(dataset, configuration=configuration, dim=dim)


def plans_name(budget: Budget) -> str:
    return runs.REDUCED_PLANS if budget.feature_scale != 1.0 else "nnUNetPlans"


def held_out(dataset: Dataset) -> tuple[Path, Path] | None:
    """(imagesTs, labelsTs) if the dataset has both with files, else None (fold 0's validation is used)."""
    images, labels = dataset.raw / "imagesTs", dataset.raw / "labelsTs"
    if images.is_dir() and labels.is_dir() and any(labels.iterdir()) and any(images.iterdir()):
        return images, labels
    return None


# ------------------------------------------------------------------------------------------- one training

def run_config(dataset: Dataset, trainer: str, budget: Budget) -> dict:
    """What determines a run's result (a stored result is reused only if this matches)."""
    schedule = budget.schedule[dataset.dim]
    return {"dataset": dataset.name, "seed": dataset.seed, "trainer": trainer, "configuration": dataset.configuration,
            "plans": plans_name(budget), "feature_scale": budget.feature_scale, "device": budget.device,
            "schedule": dataclasses.asdict(schedule),
            "size": budget.size.get(dataset.dim) if dataset.generated else None,
            "cases": list(budget.cases[dataset.dim]) if dataset.generated else None}


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
            return stored
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = {**env, **dataset.env(), **schedule_env(schedule), "PYTHONHASHSEED": str(dataset.seed)}
    plans = plans_name(budget)
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
                            folder / "evaluate.log", budget.processes)
    epochs = runs.epoch_times(fold)
    result = {"config": config, "dataset": dataset.label, "dataset_name": dataset.name, "seed": dataset.seed,
              "trainer": trainer, "metrics": summary["foreground_mean"], "cases": len(summary["metric_per_case"]),
              "evaluated": evaluated_cases, "epoch_times_s": epochs,
              "epoch_time_s": sum(epochs) / len(epochs) if epochs else float("nan"), "epochs": len(epochs),
              "train_wall_s": trained.wall_s, "train_cpu_s": trained.cpu_s, "predict_wall_s": predict_s,
              "peak_rss_bytes": trained.peak_rss_bytes,
              "peak_cuda_bytes": peak_cuda, "prediction_folder": str(prediction), "reference_folder": str(reference),
              "fold_folder": str(fold), "evaluation_file": str(folder / "evaluation.json")}
    result_file.write_text(json.dumps(result, indent=2))
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in summary["foreground_mean"].items())
    say(f"{dataset.name} seed {dataset.seed} {trainer}: train {trained.wall_s:.0f} s, {metrics}")
    return result


# ------------------------------------------------------------------------------------------- report

def plans_summary(dataset: Dataset, budget: Budget) -> str:
    """'patch 128x128, batch 2, features 16..256 (6 stages)' of the plans the trainings used."""
    plans = json.loads((dataset.preprocessed_root / dataset.name / f"{plans_name(budget)}.json").read_text())
    configuration = plans["configurations"][dataset.configuration]
    features = configuration["architecture"]["arch_kwargs"].get("features_per_stage", [])
    return (f"`{plans_name(budget)}` {dataset.configuration}: patch {'x'.join(map(str, configuration['patch_size']))}, "
            f"batch {configuration['batch_size']}, features per stage {features}")


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


def dataset_notes(datasets: list[Dataset], budget: Budget) -> list[str]:
    """One line per dataset label: cases, seeds, schedule and plans."""
    notes, seen = [], set()
    for dataset in datasets:
        if dataset.label in seen:
            continue
        seen.add(dataset.label)
        seeds = sorted({d.seed for d in datasets if d.label == dataset.label})
        if dataset.generated:
            n_train, n_test = budget.cases[dataset.dim]
            size = budget.size[dataset.dim]
            data = (f"generated tubes {size}{'²' if dataset.dim == 2 else '³'}, {n_train} training / {n_test} "
                    f"held-out cases per seed, seeds {seeds} (each seed a different generated dataset)")
        else:
            evaluated = ("held-out imagesTs/labelsTs" if held_out(dataset) else
                         "fold 0's validation cases (no imagesTs/labelsTs)")
            data = (f"your dataset {dataset.name}, seeds {seeds} (repeated trainings of the same split), "
                    f"evaluated on {evaluated}")
        notes.append(f"- **{dataset.label}**: {data}; {budget.schedule[dataset.dim].describe()}; "
                     f"{plans_summary(dataset, budget)}")
    return notes


def reduction_notes(budget: Budget, dims: list[int], generated: bool) -> list[str]:
    """What this budget changes against nnU-Net's defaults (schedule, plans, data if generated, the rest)."""
    notes = []
    short = [f"{dim}D {budget.schedule[dim].describe()}" for dim in dims if budget.schedule[dim].short]
    if short:
        notes.append(f"schedule: {'; '.join(short)} instead of 1000 epochs x 250 iterations (50 validation "
                     f"iterations), through the `*_short` trainers")
    if budget.feature_scale != 1.0:
        notes.append(f"plans: nnU-Net's own plans (patch, batch size, spacing, network topology unchanged) with "
                     f"every stage's feature count scaled by {budget.feature_scale:g}, as `{runs.REDUCED_PLANS}` "
                     f"(the lists above)")
    return notes + ([budget.data_note] if generated and budget.data_note else []) + list(budget.reductions)


def markdown(results: list[dict], failures: list[str], datasets: list[Dataset], budget: Budget,
             argv: list[str], wall_s: float, cpu_s: float) -> str:
    """The whole report (``cpu_s``: CPU seconds of every command this run started)."""
    lines = [f"# nnunet-ext quality benchmark ({budget.name} budget)", "",
             f"Command: `{' '.join(['nnunet-ext benchmark quality', *argv])}`", "",
             f"- date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, total wall time {wall_s / 60:.1f} min; CPU time "
             f"of the commands it ran {cpu_s / 60:.1f} core-minutes (about {cpu_s / 60 / (os.cpu_count() or 1):.1f} "
             f"min on {os.cpu_count()} otherwise idle cores; more wall time means the machine was shared)",
             f"- hardware: {hardware_line(budget.device)}; device `{budget.device}`, {budget.jobs} training(s) at a "
             f"time",
             f"- {versions_line()}", *dataset_notes(datasets, budget)]
    reduced = reduction_notes(budget, sorted({d.dim for d in datasets}), any(d.generated for d in datasets))
    if reduced:
        lines += ["", "Reduced against nnU-Net's defaults in this budget:", *[f"- {r}" for r in reduced]]
    lines += ["", "Metrics: `nnunet-ext evaluate` of each training's predictions against the references "
                  "(foreground mean over labels), then mean ± sample std over seeds. Betti errors are "
                  "|b_pred - b_ref| per case (lower is better). s / epoch: mean of nnU-Net's logged epoch time "
                  "(training + validation iterations). Peak RSS: largest resident set size of a process of the "
                  "`nnUNetv2_train` run (os.wait4; includes loading data and the final validation)."
                  + (" Peak CUDA: `torch.cuda.max_memory_allocated()` of the training process." if budget.device ==
                     "cuda" else "")]
    for label, rows in report.group(results).items():
        baseline = next((t for t in rows if t.removesuffix("_short") == BASELINE), next(iter(rows)))
        lines += ["", f"## {label}", "", report.results_table(rows)]
        if len(rows) > 1:
            lines += ["", f"Per-seed difference to `{baseline}` (same dataset seed), mean ± std over seeds:", "",
                      report.differences_table(rows, baseline)]
    if failures:
        lines += ["", "## Failed runs", "", *[f"- {f}" for f in failures]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- main

def _clean(workdir: Path) -> None:
    for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "runs", "logs", "user", "results.json"):
        path = workdir / sub
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _print_banner(budget: Budget, trainers: list[str], workdir: Path) -> None:
    print_header("quality", f"nnunetv2 {package_version('nnunetv2')}, torch {package_version('torch')}",
                 [f"budget {budget.name}, device {budget.device}, {budget.jobs} training(s) at a time, seeds "
                  f"{list(budget.seeds)}", f"trainers: {', '.join(trainers)}", f"workdir {workdir}"])


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
    """Run the comparison; writes the markdown, the PNG and results.json. Returns 0, 1 if a run failed."""
    args = parse_args(argv)
    budget = budget_from(args)
    check_device(budget.device)
    workdir = Path(args.workdir).resolve()
    if args.fresh:
        _clean(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    output = Path(args.output).resolve() if args.output else workdir / f"quality_{budget.name}.md"
    plot_file = Path(args.plot).resolve() if args.plot else output.with_suffix(".png")
    try:
        datasets = (user_datasets(workdir, args.dataset, budget.seeds, args.configuration) if args.dataset
                    else generated_datasets(workdir, args.dims, budget.seeds))
    except ValueError as error:
        print(f"nnunet-ext benchmark quality: {error}", file=sys.stderr)
        return 2
    _print_banner(budget, args.trainer_names, workdir)
    start = time.perf_counter()
    env = base_env(budget)
    try:
        datasets = prepare_all(datasets, budget, env, workdir)
    except runs.StepFailed as error:
        print(f"nnunet-ext benchmark quality: planning failed: {error}", file=sys.stderr)
        return 1
    results, failures = _run_all(datasets, args.trainer_names, budget, env, workdir)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    (workdir / "results.json").write_text(json.dumps({"results": results, "failures": failures,
                                                      "wall_s": wall, "cpu_s": cpu}, indent=2))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown(results, failures, datasets, budget, argv, wall, cpu))
    if results:
        report.plot(results, plot_file)
    print(output.read_text())
    say(f"wrote {output} and {plot_file} in {wall / 60:.1f} min")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
