"""SoftSkeletonRecallLoss and AuxiliaryTermLoss: hand-computed values, gradients, errors, properties.

Probabilities are made exact by the choice of logits:
  softmax over [0, log 3]                  -> [1/4, 3/4]
  softmax over [0, -log 3]                 -> [3/4, 1/4]
  softmax over [0, 0]                      -> [1/2, 1/2]
  softmax over [0, log 3, 0]               -> [1/5, 3/5, 1/5]
  softmax over [0, 0, log 2]               -> [1/4, 1/4, 1/2]
  sigmoid(log 3) = 3/4, sigmoid(0) = 1/2, sigmoid(-log 3) = 1/4
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from torch import nn

from nnunet_ext.losses import (AuxiliaryTermLoss, SoftSkeletonRecallLoss, rejoin_extra_channels,
                               split_extra_channels)

L3 = math.log(3.0)
S = 1e-5  # default smooth


def two_class_logits(p1_logit):
    """(1, 2, *sp) logits with channel 0 = 0 and channel 1 = the given values."""
    z1 = torch.as_tensor(p1_logit, dtype=torch.float32)
    return torch.stack([torch.zeros_like(z1), z1])[None]


SHAPES = [(2, 3), (1, 2, 3), (3, 1, 2), (6,)]


# ----------------------------------------------------------------------------------------------------
# hand-computed values
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spatial", SHAPES, ids=str)
@pytest.mark.parametrize("smooth,expected", [
    # tube = 4 voxels with p = .75, .75, .5, .25: covered = 2.25, total = 4
    (1e-5, 1 - (2.25 + 1e-5) / (4 + 1e-5)),  # ~0.4375
    (1.0, 1 - 3.25 / 5.0),                   # 0.35
    (4.0, 1 - 6.25 / 8.0),                   # 0.21875
])
def test_label_mode_single_class(spatial, smooth, expected):
    z1 = torch.tensor([L3, L3, 0.0, -L3, 0.0, 0.0]).reshape(spatial)
    tube = torch.tensor([1, 1, 1, 1, 0, 0]).reshape(1, 1, *spatial)
    loss = SoftSkeletonRecallLoss(smooth=smooth)(two_class_logits(z1), tube)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    if smooth == 1e-5:
        assert loss.item() == pytest.approx(0.4375, abs=1e-5)


def test_label_mode_voxels_outside_tube_do_not_matter():
    z1 = torch.tensor([[L3, L3, 0.0], [-L3, 5.0, -7.0]])
    tube = torch.tensor([[1, 1, 1], [1, 0, 0]])[None, None]
    a = SoftSkeletonRecallLoss()(two_class_logits(z1), tube)
    z1[1, 1:] = torch.tensor([-3.0, 9.0])
    b = SoftSkeletonRecallLoss()(two_class_logits(z1), tube)
    assert a.item() == b.item() == pytest.approx(1 - (2.25 + S) / (4 + S), rel=1e-6)


@pytest.mark.parametrize("spatial", [(2, 2), (1, 2, 2), (4,)], ids=str)
@pytest.mark.parametrize("batch_dice,expected", [
    # sample 0: p = .75 on a 4-voxel tube (covered 3, total 4); sample 1: p = .25 on a 1-voxel tube
    (True, 1 - (3.25 + S) / (5 + S)),                           # 0.35
    (False, 1 - ((3 + S) / (4 + S) + (0.25 + S) / (1 + S)) / 2),  # 0.5
])
def test_batch_dice(spatial, batch_dice, expected):
    logits = torch.zeros(2, 2, 4)
    logits[0, 1] = L3
    logits[1, 1] = -L3
    tube = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 0]])[:, None]
    loss = SoftSkeletonRecallLoss(batch_dice=batch_dice)(logits.reshape(2, 2, *spatial),
                                                          tube.reshape(2, 1, *spatial))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.35 if batch_dice else 0.5, abs=1e-5)


@pytest.mark.parametrize("batch_dice,expected", [
    # sample 0: p = .75 on 4 voxels; sample 1: empty tube -> recall 1 for that sample (no NaN)
    (False, 1 - ((3 + S) / (4 + S) + 1.0) / 2),  # 0.125
    (True, 1 - (3 + S) / (4 + S)),               # 0.25
])
def test_empty_tube_in_one_sample(batch_dice, expected):
    logits = torch.zeros(2, 2, 2, 2)
    logits[:, 1] = L3
    tube = torch.zeros(2, 1, 2, 2, dtype=torch.long)
    tube[0] = 1
    loss = SoftSkeletonRecallLoss(batch_dice=batch_dice)(logits, tube)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def _three_class_case():
    # voxels v0, v1: logits [0, log3, 0] -> p1 = 3/5; v2: [0, 0, log2] -> p2 = 1/2;
    # v3: background tube voxel with arbitrary logits [log 6, 0, log 3]
    logits = torch.tensor([[0.0, L3, 0.0], [0.0, L3, 0.0], [0.0, 0.0, math.log(2)],
                           [math.log(6), 0.0, L3]]).T.reshape(1, 3, 2, 2)
    tube = torch.tensor([1, 1, 2, 0]).reshape(1, 1, 2, 2)
    return logits, tube


def test_multi_class_averages_foreground_classes_only():
    logits, tube = _three_class_case()
    # class 1: (2 * 3/5 + s) / (2 + s) = 0.6; class 2: (1/2 + s) / (1 + s) = 0.5 -> 1 - 0.55 = 0.45
    expected = 1 - ((1.2 + S) / (2 + S) + (0.5 + S) / (1 + S)) / 2
    loss = SoftSkeletonRecallLoss()(logits, tube)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.45, abs=1e-5)
    # the background channel is excluded: moving the background voxel's logits changes nothing
    logits2 = logits.clone()
    logits2[0, :, 1, 1] = torch.tensor([-5.0, 3.0, 8.0])
    assert SoftSkeletonRecallLoss()(logits2, tube).item() == pytest.approx(loss.item(), rel=1e-7)


def test_multi_class_absent_class_counts_as_recall_one():
    logits, tube = _three_class_case()
    # a 4th channel whose softmax probability is exactly 0 (logit -1e4) and whose tube is empty:
    # recall_3 = s / s = 1, so the mean over 3 foreground classes is (0.6 + 0.5 + 1) / 3
    logits4 = torch.cat([logits, torch.full((1, 1, 2, 2), -1e4)], 1)
    expected = 1 - ((1.2 + S) / (2 + S) + (0.5 + S) / (1 + S) + 1.0) / 3  # 0.3
    loss = SoftSkeletonRecallLoss()(logits4, tube)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.3, abs=1e-5)


@pytest.mark.parametrize("spatial", [(2, 2), (1, 2, 2), (4,)], ids=str)
def test_region_mode_sigmoid(spatial):
    # region 0: sigmoid -> [.75, .5, .25, .75], tube [1, 1, 1, 0]: covered 1.5, total 3 -> 0.5
    # region 1: sigmoid -> [.5, .5, .75, .25], tube [0, 0, 1, 0]: covered .75, total 1 -> 0.75
    logits = torch.tensor([[L3, 0.0, -L3, L3], [0.0, 0.0, L3, -L3]]).reshape(1, 2, *spatial)
    tube = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 0]]).reshape(1, 2, *spatial)
    expected = 1 - ((1.5 + S) / (3 + S) + (0.75 + S) / (1 + S)) / 2  # 0.375
    loss = SoftSkeletonRecallLoss(region_mode=True)(logits, tube)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.375, abs=1e-5)
    # float / bool tubes are accepted in region mode
    for t in (tube.float(), tube.bool()):
        assert SoftSkeletonRecallLoss(region_mode=True)(logits, t).item() == pytest.approx(expected, rel=1e-6)


def test_region_mode_batch_dice():
    # sample 0 region 0: p = .75 on 2 voxels (1.5 / 2); sample 1 region 0: p = .25 on 2 voxels (.5 / 2)
    # region 1 empty everywhere -> recall 1
    logits = torch.zeros(2, 2, 2)
    logits[0, 0] = L3
    logits[1, 0] = -L3
    tube = torch.zeros(2, 2, 2)
    tube[:, 0] = 1
    per_sample = 1 - ((1.5 + S) / (2 + S) + 1 + (0.5 + S) / (2 + S) + 1) / 4  # 0.25
    batch = 1 - ((2.0 + S) / (4 + S) + 1) / 2                                 # 0.25
    per_sample_loss = SoftSkeletonRecallLoss(region_mode=True, batch_dice=False)(logits, tube)
    assert per_sample_loss.item() == pytest.approx(per_sample, rel=1e-6)
    assert SoftSkeletonRecallLoss(region_mode=True, batch_dice=True)(logits, tube).item() == pytest.approx(
        batch, rel=1e-6)
    # unequal tube sizes make batch dice differ: sample 1 gets a 1-voxel tube
    tube[1, 0, 1] = 0
    per_sample = 1 - ((1.5 + S) / (2 + S) + 1 + (0.25 + S) / (1 + S) + 1) / 4  # 0.25
    batch = 1 - ((1.75 + S) / (3 + S) + 1) / 2                                 # 0.2083
    assert SoftSkeletonRecallLoss(region_mode=True)(logits, tube).item() == pytest.approx(per_sample, rel=1e-6)
    assert SoftSkeletonRecallLoss(region_mode=True, batch_dice=True)(logits, tube).item() == pytest.approx(
        batch, rel=1e-6)


@pytest.mark.parametrize("region_mode", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("spatial", [(3, 4), (2, 3, 4)], ids=str)
def test_empty_tube_gives_zero_loss_and_zero_gradient(region_mode, batch_dice, spatial):
    torch.manual_seed(0)
    logits = (torch.randn(2, 3, *spatial) * 5).requires_grad_()
    tube = torch.zeros(2, 3 if region_mode else 1, *spatial)
    loss = SoftSkeletonRecallLoss(region_mode=region_mode, batch_dice=batch_dice)(logits, tube)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad == 0).all()


def test_empty_batch_in_spatial_dims_is_finite():
    # zero-size spatial dims: no voxel at all -> every recall is s / s = 1
    logits = torch.zeros(1, 2, 0, 3, requires_grad=True)
    loss = SoftSkeletonRecallLoss()(logits, torch.zeros(1, 1, 0, 3, dtype=torch.long))
    assert loss.item() == 0.0


# ----------------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------------

def test_hand_computed_gradient_single_class():
    # L = 1 - (sum_i p_i t_i + s) / (T + s) with one foreground class; dL/dz1_i = -t_i p_i (1 - p_i) / (T + s)
    # and dL/dz0_i = -dL/dz1_i (softmax over 2 channels). Tube voxels: p = .75, .75, .5, .25; T = 4.
    z1 = torch.tensor([[L3, L3, 0.0], [-L3, 0.0, 0.0]])
    logits = two_class_logits(z1).requires_grad_()
    tube = torch.tensor([[1, 1, 1], [1, 0, 0]])[None, None]
    SoftSkeletonRecallLoss()(logits, tube).backward()
    d = 4 + S
    expected1 = torch.tensor([[-0.1875 / d, -0.1875 / d, -0.25 / d], [-0.1875 / d, 0.0, 0.0]])
    torch.testing.assert_close(logits.grad[0, 1], expected1, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(logits.grad[0, 0], -expected1, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)], ids=str)
def test_gradient_sign_label_mode(batch_dice, spatial):
    torch.manual_seed(1)
    n_channels = 4
    logits = torch.randn(2, n_channels, *spatial, requires_grad=True)
    tube = torch.randint(0, n_channels, (2, 1, *spatial))
    tube[torch.rand(tube.shape) < 0.5] = 0
    loss = SoftSkeletonRecallLoss(batch_dice=batch_dice)(logits, tube)
    loss.backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    one_hot = torch.nn.functional.one_hot(tube[:, 0], n_channels).movedim(-1, 1).bool()
    in_tube = (tube > 0).expand_as(grad)
    # increasing the logit of a voxel's own tube class lowers the loss ...
    assert (grad[one_hot & in_tube] < 0).all()
    # ... increasing another channel's logit there raises it
    assert (grad[~one_hot & in_tube] > 0).all()
    # voxels outside every tube get no gradient
    assert (grad[~in_tube] == 0).all()
    # a small step against the gradient lowers the loss
    with torch.no_grad():
        stepped = SoftSkeletonRecallLoss(batch_dice=batch_dice)(logits - 0.1 * grad / grad.abs().max(), tube)
    assert stepped.item() < loss.item()


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)], ids=str)
def test_gradient_sign_region_mode(spatial):
    torch.manual_seed(2)
    logits = torch.randn(2, 3, *spatial, requires_grad=True)
    tube = torch.rand(2, 3, *spatial) < 0.3
    SoftSkeletonRecallLoss(region_mode=True)(logits, tube).backward()
    assert (logits.grad[tube] < 0).all()
    assert (logits.grad[~tube] == 0).all()


@pytest.mark.parametrize("region_mode", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("spatial", [(2, 3), (2, 2, 2)], ids=str)
def test_gradcheck(region_mode, batch_dice, spatial):
    # float64 input is computed in float64, so gradcheck's default tolerances apply
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, *spatial, dtype=torch.float64, generator=g, requires_grad=True)
    if region_mode:
        tube = torch.rand(2, 3, *spatial, generator=g) < 0.5
    else:
        tube = torch.randint(0, 3, (2, 1, *spatial), generator=g)
    loss_fn = SoftSkeletonRecallLoss(region_mode=region_mode, batch_dice=batch_dice, smooth=1e-3)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, tube), (logits,))


def test_half_precision_input_gives_float32_loss():
    logits = two_class_logits(torch.tensor([L3, L3, 0.0, -L3])).half()
    tube = torch.tensor([1, 1, 1, 1])[None, None]
    loss = SoftSkeletonRecallLoss()(logits, tube)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1 - (2.25 + S) / (4 + S), rel=1e-3)


# ----------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("smooth", [0.0, -1e-5, -1.0, float("nan")])
def test_bad_smooth(smooth):
    with pytest.raises(ValueError, match="smooth"):
        SoftSkeletonRecallLoss(smooth=smooth)


@pytest.mark.parametrize("bad_label", [2, 3, 255, -1])
def test_tube_labels_out_of_range(bad_label):
    logits = torch.zeros(1, 2, 3, 3)
    tube = torch.zeros(1, 1, 3, 3, dtype=torch.long)
    tube[0, 0, 1, 1] = bad_label
    # not checked in the loss (a device sync per call): scatter's index check on the CPU; trainers check up front
    with pytest.raises(RuntimeError, match=f"index {bad_label} is out of bounds"):
        SoftSkeletonRecallLoss()(logits, tube)


@pytest.mark.parametrize("region_mode,logit_shape,tube_shape", [
    (False, (2, 3, 4, 4), (1, 1, 4, 4)),     # batch
    (False, (2, 3, 4, 4), (2, 1, 4, 5)),     # spatial
    (False, (2, 3, 4, 4), (2, 1, 4, 4, 1)),  # ndim
    (False, (2, 3, 4, 4, 4), (2, 1, 4, 4)),
    (False, (2, 3, 4, 4), (2, 2, 4, 4)),     # label mode needs exactly one tube channel
    (True, (2, 3, 4, 4), (2, 2, 4, 4)),      # region mode needs one tube channel per region
    (True, (2, 3, 4, 4), (2, 1, 4, 4)),
    (True, (2, 3, 4, 4), (2, 3, 5, 4)),
])
def test_shape_errors(region_mode, logit_shape, tube_shape):
    with pytest.raises(ValueError):
        SoftSkeletonRecallLoss(region_mode=region_mode)(torch.zeros(logit_shape), torch.zeros(tube_shape))


# ----------------------------------------------------------------------------------------------------
# hypothesis
# ----------------------------------------------------------------------------------------------------

@st.composite
def loss_inputs(draw):
    region_mode = draw(st.booleans())
    batch = draw(st.integers(1, 3))
    n_classes = draw(st.integers(1, 13))  # foreground classes / regions
    ndim = draw(st.sampled_from([2, 3]))
    spatial = tuple(draw(st.integers(1, 5 if ndim == 2 else 4)) for _ in range(ndim))
    n_channels = n_classes if region_mode else n_classes + 1
    logits = draw(arrays(np.float32, (batch, n_channels, *spatial),
                         elements=st.floats(-50, 50, width=32, allow_nan=False)))
    if region_mode:
        tube = draw(arrays(np.bool_, (batch, n_channels, *spatial)))
    else:
        tube = draw(arrays(np.int64, (batch, 1, *spatial), elements=st.integers(0, n_classes)))
    smooth = draw(st.sampled_from([1e-5, 1e-3, 1.0]))
    return region_mode, draw(st.booleans()), smooth, torch.from_numpy(logits), torch.from_numpy(tube)


@settings(max_examples=150, deadline=None)
@given(loss_inputs())
def test_loss_finite_and_in_unit_interval(inputs):
    region_mode, batch_dice, smooth, logits, tube = inputs
    logits.requires_grad_()
    loss = SoftSkeletonRecallLoss(region_mode=region_mode, batch_dice=batch_dice, smooth=smooth)(logits, tube)
    assert torch.isfinite(loss)
    assert 0.0 <= loss.item() <= 1.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    fg = tube.bool() if region_mode else (tube > 0)
    if not fg.any():
        assert loss.item() == 0.0


# ----------------------------------------------------------------------------------------------------
# AuxiliaryTermLoss and the channel split
# ----------------------------------------------------------------------------------------------------

class Recorder(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value, self.calls = value, []

    def forward(self, output, target):
        self.calls.append((output, target))
        return torch.tensor(self.value)


@pytest.mark.parametrize("n_extra", [1, 2, 3])
@pytest.mark.parametrize("weight,expected", [(1.0, 5.0), (0.5, 3.5), (0.0, 2.0), (2, 8.0)])
def test_auxiliary_term_routes_channels_and_weights(n_extra, weight, expected):
    base, aux = Recorder(2.0), Recorder(3.0)
    loss = AuxiliaryTermLoss(base, aux, weight, n_extra)
    output = torch.randn(2, 3, 4, 5)
    target = torch.arange(2 * (1 + n_extra) * 20, dtype=torch.float32).reshape(2, 1 + n_extra, 4, 5)
    value = loss(output, target)
    assert value.item() == pytest.approx(expected)
    (out_b, seg), = base.calls
    (out_a, extra), = aux.calls
    assert out_b is output and out_a is output
    torch.testing.assert_close(seg, target[:, :1])
    torch.testing.assert_close(extra, target[:, 1:])
    assert seg.shape[1] == 1 and extra.shape[1] == n_extra


@pytest.mark.parametrize("weight", [-1.0, -1e-9, float("nan"), float("inf"), -float("inf")])
def test_auxiliary_term_bad_weight(weight):
    with pytest.raises(ValueError, match="weight"):
        AuxiliaryTermLoss(Recorder(0.0), Recorder(0.0), weight, 1)


@pytest.mark.parametrize("n_extra", [0, -1])
def test_auxiliary_term_bad_n_extra(n_extra):
    with pytest.raises(ValueError, match="n_extra"):
        AuxiliaryTermLoss(Recorder(0.0), Recorder(0.0), 1.0, n_extra)


def test_auxiliary_term_with_skeleton_recall_and_deep_supervision():
    z1 = torch.tensor([[L3, L3, 0.0], [-L3, 0.0, 0.0]])
    logits = two_class_logits(z1)
    seg = torch.zeros(1, 1, 2, 3)
    tube = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float32)[None, None]
    target = torch.cat([seg, tube], 1)
    combined = AuxiliaryTermLoss(Recorder(0.25), SoftSkeletonRecallLoss(), 2.0, 1)
    expected = 0.25 + 2.0 * (1 - (2.25 + S) / (4 + S))
    assert combined(logits, target).item() == pytest.approx(expected, rel=1e-6)
    ds = DeepSupervisionWrapper(combined, (1.0, 0.5))
    assert ds([logits, logits], [target, target]).item() == pytest.approx(1.5 * expected, rel=1e-6)


@pytest.mark.parametrize("n_seg,n_extra", [(1, 1), (1, 3), (4, 2)])
@pytest.mark.parametrize("dtypes", [(torch.int16, torch.int16), (torch.int16, torch.float32),
                                    (torch.float32, torch.uint8)], ids=str)
def test_split_rejoin_round_trip_tensor(n_seg, n_extra, dtypes):
    seg = torch.randint(0, 5, (2, n_seg, 3, 4)).to(dtypes[0])
    extra = torch.randint(0, 5, (2, n_extra, 3, 4)).to(dtypes[1])
    joined = rejoin_extra_channels(seg, extra)
    assert joined.shape == (2, n_seg + n_extra, 3, 4)
    assert joined.dtype == torch.promote_types(*dtypes)
    s, e = split_extra_channels(joined, n_extra)
    torch.testing.assert_close(s, seg.to(joined.dtype))
    torch.testing.assert_close(e, extra.to(joined.dtype))
    torch.testing.assert_close(rejoin_extra_channels(s, e), joined)


def test_split_rejoin_round_trip_list():
    # deep supervision: one target per scale
    targets = [torch.arange(2 * 3 * s * s, dtype=torch.float32).reshape(2, 3, s, s) for s in (8, 4, 2)]
    segs, extras = split_extra_channels(targets, 2)
    assert isinstance(segs, list) and isinstance(extras, list) and len(segs) == len(extras) == 3
    for t, s, e in zip(targets, segs, extras):
        torch.testing.assert_close(s, t[:, :1])
        torch.testing.assert_close(e, t[:, 1:])
    for t, r in zip(targets, rejoin_extra_channels(segs, extras)):
        torch.testing.assert_close(r, t)
    segs_t, extras_t = split_extra_channels(tuple(targets), 2)
    assert len(segs_t) == 3


def test_split_errors():
    with pytest.raises(ValueError, match="extra-target transform"):
        split_extra_channels(torch.zeros(2, 1, 3, 3), 1)
    with pytest.raises(ValueError, match="extra-target transform"):
        split_extra_channels([torch.zeros(2, 3, 3, 3), torch.zeros(2, 2, 3, 3)], 2)
    with pytest.raises(ValueError):
        rejoin_extra_channels([torch.zeros(1, 1, 2, 2)] * 2, [torch.zeros(1, 1, 2, 2)])


@pytest.mark.parametrize("region_mode,n_channels", [(False, 1), (True, 0)])
def test_output_without_foreground_channel_is_an_error(region_mode, n_channels):
    output = torch.zeros(1, n_channels, 3, 3)
    tube = torch.zeros(1, 1 if not region_mode else 0, 3, 3)
    with pytest.raises(ValueError, match="channel"):
        SoftSkeletonRecallLoss(region_mode=region_mode)(output, tube)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch_dice", [True, False])
def test_cuda_half_precision_matches_cpu(batch_dice):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, 8, generator=g)
    tube = torch.randint(0, 3, (2, 1, 16, 16, 8), generator=g)
    loss_fn = SoftSkeletonRecallLoss(batch_dice=batch_dice)
    expected = loss_fn(logits, tube)
    on_gpu = logits.cuda().half().requires_grad_()
    with torch.autocast("cuda"):
        value = loss_fn(on_gpu, tube.cuda())
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(on_gpu.grad).all()
    assert value.item() == pytest.approx(expected.item(), abs=2e-3)
