"""GLNet network: shapes (2D, 3D, anisotropic, per-axis grid), wiring against independent references, gradients
per sharing path, tiled evaluation, checkpointing, the feature regulariser, bad windows and the planning size."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from unetpp_helpers import arch_kwargs

from nnunet_ext.networks.glnet import GLNet, crop_global, largest_tile_grid, merge_tiles

# (dim, n_stages, anisotropic, tile_grid, window): the window is a multiple of tile_grid x total stride
CONFIGS = {
    "2d": (2, 3, False, 2, (16, 16)),
    "2d-grid2x3": (2, 4, False, (2, 3), (32, 48)),  # tiles cover fractional global boxes along axis 1
    "3d-aniso": (3, 3, True, (1, 2, 2), (8, 16, 16)),  # thin first axis kept whole
}


def build(name: str, seed: int = 0, deep_supervision: bool = True, **extra) -> tuple[GLNet, torch.Tensor]:
    dim, n_stages, aniso, grid, window = CONFIGS[name]
    torch.manual_seed(seed)
    net = GLNet(input_channels=1, num_classes=3, deep_supervision=deep_supervision,
                tile_grid=extra.pop("tile_grid", grid),
                **arch_kwargs(n_stages, dim, aniso, base=2, max_features=8), **extra)
    net.apply(net.initialize)
    x = torch.randn(2, 1, *window, generator=torch.Generator().manual_seed(seed + 1))
    return net, x


def step_parameters(branch, i: int) -> list[torch.nn.Parameter]:
    """Parameters of a branch's step i: encoder stage i, or (decoder) transposed conv + conv block."""
    depth = len(branch.encoder.stages) - 1
    modules = [branch.encoder.stages[i]] if i <= depth else \
        [branch.decoder.transpconvs[i - depth - 1], branch.decoder.stages[i - depth - 1]]
    return [p for m in modules for p in m.parameters()]


def gradient_mass(parameters) -> float:
    return sum(float(p.grad.abs().sum()) for p in parameters if p.grad is not None)


