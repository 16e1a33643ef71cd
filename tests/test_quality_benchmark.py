"""``nnunet-ext benchmark quality``: pure helpers, argument checks, and a tiny run through the real CLI."""
from __future__ import annotations

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
    assert budget.seeds == (0, 1) and budget.size[2] == 64 and budget.jobs == 1
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
    allocate = "import numpy; a = numpy.ones(300 * 2**20 // 8); print('ok')"
    finished = runs.run_logged([sys.executable, "-c", allocate], {}, tmp_path / "a.log")
    assert 300 * 2**20 < finished.peak_rss_bytes < 2 * 2**30 and finished.cpu_s > 0
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
