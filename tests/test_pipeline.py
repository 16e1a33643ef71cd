"""The tube inside nnU-Net's data pipelines and the loss at every deep-supervision scale."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from conftest import make_trainer
from tube_expectations import assert_bar_tube, bars
from nnunet_ext.losses import SoftSkeletonRecallLoss
from nnunet_ext.testing.synthetic import tubular_case
from nnunet_ext.trainers import nnUNetTrainerSkelRecall, nnUNetTrainerSkelRecall_w0p1
from nnunet_ext.transforms import ConvertSegmentationToRegionsKeepingExtraChannels, SkeletonTubeTransform

SCALES = {2: [[1, 1], [0.5, 0.5], [0.25, 0.25]], 3: [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]}
SHAPES = {2: (64, 64), 3: (32, 32, 32)}


def _sample(dim: int, n_classes: int = 2, seed: int = 0, ignore_label: int | None = None):
    image, label = tubular_case(SHAPES[dim], n_classes=n_classes, seed=seed)
    label = label.astype(np.int16)
    if ignore_label is not None:
        label[tuple(slice(0, s // 3) for s in label.shape)] = ignore_label
    return {"image": torch.from_numpy(image)[None], "segmentation": torch.from_numpy(label)[None]}


def _bar_sample(seg: np.ndarray) -> dict:
    return {"image": torch.zeros((1, *seg.shape)), "segmentation": torch.from_numpy(seg.copy())[None]}


def _validation_pipeline(dim, regions=None, ignore_label=None):
    return make_trainer(nnUNetTrainerSkelRecall, dim).get_validation_transforms(
        SCALES[dim], is_cascaded=False, foreground_labels=[1, 2], regions=regions, ignore_label=ignore_label)


@pytest.mark.parametrize("dim", [2, 3])
def test_tube_is_inserted_before_region_conversion_and_downsampling(nnunet_env, dim):
    patch = SHAPES[dim]
    pipeline = make_trainer(nnUNetTrainerSkelRecall, dim).get_training_transforms(
        patch, ((-0.5, 0.5),) * (1 if dim == 2 else 3), SCALES[dim], tuple(range(dim)), False,
        use_mask_for_norm=[False], is_cascaded=False, foreground_labels=[1, 2], regions=[[1, 2], [2]],
        ignore_label=None)
    kinds = [type(t) for t in pipeline.transforms]
    tube, regions, down = (kinds.index(SkeletonTubeTransform),
                           kinds.index(ConvertSegmentationToRegionsKeepingExtraChannels),
                           kinds.index(DownsampleSegForDSTransform))
    assert tube < regions < down
    assert tube > kinds.index(next(k for k in kinds if k.__name__ == "SpatialTransform"))
    assert ConvertSegmentationToRegionsTransform not in kinds  # replaced, not duplicated
    # nnU-Net's own pipeline is unchanged apart from our insertion
    plain = nnUNetTrainer.get_training_transforms(
        patch, ((-0.5, 0.5),) * (1 if dim == 2 else 3), SCALES[dim], tuple(range(dim)), False,
        use_mask_for_norm=[False], is_cascaded=False, foreground_labels=[1, 2], regions=[[1, 2], [2]],
        ignore_label=None)
    ours = [k for k in kinds if k is not SkeletonTubeTransform]
    assert [k.__name__.replace("KeepingExtraChannels", "Transform") for k in ours] == \
        [type(t).__name__ for t in plain.transforms]


@pytest.mark.parametrize("dim", [2, 3])
def test_label_mode_gives_a_tube_for_every_deep_supervision_scale(nnunet_env, dim):
    sample = _sample(dim)
    seg = sample["segmentation"][0].numpy().copy()
    out = _validation_pipeline(dim)(**sample)["segmentation"]
    assert isinstance(out, list) and len(out) == len(SCALES[dim])
    for scale, target in zip(SCALES[dim], out):
        expected_shape = tuple(round(s * f) for s, f in zip(SHAPES[dim], scale))
        assert tuple(target.shape) == (2, *expected_shape)
        assert target[1].abs().sum() > 0
        # tube voxels lie inside the label and carry its values at every scale
        inside = target[1] > 0
        assert torch.equal(target[1][inside], target[0][inside])
    assert np.array_equal(out[0][0].numpy(), seg)
    # on hand-built bars of two classes the full-resolution tube is known
    bar_seg, middles = bars(dim, values=(1, 2))
    tube = _validation_pipeline(dim)(**_bar_sample(bar_seg))["segmentation"][0][1].numpy()
    assert_bar_tube(tube, bar_seg, middles)


@pytest.mark.parametrize("dim", [2, 3])
def test_region_mode_with_ignore_label_keeps_one_tube_per_region(nnunet_env, dim):
    ignore = 3
    seg, middles = bars(dim, values=(1, 2))
    seg[(0,) * dim] = ignore  # one ignored voxel in a corner, away from the bars
    regions = [[1, 2], [2]]
    out = _validation_pipeline(dim, regions=regions, ignore_label=ignore)(**_bar_sample(seg))["segmentation"]
    full = out[0]
    # channels: region 1, region 2, ignore mask (nnU-Net's layout), then one tube per region
    assert full.shape[0] == 5 and full.dtype == torch.bool
    assert torch.equal(full[2], torch.from_numpy(seg == ignore))
    for r, labels in enumerate(regions):
        region_mask = np.isin(seg, labels)
        assert np.array_equal(full[r].numpy(), region_mask)
        # region 1 holds both bars, region 2 only the second: its tube is 0/1 over exactly those bars
        in_region = [m for m, value in zip(middles, (1, 2)) if value in labels]
        assert_bar_tube(full[3 + r].numpy().astype(np.int16), region_mask.astype(np.int16), in_region)
        assert not full[3 + r][full[2]].any()  # nothing under the ignore label
    assert all(t.shape[0] == 5 for t in out)


@pytest.mark.parametrize("dim", [2, 3])
def test_ignore_label_is_background_for_the_tube(nnunet_env, dim):
    ignore = 3
    seg, middles = bars(dim)
    extended = seg.copy()
    extended[..., 18:] = np.where(seg[..., 17:18] > 0, ignore, 0)  # the bar continues as ignored voxels
    tube = _validation_pipeline(dim, ignore_label=ignore)(**_bar_sample(extended))["segmentation"][0][1].numpy()
    assert not tube[extended == ignore].any()
    # as if the ignored voxels were background: the tube of the bar alone
    assert_bar_tube(tube, seg, middles)
    plain = _validation_pipeline(dim, ignore_label=ignore)(**_bar_sample(seg))["segmentation"][0][1].numpy()
    assert np.array_equal(tube, plain)


def _outputs_and_targets(dim: int, n_out: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    targets = _validation_pipeline(dim)(**_sample(dim, n_classes=n_out - 1, seed=seed))["segmentation"]
    targets = [t[None] for t in targets]  # batch of one
    outputs = [torch.randn((1, n_out, *t.shape[2:]), generator=gen, requires_grad=True) for t in targets]
    return outputs, targets


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("trainer_cls,weight", [(nnUNetTrainerSkelRecall, 1.0), (nnUNetTrainerSkelRecall_w0p1, 0.1)])
def test_loss_has_dice_ce_and_skeleton_recall_terms_at_every_scale(nnunet_env, dim, trainer_cls, weight):
    trainer = make_trainer(trainer_cls, dim)
    loss = trainer._build_loss()
    assert isinstance(loss, DeepSupervisionWrapper)
    n_scales = len(trainer._get_deep_supervision_scales())
    scales = SCALES[dim] if n_scales >= 3 else SCALES[dim][:n_scales]
    # nnU-Net's weights: 1/2^i, last one 0, normalised
    expected_w = np.array([1 / 2 ** i for i in range(n_scales)])
    expected_w[-1] = 0
    expected_w /= expected_w.sum()
    assert np.allclose(loss.weight_factors, expected_w)

    outputs, targets = _outputs_and_targets(dim, n_out=2)
    outputs, targets = outputs[:len(scales)], targets[:len(scales)]
    weights = expected_w[:len(scales)]
    value = DeepSupervisionWrapper(loss.loss, weights)(outputs, targets)

    dcce = DC_and_CE_loss({"batch_dice": trainer.configuration_manager.batch_dice, "smooth": 1e-5, "do_bg": False,
                           "ddp": False}, {}, weight_ce=1, weight_dice=1, ignore_label=None)
    recall = SoftSkeletonRecallLoss(batch_dice=trainer.configuration_manager.batch_dice)
    terms = [w * (dcce(o, t[:, :1]) + weight * recall(o, t[:, 1:])) for w, o, t in zip(weights, outputs, targets)]
    assert value.item() == pytest.approx(sum(terms).item(), rel=1e-5)
    # every scale with a nonzero weight receives a gradient from the skeleton term too
    value.backward()
    for w, o in zip(weights, outputs):
        has_gradient = o.grad is not None and bool(o.grad.abs().sum() > 0)
        assert has_gradient == (w > 0)


def test_region_trainer_builds_bce_plus_recall_over_regions(nnunet_env):
    _, dataset_json = __import__("conftest").load_example(2)
    dataset_json = {**dataset_json, "labels": {"background": 0, "any": [1, 2], "two": 2, "ignore": 3},
                    "regions_class_order": [1, 2]}
    trainer = make_trainer(nnUNetTrainerSkelRecall, 2, dataset_json=dataset_json)
    assert trainer.n_extra_target_channels == 2
    inner = trainer._build_loss().loss
    assert isinstance(inner.base, DC_and_BCE_loss)
    assert inner.auxiliary.region_mode


@pytest.mark.parametrize("dim", [2, 3])
def test_validation_step_hides_tube_from_online_dice(nnunet_env, dim):
    trainer = make_trainer(nnUNetTrainerSkelRecall, dim)
    trainer.loss = trainer._build_loss()
    n_scales = len(trainer._get_deep_supervision_scales())
    outputs, targets = _outputs_and_targets(dim, n_out=2)
    outputs = [o.detach() for o in outputs[:n_scales]]
    trainer.network = lambda data: outputs  # stand-in network with known outputs
    batch = {"data": torch.zeros((1, 1, *SHAPES[dim])), "target": targets[:n_scales]}
    expected_loss = trainer.loss(outputs, targets[:n_scales]).item()
    result = trainer.validation_step(batch)
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-6)  # the loss still saw the tube
    # online Dice: one foreground class, counted on the label channel only (not on the tube channel)
    prediction = outputs[0].argmax(1)
    label = targets[0][:, 0]
    assert result["tp_hard"].tolist() == [float(((prediction == 1) & (label == 1)).sum())]
    assert result["fn_hard"].tolist() == [float(((prediction != 1) & (label == 1)).sum())]
    assert isinstance(trainer.loss, DeepSupervisionWrapper)  # the wrapper was restored
