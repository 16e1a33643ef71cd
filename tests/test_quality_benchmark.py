"""``nnunet-ext benchmark quality``: pure helpers, argument checks, and a tiny run through the real CLI."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cli_helpers import clean_env, run
from conftest import EXAMPLE_PLANS
from nnunet_ext.trainers import registry
from nnunet_ext.benchmarks import BENCHMARKS, quality
from nnunet_ext.benchmarks import _quality_report as report
from nnunet_ext.benchmarks import _quality_runs as runs
from nnunet_ext.benchmarks import _quality_setup as setup


def _result(trainer: str, seed: int, dice: float, betti0: float, epoch_s: float = 1.0, rss_gb: float = 1.0,
            dataset: str = "2D tubes") -> dict:
    return {"dataset": dataset, "trainer": trainer, "seed": seed, "metrics": {"Dice": dice, "Betti0_error": betti0},
            "epoch_time_s": epoch_s, "peak_rss_bytes": rss_gb * report.GB, "peak_cuda_bytes": None}


# ------------------------------------------------------------------------------------------- aggregation

def test_mean_std_matches_numpy_sample_std_and_drops_nan():
    values = [0.8, 0.85, 0.9, float("nan"), 0.7]
    finite = np.array([0.8, 0.85, 0.9, 0.7])
    mean, std, n = report.mean_std(values)
    assert n == 4
    assert mean == pytest.approx(finite.mean())
    assert std == pytest.approx(finite.std(ddof=1))
    one = report.mean_std([0.5])
    assert one[0] == 0.5 and math.isnan(one[1]) and one[2] == 1
    assert report.mean_std([float("nan")])[2] == 0


def test_format_mean_std():
    assert report.format_mean_std([0.8, 0.9], 4) == f"0.8500 ± {np.std([0.8, 0.9], ddof=1):.4f}"
    assert report.format_mean_std([2.0], 2) == "2.00"
    assert report.format_mean_std([], 2) == "–"


def test_paired_differences_are_per_seed():
    rows = {"nnUNetTrainer": [_result("nnUNetTrainer", 0, 0.80, 3), _result("nnUNetTrainer", 1, 0.70, 5)],
            "nnUNetTrainerClDice": [_result("nnUNetTrainerClDice", 1, 0.75, 2),
                                    _result("nnUNetTrainerClDice", 0, 0.79, 4),
                                    _result("nnUNetTrainerClDice", 7, 0.99, 0)]}  # seed 7: no baseline, ignored
    differences = report.paired_differences(rows, "nnUNetTrainer", "Dice")
    assert differences["nnUNetTrainerClDice"] == pytest.approx([0.05, -0.01])
    assert report.paired_differences(rows, "nnUNetTrainer", "Betti0_error")["nnUNetTrainerClDice"] == [-3, 1]


def _parse_markdown(table: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in table.strip().splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert all(set(c) <= set(":-") for c in cells[1])  # alignment row
    return cells[0], cells[2:]


def test_results_table_rows_columns_and_values():
    rows = report.group([_result("nnUNetTrainer", 0, 0.8, 2, epoch_s=3.0, rss_gb=1.5),
                         _result("nnUNetTrainer", 1, 0.9, 4, epoch_s=5.0, rss_gb=2.5),
                         _result("nnUNetTrainerSkelRecall", 0, 0.85, 1)])["2D tubes"]
    header, body = _parse_markdown(report.results_table(rows))
    assert header == ["Trainer", "seeds", "Dice ↑", "Betti-0 error ↓", "s / epoch", "peak RSS (GB)"]
    assert [r[0] for r in body] == ["`nnUNetTrainer`", "`nnUNetTrainerSkelRecall`"]
    assert body[0][1:] == ["2", f"0.8500 ± {np.std([0.8, 0.9], ddof=1):.4f}",
                           f"3.00 ± {np.std([2, 4], ddof=1):.2f}", f"4.00 ± {np.std([3, 5], ddof=1):.2f}",
                           f"2.00 ± {np.std([1.5, 2.5], ddof=1):.2f}"]
    assert body[1][1:3] == ["1", "0.8500"]
    header, body = _parse_markdown(report.differences_table(rows, "nnUNetTrainer"))
    assert header == ["Trainer", "Δ Dice ↑", "Δ Betti-0 error ↓"]
    assert body == [["`nnUNetTrainerSkelRecall`", "0.0500", "-1.00"]]


def test_plot_writes_a_png(tmp_path):
    results = [_result("nnUNetTrainer", s, 0.8 + 0.01 * s, s) for s in range(3)]
    results += [_result("nnUNetTrainerClDice_short", s, 0.82, 1, dataset="3D tubes") for s in range(2)]
    report.plot(results, tmp_path / "q.png")
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------- trainers, arguments

def test_default_trainers_follow_the_registry(monkeypatch):
    names = setup.default_trainers()
    assert names[:3] == ["nnUNetTrainer", "nnUNetTrainerSkelRecall", "nnUNetTrainerClDice"]
    assert names[3:] == [registry.trainer_name(a) for a in registry.ARCHITECTURES if a]
    monkeypatch.setitem(registry.ARCHITECTURES, "FakeNet", registry.Architecture("FakeNet", "test", network="x.Y"))
    assert setup.default_trainers()[-1] == "nnUNetTrainerFakeNet"


def test_resolve_trainers_strips_short_and_lists_the_known_ones():
    assert setup.resolve_trainers(["nnUNetTrainerClDice_short", "nnUNetTrainerClDice", "nnUNetTrainer"]) == [
        "nnUNetTrainerClDice", "nnUNetTrainer"]
    with pytest.raises(ValueError, match="unknown trainer 'nnUNetTrainerNope'.*nnUNetTrainerSkelRecall"):
        setup.resolve_trainers(["nnUNetTrainerNope"])
    assert setup.trainer_class("nnUNetTrainer", setup.Schedule(2, 3, 1)) == "nnUNetTrainer_short"
    assert setup.trainer_class("nnUNetTrainer", setup.Schedule()) == "nnUNetTrainer"


def test_parse_seeds():
    assert setup.parse_seeds([3]) == (0, 1, 2)
    assert setup.parse_seeds([4, 7]) == (4, 7)
    for bad in ([0], [1, 1], [2, -1]):
        with pytest.raises(ValueError, match="--seeds"):
            setup.parse_seeds(bad)


@pytest.mark.parametrize("argv, message", [
    (["--trainers", "nnUNetTrainerNope"], "unknown trainer 'nnUNetTrainerNope'; available: nnUNetTrainer,"),
    (["--seeds", "0"], "--seeds N needs N >= 1"),
    (["--n-train", "3"], "--n-train must be >= 5"),
    (["--epochs", "0"], "must be a positive integer"),
    (["--dims", "4"], "invalid choice: 4"),
    (["--configuration", "2d"], "--configuration applies to --dataset only"),
    (["--dataset", "5", "--size-2d", "64"], "not with --dataset"),
    (["--budget", "gpu", "--iterations", "5"], "need --epochs with --budget gpu"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quality.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_dataset_needs_nnunet_raw(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert quality.main(["--dataset", "5", "--workdir", str(tmp_path)]) == 2
    assert "nnUNet_raw is not set: export nnUNet_raw=" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    assert quality.main(["--dataset", "5", "--workdir", str(tmp_path / "w")]) == 2
    assert f"no {tmp_path}/Dataset005_* folder" in capsys.readouterr().err


def test_budget_overrides():
    args = quality.parse_args(["--epochs", "2", "--iterations", "3", "--seeds", "2", "--size-2d", "64", "--jobs", "1"])
    budget = quality.budget_from(args)
    assert budget.schedule[2].epochs == 2 and budget.schedule[2].iterations == 3
    assert budget.schedule[3].val_iterations == setup.BUDGETS["cpu"].schedule[3].val_iterations
    assert budget.seeds == (0, 1) and budget.size[2] == (64, 64) and budget.jobs == 1
    gpu = quality.budget_from(quality.parse_args(["--budget", "gpu"]))
    assert not gpu.schedule[2].short and gpu.feature_scale == 1.0 and gpu.device == "cuda"
    assert quality.budget_from(quality.parse_args(["--budget", "gpu", "--epochs", "5"])).schedule[3] == \
        setup.Schedule(5, 250, 50)


def test_reduction_notes_name_every_reduction_of_the_cpu_budget():
    budget = setup.BUDGETS["cpu"]
    notes = quality.reduction_notes(budget, [2, 3], generated=True)
    assert notes[0].startswith("schedule: 2D 10 epochs x 12 iterations") and "3D 8 epochs x 8 iterations" in notes[0]
    assert "scaled by 0.5" in notes[1] and budget.data_note in notes
    assert budget.data_note not in quality.reduction_notes(budget, [2], generated=False)
    assert quality.reduction_notes(setup.BUDGETS["gpu"], [2, 3], generated=True) == []


def test_benchmark_is_registered():
    assert "quality" in BENCHMARKS


def test_unknown_trainer_through_the_cli():
    result = subprocess.run([str(Path(sys.executable).parent / "nnunet-ext"), "benchmark", "quality", "--trainers",
                             "nnUNetTrainerNope"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown trainer 'nnUNetTrainerNope'; available:" in result.stderr


# ------------------------------------------------------------------------------------------- run helpers

def test_epoch_times_parses_every_training_log(tmp_path):
    (tmp_path / "training_log_2026_01_01_00_00_00.txt").write_text(
        "2026-01-01 00:00:01: Epoch time: 6.18 s \n2026-01-01 00:00:09: Epoch time: 7.5 s\n")
    (tmp_path / "training_log_2026_01_02_00_00_00.txt").write_text("x: Epoch time: 2 s\n")
    assert runs.epoch_times(tmp_path) == [6.18, 7.5, 2.0]


def test_reduced_plans_halve_the_features_only(tmp_path):
    original = json.loads((EXAMPLE_PLANS / "Tubes2D_nnUNetPlans.json").read_text())
    shutil.copy(EXAMPLE_PLANS / "Tubes2D_nnUNetPlans.json", tmp_path / "nnUNetPlans.json")
    assert runs.write_reduced_plans(tmp_path / "nnUNetPlans.json", 0.5) == runs.REDUCED_PLANS
    reduced = json.loads((tmp_path / f"{runs.REDUCED_PLANS}.json").read_text())
    assert reduced["plans_name"] == runs.REDUCED_PLANS
    for name, configuration in original["configurations"].items():
        kwargs = configuration["architecture"]["arch_kwargs"]
        new = reduced["configurations"][name]
        halved = [f // 2 for f in kwargs["features_per_stage"]]
        assert new["architecture"]["arch_kwargs"]["features_per_stage"] == halved
        for key in ("patch_size", "batch_size", "data_identifier", "spacing"):
            assert new[key] == configuration[key]


def test_run_logged_reports_peak_rss_and_failures(tmp_path):
    """A child that holds 300 MiB is measured at 300 MiB-1 GiB. The call runs in a fresh interpreter, as the
    benchmark's own small process makes it: ru_maxrss also counts the caller's resident set at the spawn, which
    in a long-lived test worker can be gigabytes."""
    allocate = "import numpy; a = numpy.ones(300 * 2**20 // 8); print('ok')"
    caller = ("import json, sys; from pathlib import Path; from nnunet_ext.benchmarks import _quality_runs as runs; "
              f"f = runs.run_logged([sys.executable, '-c', {allocate!r}], {{}}, Path({str(tmp_path / 'a.log')!r})); "
              "print(json.dumps([f.peak_rss_bytes, f.cpu_s]))")
    result = subprocess.run([sys.executable, "-c", caller], capture_output=True, text=True, check=True)
    peak_rss_bytes, cpu_s = json.loads(result.stdout.strip().splitlines()[-1])
    assert 300 * 2**20 < peak_rss_bytes < 2**30 and cpu_s > 0
    assert "ok" in (tmp_path / "a.log").read_text()
    with pytest.raises(runs.StepFailed, match="exited 3"):
        runs.run_logged([sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "b.log")


def test_validation_reference_links_only_the_validation_cases(tmp_path):
    gt, fold = tmp_path / "gt", tmp_path / "fold_0"
    (fold / "validation").mkdir(parents=True)
    gt.mkdir()
    for case in ("a", "b", "c"):
        (gt / f"{case}.nii.gz").write_text(case)
    (fold / "validation" / "b.nii.gz").write_text("p")
    (fold / "validation" / "summary.json").write_text("{}")
    target = runs.validation_reference(fold, gt, ".nii.gz", tmp_path / "ref")
    assert sorted(p.name for p in target.iterdir()) == ["b.nii.gz"]
    assert (target / "b.nii.gz").read_text() == "b"


def test_cuda_training_wrapper_records_the_peak(monkeypatch, tmp_path):
    import nnunetv2.run.run_training as run_training
    import torch

    from nnunet_ext.benchmarks import _quality_train

    calls = []
    monkeypatch.setattr(run_training, "run_training_entry", lambda: calls.append("trained"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 123456789)
    monkeypatch.setenv(runs.PEAK_CUDA_FILE_ENV, str(tmp_path / "peak.txt"))
    _quality_train.main()
    assert calls == ["trained"] and (tmp_path / "peak.txt").read_text() == "123456789"


# ------------------------------------------------------------------------------------------- real CLI

def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _numpy_dice(prediction_folder: Path, reference_folder: Path) -> float:
    """Mean over cases of the foreground Dice (NaN cases, both empty, skipped), recomputed with numpy."""
    values = []
    for reference in sorted(reference_folder.glob("*.nii.gz")):
        r, p = _read(reference) == 1, _read(prediction_folder / reference.name) == 1
        denominator = r.sum() + p.sum()
        if denominator:
            values.append(2 * (r & p).sum() / denominator)
    return float(np.mean(values))


@pytest.mark.slow
def test_tiny_quality_run_through_the_cli(tmp_path):
    workdir, output = tmp_path / "work", tmp_path / "report" / "quality.md"
    command = ["nnunet-ext", "benchmark", "quality", "--workdir", str(workdir), "--output", str(output),
               "--dims", "2", "--seeds", "1", "--trainers", "nnUNetTrainer", "nnUNetTrainerClDice",
               "--epochs", "1", "--iterations", "3", "--val-iterations", "1", "--size-2d", "64",
               "--n-train", "6", "--n-test", "2"]
    run(command, clean_env(), timeout=600)

    header, body = _parse_markdown(output.read_text().split("## 2D tubes", 1)[1].split("Per-seed", 1)[0])
    assert header == ["Trainer", "seeds", "Dice ↑", "clDice ↑", "Betti-0 error ↓", "Betti-1 error ↓",
                      "s / epoch", "peak RSS (GB)"]
    assert [row[0] for row in body] == ["`nnUNetTrainer_short`", "`nnUNetTrainerClDice_short`"]
    for row in body:
        dice, cldice, betti0, betti1, epoch_s, rss = (float(c) for c in row[2:])  # one seed: no "±"
        assert row[1] == "1" and 0 <= dice <= 1 and 0 <= cldice <= 1 and betti0 >= 0 and betti1 >= 0
        assert 0 < epoch_s < 300 and 0.05 < rss < 32
    assert "Reduced against nnU-Net's defaults" in output.read_text()
    assert output.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = json.loads((workdir / "results.json").read_text())
    assert results["failures"] == [] and len(results["results"]) == 2
    for result in results["results"]:
        evaluation = json.loads(Path(result["evaluation_file"]).read_text())
        assert result["metrics"] == pytest.approx(evaluation["foreground_mean"], nan_ok=True)
        assert result["cases"] == 2 and result["epochs"] == 1 and len(result["epoch_times_s"]) == 1
        prediction, reference = Path(result["prediction_folder"]), Path(result["reference_folder"])
        assert reference.name == "labelsTs" and sorted(p.name for p in prediction.glob("*.nii.gz")) == sorted(
            p.name for p in reference.glob("*.nii.gz"))
        assert result["metrics"]["Dice"] == pytest.approx(_numpy_dice(prediction, reference), abs=1e-6)
        row = next(r for r in body if r[0] == f"`{result['trainer']}`")
        assert float(row[2]) == pytest.approx(result["metrics"]["Dice"], abs=5e-5)
        assert float(row[6]) == pytest.approx(result["epoch_time_s"], abs=5e-3)
        assert Path(result["fold_folder"], "checkpoint_final.pth").exists()

    again = run(command, clean_env(), timeout=300)  # same settings: every run is reused, not retrained
    assert len(re.findall(r"reusing .*result\.json", again.stdout)) == 2
    assert "planned and preprocessed" not in again.stdout
    assert not re.search(r"_short: training$", again.stdout, re.MULTILINE)


# ------------------------------------------------------------------------------------------- dataset kinds

from nnunet_ext.benchmarks import _quality_analysis as analysis  # noqa: E402
from nnunet_ext.benchmarks import _quality_kinds as kinds  # noqa: E402
from nnunet_ext.benchmarks import _thick_vessels as vessels  # noqa: E402


@pytest.mark.parametrize("kind, trainers, dims", [
    ("tubes", None, [2, 3]),
    ("context", ["nnUNetTrainer", "nnUNetTrainerGLNet", "nnUNetTrainerGLNet_bidirectional"], [2]),
    ("em", ["nnUNetTrainer", "nnUNetTrainerDAWMR", "nnUNetTrainerLED", "nnUNetTrainerDAWMRLED"], [2]),
    ("trees", ["nnUNetTrainer", "nnUNetTrainerSkelRecall_w1", "nnUNetTrainerSkelRecall_w0p1", "nnUNetTrainerClDice"],
     [3]),
])
def test_each_kind_has_its_default_trainers_and_dims(kind, trainers, dims):
    args = quality.parse_args(["--kind", kind])
    assert args.trainer_names == (trainers or setup.default_trainers())
    assert quality.dims_from(args) == dims
    assert quality.dims_from(quality.parse_args(["--kind", kind, "--budget", "gpu"])) == (
        [3] if kind == "em" else dims)
    for name in args.trainer_names:  # every default trainer exists in the registry with a short variant
        assert name == "nnUNetTrainer" or name in registry.trainer_names()
        assert name + "_short" in registry.trainer_names()


def test_kind_budgets_replace_data_and_schedule_only():
    budget = quality.budget_from(quality.parse_args(["--kind", "trees"]))
    assert budget.size == {3: (32, 64, 64)} and budget.cases == {3: (10, 4)}
    assert budget.schedule[3] == kinds.TREES.budgets["cpu"].schedule[3]
    assert (budget.feature_scale, budget.jobs, budget.device) == (0.5, 2, "cpu")
    context = quality.budget_from(quality.parse_args(["--kind", "context", "--epochs", "3", "--shape", "128", "96"]))
    assert context.gpu_memory_target == {2: 0.1} and context.size[2] == (128, 96)
    assert context.schedule[2] == setup.Schedule(3, 12, 2)
    overridden = quality.budget_from(quality.parse_args(["--kind", "context", "--gpu-memory-target", "0.2"]))
    assert overridden.gpu_memory_target[2] == 0.2


def test_generated_datasets_of_the_tree_kind_pair_thin_and_thick_on_the_same_seeds(tmp_path):
    datasets = setup.generated_datasets(tmp_path, [3], (0, 2), kinds.TREES)
    assert [(d.label, d.seed, d.dataset_id) for d in datasets] == [
        ("3D thin trees", 0, 600), ("3D thin trees", 2, 602), ("3D thick trees", 0, 900), ("3D thick trees", 2, 902)]
    assert datasets[2].name == "Dataset900_QualityThickTrees3D_seed0" and datasets[2].configuration == "3d_fullres"
    assert kinds.TREES.variant("thick").options["radius"] == (3.0, 4.5)
    assert kinds.TREES.variant("thin").options["radius"] == (1.0, 2.0)
    only = setup.generated_datasets(tmp_path, [3], (1,), kinds.TREES, ["thick"])
    assert [d.name for d in only] == ["Dataset901_QualityThickTrees3D_seed1"]
    control = setup.generated_datasets(tmp_path, [3], (0,), kinds.TREES, ["thick", "thick1"])   # only when named
    assert [d.name for d in control] == ["Dataset900_QualityThickTrees3D_seed0",
                                         "Dataset300_QualityThickTreesOneLabel3D_seed0"]
    assert kinds.TREES.variant("thick1").options == {"radius": (3.0, 4.5), "one_label": True}
    ids = [v.id_base[d] for k in kinds.KINDS.values() for v in k.variants for d in v.id_base]
    assert len(set(ids)) == len(ids) and all(i + setup.MAX_GENERATED_SEED <= 999 for i in ids)
    assert len({i // 100 for i in ids}) == len(ids)  # 100 apart: no two kinds share an id for seeds 0..99


@pytest.mark.parametrize("argv, message", [
    (["--kind", "trees", "--dims", "2"], "kind trees generates 3D data only"),
    (["--kind", "trees", "--variants", "fat"], "kind trees has the variants thin, thick"),
    (["--kind", "context", "--variants", "thick"], "kind context has no variants"),
    (["--kind", "em", "--shape", "8", "8", "8", "8"], "--shape needs 2 or 3 sizes"),
    (["--kind", "context", "--gpu-memory-target", "0"], "--gpu-memory-target must be > 0"),
    (["--kind", "nope"], "invalid choice: 'nope'"),
])
def test_kind_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quality.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_glnet_trains_on_its_own_plans_and_everything_else_on_the_default_ones():
    cpu = quality.budget_from(quality.parse_args(["--kind", "context"]))
    gpu = quality.budget_from(quality.parse_args(["--kind", "context", "--budget", "gpu"]))
    assert quality.plans_name(cpu, "nnUNetTrainerGLNet") == "nnUNetPlans_GLNet_cpu"
    assert quality.plans_name(cpu, "nnUNetTrainerGLNet_short") == "nnUNetPlans_GLNet_cpu"
    assert quality.plans_name(gpu, "nnUNetTrainerGLNet") == "nnUNetPlans_GLNet"
    for trainer in ("nnUNetTrainer", "nnUNetTrainerDAWMR", "nnUNetTrainerLED", "nnUNetTrainerSkelRecall_w0p1"):
        assert quality.plans_name(cpu, trainer) == runs.REDUCED_PLANS
        assert quality.plans_name(gpu, trainer) == "nnUNetPlans"
    assert quality.own_plans_needed(["nnUNetTrainer", "nnUNetTrainerGLNet", "nnUNetTrainerGLNetSkelRecall"]) == [
        ("nnUNetPlans_GLNet", "glnet")]
    assert quality.own_plans_needed(["nnUNetTrainer", "nnUNetTrainerDAWMR"]) == []


def test_reduced_glnet_plans_keep_the_network_and_do_not_replace_the_default_reduced_plans(tmp_path):
    for stem in ("nnUNetPlans", "nnUNetPlans_GLNet"):
        shutil.copy(EXAMPLE_PLANS / f"TubesHuge2D_{stem}.json", tmp_path / f"{stem}.json")
    runs.write_reduced_plans(tmp_path / "nnUNetPlans.json", 0.5)
    assert runs.write_reduced_plans(tmp_path / "nnUNetPlans_GLNet.json", 0.5, "nnUNetPlans_GLNet_cpu") == \
        "nnUNetPlans_GLNet_cpu"
    default = json.loads((tmp_path / "nnUNetPlans_cpu.json").read_text())["configurations"]["2d"]
    glnet_plans = json.loads((tmp_path / "nnUNetPlans_GLNet_cpu.json").read_text())
    original = json.loads((tmp_path / "nnUNetPlans_GLNet.json").read_text())["configurations"]["2d"]
    glnet = glnet_plans["configurations"]["2d"]
    assert glnet_plans["plans_name"] == "nnUNetPlans_GLNet_cpu"
    assert default["architecture"]["network_class_name"].endswith("PlainConvUNet")
    assert glnet["architecture"]["network_class_name"] == original["architecture"]["network_class_name"]
    kwargs, before = glnet["architecture"]["arch_kwargs"], original["architecture"]["arch_kwargs"]
    assert kwargs["features_per_stage"] == [f // 2 for f in before["features_per_stage"]]
    assert kwargs["tile_grid"] == before["tile_grid"] and glnet["patch_size"] == original["patch_size"]
    with pytest.raises(ValueError, match="own identifier"):
        runs.write_reduced_plans(tmp_path / "nnUNetPlans.json", 0.5, "nnUNetPlans")


def _dataset(tmp_path: Path, kind: str, variant: str = "", dim: int = 2) -> setup.Dataset:
    spec = kinds.KINDS[kind]
    stem = spec.variant(variant).stem
    return setup.Dataset("label", spec.variant(variant).id_base[dim], 0, dim, "2d" if dim == 2 else "3d_fullres",
                         tmp_path / "raw", tmp_path / "pre", tmp_path / "res", True, kind, variant, stem)


def test_evaluation_options_of_each_kind(tmp_path):
    em = _dataset(tmp_path, "em")
    assert quality.evaluation_options(em, True) == ["--families", "dice", "instance", "--instance-labels", "0"]
    (em.raw / "instancesTs").mkdir(parents=True)
    (em.raw / "instancesTs" / "em_0000.nii.gz").write_bytes(b"")
    assert quality.evaluation_options(em, True) == ["--families", "dice", "instance", "--instances-folder",
                                                    str(em.raw / "instancesTs"), "--instance-labels", "0"]
    assert "--instances-folder" not in quality.evaluation_options(em, False)  # validation cases: no instances
    assert quality.evaluation_options(_dataset(tmp_path, "context"), True) == ["--families", "dice", "-l", "1",
                                                                               "2", "1,2"]
    assert quality.evaluation_options(_dataset(tmp_path, "trees", "thick", 3), True) == [
        "--families", "dice", "cldice", "betti", "components"]
    assert quality.evaluation_options(_dataset(tmp_path, "tubes"), True) == []


def test_context_metrics_are_the_two_classes_their_mean_and_the_region_of_both():
    summary = {"foreground_mean": {"Dice": 0.7}, "mean": {"1": {"Dice": 0.9}, "2": {"Dice": 0.3},
                                                          "(1, 2)": {"Dice": 0.95}}}
    metrics = quality.kind_metrics(kinds.CONTEXT, summary)
    assert metrics == pytest.approx({"Dice": 0.6, "Dice_1": 0.9, "Dice_2": 0.3, "Dice_any": 0.95})
    assert quality.kind_metrics(kinds.EM, {"foreground_mean": {"ARE": 0.2}}) == {"ARE": 0.2}


def _fake_prepared(dataset: setup.Dataset) -> None:
    """The raw folders run_one reads: dataset.json, imagesTs, labelsTs, instancesTs."""
    dataset.raw.mkdir(parents=True, exist_ok=True)
    (dataset.raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    for sub in ("imagesTs", "labelsTs", "instancesTs"):
        (dataset.raw / sub).mkdir(exist_ok=True)
        (dataset.raw / sub / "case_0000.nii.gz").write_bytes(b"")


def test_run_one_wires_plans_evaluation_and_analysis_per_kind(tmp_path, monkeypatch):
    from nnunet_ext.cli.nnunet_commands import Finished
    calls = {}
    finished = Finished(("x",), 0, "", "", 1.0, 1.0, 2 ** 30)

    def train(*arguments, **_):
        calls["train"] = arguments
        return finished, None

    def predict(*arguments, **_):
        calls["predict"] = arguments
        return finished

    monkeypatch.setattr(runs, "train", train)
    monkeypatch.setattr(runs, "predict", predict)

    def evaluate(reference, prediction, dataset_json, output, env, log, processes, options=()):
        calls["evaluate"] = list(options)
        return {"foreground_mean": {"Dice": 0.5, "ARE": 0.25}, "mean": {"1": {"Dice": 0.5}},
                "metric_per_case": [{}, {}]}

    def analyse(mode, reference, prediction, output, env, log):
        calls["analyse"] = mode
        return {"foreground_mean": {"B0_breaks": 2.0}}

    monkeypatch.setattr(runs, "evaluate", evaluate)
    monkeypatch.setattr(runs, "analyse", analyse)
    em = _dataset(tmp_path, "em")
    budget = quality.budget_from(quality.parse_args(["--kind", "em"]))
    _fake_prepared(em)
    result = quality.run_one(em, "nnUNetTrainerDAWMRLED", budget, {}, tmp_path / "work")
    assert calls["train"][2:4] == ("nnUNetTrainerDAWMRLED_short", "nnUNetPlans_cpu")
    assert calls["evaluate"] == ["--families", "dice", "instance", "--instances-folder", str(em.raw / "instancesTs"),
                                 "--instance-labels", "0"]
    assert "analyse" not in calls and result["metrics"] == {"Dice": 0.5, "ARE": 0.25}
    assert result["config"]["kind"] == "em" and result["plans"] == "nnUNetPlans_cpu"
    assert result["metrics_per_label"] == {"1": {"Dice": 0.5}}

    calls.clear()
    trees = _dataset(tmp_path, "trees", "thick", 3)
    budget = quality.budget_from(quality.parse_args(["--kind", "trees"]))
    _fake_prepared(trees)
    result = quality.run_one(trees, "nnUNetTrainerSkelRecall_w1", budget, {}, tmp_path / "work")
    assert calls["analyse"] == "trees" and result["metrics"]["B0_breaks"] == 2.0
    assert result["config"]["variant"] == "thick"
    # reused: not trained again, but the analysis runs again on the kept predictions (new measures reach it)
    calls.clear()
    Path(result["prediction_folder"]).mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(runs, "analyse", lambda *a, **k: {"foreground_mean": {"B0_breaks": 1.0, "Class_swapped": 0.5}})
    again = quality.run_one(trees, "nnUNetTrainerSkelRecall_w1", budget, {}, tmp_path / "work")
    assert "train" not in calls and again["metrics"]["B0_breaks"] == 1.0 and again["metrics"]["Class_swapped"] == 0.5
    stored = json.loads((Path(result["analysis_file"]).parent / "result.json").read_text())
    assert stored["metrics"]["Class_swapped"] == 0.5 and stored["metrics"]["Dice"] == result["metrics"]["Dice"]
    monkeypatch.setattr(runs, "analyse", analyse)

    calls.clear()
    context = _dataset(tmp_path, "context")
    budget = quality.budget_from(quality.parse_args(["--kind", "context"]))
    _fake_prepared(context)
    quality.run_one(context, "nnUNetTrainerGLNet", budget, {}, tmp_path / "work")
    assert calls["train"][2:4] == ("nnUNetTrainerGLNet_short", "nnUNetPlans_GLNet_cpu")
    assert calls["predict"][4:6] == ("nnUNetTrainerGLNet_short", "nnUNetPlans_GLNet_cpu")
    assert calls["analyse"] == "context"


def test_prepare_plans_glnet_at_the_kinds_target_and_reduces_both_plans(tmp_path, monkeypatch):
    context = _dataset(tmp_path, "context")
    folder = context.preprocessed_root / context.name
    budget = quality.budget_from(quality.parse_args(["--kind", "context"]))
    calls = []

    def plan_and_preprocess(dataset_id, configuration, env, log, processes, gpu_memory_target=None):
        calls.append(("default", dataset_id, configuration, gpu_memory_target))
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(EXAMPLE_PLANS / "TubesHuge2D_nnUNetPlans.json", folder / "nnUNetPlans.json")
        (folder / "nnUNetPlans_2d").mkdir(exist_ok=True)

    def plan_own(dataset_id, key, identifier, configuration, env, log, processes, gpu_memory_target=None):
        calls.append(("own", key, identifier, configuration, gpu_memory_target))
        shutil.copy(EXAMPLE_PLANS / "TubesHuge2D_nnUNetPlans_GLNet.json", folder / f"{identifier}.json")
        (folder / "nnUNetPlans_GLNet_2d").mkdir(exist_ok=True)

    monkeypatch.setattr(runs, "plan_and_preprocess", plan_and_preprocess)
    monkeypatch.setattr(runs, "plan_own", plan_own)
    (tmp_path / "work" / "logs").mkdir(parents=True)
    quality.prepare(context, budget, {}, tmp_path / "work", quality.own_plans_needed(["nnUNetTrainerGLNet"]))
    assert calls == [("default", 200, "2d", 0.1), ("own", "glnet", "nnUNetPlans_GLNet", "2d", 0.1)]
    assert (folder / "nnUNetPlans_cpu.json").exists() and (folder / "nnUNetPlans_GLNet_cpu.json").exists()
    calls.clear()
    quality.prepare(context, budget, {}, tmp_path / "work", quality.own_plans_needed(["nnUNetTrainerGLNet"]))
    assert calls == []  # up to date: neither planned again
    quality.prepare(context, dataclasses.replace(budget, gpu_memory_target={2: 0.2}), {}, tmp_path / "work",
                    quality.own_plans_needed(["nnUNetTrainerGLNet"]))
    assert [c[0] for c in calls] == ["default", "own"] and calls[1][-1] == 0.2  # a new target plans both again


def _tree_result(trainer: str, seed: int, dice: float, breaks: float, dataset: str) -> dict:
    result = _result(trainer, seed, dice, 1.0, dataset=dataset)
    result["metrics"].update(clDice=dice, B0_breaks=breaks, B0_false_blobs=0.5, Comp_FP=1.0,
                             Fg_betti0_error=breaks / 2)
    return result


def test_tree_report_has_the_main_and_the_betti0_tables_per_variant(tmp_path):
    results = [_tree_result(t, s, 0.8 + 0.01 * s, b, d) for d in ("3D thin trees", "3D thick trees")
               for t, b in (("nnUNetTrainer_short", 1.0), ("nnUNetTrainerSkelRecall_w1_short", 3.0)) for s in (0, 1)]
    budget = quality.budget_from(quality.parse_args(["--kind", "trees"]))
    text = quality.markdown(results, [], [], budget, ["--kind", "trees"], 60.0, 60.0, kinds.TREES,
                            ["nnUNetTrainer"], ["", "## extra section"])
    assert text.startswith("# nnunet-ext quality benchmark: trees (cpu budget)")
    for variant in ("thin", "thick"):
        main_part = text.split(f"## 3D {variant} trees\n", 1)[1]
        header, body = _parse_markdown(main_part.split("\n\n", 1)[0])
        assert header == ["Trainer", "seeds", "Dice ↑", "clDice ↑", "Betti-0 error ↓", "Comp FP ↓", "s / epoch",
                          "peak RSS (GB)"]
        breakdown = text.split(f"### 3D {variant} trees: where the betti-0 errors come from", 1)[1]
        header, body = _parse_markdown(breakdown.split("\n\n", 3)[2])
        assert header == ["Trainer", "seeds", "breaks ↓", "false blobs ↓"]
        assert body[1][2] == "3.00 ± 0.00"
        differences = breakdown.split("mean ± std over seeds:\n\n", 1)[1]
        assert _parse_markdown(differences.split("\n\n", 1)[0])[1] == [["`nnUNetTrainerSkelRecall_w1_short`",
                                                                        "2.00 ± 0.00", "0.00 ± 0.00"]]
        merged = text.split(f"### 3D {variant} trees: wrong class or wrong shape", 1)[1]
        header, body = _parse_markdown(merged.split("\n\n", 3)[2])
        assert header == ["Trainer", "seeds", "Betti-0 error ↓", "Betti-0 error, classes merged ↓"]
        assert body[1][3] == "1.50 ± 0.00"
    assert text.rstrip().endswith("## extra section")


def test_plot_draws_the_kinds_metrics(tmp_path):
    results = [_tree_result("nnUNetTrainer_short", s, 0.8, 1.0, "3D thick trees") for s in range(2)]
    report.plot(results, tmp_path / "t.png", ["Dice", "B0_breaks", "ARE"])  # ARE absent: skipped
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_names():
    cpu = setup.BUDGETS["cpu"]
    assert quality.output_names("tubes", cpu) == ("quality_cpu.md", "results.json")
    assert quality.output_names("em", cpu) == ("quality_em_cpu.md", "results_em.json")


# ------------------------------------------------------------------------------------------- analyses

def _line(shape, axis_slice) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[axis_slice] = True
    return mask


def test_tree_breakdown_counts_breaks_false_blobs_wrong_class_and_missed_trees():
    from nnunet_ext.evaluation.topology import betti_numbers
    shape = (5, 12, 30)
    reference = np.zeros(shape, np.uint8)
    reference[_line(shape, (2, 2, slice(2, 28)))] = 1          # tree of class 1: a rod along axis 2
    reference[_line(shape, (2, 9, slice(2, 28)))] = 2          # tree of class 2
    prediction = np.zeros(shape, np.uint8)
    prediction[2, 2, 2:12] = 1                                   # class 1 in two pieces (a break) ...
    prediction[2, 2, 15:28] = 1
    prediction[0, 6, 20] = 1                                     # ... a false blob ...
    prediction[2, 9, 5:8] = 1                                    # ... and a piece of tree 2 labelled 1
    prediction[2, 9, 20:24] = 2                                  # class 2 only partly found: fine, no error
    case = analysis.tree_case_metrics(reference, prediction, [1, 2])
    one, two = case["per_label"][1], case["per_label"][2]
    assert (one["B0_breaks"], one["B0_false_blobs"], one["B0_wrong_class"], one["B0_missed"]) == (1, 1, 1, 0)
    assert (two["B0_breaks"], two["B0_false_blobs"], two["B0_wrong_class"], two["B0_missed"]) == (0, 0, 0, 0)
    for label, counts in case["per_label"].items():
        b0_pred, b0_ref = betti_numbers(prediction == label)[0], betti_numbers(reference == label)[0]
        assert counts["B0_difference"] == b0_pred - b0_ref == (counts["B0_breaks"] + counts["B0_false_blobs"]
                                                               + counts["B0_wrong_class"] - counts["B0_missed"])
    assert case["Fg_merged"] == 0
    prediction[2, 3:10, 21] = 1                                  # a bridge of class 1 from tree 1 into tree 2
    case = analysis.tree_case_metrics(reference, prediction, [1, 2])
    assert case["per_label"][1]["Class_bleeds"] == 1 and case["Fg_merged"] == 1
    empty = analysis.tree_case_metrics(reference, np.zeros(shape, np.uint8), [1, 2])
    assert [empty["per_label"][c]["B0_missed"] for c in (1, 2)] == [1, 1]


def test_class_merged_measures_tell_a_class_flip_from_a_break():
    shape = (5, 12, 30)
    reference = np.zeros(shape, np.uint8)
    reference[2, 2, 2:28] = 1
    reference[2, 9, 2:28] = 2
    flipped = reference.copy()
    flipped[2, 2, 10:16] = 2                                     # tree 1 whole, 6 of its 26 voxels labelled 2
    case = analysis.tree_case_metrics(reference, flipped, [1, 2])
    assert case["per_label"][1]["B0_breaks"] == 1 and case["per_label"][2]["B0_wrong_class"] == 1
    assert case["Fg_betti0_error"] == 0
    assert case["Class_swapped"] == pytest.approx(6 / 52)
    broken = reference.copy()
    broken[2, 2, 10:16] = 0                                      # the same voxels missing: a real break
    case = analysis.tree_case_metrics(reference, broken, [1, 2])
    assert case["per_label"][1]["B0_breaks"] == 1 and case["Fg_betti0_error"] == 1
    assert case["Class_swapped"] == 0.0
    assert math.isnan(analysis.tree_case_metrics(reference, np.zeros(shape, np.uint8), [1, 2])["Class_swapped"])


def test_context_accuracy_counts_structures_by_their_majority_class():
    reference = np.zeros((20, 20), np.uint8)
    reference[1:4, 1:4] = 2                                      # right: mostly 2
    reference[8:11, 8:11] = 2                                    # wrong: mostly 1
    reference[15:18, 15:18] = 2                                  # missed
    prediction = np.zeros_like(reference)
    prediction[1:4, 1:4] = 2
    prediction[1, 1] = 1
    prediction[8:11, 8:11] = 1
    prediction[8, 8] = 2
    figures = analysis.context_case_metrics(reference, prediction)
    assert figures == {"Class_accuracy": pytest.approx(1 / 3), "structures": 3, "missed": 1}


def test_analysis_cli_writes_the_foreground_mean(tmp_path):
    reference, prediction = tmp_path / "ref", tmp_path / "pred"
    reference.mkdir()
    prediction.mkdir()
    ref = np.zeros((4, 6, 8), np.uint8)
    ref[1, 1, 1:7] = 1
    ref[2, 4, 1:7] = 2
    for name, pred in (("a.nii.gz", ref), ("b.nii.gz", np.where(ref == 1, 1, 0).astype(np.uint8))):
        sitk.WriteImage(sitk.GetImageFromArray(ref), str(reference / name))
        sitk.WriteImage(sitk.GetImageFromArray(pred), str(prediction / name))
    assert analysis.main(["trees", str(reference), str(prediction), "-o", str(tmp_path / "out.json")]) == 0
    means = json.loads((tmp_path / "out.json").read_text())["foreground_mean"]
    assert means["B0_missed"] == pytest.approx(0.25)   # case b misses tree 2: (0 + 1) / 2 classes / 2 cases
    assert means["B0_breaks"] == 0 and means["Fg_merged"] == 0
    assert means["Fg_betti0_error"] == pytest.approx(0.5) and means["Class_swapped"] == 0  # b: 1 vessel of 2
    (prediction / "b.nii.gz").unlink()
    assert analysis.main(["trees", str(reference), str(prediction), "-o", str(tmp_path / "x.json")]) == 1


# ------------------------------------------------------------------------------------------- tube checks

def test_run_lengths_through_points():
    mask = np.zeros((3, 9), bool)
    mask[1, 2:7] = True
    mask[2, 0:2] = True
    lengths = vessels.run_lengths(mask, 1)
    assert lengths[1, 4] == 5 and lengths[2, 0] == 2 and lengths[0, 0] == 0 and lengths[1, 0] == 0
    assert vessels.run_lengths(mask, 0)[1, 4] == 1


def test_tube_geometry_of_a_round_vessel_on_anisotropic_voxels():
    spacing = (2.0, 1.0, 1.0)
    z, y, _ = np.meshgrid(np.arange(15) * 2.0, np.arange(31) * 1.0, np.arange(40), indexing="ij")
    label = (((z - 14) ** 2 + (y - 15) ** 2) <= 4.0 ** 2).astype(np.uint8)     # radius 4 mm, along axis 2
    figures = vessels.tube_geometry(label, spacing)
    assert [figures[f"tube_radius_mm_{a}"] for a in range(3)] == [4.0, 2.0, 2.0]
    assert figures["radius_mm"] == pytest.approx(4.0, abs=1.0)
    # through the centreline the vessel is 5 voxels (10 mm) across along axis 0 and 9 voxels (9 mm) along axis 1;
    # the tube (L1 radius 2 voxels) spans all 5 along axis 0 but only 5 of the 9 in-plane
    assert figures["chord_vox_0"] == pytest.approx(5.0) and figures["chord_mm_0"] == pytest.approx(10.0)
    assert figures["chord_vox_1"] == pytest.approx(9.0) and figures["chord_mm_1"] == pytest.approx(9.0)
    assert figures["tube_share_0"] == pytest.approx(1.0) and figures["tube_share_1"] == pytest.approx(5 / 9)
    assert 0 < figures["tube_share"] < 1


def test_scale_figures_and_deep_supervision_weights():
    segmentation = np.zeros((4, 8, 8), np.uint8)
    segmentation[1:3, 2:6, 1:7] = 1
    tube = np.zeros_like(segmentation)
    tube[2, 3:5, 1:7] = 1
    tube[0, 0, 0] = 1                                            # outside the label
    figures = vessels.scale_figures(segmentation, tube, [1])
    assert figures["outside_label"] == pytest.approx(1 / 13) and figures["other_class"] == 0
    assert figures["tube_share"] == pytest.approx(13 / 48)
    assert figures["label_components_1"] == 1 and figures["tube_components_1"] == 2
    assert vessels.deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0])
    assert vessels.deep_supervision_weights(1) == [1.0]


def test_tube_at_every_deep_supervision_scale_through_the_trainers_own_pipeline(nnunet_env):
    from conftest import make_tiny_trainer
    from nnunet_ext.trainers import nnUNetTrainerSkelRecall
    from nnunet_ext.testing.trees import thick_tree_case
    trainer = make_tiny_trainer(nnUNetTrainerSkelRecall, 3)         # patch 16³, strides 1, 2, 2: two scales
    image, label = thick_tree_case((16, 16, 16), seed=3, n_classes=1, radius=(1.5, 2.0), spacing=(1, 1, 1), depth=2)
    rows = vessels.scale_rows(trainer, [(image[None], label[None])])
    assert [row["shape"] for row in rows] == [[16, 16, 16], [8, 8, 8]]
    assert [row["weight"] for row in rows] == pytest.approx([1, 0])  # nnU-Net's: the lowest scale weighs 0
    full = rows[0]
    tube = (vessels.tubed_skeleton(label) > 0).sum()
    assert full["tube_voxels"] == tube and full["label_voxels"] == (label > 0).sum()
    assert full["tube_share"] == pytest.approx(tube / (label > 0).sum()) and full["fresh_covered"] == 1.0
    for row in rows:  # nearest-neighbour downsampling samples both channels at the same voxels: tube in label
        assert row["outside_label"] == 0 and row["other_class"] == 0
        assert row["tube_voxels"] > 0
