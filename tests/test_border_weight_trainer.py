"""nnUNetTrainerBorderWeight: the weight map in nnU-Net's pipeline, the weighted Dice+CE, the real CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from cli_helpers import assert_predicted_every_case, assert_trained, clean_env, plan_and_train, predict
from conftest import make_trainer
from nnunet_ext.losses.border_weighted import BorderWeightedDiceCELoss
from nnunet_ext.testing.synthetic import separated_touching_pairs, touching_blobs_case, write_touching_blobs_dataset
from nnunet_ext.trainers import nnUNetTrainerBorderWeight
from nnunet_ext.transforms.border_weight import BorderWeightTransform
from nnunet_ext.core.weightmaps import border_weight_map

SCALES = {2: [[1, 1], [0.5, 0.5], [0.25, 0.25]], 3: [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]}


def _blobs(dim: int, seed: int = 0) -> np.ndarray:
    shape = (64, 64) if dim == 2 else (32, 32, 32)
    return touching_blobs_case(shape, n_blobs=6, radius=(5, 9) if dim == 2 else (4, 7), seed=seed)[1]


@pytest.mark.parametrize("dim", [2, 3])
def test_pipeline_appends_the_map_at_every_scale(nnunet_env, dim):
    label = _blobs(dim).astype(np.int16)
    pipeline = make_trainer(nnUNetTrainerBorderWeight, dim).get_validation_transforms(
        SCALES[dim], is_cascaded=False, foreground_labels=[1], regions=None, ignore_label=None)
    out = pipeline(segmentation=torch.from_numpy(label)[None], image=torch.zeros((1, *label.shape)))["segmentation"]
    assert [tuple(t.shape[1:]) for t in out] == [tuple(round(s * f) for s, f in zip(label.shape, sc))
                                                 for sc in SCALES[dim]]
    assert all(t.shape[0] == 2 and t.dtype == torch.float32 for t in out)
    assert np.array_equal(out[0][0].numpy(), label)
    np.testing.assert_allclose(out[0][1].numpy(), border_weight_map(label), rtol=1e-6)
    gap = (label == 0) & (out[0][1].numpy() > out[0][1].numpy()[label == 0].min() + 5)
    assert gap.any()  # the border term is visible between touching blobs


def test_border_map_uses_the_plans_spacing(nnunet_env):
    """Two slabs one voxel apart along an axis of 5 mm spacing (1 mm in-plane): sigma counts in voxels of the
    finest axis, so the gap voxel is 5 units from each slab: w = w_c + 10 exp(-(5 + 5)^2 / (2 * 5^2))."""
    trainer = make_trainer(nnUNetTrainerBorderWeight, 3)
    trainer.configuration_manager.configuration["spacing"] = [1.0, 1.0, 5.0]
    transform = trainer.extra_target_transform(None, None)
    assert transform.spacing == (1.0, 1.0, 5.0)
    label = np.zeros((6, 6, 5), np.int16)
    label[..., 0:2] = 1
    label[..., 3:5] = 1
    weights = transform(segmentation=torch.from_numpy(label)[None])["segmentation"][1].numpy()
    n_valid, n_background = label.size, int((label == 0).sum())
    class_weight = n_valid / (2 * n_background)
    np.testing.assert_allclose(weights[..., 2], class_weight + 10 * np.exp(-100 / 50), rtol=1e-5)
    in_voxels = BorderWeightTransform(spacing=None)(segmentation=torch.from_numpy(label)[None])["segmentation"][1]
    np.testing.assert_allclose(in_voxels[..., 2].numpy(), class_weight + 10 * np.exp(-4 / 50), rtol=1e-5)


def _label_case(seed=0, ignore=None):
    gen = torch.Generator().manual_seed(seed)
    output = torch.randn((2, 3, 8, 8), generator=gen, requires_grad=True)
    labels = torch.randint(0, 3 if ignore is None else 4, (2, 1, 8, 8), generator=gen)
    weights = 1 + 4 * torch.rand((2, 1, 8, 8), generator=gen)
    return output, labels, weights


@pytest.mark.parametrize("ignore", [None, 3])
def test_weight_one_equals_nnunets_dice_ce(ignore):
    output, labels, _ = _label_case(ignore=ignore)
    nnunet = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                            weight_dice=1, ignore_label=ignore, dice_class=MemoryEfficientSoftDiceLoss)
    ours = BorderWeightedDiceCELoss(nnunet)(output, torch.cat([labels.float(), torch.ones_like(labels.float())], 1))
    assert ours.item() == pytest.approx(nnunet(output, labels).item(), rel=1e-5)


@pytest.mark.parametrize("ignore", [None, 3])
def test_weighted_cross_entropy_by_hand(ignore):
    output, labels, weights = _label_case(seed=1, ignore=ignore)
    nnunet = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                            weight_dice=1, ignore_label=ignore, dice_class=MemoryEfficientSoftDiceLoss)
    value = BorderWeightedDiceCELoss(nnunet)(output, torch.cat([labels.float(), weights], 1))
    valid = torch.ones_like(labels, dtype=torch.bool) if ignore is None else labels != ignore
    clean = torch.where(valid, labels, 0)
    log_p = torch.log_softmax(output, 1).gather(1, clean)
    expected_ce = -(log_p * weights * valid).sum() / valid.sum()
    expected_dice = nnunet.dc(output, clean, loss_mask=None if ignore is None else valid)
    assert value.item() == pytest.approx((expected_ce + expected_dice).item(), rel=1e-5)
    value.backward()
    assert torch.isfinite(output.grad).all()


@pytest.mark.parametrize("ignore_channel", [True, False])
def test_region_mode_with_unit_weights_equals_nnunet(ignore_channel):
    gen = torch.Generator().manual_seed(2)
    output = torch.randn((2, 2, 8, 8), generator=gen)
    # two regions (+ the ignore mask as last channel: nnU-Net's layout)
    target = torch.rand((2, 3 if ignore_channel else 2, 8, 8), generator=gen) < 0.4
    nnunet = DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False},
                             use_ignore_label=ignore_channel, dice_class=MemoryEfficientSoftDiceLoss)
    ours = BorderWeightedDiceCELoss(nnunet)(output, torch.cat([target.float(), torch.ones((2, 1, 8, 8))], 1))
    assert ours.item() == pytest.approx(nnunet(output, target).item(), rel=1e-5)


def test_rejects_other_losses():
    with pytest.raises(TypeError, match="DC_and_CE_loss or DC_and_BCE_loss"):
        BorderWeightedDiceCELoss(torch.nn.MSELoss())


def _weighted_dice_ce_by_hand(output, target, dice) -> torch.Tensor:
    """nnU-Net's Dice on the label channel + mean over voxels of w * CE, computed here from the weight channel."""
    labels, weights = target[:, :1].long(), target[:, 1:]
    ce = -(torch.log_softmax(output, 1).gather(1, labels) * weights).mean()
    return ce + dice(output, labels)


