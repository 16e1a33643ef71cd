"""LED (local error density) weights and the LED-weighted nnU-Net Dice+CE: hand-built error maps, a brute-force
reference, ignore handling, clipping, the warm-up switch, equality with nnU-Net's loss, gradients, 2D and 3D."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnunet_ext.losses.led import (LEDWeightedDiceCELoss, led_weights, led_weights_from_errors, led_window,
                                   prediction_errors)


def reference_weights(errors: np.ndarray, valid: np.ndarray, window, alpha: float, max_weight: float) -> np.ndarray:
    """The docstring's definition voxel by voxel with explicit boxes: errors, valid (B, *sp) bool."""
    out = np.zeros(errors.shape, dtype=np.float64)
    half = [w // 2 for w in window]
    for b in range(errors.shape[0]):
        raw = np.zeros(errors.shape[1:])
        for index in itertools.product(*(range(n) for n in errors.shape[1:])):
            if not valid[b][index]:
                continue
            box = tuple(slice(max(0, i - h), i + h + 1) for i, h in zip(index, half))
            n_err = np.sum(errors[b][box] & valid[b][box])
            rho = n_err / np.sum(valid[b][box])
            raw[index] = min(1 + alpha * rho, max_weight) if n_err >= 2 else 1.0
        out[b] = raw / raw[valid[b]].mean() if valid[b].any() else 0.0
    return out


def nnunet_ce_loss(ignore_label=None, **ce_kwargs) -> DC_and_CE_loss:
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, dict(ce_kwargs),
                          weight_ce=1, weight_dice=1, ignore_label=ignore_label)


def nnunet_bce_loss(use_ignore_label: bool) -> DC_and_BCE_loss:
    return DC_and_BCE_loss({}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False},
                           use_ignore_label=use_ignore_label, dice_class=MemoryEfficientSoftDiceLoss)


