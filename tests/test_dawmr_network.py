"""DAWMR network: shapes (2D, 3D, anisotropic), the deep-supervision list, strict state dicts, no gradient across
iterations, field of view against hand-computed values and measured influence, the patch check, planner size."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nnunet_ext.networks.dawmr import DAWMR
from unetpp_helpers import arch_kwargs, smallest_input


def dawmr(kwargs: dict, num_classes: int = 3, deep_supervision: bool = True, seed: int = 0, **extra) -> DAWMR:
    torch.manual_seed(seed)
    net = DAWMR(input_channels=1, num_classes=num_classes, deep_supervision=deep_supervision, **kwargs, **extra)
    net.apply(net.initialize)
    return net


def tiny_2d(**overrides) -> dict:
    """2D, 3 stages, kernel 3, strides 1/2/2, one conv per stage, no norm (no global coupling)."""
    kwargs = dict(n_stages=3, features_per_stage=[2, 4, 8], conv_op=nn.Conv2d, kernel_sizes=[[3, 3]] * 3,
                  strides=[[1, 1], [2, 2], [2, 2]], n_conv_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1],
                  conv_bias=True, norm_op=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    kwargs.update(overrides)
    return kwargs


CONFIGS = [(2, False), (3, False), (3, True)]


@pytest.mark.parametrize("dim, anisotropic", CONFIGS, ids=["2d", "3d", "3d-aniso"])
def test_shapes_and_deep_supervision_list_order(dim, anisotropic):
    kwargs = arch_kwargs(4, dim, anisotropic)
    net = dawmr(kwargs, iterations=3).eval()
    x = smallest_input(kwargs, bottleneck=2)
    with torch.no_grad():
        outputs = net(x)
        assert isinstance(outputs, list) and len(outputs) == 3
        for out in outputs:
            assert out.shape == (2, 3, *x.shape[2:])
        # by hand with the network's own modules: iteration k sees cat[image, softmax(out_{k-1})]
        manual = [net.nets[0](x)]
        for k in (1, 2):
            manual.append(net.nets[k](torch.cat([x, torch.softmax(manual[-1], 1)], 1)))
        for got, want in zip(outputs, [manual[2], manual[0], manual[1]]):  # [out_K, out_1, ..., out_{K-1}]
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        net.decoder.deep_supervision = False
        single = net(x)
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, manual[2], rtol=0, atol=0)
    assert net.nets[1].core.convs[0].conv.in_channels == 1 + 3 and net.nets[0].core.convs[0].conv.in_channels == 1
    assert not any("seg_layers" in name for name in net.state_dict())


def test_one_iteration_and_region_feedback():
    kwargs = arch_kwargs(3, 2)
    net = dawmr(kwargs, iterations=1).eval()
    x = smallest_input(kwargs, bottleneck=2)
    with torch.no_grad():
        outputs = net(x)
    assert len(outputs) == 1 and outputs[0].shape == (2, 3, *x.shape[2:])
    sig = dawmr(kwargs, iterations=2, feedback="sigmoid").eval()
    with torch.no_grad():
        first = sig.nets[0](x)
        expected = sig.nets[1](torch.cat([x, torch.sigmoid(first)], 1))
        torch.testing.assert_close(sig(x)[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("dim, anisotropic", [(2, False), (3, True)], ids=["2d", "3d-aniso"])
def test_strict_state_dict_load_across_deep_supervision_modes(dim, anisotropic):
    kwargs = arch_kwargs(4, dim, anisotropic)
    trained = dawmr(kwargs, deep_supervision=True, seed=1).eval()
    predictor = dawmr(kwargs, deep_supervision=False, seed=2).eval()
    assert trained.state_dict().keys() == predictor.state_dict().keys()
    predictor.load_state_dict(trained.state_dict(), strict=True)
    x = smallest_input(kwargs, bottleneck=2)
    with torch.no_grad():
        torch.testing.assert_close(predictor(x), trained(x)[0], rtol=0, atol=0)
    trained.load_state_dict(predictor.state_dict(), strict=True)


@pytest.mark.parametrize("dim", [2, 3])
def test_no_gradient_crosses_iterations_and_each_gets_its_own(dim):
    kwargs = arch_kwargs(3, dim, anisotropic=dim == 3)
    net = dawmr(kwargs, iterations=3)
    x = smallest_input(kwargs, bottleneck=2)
    outputs = net(x)
    order = [3, 1, 2]  # outputs[i] is iteration order[i] (1-based)
    for position, iteration in enumerate(order):
        loss = (outputs[position].float() ** 2).mean()
        own = list(net.nets[iteration - 1].parameters())
        others = [p for k, m in enumerate(net.nets) if k != iteration - 1 for p in m.parameters()]
        grads = torch.autograd.grad(loss, own + others, retain_graph=True, allow_unused=True)
        own_grads, other_grads = grads[:len(own)], grads[len(own):]
        assert all(g is None for g in other_grads), f"out_{iteration}'s loss reaches another iteration"
        assert all(g is not None and torch.isfinite(g).all() for g in own_grads)
        assert sum(float(g.abs().sum()) for g in own_grads) > 0
    # summed deep-supervision loss: every parameter gets a gradient (no DDP unused-parameter error)
    sum((o ** 2).mean() for o in outputs).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_field_of_view_by_hand_for_a_tiny_2d_configuration():
    """Core: one 3x3 conv -> offsets -1..1; foveation window 3 -> -2..2. Scale 1 (stride 2, one 3x3 conv at low
    resolution, bilinear upsampling): an even output voxel 2i interpolates low-res i-1 and i, whose convolution
    reads low-res i-2..i+1 = input 2i-4..2i+3; an odd one 2i+1 reads 2i-2..2i+5: offsets -4..4, 9 voxels.
    Two iterations: 2 * (9 - 1) + 1 = 17."""
    net = dawmr(tiny_2d(), iterations=2, scales=1, foveation=[3], width=4, mlp_hidden=3)
    assert net.iteration_offsets() == [(-4, 4), (-4, 4)]
    assert net.field_of_view(1) == (9, 9)
    assert net.field_of_view() == net.field_of_view(2) == (17, 17)
    no_scales = dawmr(tiny_2d(), iterations=1, scales=0, foveation=[3, 7])
    assert no_scales.field_of_view() == (1 + 2 + 6, 9)  # core 3 + widest foveation window 7 - 1
    with pytest.raises(ValueError, match="iterations"):
        net.field_of_view(3)


def _measured_influence(net: DAWMR, shape: tuple[int, ...], strides: tuple[int, ...]) -> list[tuple[int, int]]:
    """Per axis, (lowest, highest) offset output - input over which perturbing one input voxel changes the
    output of every iteration, for input voxels at every phase of the cumulative strides (float64)."""
    net = net.double().eval()
    dim = len(shape)
    centre = [s // 2 for s in shape]
    phases = list(np.ndindex(*strides))
    x = torch.randn((1, 1, *shape), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batch = x.repeat(len(phases) + 1, 1, *[1] * dim)
    for b, phase in enumerate(phases, start=1):
        batch[(b, 0) + tuple(c + p for c, p in zip(centre, phase))] += 1.0
    with torch.no_grad():
        out = net(batch)[0]
    lowest, highest = [0] * dim, [0] * dim
    for b, phase in enumerate(phases, start=1):
        changed = (out[b] - out[0]).abs().amax(0) > 1e-12  # float64 noise ~1e-16, weakest real change ~5e-9
        for axis in range(dim):
            other = tuple(a for a in range(dim) if a != axis)
            idx = np.nonzero(changed.any(dim=other).numpy())[0]
            source = centre[axis] + phase[axis]
            lowest[axis] = min(lowest[axis], int(idx.min()) - source)
            highest[axis] = max(highest[axis], int(idx.max()) - source)
    # an input at offset -d of an output influences it: influence offsets are the field-of-view offsets negated
    return [(-h, -l) for l, h in zip(lowest, highest)]


def test_field_of_view_matches_measured_influence_2d_two_iterations():
    net = dawmr(tiny_2d(), iterations=2, scales=1, foveation=[3], width=4, mlp_hidden=3)
    measured = _measured_influence(net, (48, 48), (2, 2))
    assert measured == [(-8, 8), (-8, 8)]  # two iterations: offsets add up
    assert tuple(h - l + 1 for l, h in measured) == net.field_of_view()


def test_field_of_view_anisotropic_3d_by_hand_and_measured():
    """Axis 0 never pooled, 1-wide kernels and windows: field of view 1 there; axes 1, 2 as in the 2D case."""
    kwargs = dict(n_stages=2, features_per_stage=[2, 4], conv_op=nn.Conv3d, kernel_sizes=[[1, 3, 3]] * 2,
                  strides=[[1, 1, 1], [1, 2, 2]], n_conv_per_stage=[1, 1], n_conv_per_stage_decoder=[1],
                  conv_bias=True, norm_op=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    net = dawmr(kwargs, iterations=1, foveation=[[1, 3, 3]], width=4, mlp_hidden=3)
    assert net.field_of_view() == (1, 9, 9)
    measured = _measured_influence(net, (5, 24, 24), (1, 2, 2))
    assert tuple(h - l + 1 for l, h in measured) == (1, 9, 9)
    defaults = dawmr(kwargs, iterations=3)  # default foveation 2 * c + 1 = (3, 5, 5), one scale
    assert defaults.foveation == [[3, 5, 5]] and defaults.n_scales == 1
    assert defaults.field_of_view(1) == (3, 9, 9) and defaults.field_of_view() == (7, 25, 25)


def test_typical_3d_plan_field_of_view():
    """Isotropic 3D plans (kernel 3, stride 2, 2 convs per stage): the stride-8 scale dominates with
    (5 + 2) * 8 - 1 = 55 voxels, the paper's 54^3 order; three iterations 163."""
    kwargs = arch_kwargs(6, 3, base=1)
    net = DAWMR(input_channels=1, num_classes=2, **kwargs)
    assert net.field_of_view(1) == (55, 55, 55) and net.field_of_view() == (163, 163, 163)


