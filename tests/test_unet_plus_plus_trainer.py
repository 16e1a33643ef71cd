"""nnUNetTrainerUNetPlusPlus and its loss combinations: network from plans, full-resolution deep supervision,
UNet++ planning, and the real CLI (train + predict, 2D on default plans, 3D on UNet++ plans)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss

from cli_helpers import assert_predicted_every_case, assert_trained, clean_env, fold_folder, plan, predict, run, train
from conftest import EXAMPLE_PLANS, make_trainer
from nnunet_ext.architecture_mixins import build_unet_plus_plus
from nnunet_ext.losses import SoftSkeletonRecallLoss
from nnunet_ext.losses.auxiliary import AuxiliaryTermLoss
from nnunet_ext.losses.deep_supervision import FullResolutionDeepSupervision
from nnunet_ext.losses.mixed import WeightedSumLoss
from nnunet_ext.networks import INFERENCE_HEAD_ENV, UNetPlusPlus
from nnunet_ext.registry import ARCHITECTURES, LOSSES, trainer_name
from nnunet_ext.skeleton import tubed_skeleton
from nnunet_ext.synthetic import tubular_case, write_tubular_dataset
from nnunet_ext import trainers


def _dcce(batch_dice: bool) -> DC_and_CE_loss:
    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_has_a_unetpp_trainer_following_the_naming_rule(loss):
    name = trainer_name("UNetPlusPlus", loss)
    assert name == f"nnUNetTrainerUNetPlusPlus{loss}"
    cls = getattr(trainers, name)
    assert ARCHITECTURES["UNetPlusPlus"].mixin in cls.__mro__
    if LOSSES[loss].mixin is not None:
        assert LOSSES[loss].mixin in cls.__mro__
    assert getattr(trainers, name + "_short").__mro__[1:].count(cls) == 1


@pytest.mark.parametrize("dim", [2, 3])
def test_trainer_builds_unetpp_from_default_plans_with_full_resolution_deep_supervision(nnunet_env, dim):
    trainer = make_trainer(trainers.nnUNetTrainerUNetPlusPlus, dim)
    n_stages = trainer.configuration_manager.network_arch_init_kwargs["n_stages"]
    assert "PlainConvUNet" in trainer.configuration_manager.network_arch_class_name  # nnU-Net's default plans
    assert trainer._get_deep_supervision_scales() == [[1.0] * dim]
    loss = trainer._build_loss()
    assert isinstance(loss, FullResolutionDeepSupervision) and isinstance(loss.loss, DC_and_CE_loss)
    assert loss.weight_factors == pytest.approx([1 / n_stages] * n_stages)  # primary + every head, none 0
    network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 2, True)
    assert isinstance(network, UNetPlusPlus) and network.decoder.depth == n_stages - 1


def test_train_step_loss_and_every_parameter_trained(nnunet_env):
    trainer = make_trainer(trainers.nnUNetTrainerUNetPlusPlus, 2)
    # what initialize() sets up, without the preprocessed dataset it also looks for
    trainer.network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 2)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    _, label = tubular_case((64, 64), seed=5)
    target = torch.from_numpy(label.astype(np.float32))[None, None].repeat(2, 1, 1, 1)
    data = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = trainer.network(data)
    dcce = _dcce(trainer.configuration_manager.batch_dice)
    expected = sum(dcce(o, target) for o in outputs) / len(outputs)
    before = {n: p.detach().clone() for n, p in trainer.network.named_parameters()}
    result = trainer.train_step({"data": data, "target": [target]})
    assert result["loss"] == pytest.approx(expected.item(), rel=1e-5)
    missing = [n for n, p in trainer.network.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    # every head and every node's convolution weights get a non-zero gradient and are updated
    weights = {n: p for n, p in trainer.network.named_parameters() if n.endswith("weight") and p.dim() > 1}
    assert all(p.grad.abs().sum() > 0 for p in weights.values())
    assert not [n for n, p in weights.items() if torch.equal(p, before[n])]


@pytest.mark.parametrize("dim", [2, 3])
def test_skeleton_recall_combination_one_full_resolution_target_for_every_output(nnunet_env, dim):
    trainer = make_trainer(trainers.nnUNetTrainerUNetPlusPlusSkelRecall, dim)
    shape = (64, 64) if dim == 2 else (32, 32, 32)
    scales = trainer._get_deep_supervision_scales()
    pipeline = trainer.get_validation_transforms(scales, is_cascaded=False, foreground_labels=[1],
                                                 regions=None, ignore_label=None)
    image, label = tubular_case(shape, seed=2)
    sample = pipeline(image=torch.from_numpy(image)[None], segmentation=torch.from_numpy(label.astype(np.int16))[None])
    targets = sample["segmentation"]
    assert isinstance(targets, list) and len(targets) == 1 and targets[0].shape == (2, *shape)  # label + tube
    np.testing.assert_array_equal(targets[0][1].numpy(), tubed_skeleton(label))

    loss = trainer._build_loss()
    assert isinstance(loss, FullResolutionDeepSupervision) and isinstance(loss.loss, AuxiliaryTermLoss)
    n_outputs = len(loss.weight_factors)
    gen = torch.Generator().manual_seed(1)
    outputs = [torch.randn(1, 2, *shape, generator=gen, requires_grad=True) for _ in range(n_outputs)]
    batch = [targets[0][None].float()]
    value = loss(outputs, batch)
    seg, tube = batch[0][:, :1], batch[0][:, 1:]
    recall = SoftSkeletonRecallLoss(batch_dice=trainer.configuration_manager.batch_dice)
    dcce = _dcce(trainer.configuration_manager.batch_dice)
    expected = sum(w * (dcce(o, seg) + recall(o, tube)) for w, o in zip(loss.weight_factors, outputs))
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)


def test_cldice_combination_wraps_the_mixed_loss(nnunet_env):
    loss = make_trainer(trainers.nnUNetTrainerUNetPlusPlusClDice, 2)._build_loss()
    assert isinstance(loss, FullResolutionDeepSupervision) and isinstance(loss.loss, WeightedSumLoss)
    assert loss.loss.weights == [0.5, 0.5]


def test_output_count_mismatch_is_an_error_not_a_truncation():
    loss = FullResolutionDeepSupervision(_dcce(False), (0.5, 0.5))
    outputs = [torch.randn(1, 2, 8, 8)] * 3
    target = [torch.zeros(1, 1, 8, 8)]
    with pytest.raises(ValueError, match="expected 2 outputs"):
        loss(outputs, target)
    with pytest.raises(TypeError, match="deep supervision off"):
        loss(outputs[0], target)
    with pytest.raises(ValueError, match="must be > 0"):
        FullResolutionDeepSupervision(_dcce(False), (1.0, 0.0))


def test_residual_encoder_plans_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="nnunet-ext plan -d DATASET --arch unetpp"):
        build_unet_plus_plus("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet", {}, (), 1, 2,
                             True)


def _estimate(configuration: dict, patch_size, n_labels: int) -> int:
    arch = configuration["architecture"]
    return ExperimentPlanner.static_estimate_VRAM_usage(tuple(patch_size), 1, n_labels, arch["network_class_name"],
                                                        arch["arch_kwargs"], arch["_kw_requires_import"])


@pytest.mark.parametrize("configuration,reference,reference_batch", [("3d_fullres", 560e6, 2), ("2d", 85e6, 12)])
def test_example_unetpp_plans_fit_the_default_vram_target(configuration, reference, reference_batch):
    plain = json.loads((EXAMPLE_PLANS / "TubesLarge3D_nnUNetPlans.json").read_text())["configurations"][configuration]
    nested = json.loads((EXAMPLE_PLANS / "TubesLarge3D_nnUNetPlans_UNetPlusPlus.json").read_text())[
        "configurations"][configuration]
    assert nested["architecture"]["network_class_name"] == "nnunet_ext.networks.unet_plus_plus.UNetPlusPlus"
    assert nested["data_identifier"] == f"nnUNetPlans_UNetPlusPlus_{configuration}"
    n_labels = 2
    per_sample = _estimate(nested, nested["patch_size"], n_labels)
    # nnU-Net's criterion (estimate / reference batch * 2 <= reference at the 8 GB target), and the batch it derives
    assert per_sample / reference_batch * 2 <= reference
    assert nested["batch_size"] <= max(2, round(reference / per_sample * reference_batch))
    plain_size = int(np.prod(plain["patch_size"])) * plain["batch_size"]
    nested_size = int(np.prod(nested["patch_size"])) * nested["batch_size"]
    assert nested_size < plain_size  # the nested decoder gets less data per step on the same VRAM
    if nested["patch_size"] != plain["patch_size"]:  # the patch was shrunk because the default one does not fit
        nested_at_default = {**nested, "architecture": {**nested["architecture"], "arch_kwargs": plain[
            "architecture"]["arch_kwargs"]}}
        assert _estimate(nested_at_default, plain["patch_size"], n_labels) / reference_batch * 2 > reference


def test_plan_command_errors_name_the_fix(tmp_path):
    env = clean_env()
    env.pop("nnUNet_preprocessed", None)
    env["nnUNet_raw"] = str(tmp_path)
    result = run(["nnunet-ext", "plan", "-d", "5"], env, check=False)
    assert result.returncode == 1 and "nnUNet_preprocessed not set" in result.stderr
    result = run(["nnunet-ext", "plan", "-d", "5", "--arch", "glnet"], env, check=False)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def _check_predictions(out: Path, raw: Path) -> list[np.ndarray]:
    """Every held-out case predicted, with the reference's shape and only labels 0/1; returns the arrays."""
    assert_predicted_every_case(out, raw)
    arrays = []
    for reference in sorted((raw / "labelsTs").glob("*.nii.gz")):
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / reference.name)))
        assert pred.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(reference))).shape
        assert set(np.unique(pred)) <= {0, 1}
        arrays.append(pred)
    return arrays