def reference_tiles(x: torch.Tensor, grid) -> list[torch.Tensor]:
    """The tiles of x, row-major over the grid (first axis slowest), by explicit slicing."""
    tile = [s // g for s, g in zip(x.shape[2:], grid)]
    out = []
    for position in np.ndindex(*grid):
        box = tuple(slice(p * t, (p + 1) * t) for p, t in zip(position, tile))
        out.append(x[(slice(None), slice(None)) + box])
    return out


def reference_stitch(tiles: list[torch.Tensor], grid) -> torch.Tensor:
    tile = tiles[0].shape[2:]
    canvas = tiles[0].new_zeros((*tiles[0].shape[:2], *(g * t for g, t in zip(grid, tile))))
    for position, part in zip(np.ndindex(*grid), tiles):
        canvas[(slice(None), slice(None)) + tuple(slice(p * t, (p + 1) * t) for p, t in zip(position, tile))] = part
    return canvas


def linear_mode(dim: int) -> str:
    return {2: "bilinear", 3: "trilinear"}[dim]


# ------------------------------------------------------------------------------------------------ shapes, gradients
@pytest.mark.parametrize("bidirectional", [False, True], ids=["g2l", "bidirectional"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_shapes_and_which_parameters_get_gradients(name, bidirectional):
    net, x = build(name, local_to_global=bidirectional)
    assert net.local_to_global is bidirectional
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == 3  # fused, local aux, global aux, all full resolution
    for out in outputs:
        assert out.shape == (2, 3, *x.shape[2:])
    assert net.auxiliary_loss.ndim == 0 and net.auxiliary_loss > 0
    (sum(o.square().mean() for o in outputs) + net.auxiliary_loss).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient with deep supervision on (DDP would fail): {missing[:5]}"
    assert not any("seg_layers" in key for key in net.state_dict())

    net.zero_grad(set_to_none=True)
    net.decoder.deep_supervision = False
    fused = net(x)
    assert isinstance(fused, torch.Tensor) and fused.shape == (2, 3, *x.shape[2:])
    (fused.square().mean() + net.auxiliary_loss).backward()
    missing = {n.rsplit(".", 1)[0] for n, p in net.named_parameters() if p.grad is None}
    assert missing == {"decoder.local_head", "decoder.global_head"}  # documented: nnU-Net trains with DS on

    net.eval()
    with torch.no_grad():
        assert net(x).shape == fused.shape
    assert net.auxiliary_loss is None


def test_wiring_against_independent_reference():
    """Global input = the window average-pooled by the grid; local inputs = the tiles; fused logits = aggregation
    conv on cat(local final features, global final features interpolated by the grid and cut at the tile);
    global aux = global head upsampled to the window; local aux = local head stitched."""
    net, x = build("2d-grid2x3")
    net.eval()
    grid, seen = net.tile_grid, {}
    hooks = {"global_in": net.global_branch.encoder.stages[0], "local_in": net.local_branch.encoder.stages[0],
             "global_final": net.global_branch.decoder.stages[-1], "local_final": net.local_branch.decoder.stages[-1]}
    for key, module in hooks.items():
        module.register_forward_hook(lambda m, args, out, key=key: seen.__setitem__(key, (args[0], out)))
    with torch.no_grad():
        fused, local, global_logits = net(x)
        torch.testing.assert_close(seen["global_in"][0], F.avg_pool2d(x, grid, grid), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(seen["local_in"][0], torch.cat(reference_tiles(x, grid)), rtol=0, atol=0)
        g_final, l_final = seen["global_final"][1], seen["local_final"][1]
        g_up = F.interpolate(g_final, scale_factor=grid, mode="bilinear", align_corners=False)
        l_window = reference_stitch(list(l_final.chunk(math.prod(grid))), grid)
        heads = net.decoder
        assert heads.aggregation.kernel_size == (3, 3) and heads.aggregation.in_channels == 2 * l_final.shape[1]
        fused_ref = reference_stitch([heads.aggregation(torch.cat((lt, gt), 1)) for lt, gt in
                                      zip(reference_tiles(l_window, grid), reference_tiles(g_up, grid))], grid)
        torch.testing.assert_close(fused, fused_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(local, heads.local_head(l_window), rtol=1e-5, atol=1e-5)
        global_ref = F.interpolate(heads.global_head(g_final), size=x.shape[2:], mode="bilinear",
                                   align_corners=False)
        torch.testing.assert_close(global_logits, global_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["g2l", "bidirectional"])
@pytest.mark.parametrize("name", ["2d-grid2x3", "3d-aniso"])
def test_every_sharing_level_against_independent_reference(name, bidirectional):
    """Input of local step i = cat(local step i-1, global step i-1 interpolated by the grid and cut at the tile);
    with local_to_global, input of global step i = cat(global step i-1, the stitched local step i-1 average-pooled
    by the grid). Steps: encoder stages, then decoder stages (their transposed conv takes the concatenation)."""
    net, x = build(name, local_to_global=bidirectional)
    net.eval()
    grid, n_tiles, dim = net.tile_grid, math.prod(net.tile_grid), x.ndim - 2
    pool = F.avg_pool2d if dim == 2 else F.avg_pool3d
    seen: dict = {}

    def watch(branch_name, branch):
        depth = len(branch.encoder.stages) - 1
        for i in range(2 * depth + 1):
            first, last = (branch.encoder.stages[i],) * 2 if i <= depth else \
                (branch.decoder.transpconvs[i - depth - 1], branch.decoder.stages[i - depth - 1])
            first.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__((branch_name, "in", i), a[0]))
            last.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__((branch_name, "out", i), o))
        return 2 * depth + 1

    n_steps = watch("local", net.local_branch)
    watch("global", net.global_branch)
    with torch.no_grad():
        net(x)
    for i in range(1, n_steps):
        g_prev, l_prev = seen[("global", "out", i - 1)], seen[("local", "out", i - 1)]
        channels = g_prev.shape[1]
        upsampled = F.interpolate(g_prev, scale_factor=grid, mode=linear_mode(dim), align_corners=False)
        local_in = seen[("local", "in", i)]
        torch.testing.assert_close(local_in[:, :channels], l_prev, rtol=0, atol=0)
        torch.testing.assert_close(local_in[:, channels:], torch.cat(reference_tiles(upsampled, grid)),
                                   rtol=1e-5, atol=1e-6, msg=f"global-to-local at step {i}")
        global_in = seen[("global", "in", i)]
        if not bidirectional:
            assert global_in.shape[1] == channels
            continue
        merged = pool(reference_stitch(list(l_prev.chunk(n_tiles)), grid), grid, grid)
        torch.testing.assert_close(global_in[:, :channels], g_prev, rtol=0, atol=0)
        torch.testing.assert_close(global_in[:, channels:], merged, rtol=1e-5, atol=1e-6,
                                   msg=f"local-to-global at step {i}")


@pytest.mark.parametrize("dim,grid", [(2, (2, 3)), (3, (1, 2, 3))])
def test_crop_global_equals_interpolation_cut_at_the_tile(dim, grid):
    """Every tile's crop of a global map equals the whole map interpolated by the grid, then cut at the tile."""
    size = (4, 5) if dim == 2 else (3, 4, 5)
    g = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    upsampled = F.interpolate(g, scale_factor=grid, mode=linear_mode(dim), align_corners=False)
    for position, reference in zip(np.ndindex(*grid), reference_tiles(upsampled, grid)):
        torch.testing.assert_close(crop_global(g, position, grid), reference, rtol=1e-5, atol=1e-6)


def test_merge_tiles_equals_footprint_canvas_divided_by_coverage():
    grid, batch, size = (2, 3), 2, (4, 6)
    local = torch.randn(math.prod(grid) * batch, 3, *size, generator=torch.Generator().manual_seed(0))
    canvas, coverage = torch.zeros(batch, 3, *size), torch.zeros(1, 1, *size)
    footprint = [s // g for s, g in zip(size, grid)]
    for k, position in enumerate(np.ndindex(*grid)):
        box = (slice(None), slice(None)) + tuple(slice(p * f, (p + 1) * f) for p, f in zip(position, footprint))
        canvas[box] += F.interpolate(local[k * batch:(k + 1) * batch], size=footprint, mode="area")
        coverage[box] += 1
    torch.testing.assert_close(merge_tiles(local, grid, batch), canvas / coverage, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["2d", "3d-aniso"])
def test_deep_supervision_modes_load_strictly_into_each_other(name):
    trained, x = build(name, seed=1, deep_supervision=True)
    inference, _ = build(name, seed=2, deep_supervision=False)
    assert trained.state_dict().keys() == inference.state_dict().keys()
    inference.load_state_dict(trained.state_dict(), strict=True)
    trained.eval(), inference.eval()
    with torch.no_grad():
        torch.testing.assert_close(inference(x), trained(x)[0], rtol=0, atol=0)
    back, _ = build(name, seed=3, deep_supervision=True)
    back.load_state_dict(inference.state_dict(), strict=True)


# ------------------------------------------------------------------------------------------- per-path gradients
def _detach_all_but(paths, keep) -> list:
    return [m.register_forward_hook(lambda mod, args, out: out.detach()) for p, m in enumerate(paths) if p != keep]


@pytest.mark.parametrize("bidirectional", [False, True], ids=["g2l", "bidirectional"])
@pytest.mark.parametrize("name", ["2d", "3d-aniso"])
def test_each_global_to_local_path_alone_carries_gradient_into_the_global_branch(name, bidirectional):
    """Loss on the local side only (fused + local aux + regulariser). With every global-to-local path but p
    detached, exactly the global steps 0..p (those that produce the map path p shares) get gradient: path p
    (encoder levels, bottleneck, decoder levels, aggregation head) works and is where it should be. With all
    paths detached nothing reaches the global branch (the regulariser's global side is detached)."""
    net, x = build(name, local_to_global=bidirectional, tiles_per_batch=2)
    n_paths, global_branch = len(net.global_to_local_paths), net.global_branch
    assert n_paths == global_branch.n_steps == 2 * (len(global_branch.encoder.stages) - 1) + 1
    calls = [0] * n_paths
    for p, module in enumerate(net.global_to_local_paths):
        module.register_forward_hook(lambda m, a, o, p=p: calls.__setitem__(p, calls[p] + 1))
    for open_path in [None, *range(n_paths)]:
        net.zero_grad(set_to_none=True)
        handles = _detach_all_but(net.global_to_local_paths, open_path)
        calls[:] = [0] * n_paths
        fused, local, _ = net(x)
        (fused.square().mean() + local.square().mean() + net.auxiliary_loss).backward()
        for handle in handles:
            handle.remove()
        n_chunks = math.ceil(math.prod(net.tile_grid) / 2)
        assert calls == [n_chunks] * n_paths  # every path runs once per tile sub-batch
        reached = [gradient_mass(step_parameters(global_branch, i)) > 0 for i in range(n_paths)]
        expected = [open_path is not None and i <= open_path for i in range(n_paths)]
        assert reached == expected, f"open path {open_path}"
        assert all(gradient_mass(step_parameters(net.local_branch, i)) > 0 for i in range(n_paths))


@pytest.mark.parametrize("name", ["2d", "3d-aniso"])
def test_each_local_to_global_path_alone_carries_gradient_into_the_local_branch(name):
    """Loss on the global aux output only. With every local-to-global path but q detached, exactly the local steps
    0..q get gradient; with all detached none does."""
    net, x = build(name, local_to_global=True)
    n_paths, local_branch = len(net.local_to_global_paths), net.local_branch
    assert n_paths == local_branch.n_steps - 1
    for open_path in [None, *range(n_paths)]:
        net.zero_grad(set_to_none=True)
        handles = _detach_all_but(net.local_to_global_paths, open_path)
        net(x)[2].square().mean().backward()
        for handle in handles:
            handle.remove()
        reached = [gradient_mass(step_parameters(local_branch, i)) > 0 for i in range(local_branch.n_steps)]
        assert reached == [open_path is not None and i <= open_path for i in range(local_branch.n_steps)]
        assert all(gradient_mass(step_parameters(net.global_branch, i)) > 0 for i in range(n_paths + 1))


def test_without_local_to_global_the_global_branch_ignores_the_local_branch():
    net, x = build("2d")
    assert len(net.local_to_global_paths) == 0
    net(x)[2].square().mean().backward()  # global aux only
    assert all(p.grad is None for p in net.local_branch.parameters())


# ----------------------------------------------------------------------------------- tiled evaluation, checkpoints
@pytest.mark.parametrize("bidirectional", [False, True], ids=["g2l", "bidirectional"])
@pytest.mark.parametrize("name", ["2d-grid2x3", "3d-aniso"])
def test_tiled_evaluation_equals_the_all_at_once_forward(name, bidirectional):
    net, x = build(name, local_to_global=bidirectional)
    with torch.no_grad():
        training_mode = net(x)  # training mode, all tiles at once (InstanceNorm: same in train and eval)
    net.eval()
    global_calls = []
    net.global_branch.encoder.stages[0].register_forward_hook(lambda m, a, o: global_calls.append(1))
    with torch.inference_mode():
        whole = net(x)
        for tiles_per_batch in (1, 4):
            net.tiles_per_batch = tiles_per_batch
            global_calls.clear()
            tiled = net(x)
            assert len(global_calls) == 1  # the global pyramid is computed once per window
            for got, want in zip(tiled, whole):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(whole, training_mode):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["g2l", "bidirectional"])
def test_checkpointed_training_gives_the_same_loss_and_gradients(bidirectional):
    results = []
    for checkpointed in (False, True):
        net, x = build("3d-aniso", local_to_global=bidirectional, checkpoint_tiles=checkpointed)
        recomputed = []
        net.local_branch.encoder.stages[0].register_forward_pre_hook(lambda m, a, seen=recomputed: seen.append(1))
        outputs = net(x)
        loss = sum(w * o.square().mean() for w, o in zip((1.0, 0.5, 0.25), outputs)) + net.auxiliary_loss
        forward_calls = len(recomputed)
        loss.backward()
        n_tiles = math.prod(net.tile_grid)
        if checkpointed:  # one tile per segment, each recomputed once in backward
            assert forward_calls == n_tiles and len(recomputed) == 2 * n_tiles
        else:
            assert forward_calls == len(recomputed) == 1
        results.append((loss.detach(), net.auxiliary_loss.detach(),
                        {n: p.grad.clone() for n, p in net.named_parameters()}))
    (loss_a, aux_a, grads_a), (loss_b, aux_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(aux_b, aux_a, rtol=1e-5, atol=1e-8)
    for key in grads_a:
        torch.testing.assert_close(grads_b[key], grads_a[key], rtol=1e-4, atol=1e-6, msg=key)


# ------------------------------------------------------------------------------------------ regulariser, errors
@pytest.mark.parametrize("name,weight", [("2d-grid2x3", 0.15), ("3d-aniso", 0.4)])
def test_auxiliary_loss_is_lambda_times_mse_of_local_and_cropped_global_features(name, weight):
    net, x = build(name, feature_regularization=weight)
    grid, seen = net.tile_grid, {}
    net.global_branch.decoder.stages[-1].register_forward_hook(lambda m, a, o: seen.__setitem__("global", o))
    net.local_branch.decoder.stages[-1].register_forward_hook(lambda m, a, o: seen.__setitem__("local", o))
    net(x)
    local_window = reference_stitch(list(seen["local"].chunk(math.prod(grid))), grid)
    global_up = F.interpolate(seen["global"], scale_factor=grid, mode=linear_mode(x.ndim - 2), align_corners=False)
    expected = weight * F.mse_loss(local_window, global_up)
    torch.testing.assert_close(net.auxiliary_loss, expected, rtol=1e-5, atol=1e-8)
    net.auxiliary_loss.backward()  # the global side is detached: the local features are pulled towards it, not
    last_global_step = step_parameters(net.global_branch, net.global_branch.n_steps - 1)  # the reverse (paper)
    assert all(p.grad is None for p in last_global_step)  # (earlier global steps reach it through the sharing)
    assert all(p.grad is not None for p in net.local_branch.parameters())
    with torch.no_grad():
        net(x)
    assert net.auxiliary_loss is None
    net.feature_regularization = 0
    net(x)
    assert net.auxiliary_loss.ndim == 0 and float(net.auxiliary_loss) == 0


def test_bad_windows_raise_useful_errors():
    net, _ = build("3d-aniso")  # grid (1, 2, 2), total stride (2, 4, 4): windows must be multiples of (2, 8, 8)
    with pytest.raises(ValueError, match=r"window \(8, 15, 16\) is not divisible by tile_grid \(1, 2, 2\)") as info:
        net(torch.zeros(1, 1, 8, 15, 16))
    assert "(2, 8, 8)" in str(info.value) and "e.g. (8, 16, 16)" in str(info.value)
    with pytest.raises(ValueError, match=r"tile \(8, 6, 8\) \(window \(8, 12, 16\) / tile_grid \(1, 2, 2\)\) is "
                                         r"not divisible by the network's total stride \(2, 4, 4\)") as info:
        net(torch.zeros(1, 1, 8, 12, 16))
    assert "e.g. (8, 16, 16)" in str(info.value)
    with pytest.raises(ValueError, match="3 spatial axes"):
        net(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="not divisible by the network's total stride"):
        net.compute_conv_feature_map_size((8, 16, 12))
    for bad in (dict(tile_grid=(2, 2)), dict(tile_grid=0), dict(tiles_per_batch=0), dict(checkpoint_tiles=1),
                dict(feature_regularization=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build("3d-aniso", **bad)


def test_largest_tile_grid_fits_the_window():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2]]  # total stride (2, 4, 4)
    assert largest_tile_grid((8, 16, 16), strides) == (2, 2, 2)
    assert largest_tile_grid((6, 24, 20), strides, preferred=3) == (3, 3, 1)
    assert largest_tile_grid((5, 16, 16), strides) == (1, 2, 2)


# ------------------------------------------------------------------------------------------------------ planning
def saved_activation_elements(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Elements of the float tensors autograd keeps for backward during one training forward (parameters and the
    input excluded, shared storages counted once)."""
    exclude = {p.untyped_storage().data_ptr() for p in net.parameters()} | {x.untyped_storage().data_ptr()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if t.is_floating_point() and storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = net(x)
    del outputs
    return sum(storages.values())


@pytest.mark.parametrize("name", ["2d", "3d-aniso"])
def test_feature_map_size_for_planning(name):
    dim, n_stages, aniso, _, window = CONFIGS[name]
    net, x = build(name)
    x = x[:1]
    estimate = int(net.compute_conv_feature_map_size(window))
    assert estimate > 0
    double = tuple(2 * w for w in window)
    assert net.compute_conv_feature_map_size(double) > 1.5 * estimate

    # loosely consistent with PlainConvUNet's convention: measured / estimated within a factor 2 of PlainConvUNet's
    tile = tuple(w // g for w, g in zip(window, net.tile_grid))
    torch.manual_seed(0)
    plain = PlainConvUNet(input_channels=1, num_classes=3, deep_supervision=True,
                          **arch_kwargs(n_stages, dim, aniso, base=2, max_features=8))
    plain_ratio = saved_activation_elements(plain, x[(..., *(slice(0, t) for t in tile))]) / \
        int(plain.compute_conv_feature_map_size(tile))
    ratio = saved_activation_elements(net, x) / estimate
    assert 0.5 < ratio / plain_ratio < 2, (ratio, plain_ratio)

    for bidirectional in (False, True):
        plain_net, _ = build(name, local_to_global=bidirectional)
        bounded, _ = build(name, local_to_global=bidirectional, checkpoint_tiles=True)
        assert bounded.compute_conv_feature_map_size(window) < plain_net.compute_conv_feature_map_size(window)
        assert saved_activation_elements(bounded, x) < saved_activation_elements(plain_net, x)


@pytest.mark.slow  # dynamo traces the whole network
def test_traces_into_one_graph_for_torch_compile():
    net, x = build("2d", checkpoint_tiles=True, local_to_global=True)
    compiled = torch.compile(net, backend="eager", fullgraph=True)  # fullgraph: any graph break raises
    outputs = compiled(x)
    (sum(o.mean() for o in outputs) + net.auxiliary_loss).backward()
    assert all(p.grad is not None for p in net.parameters())
