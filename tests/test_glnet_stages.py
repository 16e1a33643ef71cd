"""GLNet's staged schedule (``glnet_stages``, ``nnUNetTrainerGLNet_staged``): the stage of each epoch, what each
stage trains and freezes (checked by real training steps: frozen weights do not move, trained ones do), the loss
weights and the feature regularisation per stage, joint training unchanged without it, and bad settings refused.
The DDP behaviour (the network wrapped anew per stage) is tested in test_ddp_trainers.py."""
from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_trainer, training_batch
from nnunet_ext.errors import UserInputError
from nnunet_ext.trainers.glnet_stages import check_stages, stage_at, stage_output_weights


@pytest.mark.parametrize("epoch, stages, expected", [
    (0, (0.3,), 1), (29, (0.3,), 1), (30, (0.3,), 2), (99, (0.3,), 2),
    (0, (0.3, 0.7), 1), (30, (0.3, 0.7), 2), (69, (0.3, 0.7), 2), (70, (0.3, 0.7), 3), (99, (0.3, 0.7), 3),
    (33, (1 / 3,), 1), (34, (1 / 3,), 2)])  # 100/3 = 33.3 epochs: stage 2 from the first whole epoch after
def test_stage_of_each_epoch(epoch, stages, expected):
    assert stage_at(epoch, 100, stages) == expected


def test_stage_weights_are_normalised_and_skip_frozen_heads():
    assert stage_output_weights(1, 0.5) == (0.0, 0.0, 1.0)
    assert stage_output_weights(2, 0.5) == pytest.approx((2 / 3, 1 / 3, 0.0))
    assert stage_output_weights(3, 0.5) == pytest.approx((2 / 3, 0.0, 1 / 3))


@pytest.mark.parametrize("stages, local_to_global, message", [
    ((0.0,), False, "fractions in \\(0, 1\\)"), ((1.0,), False, "fractions in"), ((0.2, 0.5, 0.8), True, "one or two"),
    ("0.3", False, "fractions in"), ((0.7, 0.3), True, "must increase"), ((0.3, 0.7), False, "needs "
                                                                                          "glnet_local_to_global")])
def test_bad_stages_are_refused_with_the_fix(stages, local_to_global, message):
    with pytest.raises(UserInputError, match=message):
        check_stages(stages, local_to_global)
    assert check_stages(None, local_to_global) is None
    assert check_stages((0.25, 0.5), True) == (0.25, 0.5)


def _parameters(network, prefix: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in network.named_parameters() if n.startswith(prefix)}


def _moved(before: dict, network) -> dict[str, bool]:
    now = dict(network.named_parameters())
    return {n: not torch.equal(v, now[n].detach()) for n, v in before.items()}


def _train_in_stage(trainer, epoch: int, steps: int = 2) -> dict[str, bool]:
    """Start ``epoch`` (which sets its stage) and run training steps; which parameters moved, by name."""
    trainer.current_epoch = epoch
    trainer.on_train_epoch_start()
    before = _parameters(trainer.network, "")
    for step in range(steps):
        trainer.train_step(training_batch(trainer, seed=step))
    return _moved(before, trainer.network)


def _moved_by_part(moved: dict[str, bool]) -> dict[str, bool]:
    parts = ("global_branch.", "local_branch.", "decoder.aggregation.", "decoder.local_head.", "decoder.global_head.")
    return {part.rstrip("."): any(v for n, v in moved.items() if n.startswith(part)) for part in parts}


@pytest.mark.parametrize("dim", [2, 3])
def test_staged_trainer_trains_global_then_local(nnunet_env, dim):
    from nnunet_ext.trainers import nnUNetTrainerGLNet_staged
    trainer = make_tiny_trainer(nnUNetTrainerGLNet_staged, dim)
    assert trainer.glnet_stages == (0.3,)
    network, regularization = trainer.network, trainer.network.feature_regularization
    assert regularization > 0
    first = _moved_by_part(_train_in_stage(trainer, 0))
    assert trainer.glnet_stage == 1 and trainer.loss.loss.weight_factors == (0.0, 0.0, 1.0)
    assert network.feature_regularization == 0
    assert first == {"global_branch": True, "local_branch": False, "decoder.aggregation": False,
                     "decoder.local_head": False, "decoder.global_head": True}
    second = _moved_by_part(_train_in_stage(trainer, trainer.num_epochs - 1))
    assert trainer.glnet_stage == 2 and network.feature_regularization == regularization
    assert trainer.loss.loss.weight_factors == pytest.approx((2 / 3, 1 / 3, 0.0))
    assert second == {"global_branch": False, "local_branch": True, "decoder.aggregation": True,
                      "decoder.local_head": True, "decoder.global_head": False}


def test_bidirectional_third_stage_trains_the_global_branch_again(nnunet_env):
    from nnunet_ext.trainers import nnUNetTrainerGLNet_bidirectional

    class nnUNetTrainerGLNet_bidirectional_staged(nnUNetTrainerGLNet_bidirectional):
        glnet_stages = (0.3, 0.6)

    trainer = make_tiny_trainer(nnUNetTrainerGLNet_bidirectional_staged, 2)
    epochs = trainer.num_epochs
    stages = [stage_at(e, epochs, (0.3, 0.6)) for e in (0, epochs // 2, epochs - 1)]
    assert stages == [1, 2, 3]
    _train_in_stage(trainer, epochs // 2, steps=1)
    third = _moved_by_part(_train_in_stage(trainer, epochs - 1))
    assert trainer.glnet_stage == 3 and trainer.loss.loss.weight_factors == pytest.approx((2 / 3, 0.0, 1 / 3))
    assert third == {"global_branch": True, "local_branch": False, "decoder.aggregation": False,
                     "decoder.local_head": False, "decoder.global_head": True}


def test_joint_training_is_unchanged_without_stages(nnunet_env):
    from nnunet_ext.trainers import nnUNetTrainerGLNet
    trainer = make_tiny_trainer(nnUNetTrainerGLNet, 2)
    weights = trainer.loss.loss.weight_factors
    moved = _moved_by_part(_train_in_stage(trainer, 0, steps=1))
    assert not hasattr(trainer, "glnet_stage") and trainer.loss.loss.weight_factors == weights
    assert all(moved.values())


def test_a_third_stage_without_local_to_global_stops_training(nnunet_env):
    from nnunet_ext.trainers import nnUNetTrainerGLNet

    class nnUNetTrainerGLNet_three(nnUNetTrainerGLNet):
        glnet_stages = (0.3, 0.6)

    trainer = make_tiny_trainer(nnUNetTrainerGLNet_three, 2)
    with pytest.raises(UserInputError, match="glnet_local_to_global = True"):
        trainer.on_train_epoch_start()