def test_patch_check_fires_only_where_the_patch_is_too_small():
    net = dawmr(tiny_2d(), iterations=2, scales=1, foveation=[3], width=4, mlp_hidden=3)
    assert net.check_patch_covers_field_of_view((17, 40)) == []
    messages = net.check_patch_covers_field_of_view((16, 40))
    assert len(messages) == 1 and "axis 0" in messages[0] and "17" in messages[0]
    assert net.check_patch_covers_field_of_view((9, 9), iterations=1) == []
    assert len(net.check_patch_covers_field_of_view((8, 8), iterations=1)) == 2
    with pytest.raises(ValueError, match="patch_size"):
        net.check_patch_covers_field_of_view((16, 16, 16))


def test_conv_feature_map_size_by_hand():
    """8x8 input, width 4, hidden 3, 2 classes, one core conv, one scale (stride 2, one conv):
    iteration 1: input 1*64 + core 4*64 + pooled input 1*16 + scale conv 4*16 + fused 3*64 + MLP 3*64 + head 2*64
    = 912; iteration 2 sees 1 + 2 channels: 912 + 2*64 + 2*16 = 1072."""
    net = DAWMR(input_channels=1, num_classes=2, iterations=2, scales=1, foveation=[3], width=4, mlp_hidden=3,
                **tiny_2d())
    assert net.compute_conv_feature_map_size((8, 8)) == 912 + 1072
    with pytest.raises(ValueError, match="spatial"):
        net.compute_conv_feature_map_size((1, 8, 8))


