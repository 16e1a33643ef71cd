"""UNet++ network: shapes, wiring against the paper's recursion, gradients, state dicts, pruning, planning size."""
from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU

from nnunet_ext.networks import UNetPlusPlus
from unetpp_helpers import arch_kwargs, plain_unet, smallest_input, unetpp

CONFIGS = [(dim, n, aniso) for dim in (2, 3) for n in (4, 5, 6, 7) for aniso in (False, True)]


def _id(config):
    dim, n, aniso = config
    return f"{dim}d-{n}stages" + ("-aniso" if aniso else "")


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_output_shapes_and_every_parameter_gets_a_gradient(config):
    dim, n_stages, aniso = config
    kwargs = arch_kwargs(n_stages, dim, aniso, base=1 if dim == 3 and n_stages >= 6 else 2)
    net = unetpp(kwargs)
    x = smallest_input(kwargs)
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == n_stages  # primary + one per head
    for out in outputs:
        assert out.shape == (2, 3, *x.shape[2:])
    sum((o.float() ** 2).mean() for o in outputs).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    net.decoder.deep_supervision = False
    with torch.no_grad():
        single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, *x.shape[2:])


def _paper_recursion(net: UNetPlusPlus, x: torch.Tensor) -> list[torch.Tensor]:
    """Heads computed straight from the paper's definition with the network's own modules."""
    encoder = [x]
    for stage in net.encoder.stages:
        encoder.append(stage(encoder[-1]))
    memo = {}

    def node(i: int, j: int) -> torch.Tensor:
        if j == 0:
            return encoder[i + 1]
        if (i, j) not in memo:
            key = f"x{i}_{j}"
            inputs = [node(i, k) for k in range(j)] + [net.decoder.ups[key](node(i + 1, j - 1))]
            memo[(i, j)] = net.decoder.blocks[key](torch.cat(inputs, 1))
        return memo[(i, j)]

    return [net.decoder.heads[j - 1](node(0, j)) for j in range(1, len(net.encoder.stages))]


