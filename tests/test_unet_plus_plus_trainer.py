"""nnUNetTrainerUNetPlusPlus and its loss combinations: network from plans, full-resolution deep supervision,
UNet++ planning, and the real CLI (train + predict, 2D on default plans, 3D on UNet++ plans)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss

from cli_helpers import assert_predicted_every_case, assert_trained, clean_env, fold_folder, plan, predict, run, train
from conftest import make_trainer
from tube_expectations import assert_bar_tube, bars
from nnunet_ext.errors import UserInputError
from nnunet_ext.losses import SoftSkeletonRecallLoss
from nnunet_ext.losses.extra_target import AuxiliaryTermLoss
from nnunet_ext.losses.deep_supervision import FullResolutionDeepSupervision
from nnunet_ext.losses.mixed import WeightedSumLoss
from nnunet_ext.networks import UNetPlusPlus
from nnunet_ext.testing.synthetic import tubular_case, write_tubular_dataset
from nnunet_ext import trainers
from nnunet_ext.trainers.architecture import RegisteredArchitectureMixin
from nnunet_ext.trainers.registry import ARCHITECTURES, LOSSES, trainer_name

INFERENCE_HEAD_ENV = ARCHITECTURES["UNetPlusPlus"].inference_options["inference_head"]


def _dcce(batch_dice: bool) -> DC_and_CE_loss:
    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_loss_has_a_unetpp_trainer_following_the_naming_rule(loss):
    name = trainer_name("UNetPlusPlus", loss)
    assert name == f"nnUNetTrainerUNetPlusPlus{loss}"
    cls = getattr(trainers, name)
    assert issubclass(cls, RegisteredArchitectureMixin) and cls.architecture == "UNetPlusPlus"
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
    bar_seg, middles = bars(dim)
    bar_targets = pipeline(image=torch.zeros((1, *bar_seg.shape)), segmentation=torch.from_numpy(bar_seg)[None])
    assert_bar_tube(bar_targets["segmentation"][0][1].numpy(), bar_seg, middles)  # the tube, at full resolution
    image, label = tubular_case(shape, seed=2)
    sample = pipeline(image=torch.from_numpy(image)[None], segmentation=torch.from_numpy(label.astype(np.int16))[None])
    targets = sample["segmentation"]
    assert isinstance(targets, list) and len(targets) == 1 and targets[0].shape == (2, *shape)  # label + tube

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


def test_residual_encoder_plans_are_rejected_with_the_fix(nnunet_env):
    trainer = make_trainer(trainers.nnUNetTrainerUNetPlusPlus, 2)
    configuration = trainer.configuration_manager.configuration
    configuration["architecture"]["network_class_name"] = \
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    with pytest.raises(UserInputError, match="nnunet-ext plan -d DATASET --arch unetpp"):
        trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 2, True)


@pytest.mark.slow
def test_unetpp_planner_fits_the_same_vram_target_as_nnunets(nnunet_env):
    """nnU-Net's planner and ours on the same dataset and (small) VRAM target: UNet++ plans take less data per
    step and satisfy nnU-Net's own criterion; with clDice counted on every head they take no more."""
    raw = Path(write_tubular_dataset(953, dim=3, n_train=3, n_test=0, shape=(64, 64, 64), seed=1))
    env = clean_env(nnUNet_n_proc_DA="1")
    run(["nnUNetv2_extract_fingerprint", "-d", "953", "-np", "1"], env)
    run(["nnUNetv2_plan_experiment", "-d", "953", "-gpu_memory_target", "1"], env)
    run(["nnunet-ext", "plan", "-d", "953", "--arch", "unetpp", "-gpu_memory_target", "1"], env)
    run(["nnunet-ext", "plan", "-d", "953", "--arch", "unetpp", "--loss", "ClDice", "-gpu_memory_target", "1"], env)
    folder = nnunet_env["nnUNet_preprocessed"] / raw.name

    def configuration(plans: str, name: str = "3d_fullres") -> dict:
        return json.loads((folder / f"{plans}.json").read_text())["configurations"][name]

    for name in ("3d_fullres", "2d"):
        plain, nested = configuration("nnUNetPlans", name), configuration("nnUNetPlans_UNetPlusPlus", name)
        with_cldice = configuration("nnUNetPlans_UNetPlusPlusClDice", name)
        assert nested["architecture"]["network_class_name"] == "nnunet_ext.networks.unet_plus_plus.UNetPlusPlus"
        volume = {key: int(np.prod(c["patch_size"])) * c["batch_size"]
                  for key, c in (("plain", plain), ("nested", nested), ("cldice", with_cldice))}
        if name == "3d_fullres":  # VRAM binds: the nested decoder gets less data per step on the same target
            assert volume["nested"] < volume["plain"]
            assert volume["cldice"] < volume["nested"]  # clDice's stored skeletons on every head are counted
        else:  # 2D: whole 64x64 slices, and nnU-Net's cap (a batch holds <= 5% of the dataset) binds for all
            assert plain["patch_size"] == nested["patch_size"] == with_cldice["patch_size"] == [64, 64]
            assert volume["cldice"] <= volume["nested"] <= volume["plain"]
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    fullres = configuration("nnUNetPlans_UNetPlusPlus")
    arch = fullres["architecture"]
    estimate = ExperimentPlanner.static_estimate_VRAM_usage(tuple(fullres["patch_size"]), 1, 2,
                                                            arch["network_class_name"], arch["arch_kwargs"],
                                                            arch["_kw_requires_import"])
    assert estimate <= 560e6 / 8  # nnU-Net's criterion at 1 GB: estimate / 2 * 2 <= reference (560e6 at 8 GB)


def test_plan_command_errors_name_the_fix(tmp_path):
    env = clean_env()
    env.pop("nnUNet_preprocessed", None)
    env["nnUNet_raw"] = str(tmp_path)
    result = run(["nnunet-ext", "plan", "-d", "5"], env, check=False)
    assert result.returncode == 1 and "nnUNet_preprocessed not set" in result.stderr
    result = run(["nnunet-ext", "plan", "-d", "5", "--arch", "nope"], env, check=False)
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
    pruned_folder = nnunet_env["nnUNet_results"] / "pruned"
    predict(951, raw, pruned_folder, "2d", trainer, {**env, INFERENCE_HEAD_ENV: "1"})
    pruned = _check_predictions(pruned_folder, raw)
    assert len(pruned) == len(ensemble)
    # the variable chose head 1: the same as nnU-Net's predictor in this process with the head set on the network
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(fold.parent), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    predictor.network.inference_head = 1
    image = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    in_process = predictor.predict_from_files([[str(image)]], None, save_probabilities=False, overwrite=True,
                                              num_processes_preprocessing=1, num_processes_segmentation_export=1)
    np.testing.assert_array_equal(np.squeeze(in_process[0]), np.squeeze(pruned[0]))
    bad = run(["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(nnunet_env["nnUNet_results"] / "bad"),
               "-d", "951", "-c", "2d", "-tr", trainer, "-f", "0", "-device", "cpu"],
              {**env, INFERENCE_HEAD_ENV: "99"}, check=False)
    assert bad.returncode != 0 and INFERENCE_HEAD_ENV in bad.stderr and "Traceback" not in bad.stderr
    # a leftover export must not change training: it is refused with the fix
    refused = run(["nnUNetv2_train", "951", "2d", "1", "-tr", trainer, "-device", "cpu"],
                  {**env, INFERENCE_HEAD_ENV: "1"}, check=False)
    assert refused.returncode == 1 and f"unset {INFERENCE_HEAD_ENV}" in refused.stderr


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