def test_defaults_and_he_initialisation():
    kwargs = arch_kwargs(5, 3, base=4)
    net = DAWMR(input_channels=2, num_classes=3, **kwargs)
    assert net.iterations == 3 and net.width == 16 and net.mlp_hidden == 8 and net.n_scales == 3
    assert net.scale_strides == [[2, 2, 2], [4, 4, 4], [8, 8, 8]]
    assert net.foveation == [[5, 5, 5], [9, 9, 9], [17, 17, 17]]
    assert net.nets[0].scales[2].convs[0].conv.out_channels == 16  # wide at low resolution
    assert net.nets[0].scale_proj[2].out_channels == 8  # projected before upsampling
    assert DAWMR(input_channels=1, num_classes=2, **arch_kwargs(2, 2, base=128, max_features=320)).width == 320
    torch.manual_seed(0)
    wide = nn.Conv3d(64, 64, 3, bias=True)
    nn.init.constant_(wide.bias, 1.0)
    DAWMR.initialize(wide)
    assert (wide.bias == 0).all()
    expected_std = (2 / (1 + 1e-4) / (64 * 27)) ** 0.5  # kaiming normal, negative slope 1e-2
    assert wide.weight.std().item() == pytest.approx(expected_std, rel=0.05)


@pytest.mark.parametrize("bad, match", [
    (dict(iterations=0), "iterations"), (dict(scales=4), "scales"), (dict(foveation=[4]), "odd"),
    (dict(width=0), "width"), (dict(feedback="relu"), "feedback"), (dict(foveation=[[3, 3]]), "odd"),
])
def test_arguments_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        DAWMR(input_channels=1, num_classes=2, **arch_kwargs(4, 3), **bad)
