"""Focal loss in place of nnU-Net's CE: values against a float64 reference written from the formula, region mode
against torchvision's sigmoid focal loss, gamma 0 equal to nnU-Net's loss, the focal gradient (not a re-weighted
CE's), the ignore label, argument checks, and the trainer (``nnUNetTrainerFocal``) at every deep-supervision
scale."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torchvision.ops import sigmoid_focal_loss

from conftest import make_tiny_trainer, training_batch
from nnunet_ext.losses.focal import DiceFocalLoss, check_gamma


def ce_loss(ignore_label=None, weight_dice=1.0, **ce_kwargs) -> DC_and_CE_loss:
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, dict(ce_kwargs),
                          weight_ce=1, weight_dice=weight_dice, ignore_label=ignore_label)


def bce_loss(use_ignore_label: bool, weight_dice=1.0) -> DC_and_BCE_loss:
    return DC_and_BCE_loss({}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False},
                           weight_dice=weight_dice, use_ignore_label=use_ignore_label,
                           dice_class=MemoryEfficientSoftDiceLoss)


def reference_focal(logits: np.ndarray, labels: np.ndarray, gamma: float, ignore_label=None) -> float:
    """mean over valid voxels of -(1 - p_t)^gamma log p_t, softmax written out in float64 voxel by voxel."""
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for index in np.ndindex(*logits.shape[2:]):
            label = int(labels[(b, 0) + index])
            if label == ignore_label:
                continue
            z = logits[(b, slice(None)) + index].astype(np.float64)
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            total += -((1 - p[label]) ** gamma) * np.log(p[label])
            count += 1
    return total / count


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 3, 4, 3, 5)])
@pytest.mark.parametrize("gamma", [0.5, 2.0, 3.0])
def test_label_mode_equals_the_formula(shape, gamma):
    gen = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(shape, generator=gen)
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=gen)
    loss = DiceFocalLoss(ce_loss(weight_dice=0.0), gamma)
    value = loss(logits, labels).item()
    assert value == pytest.approx(reference_focal(logits.numpy(), labels.numpy(), gamma), rel=1e-5)
    assert value < torch.nn.functional.cross_entropy(logits, labels[:, 0]).item()  # easy voxels count less


def test_dice_is_nnunets_and_gamma_zero_is_nnunets_loss():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 8, 8, generator=gen)
    labels = torch.randint(0, 3, (2, 1, 8, 8), generator=gen)
    base = ce_loss()
    assert DiceFocalLoss(base, 0.0)(logits, labels).item() == pytest.approx(base(logits, labels).item(), rel=1e-6)
    focal_only = DiceFocalLoss(ce_loss(weight_dice=0.0), 2.0)(logits, labels)
    dice = base.dc(logits, labels)
    assert DiceFocalLoss(base, 2.0)(logits, labels).item() == pytest.approx((focal_only + dice).item(), rel=1e-6)


@pytest.mark.parametrize("use_ignore_label", [False, True])
def test_region_mode_equals_torchvisions_sigmoid_focal_loss(use_ignore_label):
    gen = torch.Generator().manual_seed(3)
    logits = 2 * torch.randn(2, 2, 6, 7, generator=gen)
    regions = (torch.rand(2, 2, 6, 7, generator=gen) > 0.6).float()
    target = regions
    expected_per_element = sigmoid_focal_loss(logits, regions, alpha=-1, gamma=2.0, reduction="none")
    if use_ignore_label:  # nnU-Net's layout: an ignore channel last; its BCE sums over regions on valid voxels
        ignore = (torch.rand(2, 1, 6, 7, generator=gen) > 0.7).float()
        target = torch.cat([regions, ignore], 1)
        valid = 1 - ignore
        expected = (expected_per_element.sum(1, keepdim=True) * valid).sum() / valid.sum()
    else:
        expected = expected_per_element.mean()
    value = DiceFocalLoss(bce_loss(use_ignore_label, weight_dice=0.0), 2.0)(logits, target)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_is_the_focal_losses():
    """Analytic gradient of FL w.r.t. the logits (not CE's gradient scaled by a detached factor)."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 3, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (1, 1, 4, 4), generator=gen)
    gamma = 2.0
    DiceFocalLoss(ce_loss(weight_dice=0.0), gamma)(logits, labels).backward()
    p = torch.softmax(logits.detach(), 1)
    pt = p.gather(1, labels)
    # FL(pt) = -(1 - pt)^g log pt per voxel, averaged over the n voxels; dpt/dz_k = pt ([k = t] - p_k)
    onehot = torch.zeros_like(p).scatter_(1, labels, 1.0)
    d_fl_d_pt = gamma * (1 - pt) ** (gamma - 1) * torch.log(pt) - (1 - pt) ** gamma / pt
    d_pt_d_z = pt * (onehot - p)
    expected = d_fl_d_pt * d_pt_d_z / labels.numel()
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-9)  # the loss computes in float32
    detached_factor = (1 - pt) ** gamma * (p - onehot) / labels.numel()  # CE's gradient, re-weighted
    assert not torch.allclose(logits.grad, detached_factor, rtol=1e-2)


