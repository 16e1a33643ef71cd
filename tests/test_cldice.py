"""Soft morphology, soft skeleton (memory-efficient vs reference) and SoftClDiceLoss.

Hand-analysed shapes (erosion: a cross; opening of an axis-aligned box of height/width >= 3 is the box itself):
  a 1-voxel-wide line erodes to nothing, so its skeleton is the line itself (delta of the first opening);
  a 3x3 square erodes to its centre, whose opening is empty: skeleton = centre from iteration 1 on;
  a 5-high bar erodes to 3-high, then to its middle row (2 shorter at each end): skeleton = that row from
  iteration 2 on, nothing before;
  a 3x3-section rod erodes to its centre line (1 shorter at each end): skeleton = that line from iteration 1.

Loss cases use logits of +-30 (probabilities 1 and ~1e-26) on a 5-high, 40-long bar whose skeleton is 36
pixels long; a prediction with a 6-pixel gap has skeleton 14 + 12 = 26 pixels, all inside the label:
  Tprec = (26 + 1) / (26 + 1) = 1, Tsens = (30 + 1) / (36 + 1) -> loss = 1 - 2 Tsens / (1 + Tsens) = 6 / 68.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnunet_ext.losses.cldice import (SoftClDiceLoss, soft_dilate, soft_erode, soft_open, soft_skeletonize,
                                      soft_skeletonize_reference)

BROKEN = 6 / 68  # the gap case above, smooth 1


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add scheduling stalls on a busy machine (30 s instead of 5 s)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def img(*shape: int) -> torch.Tensor:
    return torch.zeros(1, 1, *shape)


def skeletons(x: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    return soft_skeletonize(x, iterations), soft_skeletonize_reference(x, iterations)


# ----------------------------------------------------------------------------------------------------
# morphology
# ----------------------------------------------------------------------------------------------------

def test_erode_dilate_open_2d():
    x = img(7, 7)
    x[0, 0, 2:5, 2:5] = 1  # 3x3 square
    centre = img(7, 7)
    centre[0, 0, 3, 3] = 1
    assert torch.equal(soft_erode(x), centre)
    assert torch.equal(soft_dilate(centre), x)
    assert torch.equal(soft_open(x), x)
    # the cross: a plus shape survives one erosion at its centre only if all 4 neighbours are set
    plus = img(5, 5)
    plus[0, 0, 2, 1:4] = 1
    plus[0, 0, 1:4, 2] = 1
    assert torch.equal(soft_erode(plus), centre[..., 1:6, 1:6])
    # min/max of continuous values, with the border padded neutrally
    y = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    pad_hi = torch.nn.functional.pad(y, (1, 1, 1, 1), value=math.inf)
    expected = torch.stack([pad_hi[..., 1:-1, 1:-1], pad_hi[..., :-2, 1:-1], pad_hi[..., 2:, 1:-1],
                            pad_hi[..., 1:-1, :-2], pad_hi[..., 1:-1, 2:]]).amin(0)
    assert torch.equal(soft_erode(y), expected)
    pad_lo = torch.nn.functional.pad(y, (1, 1, 1, 1), value=-math.inf)
    box = torch.stack([pad_lo[..., i:i + 6, j:j + 5] for i in range(3) for j in range(3)]).amax(0)
    assert torch.equal(soft_dilate(y), box)


def test_erode_dilate_3d():
    cube = img(5, 5, 5)
    cube[0, 0, 1:4, 1:4, 1:4] = 1
    centre = img(5, 5, 5)
    centre[0, 0, 2, 2, 2] = 1
    assert torch.equal(soft_erode(cube), centre)
    assert torch.equal(soft_dilate(centre), cube)
    # an edge voxel of the cube has 6 neighbours inside only at the centre: the cross, not the full box
    plus3d = centre.clone()
    for axis in range(3):
        for step in (-1, 1):
            idx = [2, 2, 2]
            idx[axis] += step
            plus3d[0, 0, idx[0], idx[1], idx[2]] = 1
    assert torch.equal(soft_erode(plus3d), centre)


@pytest.mark.parametrize("shape", [(2, 3, 6, 5), (1, 2, 1, 7), (2, 1, 4, 5, 6), (1, 1, 1, 3, 1)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_slice_morphology_matches_pooling(shape, dtype):
    # the no-grad forward of soft_skeletonize uses shifted-slice min/max; values must be bit-identical
    from nnunet_ext.losses.cldice import _dilate_values, _erode_values

    g = torch.Generator().manual_seed(1)
    for x in (torch.randn(shape, generator=g).to(dtype), (torch.rand(shape, generator=g) < 0.5).to(dtype)):
        assert torch.equal(_erode_values(x), soft_erode(x))
        assert torch.equal(_dilate_values(x), soft_dilate(x))


@pytest.mark.parametrize("fn", [soft_erode, soft_dilate, soft_open, lambda t: soft_skeletonize(t, 2),
                                lambda t: soft_skeletonize_reference(t, 2)])
@pytest.mark.parametrize("shape", [(4, 4), (1, 4), (1, 1, 4), (1, 1, 2, 2, 2, 2)], ids=str)
def test_bad_ndim(fn, shape):
    with pytest.raises(ValueError, match=r"\(B, C, X, Y\) or \(B, C, X, Y, Z\)"):
        fn(torch.zeros(shape))


# ----------------------------------------------------------------------------------------------------
# soft skeleton of known shapes
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("iterations", [0, 1, 3, 10])
def test_one_pixel_line_stays_itself(iterations):
    line2d = img(7, 9)
    line2d[0, 0, 3, 1:8] = 1
    diag = img(6, 6)
    diag[0, 0, range(6), range(6)] = 1  # 8-connected diagonal: erodes to nothing as well
    line3d = img(5, 6, 9)
    line3d[0, 0, 2, 3, 1:8] = 1
    for x in (line2d, diag, line3d):
        for skel in skeletons(x, iterations):
            assert torch.equal(skel, x)


@pytest.mark.parametrize("iterations", [0, 1, 2, 10])
def test_3x3_square_gives_its_centre(iterations):
    x = img(7, 7)
    x[0, 0, 2:5, 2:5] = 1
    expected = img(7, 7)
    if iterations >= 1:
        expected[0, 0, 3, 3] = 1
    for skel in skeletons(x, iterations):
        assert torch.equal(skel, expected)


@pytest.mark.parametrize("iterations", [0, 1, 2, 3, 10])
def test_bar_of_height_5_gives_its_middle_row(iterations):
    x = img(9, 15)
    x[0, 0, 2:7, 2:13] = 1  # rows 2..6, cols 2..12
    expected = img(9, 15)
    if iterations >= 2:
        expected[0, 0, 4, 4:11] = 1  # middle row, 2 shorter at each end
    for skel in skeletons(x, iterations):
        assert torch.equal(skel, expected)
    # 2 channels and 2 samples are independent
    batch = torch.cat([torch.cat([x, torch.zeros_like(x)], 1), torch.cat([torch.zeros_like(x), x], 1)])
    expected_batch = torch.cat([torch.cat([expected, torch.zeros_like(x)], 1),
                                torch.cat([torch.zeros_like(x), expected], 1)])
    assert torch.equal(soft_skeletonize(batch, iterations), expected_batch)


@pytest.mark.parametrize("iterations", [0, 1, 4])
def test_3d_rod_gives_its_centre_line(iterations):
    x = img(7, 7, 12)
    x[0, 0, 2:5, 1:4, 2:10] = 1  # 3x3 section, z 2..9
    expected = img(7, 7, 12)
    if iterations >= 1:
        expected[0, 0, 3, 2, 3:9] = 1
    for skel in skeletons(x, iterations):
        assert torch.equal(skel, expected)


def test_iterations_honoured():
    # a 9-high bar: its middle row appears only at iteration 4 (9 -> 7 -> 5 -> 3 -> 1 rows)
    x = img(13, 20)
    x[0, 0, 2:11, 2:18] = 1
    for iterations in range(6):
        skel = soft_skeletonize(x, iterations)
        assert skel.sum().item() == (0 if iterations < 4 else 16 - 8)
    # continuous input: every iteration count gives a different skeleton
    torch.manual_seed(0)
    y = torch.rand(1, 2, 16, 16, dtype=torch.float64)
    results = [soft_skeletonize(y, n) for n in (0, 1, 2, 3, 5)]
    for i in range(len(results)):
        for j in range(i + 1, len(results)):
            assert not torch.equal(results[i], results[j])
    # 0 iterations is relu(x - open(x))
    assert torch.equal(results[0], torch.relu(y - soft_open(y)))


@pytest.mark.parametrize("iterations", [-1, 1.5, True, "3", None])
def test_bad_iterations(iterations):
    with pytest.raises(ValueError, match="iterations must be an int >= 0"):
        soft_skeletonize(torch.zeros(1, 1, 4, 4), iterations)
    with pytest.raises(ValueError, match="iterations"):
        soft_skeletonize_reference(torch.zeros(1, 1, 4, 4), iterations)
    with pytest.raises(ValueError, match="iterations"):
        SoftClDiceLoss(iterations=iterations)


# ----------------------------------------------------------------------------------------------------
# memory-efficient == reference (values and gradients)
# ----------------------------------------------------------------------------------------------------

def _values_and_grads(fn, x: torch.Tensor, iterations: int, grad_out: torch.Tensor):
    leaf = x.clone().requires_grad_()
    out = fn(leaf, iterations)
    (grad,) = torch.autograd.grad(out, leaf, grad_out)
    return out.detach(), grad


@pytest.mark.parametrize("shape", [(2, 3, 12, 13), (1, 2, 7, 8, 9), (2, 1, 5, 6, 4)], ids=str)
@pytest.mark.parametrize("iterations", [0, 1, 2, 5, 10])
def test_efficient_equals_reference_float64(shape, iterations):
    g = torch.Generator().manual_seed(sum(shape) + iterations)
    x = torch.rand(shape, dtype=torch.float64, generator=g)
    grad_out = torch.randn(shape, dtype=torch.float64, generator=g)
    v_eff, g_eff = _values_and_grads(soft_skeletonize, x, iterations, grad_out)
    v_ref, g_ref = _values_and_grads(soft_skeletonize_reference, x, iterations, grad_out)
    assert torch.equal(v_eff, v_ref)
    assert g_ref.abs().max() > 0
    torch.testing.assert_close(g_eff, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 2, 16, 16), (1, 2, 9, 10, 11)], ids=str)
def test_efficient_equals_reference_float32_and_binary(shape):
    g = torch.Generator().manual_seed(7)
    grad_out = torch.randn(shape, generator=g)
    for x in (torch.rand(shape, generator=g), (torch.rand(shape, generator=g) < 0.6).float()):
        v_eff, g_eff = _values_and_grads(soft_skeletonize, x, 10, grad_out)
        v_ref, g_ref = _values_and_grads(soft_skeletonize_reference, x, 10, grad_out)
        assert torch.equal(v_eff, v_ref)
        torch.testing.assert_close(g_eff, g_ref, rtol=1e-5, atol=1e-6)


def test_efficient_gradcheck():
    g = torch.Generator().manual_seed(3)
    for shape, fast in [((1, 1, 5, 6), False), ((1, 2, 5, 6, 5), True)]:
        x = torch.rand(shape, dtype=torch.float64, generator=g, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: soft_skeletonize(t, 3), (x,), fast_mode=fast)


def test_without_autograd_nothing_is_recorded():
    x = torch.rand(1, 2, 8, 8)
    out = soft_skeletonize(x, 4)
    assert out.grad_fn is None and not out.requires_grad
    xg = x.clone().requires_grad_()
    with torch.no_grad():
        out_ng = soft_skeletonize(xg, 4)
    assert out_ng.grad_fn is None
    assert torch.equal(out, out_ng)
    assert torch.equal(out, soft_skeletonize_reference(x, 4))


def _saved_bytes(fn, x: torch.Tensor, iterations: int) -> int:
    """Bytes autograd keeps for backward (distinct storages, via saved-tensor hooks)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    leaf = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(leaf, iterations)
    out.sum().backward()
    return sum(storages.values())


