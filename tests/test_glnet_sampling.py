"""GLNet's foreground oversampling: none where the window holds the median image along every axis (a foreground
crop would only shift the whole-image window out of view), nnU-Net's 0.33 otherwise, the class attribute
overriding both, bad values refused; nnU-Net's own trainer keeps 0.33 either way."""
from __future__ import annotations

import pytest

from conftest import make_tiny_trainer
from nnunet_ext.errors import UserInputError
from nnunet_ext.trainers.glnet_sampling import window_covers_image


def _with_median(cls, median):
    trainer = make_tiny_trainer(cls, len(median))
    trainer.configuration_manager.configuration["median_image_size_in_voxels"] = list(median)
    trainer._set_batch_size_and_oversample()
    return trainer


@pytest.mark.parametrize("median, expected", [((32, 32), 0.0), ((30, 20), 0.0), ((33, 32), 0.33),
                                              ((16, 16, 16), 0.0), ((16, 16, 17), 0.33)])
def test_no_foreground_crops_where_the_window_holds_the_image(nnunet_env, median, expected):
    from nnunet_ext.trainers import nnUNetTrainerGLNet
    trainer = _with_median(nnUNetTrainerGLNet, median)  # tiny plans: window 32² (2D) / 16³ (3D)
    assert trainer.oversample_foreground_percent == pytest.approx(expected)
    assert window_covers_image(trainer.configuration_manager.patch_size, median) == (expected == 0)


def test_nnunets_trainer_is_unchanged(nnunet_env):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    assert _with_median(nnUNetTrainer, (32, 32)).oversample_foreground_percent == pytest.approx(0.33)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
def test_the_attribute_overrides_the_rule(nnunet_env, value):
    from nnunet_ext.trainers import nnUNetTrainerGLNet

    class Chosen(nnUNetTrainerGLNet):
        glnet_foreground_oversampling = value

    assert _with_median(Chosen, (32, 32)).oversample_foreground_percent == value


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), True, "0.3"])
def test_bad_oversampling_is_refused(nnunet_env, value):
    from nnunet_ext.trainers import nnUNetTrainerGLNet

    class Bad(nnUNetTrainerGLNet):
        glnet_foreground_oversampling = value

    with pytest.raises(UserInputError, match="glnet_foreground_oversampling must be a fraction in \\[0, 1\\]"):
        _with_median(Bad, (32, 32))