@pytest.mark.slow
def test_cli_2d_default_plans_train_predict_ensemble_and_pruned(nnunet_env):
    raw = Path(write_tubular_dataset(951, dim=2, n_train=6, n_test=2, shape=(64, 64), seed=3))
    env = clean_env(NNUNET_EXT_EPOCHS="2", NNUNET_EXT_ITERATIONS="3", NNUNET_EXT_VAL_ITERATIONS="1")
    trainer = "nnUNetTrainerUNetPlusPlus_short"
    plan(951, "2d", env)
    train(951, "2d", trainer, env)
    fold = fold_folder(env["nnUNet_results"], raw, trainer, "2d")
    assert (fold / "validation" / "summary.json").is_file()
    state = assert_trained(fold, trainer)["network_weights"]
    assert any(k.startswith("decoder.blocks.x0_") for k in state)
    predict(951, raw, nnunet_env["nnUNet_results"] / "ensemble", "2d", trainer, env)
    ensemble = _check_predictions(nnunet_env["nnUNet_results"] / "ensemble", raw)
    predict(951, raw, nnunet_env["nnUNet_results"] / "pruned", "2d", trainer, {**env, INFERENCE_HEAD_ENV: "1"})
    pruned = _check_predictions(nnunet_env["nnUNet_results"] / "pruned", raw)
    assert len(pruned) == len(ensemble)
    bad = run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(nnunet_env["nnUNet_results"] / "bad"),
               "-d", "951", "-c", "2d", "-tr", trainer, "-f", "0", "-device", "cpu"],
              {**env, INFERENCE_HEAD_ENV: "99"}, check=False)
    assert bad.returncode != 0 and INFERENCE_HEAD_ENV in bad.stderr


