"""Shared fixtures: nnU-Net environment folders and trainers built from the example plans."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLANS = REPO / "example_plans"


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """Point nnUNet_raw/_preprocessed/_results at fresh temporary folders (tiny CPU settings)."""
    paths = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for name, path in paths.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    for name, value in {"nnUNet_def_n_proc": "1", "nnUNet_compile": "f"}.items():
        monkeypatch.setenv(name, value)
    return paths


def load_example(dim: int) -> tuple[dict, dict]:
    """(plans, dataset_json) that nnU-Net planned for the synthetic Tubes{dim}D dataset."""
    stem = f"Tubes{dim}D"
    plans = json.loads((EXAMPLE_PLANS / f"{stem}_nnUNetPlans.json").read_text())
    dataset_json = json.loads((EXAMPLE_PLANS / f"{stem}_dataset.json").read_text())
    return plans, dataset_json


def make_trainer(cls, dim: int, dataset_json: dict | None = None, configuration: str | None = None):
    """Instantiate a trainer class on the example plans, on the CPU (no data needed until initialize())."""
    import torch
    plans, default_json = load_example(dim)
    configuration = configuration or ("2d" if dim == 2 else "3d_fullres")
    plans["continue_training"] = False  # nnU-Net 2.8's run_training injects this key; the trainer pops it
    return cls(plans, configuration, 0, dataset_json or default_json, device=torch.device("cpu"))


def cpu_count() -> int:
    return os.cpu_count() or 1