@pytest.mark.parametrize("dim", [2, 3])
def test_trainer_loss_weights_every_scale(nnunet_env, dim):
    trainer = make_trainer(nnUNetTrainerBorderWeight, dim)
    loss = trainer._build_loss()
    assert isinstance(loss, DeepSupervisionWrapper) and isinstance(loss.loss, BorderWeightedDiceCELoss)
    label = torch.from_numpy(_blobs(dim).astype(np.int16))[None]
    targets = [t[None] for t in trainer.get_validation_transforms(
        trainer._get_deep_supervision_scales(), regions=None, ignore_label=None)(segmentation=label)["segmentation"]]
    assert len(targets) == len(loss.weight_factors)
    assert all(t[0, 1].max() > 5 for t in targets[:2])  # the border term survives downsampling
    gen = torch.Generator().manual_seed(0)
    outputs = [torch.randn((1, 2, *t.shape[2:]), generator=gen) for t in targets]
    dice = MemoryEfficientSoftDiceLoss(apply_nonlin=lambda x: torch.softmax(x, 1),
                                       batch_dice=trainer.configuration_manager.batch_dice, do_bg=False,
                                       smooth=1e-5, ddp=False)
    weights = np.array([1 / 2 ** i for i in range(len(targets))])
    weights[-1] = 0
    weights /= weights.sum()  # nnU-Net's scale weights
    expected = sum(w * _weighted_dice_ce_by_hand(o, t, dice) for w, o, t in zip(weights, outputs, targets) if w > 0)
    assert loss(outputs, targets).item() == pytest.approx(expected.item(), rel=1e-5)


def test_separation_metric_on_ground_truth_and_merged_prediction():
    from scipy import ndimage
    _, label, instances = touching_blobs_case((96, 96), seed=1)
    touching, separated = separated_touching_pairs(label, instances)
    assert touching > 0 and separated == touching
    assert separated_touching_pairs(ndimage.binary_closing(label, iterations=1), instances) == (touching, 0)


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2])  # one CLI run per feature; 3D: the registry tests' training steps
def test_cli_train_and_predict_with_border_weights(nnunet_env, dim):
    dataset_id, configuration = (985, "2d") if dim == 2 else (986, "3d_fullres")
    shape = (64, 64) if dim == 2 else (32, 32, 32)
    raw = Path(write_touching_blobs_dataset(dataset_id, dim=dim, n_train=5, n_test=1, shape=shape, seed=4))
    env = clean_env(NNUNET_EXT_EPOCHS="1", NNUNET_EXT_ITERATIONS="2", NNUNET_EXT_VAL_ITERATIONS="1")
    trainer = "nnUNetTrainerBorderWeight_short"
    fold = plan_and_train(dataset_id, raw, configuration, trainer, env)
    assert_trained(fold, trainer)
    # nnU-Net's validation Dice and ours (summary_topology.json, computed independently) agree case by case
    nnunet = json.loads((fold / "validation" / "summary.json").read_text())
    ours = json.loads((fold / "validation" / "summary_topology.json").read_text())
    dice = {Path(c["prediction_file"]).name: c["metrics"]["1"]["Dice"] for c in nnunet["metric_per_case"]}
    assert dice and all(np.isfinite(v) for v in dice.values())
    for case in ours["metric_per_case"]:
        assert case["metrics"]["1"]["Dice"] == pytest.approx(dice[Path(case["prediction_file"]).name], abs=1e-6)
    out = raw.parent / f"pred_border_{dim}d"
    predict(dataset_id, raw, out, configuration, trainer, env)
    assert_predicted_every_case(out, raw)