@pytest.mark.slow
def test_cli_3d_unetpp_plans_with_skeleton_recall(nnunet_env):
    raw = Path(write_tubular_dataset(952, dim=3, n_train=6, n_test=2, shape=(32, 32, 32), seed=4))
    env = clean_env(NNUNET_EXT_EPOCHS="2", NNUNET_EXT_ITERATIONS="2", NNUNET_EXT_VAL_ITERATIONS="1")
    run(["nnunet-ext", "plan", "-d", "952", "--arch", "unetpp", "--preprocess", "-c", "3d_fullres", "-np", "1",
         "-npfp", "1"], {**env, "nnUNet_n_proc_DA": "1"})
    plans_file = nnunet_env["nnUNet_preprocessed"] / raw.name / "nnUNetPlans_UNetPlusPlus.json"
    configuration = json.loads(plans_file.read_text())["configurations"]["3d_fullres"]
    assert configuration["architecture"]["network_class_name"].endswith("UNetPlusPlus")
    trainer = "nnUNetTrainerUNetPlusPlusSkelRecall_short"
    train(952, "3d_fullres", trainer, env, plans="nnUNetPlans_UNetPlusPlus")
    fold = fold_folder(env["nnUNet_results"], raw, trainer, "3d_fullres", plans="nnUNetPlans_UNetPlusPlus")
    assert_trained(fold, trainer)
    assert (fold / "validation" / "summary_topology.json").is_file()
    out = nnunet_env["nnUNet_results"] / "pred3d"
    predict(952, raw, out, "3d_fullres", trainer, env, plans="nnUNetPlans_UNetPlusPlus")
    _check_predictions(out, raw)
