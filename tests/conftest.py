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


def tiny_plans(dim: int) -> tuple[dict, dict, str]:
    """(plans, dataset_json, configuration): the example plans shrunk to a 3-stage network with 4..16 features
    and a 32² (2D) or 16³ (3D) patch, batch 2, so that one training step of any trainer takes well under a second."""
    plans, dataset_json = load_example(dim)
    configuration = "2d" if dim == 2 else "3d_fullres"
    config = plans["configurations"][configuration]
    config["patch_size"] = [32] * 2 if dim == 2 else [16] * 3
    config["batch_size"] = 2
    kwargs = config["architecture"]["arch_kwargs"]
    kwargs.update(n_stages=3, features_per_stage=[4, 8, 16], kernel_sizes=[[3] * dim] * 3,
                  strides=[[1] * dim, [2] * dim, [2] * dim], n_conv_per_stage=[2, 2, 2],
                  n_conv_per_stage_decoder=[2, 2])
    config.pop("pool_op_kernel_sizes", None)
    config.pop("conv_kernel_sizes", None)
    return plans, dataset_json, configuration


def make_tiny_trainer(cls, dim: int, dataset_json: dict | None = None, loss_as_ddp: bool = False):
    """A trainer on :func:`tiny_plans`, with network, optimizer and loss set up as ``initialize()`` does (without
    the preprocessed dataset that it also opens). ``loss_as_ddp``: the loss as a DDP rank builds it (nnU-Net then
    weights its lowest deep-supervision output 1e-6 instead of 0, so that DDP gets a gradient for every head)."""
    import torch
    plans, default_json, configuration = tiny_plans(dim)
    plans["continue_training"] = False
    trainer = cls(plans, configuration, 0, dataset_json or default_json, device=torch.device("cpu"))
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1,
                                                         trainer.label_manager.num_segmentation_heads,
                                                         trainer.enable_deep_supervision)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    if loss_as_ddp:
        from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
        wrapper = trainer.loss if isinstance(trainer.loss, DeepSupervisionWrapper) else getattr(trainer.loss, "loss")
        if isinstance(wrapper, DeepSupervisionWrapper):  # nnU-Net's DDP branch of _build_loss
            wrapper.weight_factors = tuple(w if w > 0 else 1e-6 for w in wrapper.weight_factors)
    return trainer


def training_batch(trainer, seed: int = 0) -> dict:
    """A batch of two synthetic tube cases at the trainer's patch size, through the trainer's own validation
    pipeline (so extra-target channels and deep-supervision targets are what training sees)."""
    import numpy as np
    import torch
    from nnunet_ext.testing.synthetic import tubular_case
    lm = trainer.label_manager
    pipeline = trainer.get_validation_transforms(trainer._get_deep_supervision_scales(), is_cascaded=False,
                                                 foreground_labels=lm.foreground_labels,
                                                 regions=lm.foreground_regions if lm.has_regions else None,
                                                 ignore_label=lm.ignore_label)
    patch = tuple(trainer.configuration_manager.patch_size)
    samples = []
    for i in range(2):
        image, label = tubular_case(patch, n_classes=len(lm.foreground_labels), seed=seed + i)
        samples.append(pipeline(image=torch.from_numpy(image)[None],
                                segmentation=torch.from_numpy(label.astype(np.int16))[None]))
    data = torch.stack([s["image"] for s in samples])
    segs = [s["segmentation"] for s in samples]
    target = ([torch.stack([s[k] for s in segs]) for k in range(len(segs[0]))] if isinstance(segs[0], list)
              else torch.stack(segs))
    return {"data": data, "target": target, "keys": ["a", "b"]}


@pytest.fixture(autouse=True, scope="session")
def _thinning_tables_in_a_temporary_cache(tmp_path_factory):
    """The thinning tables are cached in the test session's temporary folder, never in the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("nnunet_ext_cache")
    previous = os.environ.get("NNUNET_EXT_CACHE_DIR")
    os.environ["NNUNET_EXT_CACHE_DIR"] = str(folder)
    yield
    if previous is None:
        os.environ.pop("NNUNET_EXT_CACHE_DIR", None)
    else:
        os.environ["NNUNET_EXT_CACHE_DIR"] = previous