def logits_for(prediction: torch.Tensor, n_classes: int, seed: int = 0) -> torch.Tensor:
    """Random logits (B, C, *sp) whose argmax is ``prediction`` (B, 1, *sp)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((prediction.shape[0], n_classes, *prediction.shape[2:]), generator=g)
    return logits + 5.0 * F.one_hot(prediction[:, 0].long(), n_classes).movedim(-1, 1)


# --- weights on hand-built error maps --------------------------------------------------------------------------

@pytest.mark.parametrize("shape, window", [((9, 11), 3), ((7, 9, 9), (3, 3, 3))])
def test_isolated_errors_leave_every_weight_at_one(shape, window):
    errors = torch.zeros((2, 1, *shape), dtype=torch.bool)
    errors[(0, 0) + (0,) * len(shape)] = True  # a corner (fewer valid voxels in its box: still isolated)
    errors[(0, 0) + tuple(s // 2 for s in shape)] = True  # the centre, more than a window away
    errors[(1, 0, shape[0] - 1) + (0,) * (len(shape) - 1)] = True
    assert errors.sum() == 3
    weights = led_weights_from_errors(errors, None, window, alpha=50.0, max_weight=10.0)
    assert weights.shape == errors.shape and weights.dtype == torch.float32
    torch.testing.assert_close(weights, torch.ones_like(weights), rtol=0, atol=0)


def test_two_adjacent_errors_by_hand_2d():
    """5x9 image, errors at (2, 4) and (2, 5), 3x3 window, alpha 1: the six voxels whose box holds both errors
    (rows 1-3, columns 4-5) get raw 1 + 2/9, all others 1; then divided by the mean 1 + (6 * 2/9) / 45."""
    errors = torch.zeros((1, 1, 5, 9), dtype=torch.bool)
    errors[0, 0, 2, 4] = errors[0, 0, 2, 5] = True
    weights = led_weights_from_errors(errors, None, 3, alpha=1.0, max_weight=100.0)[0, 0].double()
    mean = 1 + (6 * 2 / 9) / 45
    expected = torch.full((5, 9), 1 / mean, dtype=torch.float64)
    expected[1:4, 4:6] = (1 + 2 / 9) / mean
    torch.testing.assert_close(weights, expected, rtol=1e-6, atol=1e-6)
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("dim", [2, 3])
def test_cluster_gets_higher_weight_mean_one_and_zero_where_ignored(dim):
    shape = (12, 12) if dim == 2 else (8, 10, 10)
    errors = torch.zeros((2, 1, *shape), dtype=torch.bool)
    cluster = (0, 0) + tuple(slice(2, 5) for _ in range(dim))
    errors[cluster] = True
    errors[(1, 0) + (6,) * dim] = True  # sample 1: one isolated error only
    valid = torch.ones_like(errors)
    valid[(0, 0) + (slice(None),) * (dim - 1) + (slice(-3, None),)] = False  # an ignored slab
    weights = led_weights_from_errors(errors, valid, 3, alpha=4.0, max_weight=10.0)
    assert (weights[~valid] == 0).all()
    for b in range(2):
        assert weights[b][valid[b]].mean().item() == pytest.approx(1.0, abs=1e-6)
    centre = weights[(0, 0) + (3,) * dim]
    far = weights[(0, 0) + (7,) * (dim - 1) + (1,)]
    assert centre > 1.5 * far and far < 1  # the cluster is up-weighted, the rest slightly down (mean 1)
    torch.testing.assert_close(weights[1], torch.ones_like(weights[1]), rtol=0, atol=0)


def test_clipping_keeps_weights_in_range_and_mean_one():
    errors = torch.zeros((1, 1, 10, 10), dtype=torch.bool)
    errors[0, 0, :5, :5] = True  # dense: rho = 1 inside, raw 1 + 100 clipped to 3
    weights = led_weights_from_errors(errors, None, 3, alpha=100.0, max_weight=3.0)
    assert weights.max().item() <= 3.0 + 1e-6 and weights.min().item() >= 0
    assert weights.mean().item() == pytest.approx(1.0, abs=1e-6)
    reference = reference_weights(errors[:, 0].numpy(), np.ones((1, 10, 10), bool), (3, 3), 100.0, 3.0)
    np.testing.assert_allclose(weights[:, 0].numpy(), reference, rtol=1e-5, atol=1e-6)


def test_all_ignored_sample_gets_zero_weights():
    errors = torch.ones((2, 1, 4, 4), dtype=torch.bool)
    valid = torch.ones_like(errors)
    valid[1] = False
    weights = led_weights_from_errors(errors, valid, 3, alpha=1.0, max_weight=5.0)
    assert (weights[1] == 0).all() and torch.isfinite(weights).all()
    assert weights[0].mean().item() == pytest.approx(1.0, abs=1e-6)


def test_anisotropic_window_counts_neighbours_only_along_the_windowed_axes():
    """Window (1, 3, 3): two errors adjacent along axis 0 stay isolated, two along axis 1 form a cluster."""
    along_0 = torch.zeros((1, 1, 6, 6, 6), dtype=torch.bool)
    along_0[0, 0, 2, 3, 3] = along_0[0, 0, 3, 3, 3] = True
    along_1 = torch.zeros_like(along_0)
    along_1[0, 0, 3, 2, 3] = along_1[0, 0, 3, 3, 3] = True
    w0 = led_weights_from_errors(along_0, None, (1, 3, 3), alpha=9.0, max_weight=10.0)
    w1 = led_weights_from_errors(along_1, None, (1, 3, 3), alpha=9.0, max_weight=10.0)
    torch.testing.assert_close(w0, torch.ones_like(w0), rtol=0, atol=0)
    assert w1.max() > 2  # raw 1 + 9 * 2/9 = 3 at the voxels seeing both, before normalisation
    iso = led_weights_from_errors(along_0, None, 3, alpha=9.0, max_weight=10.0)
    assert iso.max() > 1  # the same pair is a cluster for an isotropic window


@pytest.mark.parametrize("dim, window", [(2, (3, 5)), (3, (1, 3, 5)), (3, (3, 3, 3))])
def test_matches_brute_force_reference_on_random_maps(dim, window):
    g = torch.Generator().manual_seed(dim)
    shape = (2, 1) + ((7, 9) if dim == 2 else (4, 6, 7))
    errors = torch.rand(shape, generator=g) < 0.2
    valid = torch.rand(shape, generator=g) < 0.85
    weights = led_weights_from_errors(errors, valid, window, alpha=6.0, max_weight=2.5)
    reference = reference_weights(errors[:, 0].numpy(), valid[:, 0].numpy(), window, 6.0, 2.5)
    np.testing.assert_allclose(weights[:, 0].numpy(), reference, rtol=1e-5, atol=1e-6)
    assert weights.max() > 1.5 * weights[valid].min()  # the random map does have clusters


# --- errors from logits: label and region mode ------------------------------------------------------------------

def test_errors_from_logits_label_mode_with_ignore_label():
    labels = torch.tensor([[[[0, 1, 2, 3], [1, 1, 2, 2]]]])
    prediction = torch.tensor([[[[0, 2, 2, 0], [1, 0, 2, 1]]]])
    errors, valid = prediction_errors(logits_for(prediction, 3), labels, ignore_label=3)
    assert valid.tolist() == [[[[True, True, True, False], [True, True, True, True]]]]
    assert errors.tolist() == [[[[False, True, False, False], [False, True, False, True]]]]
    weights = led_weights(logits_for(prediction, 3), labels, 3, alpha=2.0, max_weight=5.0, ignore_label=3)
    reference = reference_weights(errors[:, 0].numpy(), valid[:, 0].numpy(), (3, 3), 2.0, 5.0)
    np.testing.assert_allclose(weights[:, 0].numpy(), reference, rtol=1e-6)
    assert weights[0, 0, 0, 3] == 0


def test_errors_from_logits_region_mode_any_region_wrong_and_ignore_channel():
    regions = torch.tensor([[[[1, 1, 0, 0]], [[1, 0, 0, 0]]]], dtype=torch.float32)  # (1, 2, 1, 4)
    logits = torch.tensor([[[[2., -1., -3., 1.]], [[1., -2., 4., -1.]]]])  # sigmoid > 0.5 where logit > 0
    ignore = torch.tensor([[[[0, 0, 0, 1]]]], dtype=torch.float32)
    errors, valid = prediction_errors(logits, torch.cat([regions, ignore], 1), region_mode=True,
                                      ignore_channel=True)
    assert errors.tolist() == [[[[False, True, True, False]]]]  # voxel 3 is wrong but ignored
    assert valid.tolist() == [[[[True, True, True, False]]]]
    errors, valid = prediction_errors(logits, regions, region_mode=True)
    assert errors.tolist() == [[[[False, True, True, True]]]] and valid.all()


# --- the loss ---------------------------------------------------------------------------------------------------

def _label_case(dim: int, n_classes: int = 3, ignore_label=None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    spatial = (12, 10) if dim == 2 else (6, 8, 7)
    target = torch.randint(0, n_classes, (2, 1, *spatial), generator=g)
    prediction = target.clone()
    prediction[(slice(None), 0) + tuple(slice(1, 4) for _ in range(dim))] = (target[(slice(None), 0) + tuple(
        slice(1, 4) for _ in range(dim))] + 1) % n_classes  # a clustered error block
    if ignore_label is not None:
        target[(slice(None), 0) + (slice(None),) * (dim - 1) + (slice(-2, None),)] = ignore_label
    logits = (logits_for(prediction, n_classes, seed) * 0.3).requires_grad_(True)
    return logits, target.float()


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("ignore_label", [None, 3])
def test_switched_off_equals_nnunet_and_unit_weights_match_it(dim, ignore_label):
    logits, target = _label_case(dim, ignore_label=ignore_label)
    base = nnunet_ce_loss(ignore_label)
    expected = base(logits, target)
    loss = LEDWeightedDiceCELoss(nnunet_ce_loss(ignore_label), window=3, alpha=5.0)
    loss.active = False
    assert loss.strength == 0 and not loss.active
    assert torch.equal(loss(logits, target), expected)  # warm-up: nnU-Net's loss itself
    loss.active = True
    assert loss(logits, target) > expected + 1e-3  # LED does change the loss on a clustered error
    no_led = LEDWeightedDiceCELoss(nnunet_ce_loss(ignore_label), window=3, alpha=0.0)  # weights all 1
    torch.testing.assert_close(no_led(logits, target), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("use_ignore_label", [False, True])
def test_region_mode_unit_weights_match_nnunet_and_led_changes_it(use_ignore_label):
    g = torch.Generator().manual_seed(1)
    regions = (torch.rand((2, 2, 6, 7, 5), generator=g) > 0.5).float()
    target = torch.cat([regions, (torch.rand((2, 1, 6, 7, 5), generator=g) > 0.8).float()], 1) \
        if use_ignore_label else regions
    logits = torch.randn((2, 2, 6, 7, 5), generator=g)
    expected = nnunet_bce_loss(use_ignore_label)(logits, target)
    no_led = LEDWeightedDiceCELoss(nnunet_bce_loss(use_ignore_label), window=3, alpha=0.0)
    torch.testing.assert_close(no_led(logits, target), expected, rtol=1e-6, atol=1e-7)
    led = LEDWeightedDiceCELoss(nnunet_bce_loss(use_ignore_label), window=3, alpha=5.0)
    assert abs(led(logits, target).item() - expected.item()) > 1e-3


@pytest.mark.parametrize("dim", [2, 3])
def test_ce_term_is_weighted_and_gradient_flows_through_ce_not_weights(dim):
    logits, target = _label_case(dim, ignore_label=3)
    loss = LEDWeightedDiceCELoss(nnunet_ce_loss(3), window=3, alpha=5.0, max_weight=4.0)
    value = loss(logits, target)
    (grad,) = torch.autograd.grad(value, logits)

    # independent construction: detached weights times per-voxel CE, plus nnU-Net's Dice alone
    leaf = logits.detach().clone().requires_grad_(True)
    weights = led_weights(leaf, target, 3, alpha=5.0, max_weight=4.0, ignore_label=3)
    assert not weights.requires_grad
    valid = target != 3
    labels = torch.where(valid, target, 0).long()
    ce = F.cross_entropy(leaf, labels[:, 0], reduction="none")
    weighted_ce = (ce * weights[:, 0] * valid[:, 0]).sum() / valid.sum()
    dice = nnunet_ce_loss(3).dc(leaf, torch.where(valid, target, 0), loss_mask=valid)
    expected = weighted_ce + dice
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    (expected_grad,) = torch.autograd.grad(expected, leaf)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-8)
    assert weights.max() > 1.5 and (weights[~valid] == 0).all()


def test_warm_up_strength_blends_the_weights_linearly():
    logits, target = _label_case(2)
    half = LEDWeightedDiceCELoss(nnunet_ce_loss(), window=3, alpha=5.0, strength=0.5)
    full = LEDWeightedDiceCELoss(nnunet_ce_loss(), window=3, alpha=5.0, strength=1.0)
    off = nnunet_ce_loss()
    torch.testing.assert_close(half(logits, target), (full(logits, target) + off(logits, target)) / 2,
                               rtol=1e-6, atol=1e-7)


def test_deep_supervision_scales_the_window_with_the_patch():
    loss = LEDWeightedDiceCELoss(nnunet_ce_loss(), window=(3, 9, 9), patch_size=(16, 64, 64))
    assert loss.window_for((16, 64, 64)) == (3, 9, 9)
    assert loss.window_for((16, 32, 32)) == (3, 5, 5)  # 4.5 -> nearest odd 5
    assert loss.window_for((8, 16, 16)) == (1, 3, 3)  # 1.5 -> 1, 2.25 -> 3
    assert loss.window_for((4, 8, 8)) == (1, 1, 1)
    fixed = LEDWeightedDiceCELoss(nnunet_ce_loss(), window=7)
    assert fixed.window_for((8, 8)) == (7, 7) == fixed.window_for((64, 64))
    # a low-resolution deep-supervision output runs through the loss (nnU-Net calls it per scale)
    logits, target = _label_case(3)
    scaled = LEDWeightedDiceCELoss(nnunet_ce_loss(), window=5, patch_size=(12, 16, 14))
    assert torch.isfinite(scaled(logits, target))


def test_led_window_from_physical_size():
    assert led_window(2.0, (3.0, 0.5, 0.5)) == (1, 5, 5)
    assert led_window((6.0, 3.0, 0.4), (1.0, 1.0, 1.0)) == (7, 3, 1)  # 6 -> 7 (ties upwards)
    assert led_window(5.9, (1.0,)) == (5,)
    with pytest.raises(ValueError, match="positive"):
        led_window(2.0, (0.0, 1.0))


def test_arguments_are_validated():
    base = nnunet_ce_loss()
    with pytest.raises(ValueError, match="odd"):
        LEDWeightedDiceCELoss(base, window=4)
    with pytest.raises(ValueError, match="alpha"):
        LEDWeightedDiceCELoss(base, alpha=-1.0)
    with pytest.raises(ValueError, match="max_weight"):
        LEDWeightedDiceCELoss(base, max_weight=0.5)
    with pytest.raises(ValueError, match="strength"):
        LEDWeightedDiceCELoss(base, strength=1.5)
    with pytest.raises(TypeError, match="DC_and_CE_loss"):
        LEDWeightedDiceCELoss(torch.nn.MSELoss())
    with pytest.raises(ValueError, match="class weights"):
        LEDWeightedDiceCELoss(nnunet_ce_loss(weight=torch.tensor([1.0, 2.0, 1.0])))
    with pytest.raises(ValueError, match="spatial axes"):
        led_weights_from_errors(torch.zeros((1, 1, 4, 4), dtype=torch.bool), None, (3, 3, 3))