@pytest.mark.parametrize("config", [(2, 4, False), (2, 6, True), (3, 5, True)], ids=_id)
def test_nodes_follow_the_paper_and_the_primary_output_is_the_mean_of_heads(config):
    dim, n_stages, aniso = config
    kwargs = arch_kwargs(n_stages, dim, aniso)
    net = unetpp(kwargs).eval()
    x = smallest_input(kwargs)
    with torch.no_grad():
        outputs = net(x)
        expected_heads = _paper_recursion(net, x)
    L = n_stages - 1
    assert len(net.decoder.blocks) == L * (L + 1) // 2 == len(net.decoder.ups)
    for i in range(L):
        for j in range(1, L - i + 1):  # X[i, j] concatenates j same-level nodes and one upsampled node
            conv = net.decoder.blocks[f"x{i}_{j}"].convs[0].conv
            assert conv.in_channels == (j + 1) * kwargs["features_per_stage"][i]
    for got, want in zip(outputs[1:], expected_heads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(outputs[0], torch.stack(expected_heads).mean(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config", [(2, 5, False), (3, 4, True)], ids=_id)
def test_strict_state_dict_load_across_deep_supervision_modes(config):
    dim, n_stages, aniso = config
    kwargs = arch_kwargs(n_stages, dim, aniso)
    x = smallest_input(kwargs)
    trained = unetpp(kwargs, deep_supervision=True, seed=1).eval()
    inference = unetpp(kwargs, deep_supervision=False, seed=2).eval()
    assert trained.state_dict().keys() == inference.state_dict().keys()
    inference.load_state_dict(trained.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(inference(x), trained(x)[0], rtol=0, atol=0)
    back = unetpp(kwargs, deep_supervision=True, seed=3)
    back.load_state_dict(inference.state_dict(), strict=True)


@pytest.mark.parametrize("config", [(2, 6, False), (3, 5, True)], ids=_id)
def test_pruned_heads_equal_the_full_network_heads_and_compute_less(config):
    dim, n_stages, aniso = config
    kwargs = arch_kwargs(n_stages, dim, aniso)
    x = smallest_input(kwargs)
    net = unetpp(kwargs).eval()
    with torch.no_grad():
        full = net(x)
    net.decoder.deep_supervision = False
    called: set[str] = set()
    for name, module in net.named_modules():
        if isinstance(module, ConvDropoutNormReLU):
            module.register_forward_hook(lambda m, i, o, name=name: called.add(name))
    for depth in range(1, n_stages):
        net.inference_head = depth
        called.clear()
        with torch.no_grad():
            pruned = net(x)
        torch.testing.assert_close(pruned, full[depth], rtol=1e-5, atol=1e-6)
        encoder_stages = {int(n.split(".")[2]) for n in called if n.startswith("encoder.")}
        assert encoder_stages == set(range(depth + 1))
        nodes = {n.split(".")[2] for n in called if n.startswith("decoder.")}
        assert nodes == {f"x{i}_{j}" for i in range(depth) for j in range(1, depth - i + 1)}


def test_inference_head_values(monkeypatch):
    kwargs = arch_kwargs(4, 2)
    assert unetpp(kwargs).inference_head == "ensemble"
    assert unetpp(kwargs, inference_head="2").inference_head == 2  # as read from the environment
    monkeypatch.setenv("NNUNET_EXT_UNETPP_INFERENCE_HEAD", "2")  # the network never reads it (the trainer does)
    assert unetpp(kwargs).inference_head == "ensemble"
    for bad in ("0", "4", "deepest", "1.5"):
        with pytest.raises(ValueError, match="'ensemble' or an integer 1..3"):
            unetpp(kwargs, inference_head=bad)
    net = unetpp(kwargs)
    for bad in (0, 4, "x", 2.5, True):
        with pytest.raises(ValueError, match="'ensemble' or an integer 1..3"):
            net.inference_head = bad
    net.inference_head = "3"
    assert net.inference_head == 3


def test_too_few_stages_and_wrong_decoder_lengths_are_rejected():
    with pytest.raises(ValueError, match="at least 2 stages"):
        unetpp(arch_kwargs(1, 2))
    kwargs = {**arch_kwargs(4, 2), "n_conv_per_stage_decoder": [2, 2]}
    with pytest.raises(ValueError, match="n_conv_per_stage_decoder needs n_stages - 1 = 3"):
        unetpp(kwargs)


def _conv_outputs(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Elements per sample of every conv block's, up-convolution's and head's output, counted with hooks."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        total += output[0].numel()

    hooks = [module.register_forward_hook(count) for name, module in net.named_modules()
             if isinstance(module, ConvDropoutNormReLU) or (name.startswith(("decoder.ups.", "decoder.heads.",
                                                                             "decoder.transpconvs.",
                                                                             "decoder.seg_layers."))
                                                            and name.count(".") == 2)]
    with torch.no_grad():
        net(x[:1])
    for hook in hooks:
        hook.remove()
    return total


def _saved_for_backward(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Elements per sample that autograd keeps for backward in a training forward pass (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(tensor):
        if tensor.requires_grad or tensor.grad_fn is not None or tensor.numel() > 1000:
            seen[tensor.untyped_storage().data_ptr()] = tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x[:1])
    del out
    parameters = {p.untyped_storage().data_ptr() for p in net.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in parameters)


@pytest.mark.parametrize("config", [(2, 5, False), (3, 4, True)], ids=_id)
def test_feature_map_size_for_planning(config):
    dim, n_stages, aniso = config
    kwargs = arch_kwargs(n_stages, dim, aniso)
    x = smallest_input(kwargs, bottleneck=3)
    net, plain = unetpp(kwargs), plain_unet(kwargs)
    estimate = net.compute_conv_feature_map_size(tuple(x.shape[2:]))
    plain_estimate = plain.compute_conv_feature_map_size(tuple(x.shape[2:]))
    # counts every conv, up-convolution and head output (measured with hooks), plus part of the concatenations
    outputs = _conv_outputs(net, x)
    assert outputs < estimate < 1.5 * outputs
    # the planner only uses ratios to PlainConvUNet's estimate: they follow what autograd really keeps
    measured_ratio = _saved_for_backward(net, x) / _saved_for_backward(plain, x)
    assert 1.5 < estimate / plain_estimate < 6  # the nested decoder's several-fold feature maps
    assert estimate / plain_estimate == pytest.approx(measured_ratio, rel=0.3)
    with pytest.raises(ValueError, match="spatial patch size only"):
        net.compute_conv_feature_map_size((1, 1, *x.shape[2:]))