def test_ignored_voxels_have_no_value_and_no_gradient():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 6, 6, generator=gen, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, 6, 6), generator=gen)
    labels[:, :, :2] = 255
    loss = DiceFocalLoss(ce_loss(ignore_label=255, weight_dice=0.0), 2.0)
    value = loss(logits, labels)
    value.backward()
    assert value.item() == pytest.approx(reference_focal(logits.detach().numpy(), labels.numpy(), 2.0, 255),
                                         rel=1e-5)
    assert torch.all(logits.grad[:, :, :2] == 0) and torch.any(logits.grad[:, :, 2:] != 0)


def test_confident_correct_voxels_have_a_finite_gradient_for_gamma_below_one():
    logits = torch.tensor([[[[60.0]], [[-60.0]]]], requires_grad=True)  # p_t rounds to 1 in float32
    DiceFocalLoss(ce_loss(weight_dice=0.0), 0.5)(logits, torch.zeros(1, 1, 1, 1, dtype=torch.long)).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("gamma", [-1.0, float("nan"), float("inf"), True, "2"])
def test_bad_gamma_is_refused(gamma):
    with pytest.raises(ValueError, match="focal gamma must be a finite number >= 0"):
        check_gamma(gamma)


def test_label_smoothing_and_bce_weights_are_refused():
    with pytest.raises(ValueError, match="label smoothing"):
        DiceFocalLoss(ce_loss(label_smoothing=0.1))
    weighted = DC_and_BCE_loss({"pos_weight": torch.ones(1)}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5,
                                                              "ddp": False}, use_ignore_label=False)
    with pytest.raises(ValueError, match="pos_weight"):
        DiceFocalLoss(weighted)


@pytest.mark.parametrize("dim", [2, 3])
def test_trainer_uses_focal_loss_at_every_scale(nnunet_env, dim):
    from nnunet_ext.trainers import nnUNetTrainerFocal

    class nnUNetTrainerFocal_g3(nnUNetTrainerFocal):
        focal_gamma = 3.0

    trainer = make_tiny_trainer(nnUNetTrainerFocal_g3, dim)
    assert isinstance(trainer.loss, DeepSupervisionWrapper) and isinstance(trainer.loss.loss, DiceFocalLoss)
    assert trainer.loss.loss.gamma == 3.0
    batch = training_batch(trainer)
    gen = torch.Generator().manual_seed(0)
    outputs = [torch.randn(2, 2, *t.shape[2:], generator=gen) for t in batch["target"]]
    inner = trainer.loss.loss.nnunet_loss
    expected = sum(w * (inner.dc(o, t.long()) + reference_focal(o.numpy(), t.numpy(), 3.0))
                   for w, o, t in zip(trainer.loss.weight_factors, outputs, batch["target"]) if w)
    assert trainer.loss(outputs, batch["target"]).item() == pytest.approx(float(expected), rel=1e-5)
