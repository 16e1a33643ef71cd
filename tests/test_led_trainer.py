"""nnUNetTrainerLED: the warm-up schedule, the anisotropic window, and the loss at every deep-supervision scale."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from conftest import make_tiny_trainer, training_batch
from nnunet_ext.losses.led import LEDWeightedDiceCELoss, led_weights
from nnunet_ext.trainers import nnUNetTrainerDAWMRLED, nnUNetTrainerLED
from nnunet_ext.trainers.led import led_strength


@pytest.mark.parametrize("epoch,expected", [(0, 0.0), (99, 0.0), (100, 0.0), (150, 0.5), (199, 0.99), (200, 1.0),
                                            (999, 1.0)])
def test_warmup_then_linear_ramp(epoch, expected):
    assert led_strength(epoch, 1000, warmup=0.1, ramp=0.1) == pytest.approx(expected)


def test_ramp_zero_switches_on_at_once_and_bad_fractions_are_refused():
    assert led_strength(9, 100, warmup=0.1, ramp=0.0) == 0.0
    assert led_strength(10, 100, warmup=0.1, ramp=0.0) == 1.0
    with pytest.raises(ValueError, match="fractions of the epochs"):
        led_strength(0, 100, warmup=1.5, ramp=0.1)


def test_window_follows_the_spacing(nnunet_env):
    trainer = make_tiny_trainer(nnUNetTrainerLED, 3)
    assert trainer.led_window_voxels() == (7, 7, 7)
    trainer.configuration_manager.configuration["spacing"] = [1.0, 1.0, 5.0]  # 7 voxels of 1 mm = 1.4 of 5 mm
    assert trainer.led_window_voxels() == (7, 7, 1)


@pytest.mark.parametrize("dim", [2, 3])
def test_loss_at_full_strength_weights_ce_by_the_error_density(nnunet_env, dim):
    trainer = make_tiny_trainer(nnUNetTrainerLED, dim)
    assert isinstance(trainer.loss, DeepSupervisionWrapper) and isinstance(trainer.loss.loss, LEDWeightedDiceCELoss)
    trainer.current_epoch = trainer.num_epochs // 2  # past warm-up and ramp
    trainer.on_train_epoch_start()
    assert trainer.loss.loss.strength == 1.0
    batch = training_batch(trainer)
    gen = torch.Generator().manual_seed(0)
    outputs = [torch.randn(2, 2, *t.shape[2:], generator=gen) for t in batch["target"]]
    value = trainer.loss(outputs, batch["target"])
    # by hand, per scale: nnU-Net's Dice + mean over voxels of w * CE, w from led_weights at that scale's window
    plain = DC_and_CE_loss({"batch_dice": trainer.configuration_manager.batch_dice, "smooth": 1e-5, "do_bg": False,
                            "ddp": False}, {}, weight_ce=1, weight_dice=1, ignore_label=None)
    patch = trainer.configuration_manager.patch_size
    expected = 0.0
    for w, o, t in zip(trainer.loss.weight_factors, outputs, batch["target"]):
        if w == 0:
            continue
        window = tuple(max(1, 2 * int(7 * s / p / 2) + 1) for s, p in zip(o.shape[2:], patch))
        weights = led_weights(o, t, window)
        ce = -(torch.log_softmax(o, 1).gather(1, t.long()) * weights).mean()
        expected = expected + w * (plain.dc(o, t.long()) + ce)
    assert value.item() == pytest.approx(float(expected), rel=1e-5)
    assert value.item() != pytest.approx(sum(w * plain(o, t) for w, o, t in zip(
        trainer.loss.weight_factors, outputs, batch["target"])).item(), rel=1e-4)  # the weights changed it


def test_during_warmup_the_loss_is_nnunets(nnunet_env):
    trainer = make_tiny_trainer(nnUNetTrainerLED, 2)
    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    batch = training_batch(trainer)
    outputs = [torch.randn(2, 2, *t.shape[2:], generator=torch.Generator().manual_seed(1)) for t in batch["target"]]
    inner = trainer.loss.loss.nnunet_loss
    expected = sum(w * inner(o, t) for w, o, t in zip(trainer.loss.weight_factors, outputs, batch["target"]) if w)
    assert trainer.loss(outputs, batch["target"]).item() == pytest.approx(expected.item(), rel=1e-6)


def test_dawmr_with_led_weights_every_iteration(nnunet_env):
    trainer = make_tiny_trainer(nnUNetTrainerDAWMRLED, 2)
    trainer.current_epoch = trainer.num_epochs - 1
    trainer.on_train_epoch_start()
    strengths = [m.strength for m in trainer.loss.modules() if isinstance(m, LEDWeightedDiceCELoss)]
    assert strengths == [1.0]  # one per-output loss shared by the K full-resolution outputs
    assert len(trainer.loss.weight_factors) == trainer.dawmr_iterations and set(trainer.loss.weight_factors) == {1.0}
    result = trainer.train_step(training_batch(trainer))
    assert np.isfinite(result["loss"])