@pytest.mark.parametrize("shape", [(1, 2, 16, 16), (1, 1, 8, 8, 8)], ids=str)
def test_efficient_keeps_far_less_for_backward(shape):
    x = torch.rand(shape)
    n = 10
    efficient = _saved_bytes(soft_skeletonize, x, n)
    reference = _saved_bytes(soft_skeletonize_reference, x, n)
    # input, E_1..E_{n+1} and skel_0..skel_{n-1}
    assert efficient == (2 * n + 2) * x.numel() * x.element_size()
    assert efficient < 0.15 * reference


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2), st.integers(1, 3), st.lists(st.integers(1, 7), min_size=2, max_size=3),
       st.integers(0, 6), st.integers(0, 2**31 - 1))
def test_efficient_equals_reference_property(batch, channels, spatial, iterations, seed):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, channels, *spatial)
    x = torch.rand(shape, dtype=torch.float64, generator=g)
    grad_out = torch.randn(shape, dtype=torch.float64, generator=g)
    v_eff, g_eff = _values_and_grads(soft_skeletonize, x, iterations, grad_out)
    v_ref, g_ref = _values_and_grads(soft_skeletonize_reference, x, iterations, grad_out)
    assert torch.equal(v_eff, v_ref)
    torch.testing.assert_close(g_eff, g_ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# SoftClDiceLoss
# ----------------------------------------------------------------------------------------------------

def bar_label(height: int = 9, width: int = 44, rows=(2, 7), cols=(2, 42), value: int = 1) -> torch.Tensor:
    """(X, Y) int64 label map with a bar (rows 2..6, cols 2..41 by default)."""
    label = torch.zeros(height, width, dtype=torch.long)
    label[rows[0]:rows[1], cols[0]:cols[1]] = value
    return label


def with_gap(label: torch.Tensor, cols=(20, 26)) -> torch.Tensor:
    broken = label.clone()
    broken[:, cols[0]:cols[1]] = 0
    return broken


def confident_logits(label: torch.Tensor, n_channels: int) -> torch.Tensor:
    """(n_channels, *sp) logits +30 for the voxel's label, -30 elsewhere."""
    one_hot = torch.nn.functional.one_hot(label, n_channels).movedim(-1, 0).float()
    return 60 * one_hot - 30


def test_perfect_and_broken_label_mode():
    label = bar_label()
    target = label[None, None]
    loss = SoftClDiceLoss()
    assert loss(confident_logits(label, 2)[None], target).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(confident_logits(with_gap(label), 2)[None], target).item() == pytest.approx(BROKEN, rel=1e-5)


def test_perfect_and_broken_3d_rod():
    label = torch.zeros(9, 9, 30, dtype=torch.long)
    label[3:6, 3:6, 2:28] = 1  # skeleton: centre line z 3..26 (24 voxels)
    broken = label.clone()
    broken[:, :, 12:16] = 0  # pieces z 2..11 and 16..27 -> skeletons 8 + 10 voxels
    loss = SoftClDiceLoss()
    assert loss(confident_logits(label, 2)[None], label[None, None]).item() == pytest.approx(0.0, abs=1e-6)
    tsens = (24 - 4 + 1) / (24 + 1)
    expected = 1 - 2 * tsens / (1 + tsens)
    assert loss(confident_logits(broken, 2)[None], label[None, None]).item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.05


def test_per_class_mean_over_foreground_classes():
    # class 1 bar perfect, class 2 bar broken, class 3 absent from target and prediction (clDice 1)
    label = bar_label(20) + bar_label(20, rows=(12, 17), value=2)
    pred = bar_label(20) + with_gap(bar_label(20, rows=(12, 17), value=2))
    target = label[None, None]
    assert SoftClDiceLoss()(confident_logits(pred, 3)[None], target).item() == pytest.approx(BROKEN / 2, rel=1e-5)
    assert SoftClDiceLoss()(confident_logits(pred, 4)[None], target).item() == pytest.approx(BROKEN / 3, rel=1e-5)
    # the background channel is excluded: a perfect prediction scores 0 whatever the background looks like
    assert SoftClDiceLoss()(confident_logits(label, 4)[None], target).item() == pytest.approx(0.0, abs=1e-6)


def test_region_mode():
    label = bar_label()
    target = label[None, None].float()
    logits = lambda lab: (60.0 * lab - 30)[None, None]  # noqa: E731
    loss = SoftClDiceLoss(region_mode=True)
    assert loss(logits(label), target).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(logits(with_gap(label)), target).item() == pytest.approx(BROKEN, rel=1e-5)
    assert loss(logits(with_gap(label)), target.bool()).item() == pytest.approx(BROKEN, rel=1e-5)
    # two regions, one of them perfect
    two = torch.cat([target, target], 1)
    pred = torch.cat([logits(label), logits(with_gap(label))], 1)
    assert loss(pred, two).item() == pytest.approx(BROKEN / 2, rel=1e-5)


def test_ignore_label():
    label = bar_label()
    target = label.clone()
    target[:, 20:26] = 255  # the gap is ignored: both prediction and target lose it -> identical skeletons
    logits = confident_logits(with_gap(label), 2)[None]
    assert SoftClDiceLoss(ignore_label=255)(logits, target[None, None]).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(RuntimeError, match="index 255 is out of bounds"):  # the trainers check labels up front
        SoftClDiceLoss()(logits, target[None, None])
    # a spurious prediction inside an ignored area does not count either
    target2 = label.clone()
    target2[0, :] = 255
    pred = label.clone()
    pred[0, 5:30] = 1  # a 1-pixel line (its own skeleton) apart from the bar
    logits2 = confident_logits(pred, 2)[None]
    assert SoftClDiceLoss()(logits2, label[None, None]).item() > 0.01
    assert SoftClDiceLoss(ignore_label=255)(logits2, target2[None, None]).item() == pytest.approx(0.0, abs=1e-6)


def test_region_ignore_channel():
    label = bar_label()
    ignore = torch.zeros_like(label)
    ignore[:, 20:26] = 1
    target = torch.stack([label, ignore])[None].float()  # (1, R + 1, X, Y)
    logits = (60.0 * with_gap(label) - 30)[None, None]
    loss = SoftClDiceLoss(region_mode=True, region_ignore_channel=True)
    assert loss(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(logits, target.bool()).item() == pytest.approx(0.0, abs=1e-6)
    # the same target without ignore mask is the broken case
    assert SoftClDiceLoss(region_mode=True)(logits, target[:, :1]).item() == pytest.approx(BROKEN, rel=1e-5)


@pytest.mark.parametrize("ddp", [False, True])  # ddp without an initialised process group is a no-op
def test_batch_dice(ddp):
    label = bar_label()
    target = torch.stack([label, label])[:, None]
    logits = torch.stack([confident_logits(label, 2), confident_logits(with_gap(label), 2)])
    per_sample = SoftClDiceLoss(ddp=ddp)(logits, target)
    assert per_sample.item() == pytest.approx(BROKEN / 2, rel=1e-5)
    # batch: Tprec = (36 + 26 + 1) / (36 + 26 + 1) = 1, Tsens = (36 + 30 + 1) / (72 + 1) -> 6 / 140
    batch = SoftClDiceLoss(batch_dice=True, ddp=ddp)(logits, target)
    assert batch.item() == pytest.approx(6 / 140, rel=1e-5)


@pytest.mark.parametrize("region_mode", [False, True])
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("spatial", [(12, 13), (6, 7, 8)], ids=str)
def test_gradients_finite_and_descent(region_mode, batch_dice, spatial):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, *spatial, generator=g, requires_grad=True)
    target = (torch.rand(2, 3, *spatial, generator=g) < 0.4) if region_mode else \
        torch.randint(0, 3, (2, 1, *spatial), generator=g)
    loss_fn = SoftClDiceLoss(region_mode=region_mode, batch_dice=batch_dice, iterations=3)
    loss = loss_fn(logits, target)
    assert 0 < loss.item() < 1
    loss.backward()
    grad = logits.grad
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    with torch.no_grad():
        stepped = loss_fn(logits - 0.05 * grad / grad.abs().max(), target)
    assert stepped.item() < loss.item()


@pytest.mark.parametrize("region_mode", [False, True])
def test_empty_target_is_finite(region_mode):
    logits = torch.randn(2, 3, 8, 9, requires_grad=True)
    target = torch.zeros(2, 3 if region_mode else 1, 8, 9)
    loss = SoftClDiceLoss(region_mode=region_mode)(logits, target)
    assert torch.isfinite(loss) and 0 <= loss.item() <= 1
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # nothing predicted and nothing there: clDice 1 per class
    silent = torch.full((2, 3, 8, 9), -30.0)
    if not region_mode:
        silent[:, 0] = 30.0
    assert SoftClDiceLoss(region_mode=region_mode)(silent, target).item() == pytest.approx(0.0, abs=1e-6)


class ReferenceClDice(SoftClDiceLoss):
    skeletonize = staticmethod(soft_skeletonize_reference)


@pytest.mark.parametrize("region_mode", [False, True])
def test_loss_efficient_equals_reference(region_mode):
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(2, 4, 7, 8, 9, dtype=torch.float64, generator=g)
    target = (torch.rand(2, 4, 7, 8, 9, generator=g) < 0.4) if region_mode else \
        torch.randint(0, 4, (2, 1, 7, 8, 9), generator=g)
    results = []
    for cls in (SoftClDiceLoss, ReferenceClDice):
        leaf = logits.clone().requires_grad_()
        loss = cls(region_mode=region_mode, iterations=4)(leaf, target)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    assert torch.equal(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-14)


def test_loss_gradcheck():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 5, 6), generator=g)
    loss_fn = SoftClDiceLoss(iterations=2, batch_dice=True)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, target), (logits,), fast_mode=True)


