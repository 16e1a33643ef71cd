"""The unchanged nnU-Net command line with our trainer, as a user runs it after pip install."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cli_helpers import clean_env, fold_folder, plan, predict, run, start
from nnunet_ext.testing.synthetic import write_tubular_dataset

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerSkelRecall_short"
EPOCHS = 4
CASES = {2: dict(dataset_id=981, shape=(96, 96), configuration="2d"),
         3: dict(dataset_id=982, shape=(32, 32, 32), configuration="3d_fullres")}


def _wait_for_log_line(fold_dir: Path, text: str, process, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = sorted(fold_dir.glob("training_log_*.txt"))
        if logs and text in logs[-1].read_text():
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended (exit {process.returncode}) before logging {text!r}")
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not logged within {timeout} s")


def _latest_log(fold_dir: Path) -> str:
    logs = sorted(fold_dir.glob("training_log_*.txt"))
    return logs[-1].read_text()


def _check_topology_summary(summary: Path, topology: Path, dim: int) -> None:
    """The topology summary covers the fold's validation cases and agrees with nnU-Net's Dice."""
    nnunet, ours = json.loads(summary.read_text()), json.loads(topology.read_text())
    keys = {"Dice", "clDice", "Betti0_error", "Betti1_error", "HD95", "NSD", "Comp_F1"} | \
        ({"Betti2_error"} if dim == 3 else set())
    assert keys <= set(ours["foreground_mean"])
    assert ("Betti2_error" in ours["foreground_mean"]) == (dim == 3)
    assert [Path(c["prediction_file"]).name for c in ours["metric_per_case"]] == \
        [Path(c["prediction_file"]).name for c in nnunet["metric_per_case"]]
    assert ours["foreground_mean"]["Dice"] == pytest.approx(nnunet["foreground_mean"]["Dice"], abs=1e-6)
    assert 0.0 <= ours["foreground_mean"]["clDice"] <= 1.0 and ours["foreground_mean"]["Betti0_error"] >= 0


@pytest.mark.parametrize("dim", [2, 3])
def test_plan_train_resume_validate_predict_find_best(nnunet_env, dim):
    case = CASES[dim]
    dataset_id, configuration = case["dataset_id"], case["configuration"]
    raw = Path(write_tubular_dataset(dataset_id, dim=dim, n_train=6, n_test=2, shape=case["shape"], seed=dim))
    env = clean_env(NNUNET_EXT_EPOCHS=str(EPOCHS), NNUNET_EXT_ITERATIONS="2", NNUNET_EXT_VAL_ITERATIONS="1")
    ds = str(dataset_id)

    plan(dataset_id, configuration, env)

    # a real interruption: kill training once the epoch-1 checkpoint is written (``Epoch 2`` is logged after it)
    results = Path(nnunet_env["nnUNet_results"]) / raw.name
    fold = fold_folder(nnunet_env["nnUNet_results"], raw, TRAINER, configuration)
    interrupted = start(["nnUNetv2_train", ds, configuration, "0", "-tr", TRAINER, "-device", "cpu"], env)
    try:
        _wait_for_log_line(fold, "Epoch 2", interrupted)
    finally:
        interrupted.kill()
        interrupted.wait()
    assert not (fold / "checkpoint_final.pth").exists()
    latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert latest["trainer_name"] == TRAINER and latest["current_epoch"] >= 2
    n_logs = len(list(fold.glob("training_log_*.txt")))

    resumed_run = run(["nnUNetv2_train", ds, configuration, "0", "-tr", TRAINER, "-device", "cpu", "--c"], env)
    assert f"Using trainer '{TRAINER}'" in resumed_run.stdout  # found with no nnUNet_extTrainer set
    assert len(list(fold.glob("training_log_*.txt"))) == n_logs + 1
    resumed_log = _latest_log(fold)
    assert f"Epoch {latest['current_epoch']}" in resumed_log and "Epoch 0" not in resumed_log
    assert f"Epoch {EPOCHS - 1}" in resumed_log
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # every epoch's loss is there once, across the interruption
    assert len(final["logging"]["train_losses"]) == EPOCHS and np.isfinite(final["logging"]["train_losses"]).all()

    # --val re-runs the fold's validation with the final checkpoint; our trainers add the topology summary
    summary, topology = fold / "validation" / "summary.json", fold / "validation" / "summary_topology.json"
    assert topology.exists()
    summary.unlink()
    topology.unlink()
    run(["nnUNetv2_train", ds, configuration, "0", "-tr", TRAINER, "-device", "cpu", "--val"], env)
    _check_topology_summary(summary, topology, dim)

    # inference on held-out cases
    prediction_dir = raw.parent / f"pred_{dim}d"
    predict(dataset_id, raw, prediction_dir, configuration, TRAINER, env)
    for label_file in sorted((raw / "labelsTs").glob("*.nii.gz")):
        predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_dir / label_file.name)))
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        assert predicted.shape == reference.shape
        assert set(np.unique(predicted)) <= {0, 1}

    run(["nnUNetv2_find_best_configuration", ds, "-c", configuration, "-tr", TRAINER, "-f", "0", "-np", "1"], env)
    assert (results / "inference_information.json").exists()
    assert TRAINER in (results / "inference_instructions.txt").read_text()
