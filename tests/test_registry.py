"""Tests parametrized over the registry: every generated trainer, every architecture x loss on tiny 2D and 3D plans,
and a fake network and fake loss that appear everywhere after registration alone."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from conftest import make_tiny_trainer, training_batch
from nnunet_ext import cli, trainers
from nnunet_ext.trainers import registry
from nnunet_ext.trainers.architecture import RegisteredArchitectureMixin, unwrap
from nnunet_ext.trainers.border_weight import BorderWeightMixin
from nnunet_ext.trainers.schedule import ShortScheduleMixin
from nnunet_ext.trainers.skeleton_recall import SkeletonRecallMixin

SPECS = registry.trainer_specs()
COMBINATIONS = [(a, loss) for a in registry.ARCHITECTURES for loss in registry.LOSSES]


def _id(combination) -> str:
    architecture, loss = combination
    return f"{architecture or 'plans'}-{loss or 'DiceCE'}"


@pytest.fixture
def fake_components():
    """FakeNet (a PlainConvUNet under another name) and FakeLoss, registered for one test."""
    registry.register_architecture(registry.Architecture(
        "FakeNet", "a fake network", network="fake_components.FakeNet", key="fakenet",
        planner="nnunet_ext.networks.planning.NetworkPlanner", plans_name="nnUNetPlans_FakeNet"))
    registry.register_loss(registry.Loss(
        "FakeLoss", "Dice+CE + {fake_weight} x foreground mass", attributes={"fake_weight": 0.5},
        variants=(registry.Variant("w2", {"fake_weight": 2.0}),), mixin="fake_components.FakeLossMixin"))
    yield
    registry.unregister("FakeNet")
    registry.unregister("FakeLoss")


# ----------------------------------------------------------------------------------------- names and classes

@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_trainer_class_is_declared_with_its_components_and_pickles_to_itself(spec):
    cls = getattr(trainers, spec.name)
    assert cls.__name__ == spec.name and issubclass(cls, nnUNetTrainer)
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert spec.name == registry.trainer_name(spec.architecture.name, spec.loss.name, spec.variant, spec.short)
    for name, value in spec.attributes.items():
        assert getattr(cls, name) == value
    assert issubclass(cls, ShortScheduleMixin) == spec.short
    assert issubclass(cls, RegisteredArchitectureMixin) == bool(spec.architecture.name)
    if spec.architecture.name:
        assert cls.architecture == spec.architecture.name
    if spec.loss.name:
        assert any(k.__module__ + "." + k.__qualname__ == spec.loss.mixin for k in cls.__mro__)


def test_variant_descriptions_name_the_variant_values():
    names = {s.name: s for s in SPECS}
    assert "0.1 x Skeleton Recall" in names["nnUNetTrainerSkelRecall_w0p1"].description
    assert "1.0 x" not in names["nnUNetTrainerSkelRecall_w0p1"].description
    assert "1.0 x Skeleton Recall" in names["nnUNetTrainerSkelRecall"].description
    assert getattr(trainers, "nnUNetTrainerUNetPlusPlusSkelRecall_w0p1").skeleton_recall_weight == 0.1


def test_architecture_variants_are_declared(fake_components):
    registry.register_architecture(registry.Architecture(
        "FakeNet", "a fake network, width {fake_width}", attributes={"fake_width": 1},
        variants=(registry.Variant("wide", {"fake_width": 4}),), network="fake_components.FakeNet"))
    # a variant of the architecture on every loss, also on a loss without a mixin of its own
    for loss in ("", "SkelRecall", "FakeLoss"):
        cls = getattr(trainers, registry.trainer_name("FakeNet", loss, "wide"))
        assert cls.fake_width == 4 and cls.architecture == "FakeNet"
        plain = getattr(trainers, registry.trainer_name("FakeNet", loss))
        assert plain.fake_width == 1
        expected_loss_mixins = {"": set(), "SkelRecall": {SkeletonRecallMixin}, "FakeLoss": set()}[loss]
        assert expected_loss_mixins <= set(cls.__mro__)
        assert (SkeletonRecallMixin in cls.__mro__) == (loss == "SkelRecall")
    spec = next(s for s in registry.trainer_specs() if s.name == "nnUNetTrainerFakeNet_wide")
    assert "width 4" in spec.description


def test_trainer_list_reads_the_registry_without_importing_torch():
    from cli_helpers import clean_env, run
    probe = ("import sys; from nnunet_ext.cli import main; main(['trainers']); "
             "print('TORCH', 'torch' in sys.modules, 'nnunetv2' in sys.modules)")
    result = run(["python", "-c", probe], clean_env())
    assert "TORCH False False" in result.stdout
    listed = [line for line in result.stdout.splitlines() if line.startswith("nnUNetTrainer")]
    assert listed == registry.trainer_names()


def test_fake_network_and_loss_show_up_in_every_list(fake_components, capsys):
    from nnunet_ext.benchmarks import _quality_setup
    names = registry.trainer_names()
    expected = {"nnUNetTrainerFakeNet", "nnUNetTrainerFakeLoss", "nnUNetTrainerFakeNetFakeLoss",
                "nnUNetTrainerFakeLoss_w2", "nnUNetTrainerUNetPlusPlusFakeLoss_short"}
    assert expected <= set(names) and expected <= set(trainers.__all__)
    assert all(hasattr(trainers, name) for name in expected)
    assert cli.main(["trainers"]) == 0
    assert expected <= {line for line in capsys.readouterr().out.splitlines() if line.startswith("nnUNetTrainer")}
    plan = next(a for a in cli.main.__globals__["build_parser"]()._subparsers._group_actions[0].choices["plan"]
                ._actions if a.dest == "arch")
    assert "fakenet" in plan.choices
    assert "nnUNetTrainerFakeNet" in _quality_setup.default_trainers()
    assert {"nnUNetTrainerFakeLoss", "nnUNetTrainerFakeNetFakeLoss_w2"} <= set(_quality_setup.known_trainers())


def test_unregistered_components_leave_no_trainer(fake_components):
    registry.unregister("FakeLoss")
    assert not hasattr(trainers, "nnUNetTrainerFakeLoss")
    assert "nnUNetTrainerFakeLoss" not in trainers.__all__


def test_two_extra_target_losses_are_refused_with_a_clear_message():
    with pytest.raises(TypeError, match="combines extra-target losses.*BorderWeightMixin, SkeletonRecallMixin"):
        type("nnUNetTrainerBoth", (SkeletonRecallMixin, BorderWeightMixin, nnUNetTrainer), {})

    class MySkeletonRecall(SkeletonRecallMixin):  # overriding one provider's transform is still one provider
        def extra_target_transform(self, regions, ignore_label):
            return super().extra_target_transform(regions, ignore_label)

    type("nnUNetTrainerMine", (MySkeletonRecall, nnUNetTrainer), {})


# ------------------------------------------------------------------------------------- one step of every pair

def _step_and_check(cls, dim: int) -> None:
    torch.manual_seed(0)
    trainer = make_tiny_trainer(cls, dim, loss_as_ddp=True)
    batch = training_batch(trainer)
    before = {n: p.detach().clone() for n, p in trainer.network.named_parameters()}
    result = trainer.train_step(batch)
    # nnU-Net's Dice term is -soft Dice, so a loss whose voxel-wise term is small (the focal loss) can be negative
    assert np.isfinite(result["loss"]) and result["loss"] != 0
    missing = [n for n, p in trainer.network.named_parameters() if p.grad is None]
    assert not missing, f"no gradient (DDP would stop): {missing[:5]}"
    # at least the first and the last layer changed
    changed = [n for n, p in trainer.network.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2
    # the validation step runs on the same batch (the online Dice sees nnU-Net's channels only)
    with torch.no_grad():
        trainer.network.eval()
        out = trainer.validation_step(batch)
    assert np.isfinite(out["loss"]) and out["tp_hard"].shape == (len(trainer.label_manager.foreground_labels),)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("combination", COMBINATIONS, ids=_id)
def test_one_training_step_of_every_architecture_and_loss(combination, dim, nnunet_env):
    architecture, loss = combination
    if not (architecture or loss):
        pytest.skip("nnUNetTrainer is nnU-Net's own")
    _step_and_check(getattr(trainers, registry.trainer_name(architecture, loss)), dim)


@pytest.mark.parametrize("dim", [2, 3])
def test_fake_network_and_loss_train_with_no_other_edit(fake_components, dim, nnunet_env):
    _step_and_check(getattr(trainers, "nnUNetTrainerFakeNetFakeLoss"), dim)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("architecture", [a for a in registry.ARCHITECTURES if a])
def test_deep_supervision_on_and_off_load_each_other_strictly(architecture, dim, nnunet_env):
    cls = getattr(trainers, registry.trainer_name(architecture))
    trainer = make_tiny_trainer(cls, dim)
    args = (trainer.plans_manager, trainer.configuration_manager, 1, 2)
    torch.manual_seed(0)
    on = cls.build_network_architecture(*args, enable_deep_supervision=True)
    off = cls.build_network_architecture(*args, enable_deep_supervision=False)
    off.load_state_dict(on.state_dict(), strict=True)
    on.load_state_dict(off.state_dict(), strict=True)
    x = torch.randn(1, 1, *trainer.configuration_manager.patch_size, generator=torch.Generator().manual_seed(1))
    on.eval(), off.eval()
    with torch.no_grad():
        outputs, single = on(x), off(x)
    assert isinstance(outputs, (list, tuple)) and torch.is_tensor(single)
    torch.testing.assert_close(outputs[0], single)
    assert outputs[0].shape == (1, 2, *trainer.configuration_manager.patch_size)
    assert unwrap(torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.Module)) is not None


@pytest.mark.parametrize("architecture", [a for a in registry.ARCHITECTURES if a])
def test_plans_an_architecture_cannot_build_from_are_refused_with_the_fix(architecture, nnunet_env):
    from nnunet_ext.errors import UserInputError
    cls = getattr(trainers, registry.trainer_name(architecture))
    trainer = make_tiny_trainer(cls, 2)
    trainer.configuration_manager.configuration["architecture"]["network_class_name"] = \
        "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    entry = registry.ARCHITECTURES[architecture]
    with pytest.raises(UserInputError, match=f"--arch {entry.key}.*-p {entry.plans_name}"):
        cls.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 2, True)
    # plans naming the network itself build
    trainer.configuration_manager.configuration["architecture"]["network_class_name"] = entry.network
    assert type(cls.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 2,
                                               True)).__name__ == entry.network.rsplit(".", 1)[-1]


def test_a_patch_the_network_cannot_use_stops_initialize_with_the_fix(nnunet_env, monkeypatch):
    """GLNet on a 32² patch with a 3 x 3 tile grid: nnU-Net's initialize() builds it, ours checks the patch."""
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as trainer_module
    from nnunet_ext.errors import UserInputError
    monkeypatch.setattr(trainer_module, "infer_dataset_class", lambda folder: None)  # no preprocessed data here

    class Grid3(getattr(trainers, "nnUNetTrainerGLNet")):
        glnet_tile_grid = 3

    trainer = make_tiny_trainer(Grid3, 2)
    trainer.was_initialized = False
    with pytest.raises(UserInputError, match="GLNet cannot use this configuration's patch size.*32"):
        trainer.initialize()