def test_half_precision_input_gives_float32_loss():
    label = bar_label()
    loss = SoftClDiceLoss()(confident_logits(with_gap(label), 2)[None].half(), label[None, None])
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(BROKEN, rel=1e-4)


# ----------------------------------------------------------------------------------------------------
# argument validation
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("smooth", [0.0, -1.0, float("nan")])
def test_bad_smooth(smooth):
    with pytest.raises(ValueError, match="smooth must be > 0"):
        SoftClDiceLoss(smooth=smooth)


@pytest.mark.parametrize("kwargs,match", [
    ({"region_mode": True, "ignore_label": 2}, "region_ignore_channel"),
    ({"region_ignore_channel": True}, "needs region_mode=True"),
    ({"ignore_label": 2.5}, "ignore_label must be an int"),
    ({"ignore_label": True}, "ignore_label must be an int"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoftClDiceLoss(**kwargs)


@pytest.mark.parametrize("kwargs,logit_shape,target_shape", [
    ({}, (2, 3, 4, 4), (1, 1, 4, 4)),                 # batch
    ({}, (2, 3, 4, 4), (2, 1, 4, 5)),                 # spatial
    ({}, (2, 3, 4, 4), (2, 1, 4, 4, 1)),              # ndim
    ({}, (2, 3, 4), (2, 1, 4)),                       # 1D
    ({}, (2, 3, 4, 4), (2, 2, 4, 4)),                 # label mode: one target channel
    ({}, (2, 1, 4, 4), (2, 1, 4, 4)),                 # label mode: background + >= 1 class
    ({"region_mode": True}, (2, 3, 4, 4), (2, 2, 4, 4)),
    ({"region_mode": True, "region_ignore_channel": True}, (2, 3, 4, 4), (2, 3, 4, 4)),
])
def test_shape_errors(kwargs, logit_shape, target_shape):
    with pytest.raises(ValueError):
        SoftClDiceLoss(**kwargs)(torch.zeros(logit_shape), torch.zeros(target_shape))


@pytest.mark.parametrize("bad_label", [3, -1])
def test_labels_out_of_range(bad_label):
    """Not checked in the loss (a device sync per call); on the CPU scatter's index check still stops it (the
    trainers check the dataset's labels against dataset.json before training)."""
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[0, 0, 1, 1] = bad_label
    with pytest.raises(RuntimeError, match=f"index {bad_label} is out of bounds"):
        SoftClDiceLoss()(torch.zeros(1, 3, 4, 4), target)



def test_sparse_annotations_mask_the_sums_not_the_prediction():
    """Scattered annotations (60% of the pixels ignored) of a thin bar, predicted as a thick band around it. The
    band's skeleton lies on the bar, so the dense loss is low; with the ignored pixels masked in the sums the
    sparse loss estimates the dense one. Zeroing the prediction at ignored pixels before skeletonizing (the old
    behaviour, reproduced here by predicting background there) turns its skeleton into the annotation speckle."""
    label = bar_label(height=21, width=44, rows=(9, 12), cols=(2, 42))
    band = bar_label(height=21, width=44, rows=(5, 16), cols=(2, 42))
    logits = confident_logits(band, 2)[None]
    ignored = torch.rand(label.shape, generator=torch.Generator().manual_seed(0)) < 0.6
    sparse = torch.where(ignored, torch.tensor(255), label)
    dense_loss = SoftClDiceLoss()(logits, label[None, None]).item()
    sparse_loss = SoftClDiceLoss(ignore_label=255)(logits, sparse[None, None]).item()
    zeroed = confident_logits(torch.where(ignored, torch.tensor(0), band), 2)[None]
    old_loss = SoftClDiceLoss(ignore_label=255)(zeroed, sparse[None, None]).item()
    assert dense_loss < 0.3
    assert sparse_loss == pytest.approx(dense_loss, abs=0.1)
    assert abs(old_loss - dense_loss) > 0.2
