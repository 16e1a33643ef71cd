"""nnUNetTrainerClDice: (1-a) * Dice+CE + a * clDice at every deep-supervision scale, and the real CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from cli_helpers import assert_predicted_every_case, assert_trained, clean_env, plan_and_train, predict
from conftest import load_example, make_trainer
from nnunet_ext.losses.cldice import SoftClDiceLoss
from nnunet_ext.losses.mixed import WeightedSumLoss
from nnunet_ext.testing.synthetic import tubular_case, write_tubular_dataset
from nnunet_ext.trainers import nnUNetTrainerClDice


def _targets(dim: int, n_scales: int) -> list[torch.Tensor]:
    _, label = tubular_case((64, 64) if dim == 2 else (32, 32, 32), n_classes=1, seed=3)
    full = torch.from_numpy(label.astype(np.int64))[None, None]
    return [full[(..., *[slice(None, None, 2 ** i)] * dim)] for i in range(n_scales)]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("alpha", [0.5, 0.2])
def test_loss_mixes_dice_ce_and_cldice_at_every_scale(nnunet_env, dim, alpha):
    trainer_cls = type("Trainer", (nnUNetTrainerClDice,), {"cldice_alpha": alpha, "cldice_iterations": 3})
    trainer = make_trainer(trainer_cls, dim)
    loss = trainer._build_loss()
    assert isinstance(loss, DeepSupervisionWrapper)
    targets = _targets(dim, len(loss.weight_factors))
    gen = torch.Generator().manual_seed(0)
    outputs = [torch.randn((1, 2, *t.shape[2:]), generator=gen, requires_grad=True) for t in targets]
    value = loss(outputs, targets)

    batch_dice = trainer.configuration_manager.batch_dice
    dcce = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None)
    cldice = SoftClDiceLoss(iterations=3, batch_dice=batch_dice)
    expected = sum(w * ((1 - alpha) * dcce(o, t) + alpha * cldice(o, t))
                   for w, o, t in zip(loss.weight_factors, outputs, targets) if w > 0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    for w, o in zip(loss.weight_factors, outputs):
        assert (o.grad is not None and bool(o.grad.abs().sum() > 0)) == (w > 0)


def test_region_and_ignore_label_wiring(nnunet_env):
    _, dataset_json = load_example(2)
    regions = {**dataset_json, "labels": {"background": 0, "any": [1, 2], "two": 2, "ignore": 3},
               "regions_class_order": [1, 2]}
    inner = make_trainer(nnUNetTrainerClDice, 2, dataset_json=regions)._build_loss().loss
    (w_base, base), (w_cl, cl) = zip(inner.weights, inner.terms)
    assert (w_base, w_cl) == (0.5, 0.5) and isinstance(base, DC_and_BCE_loss)
    assert cl.region_mode and cl.region_ignore_channel and cl.ignore_label is None

    labels = {**dataset_json, "labels": {"background": 0, "tube": 1, "ignore": 2}}
    cl = make_trainer(nnUNetTrainerClDice, 2, dataset_json=labels)._build_loss().loss.terms[1]
    assert not cl.region_mode and cl.ignore_label == 2


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_unit_interval_is_rejected(nnunet_env, alpha):
    trainer_cls = type("Trainer", (nnUNetTrainerClDice,), {"cldice_alpha": alpha})
    with pytest.raises(ValueError, match="cldice_alpha must lie in"):
        make_trainer(trainer_cls, 2)._build_loss()


def test_weighted_sum_loss():
    one, two = (lambda o, t: torch.tensor(1.0)), (lambda o, t: torch.tensor(2.0))

    class Const(torch.nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, o, t):
            return self.f(o, t)

    assert WeightedSumLoss([(0.25, Const(one)), (0.5, Const(two))])(None, None).item() == pytest.approx(1.25)
    for terms, message in [([], "at least one"), ([(float("nan"), Const(one))], "finite"),
                           ([(-1.0, Const(one))], "finite and >= 0"), ([(0.0, Const(one))], "must be > 0")]:
        with pytest.raises(ValueError, match=message):
            WeightedSumLoss(terms)


@pytest.mark.slow
@pytest.mark.parametrize("dim", [3])  # one CLI run per feature; 2D: the registry tests' training steps
def test_cli_train_and_predict_with_cldice(nnunet_env, dim):
    dataset_id, shape, configuration = (983, (64, 64), "2d") if dim == 2 else (984, (32, 32, 32), "3d_fullres")
    raw = Path(write_tubular_dataset(dataset_id, dim=dim, n_train=5, n_test=1, shape=shape, seed=5))
    env = clean_env(NNUNET_EXT_EPOCHS="1", NNUNET_EXT_ITERATIONS="2", NNUNET_EXT_VAL_ITERATIONS="1")
    trainer = "nnUNetTrainerClDice_short"
    fold = plan_and_train(dataset_id, raw, configuration, trainer, env)
    assert_trained(fold, trainer)
    topology = json.loads((fold / "validation" / "summary_topology.json").read_text())
    assert ("Betti2_error" in topology["foreground_mean"]) == (dim == 3)
    out = raw.parent / f"pred_cldice_{dim}d"
    predict(dataset_id, raw, out, configuration, trainer, env)
    assert_predicted_every_case(out, raw)
