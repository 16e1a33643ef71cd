"""Running the real command-line tools as subprocesses (through nnunet-ext's one runner)."""
from __future__ import annotations

import os
from pathlib import Path

from nnunet_ext.cli.nnunet_commands import Finished, run_command, start_command, tiny_cpu_env


def clean_env(**extra: str) -> dict:
    """The environment a user has after ``pip install``: no nnUNet_extTrainer, tiny CPU settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "NNUNET_EXT_NO_AUTOREGISTER")}
    return tiny_cpu_env(env, **extra)


def start(command: list[str], env: dict):
    """Start a command in the background, its output discarded."""
    return start_command(command, env)


def run(command: list[str], env: dict, timeout: int = 600, check: bool = True) -> Finished:
    """Run a console script from this environment's bin folder; on failure show its output."""
    return run_command(command, env, timeout=timeout, check=check)


def plan(dataset_id: int, configuration: str, env: dict) -> None:
    """``nnUNetv2_plan_and_preprocess`` with one worker (nnU-Net's planner needs nnUNet_n_proc_DA >= 1)."""
    run(["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", configuration, "-np", "1", "-npfp", "1"],
        {**env, "nnUNet_n_proc_DA": "1"})


def fold_folder(results: Path, raw: Path, trainer: str, configuration: str, plans: str = "nnUNetPlans") -> Path:
    """Where nnU-Net writes fold 0 of ``trainer`` for the dataset in ``raw``."""
    return Path(results) / raw.name / f"{trainer}__{plans}__{configuration}" / "fold_0"


def plan_and_train(dataset_id: int, raw: Path, configuration: str, trainer: str, env: dict) -> Path:
    """Plan, preprocess and train fold 0 on the CPU with the real CLI; returns the fold folder."""
    plan(dataset_id, configuration, env)
    train(dataset_id, configuration, trainer, env)
    return fold_folder(env["nnUNet_results"], raw, trainer, configuration)


def train(dataset_id: int, configuration: str, trainer: str, env: dict, plans: str = "nnUNetPlans") -> None:
    """``nnUNetv2_train`` fold 0 on the CPU."""
    run(["nnUNetv2_train", str(dataset_id), configuration, "0", "-tr", trainer, "-p", plans, "-device", "cpu"], env)


def assert_trained(fold: Path, trainer: str) -> dict:
    """The fold's final checkpoint names ``trainer`` and logged only finite training losses; returns it."""
    import numpy as np
    import torch
    checkpoint = torch.load(Path(fold) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer and np.isfinite(checkpoint["logging"]["train_losses"]).all()
    return checkpoint


def assert_predicted_every_case(out: Path, raw: Path) -> None:
    """``out`` holds one .nii.gz prediction for every reference in ``raw/labelsTs``, and nothing else."""
    assert sorted(p.name for p in Path(out).glob("*.nii.gz")) == sorted(p.name for p in (raw / "labelsTs").glob("*"))


def predict(dataset_id: int, raw: Path, out: Path, configuration: str, trainer: str, env: dict,
            plans: str = "nnUNetPlans") -> None:
    """``nnUNetv2_predict`` of ``raw/imagesTs`` with fold 0 on the CPU into ``out``."""
    run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(out), "-d", str(dataset_id), "-c",
         configuration, "-tr", trainer, "-p", plans, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"], env)
