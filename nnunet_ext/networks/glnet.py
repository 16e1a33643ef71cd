"""GLNet (Chen et al., CVPR 2019): a global-local network for fields of view larger than the GPU memory allows.

Built from PlainConvUNet's keyword interface (2D or 3D through ``conv_op``, any strides and kernels,
anisotropic), so a plans file can name ``nnunet_ext.networks.glnet.GLNet`` with PlainConvUNet's ``arch_kwargs``
plus the options below.

Design (what ships)
-------------------
* **Window and tiles.** The nnU-Net patch is GLNet's window ``W`` (B, C, *W). ``tile_grid`` G (per axis, default 2)
  cuts it into ``prod(G)`` non-overlapping full-resolution tiles of size ``T = W / G``. ``W`` must be divisible by
  G and ``T`` by the network's total stride (``prod(strides)`` per axis); otherwise forward raises a ValueError
  naming window, grid, tile and the fix (checked from Python ints only). :func:`largest_tile_grid` picks a valid
  grid for a given window.
* **Global branch**: ``W`` area-downsampled by G (mean over G-blocks, i.e. average pooling) to the tile size ``T``,
  through a U-Net (encoder stages as PlainConvEncoder builds them, transposed convs + conv blocks as decoder).
* **Local branch**: every tile at full resolution through a U-Net of the same configuration. Both branches are a
  chain of ``2L + 1`` steps (``L = n_stages - 1``): steps ``0..L`` are encoder stages, ``L+1..2L`` decoder stages
  (transposed conv, concatenation with the skip, conv block). The input of local step ``i >= 1`` is
  ``cat(h_local[i-1], crop(h_global[i-1]))``: the global map of the same level is cropped at the tile's box and
  resized (bi/trilinear, ``align_corners=False``) to the local map's size (:func:`crop_global`, exactly
  ``F.interpolate(h_global, scale_factor=G)`` restricted to the tile). So global-to-local sharing happens at every
  encoder level ``0..L-1``, the bottleneck, every decoder level, and the aggregation head (``2L + 1`` paths, the
  modules ``global_to_local_paths[0..2L]``).
* **Local-to-global** (``local_to_global=True``, the paper's bidirectional sharing): the input of global step
  ``i >= 1`` is ``cat(h_global[i-1], merge(h_local[i-1] of all tiles))``. ``merge`` (:func:`merge_tiles`) resizes
  each tile's map to its footprint in the global map by area averaging, writes it into a zero canvas and divides
  by the coverage; as the tiles partition ``W`` this equals area-downsampling the stitched local map by G.
  The branches are then computed level by level, interleaved (modules ``local_to_global_paths[0..2L-1]``).
* **Heads** (the submodule ``decoder``, :class:`GLNetHeads`, none named ``seg_layers``): ``aggregation`` is a conv
  with the plans' first-stage kernel (3x3(x3)) on ``cat(local final features, cropped+resized global final
  features)`` -> fused logits per tile, stitched into (B, num_classes, *W); ``local_head`` (1x1) gives the local
  auxiliary logits, stitched; ``global_head`` (1x1) the global auxiliary logits at ``T``, upsampled by G to ``W``.
* **Feature regularisation**: ``feature_regularization * MSE(F_local, stop_grad(crop(F_global)))`` on the final
  features of all tiles (a mean over all elements). As in the paper it pulls the local branch towards the global
  one and not the reverse: the global crop is detached (the official code runs it with the global branch frozen),
  so the global branch's last step gets no gradient from it; its earlier steps still do, through the maps they
  share into the local branch.

Contract for trainers
---------------------
* Data loader: nnU-Net's ordinary batches, ``data`` (B, C, *W) and the target at full resolution ``W``. GLNet
  makes tiles and the global view itself; it needs no positions or extra keys, so DDP/DataParallel scatter the
  batch like any other (the global view of each sample is computed from that sample only).
* ``network.decoder.deep_supervision`` on: forward returns ``[fused, local_aux, global_aux]``, each
  (B, num_classes, *W) at FULL resolution (the trainer's deep-supervision scales must all be 1 and every weight
  non-zero, e.g. equal weights as in the paper); off: ``fused`` alone. With it off in training the two auxiliary
  heads get no gradient (DDP would report them unused): nnU-Net trains with it on.
* ``network.auxiliary_loss``: after a forward in training mode with grad enabled, a 0-dim float tensor (the
  weighted regulariser, zeros if ``feature_regularization == 0``) that the trainer adds to its loss; ``None``
  after any other forward. It is the only state a forward leaves behind (under ``nn.DataParallel`` it is set on
  the replicas and lost; nnU-Net uses DDP).

Memory
------
* Evaluation (``not self.training``): the global pyramid (all ``2L + 1`` maps, each tile-sized) is computed once
  per window, then the tiles run ``tiles_per_batch`` at a time (None: all at once) under whatever grad mode the
  caller set (nnU-Net's predictor: no_grad / inference_mode), their logits written into a W-sized canvas. Peak
  memory is the global pyramid + one tile sub-batch + the output canvas: set by the tile, not the window. The
  result equals the all-tiles-at-once forward. With ``local_to_global`` the global step ``i`` needs every tile's
  local map of level ``i-1``, so the local encoder maps of all tiles (the skips, as many elements as a single
  U-Net's skips on ``W``) are kept; only the transient activations inside a step are bounded by the sub-batch.
* Training: ``checkpoint_tiles=True`` wraps the local branch of each tile sub-batch (``tiles_per_batch``,
  default 1 tile when None) in ``torch.utils.checkpoint`` (non-reentrant): only its inputs (tile crops of the
  input, the shared global pyramid) and outputs (logits) are kept and it is recomputed in backward, so peak
  activation memory is the global branch + one sub-batch + the W-sized logits. With ``local_to_global`` each
  (step, sub-batch) is a segment: the level outputs of all tiles stay, their insides are recomputed.
  Dropout RNG is restored for the recompute; BatchNorm would update running stats twice (nnU-Net uses
  InstanceNorm, whose results also do not depend on how the tiles are batched).
* :meth:`GLNet.compute_conv_feature_map_size` takes the WINDOW and counts in PlainConvUNet's convention (each conv
  block / transposed conv output once) the global branch at ``T`` + its logits at ``W``, plus for the local branch
  all tiles (or, with ``checkpoint_tiles``, what stays: one sub-batch, the level outputs under
  ``local_to_global``), each shared (cropped or merged) map and the W-sized output canvases.

nnU-Net's sliding window and mirroring: the predictor calls the network on each window; every window gets its
own global view (only what lies inside it), so overlapping windows see different global contexts and their
outputs are blended with nnU-Net's Gaussian as usual. Mirroring flips a window, its tile grid and its global view
consistently (the tiles partition it symmetrically and the area-downsampling is aligned to them).

Known limitations: tiles do not overlap, so the local convolutions are zero-padded at tile borders (for G = 2 that
seam lies at the window centre; the global features shared at every level carry context across it); the window is
limited by the global branch's downsampling, not by a separate full-image view (the official code downsamples the
whole image).
"""
from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.helper import (
    convert_conv_op_to_dim,
    get_matching_convtransp,
    maybe_convert_scalar_to_list,
)
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from torch.utils.checkpoint import checkpoint

IntOrSequence = Union[int, list[int], tuple[int, ...]]
Tile = tuple[int, ...]

_LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


# ----------------------------------------------------------------------------------------------------- geometry
def tile_indices(grid: Sequence[int]) -> tuple[Tile, ...]:
    """All tile positions of a grid, row-major (first axis slowest): the order tiles are batched in."""
    return tuple(itertools.product(*(range(g) for g in grid)))


def tile_box(tile: Tile, tile_size: Sequence[int]) -> tuple[slice, ...]:
    """Index (all batch, all channels, the tile's box) into a (B, C, *W) tensor."""
    return (slice(None), slice(None)) + tuple(slice(t * s, (t + 1) * s) for t, s in zip(tile, tile_size))


def extract_tiles(x: torch.Tensor, tiles: Sequence[Tile], tile_size: Sequence[int]) -> torch.Tensor:
    """(B, C, *W) -> (len(tiles) * B, C, *tile_size), tile-major (the B samples of tiles[0] first)."""
    parts = [x[tile_box(tile, tile_size)] for tile in tiles]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 0)


def stitch_tiles(tiles: torch.Tensor, grid: Sequence[int], batch: int) -> torch.Tensor:
    """Inverse of :func:`extract_tiles` over the whole grid: (prod(grid) * B, C, *n) -> (B, C, *(grid * n))."""
    dim = len(grid)
    channels, size = tiles.shape[1], tiles.shape[2:]
    x = tiles.reshape(*grid, batch, channels, *size)
    order = [dim, dim + 1] + [d for axis in range(dim) for d in (axis, dim + 2 + axis)]
    return x.permute(order).reshape(batch, channels, *(g * s for g, s in zip(grid, size)))


def area_downsample(x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, C, *(grid * n)) -> (B, C, *n): the mean over each grid-sized block (average pooling, kernel = stride)."""
    shape, reduce = list(x.shape[:2]), []
    for axis, (g, size) in enumerate(zip(grid, x.shape[2:])):
        shape += [size // g, g]
        reduce.append(3 + 2 * axis)
    if all(g == 1 for g in grid):
        return x
    return x.reshape(shape).mean(dim=reduce)


def crop_global(global_map: torch.Tensor, tile: Tile, grid: Sequence[int]) -> torch.Tensor:
    """The tile's box of a global map, resized to the global map's own size by linear interpolation per axis.

    ``global_map`` (B, C, *n) covers the whole window; the tile covers ``n / grid`` of it per axis (fractional
    boxes are fine). Output (B, C, *n) equals ``F.interpolate(global_map, scale_factor=grid, mode=(bi/tri)linear,
    align_corners=False)`` restricted to the tile's box, computed from that box alone (two gathers per axis)."""
    out = global_map
    for axis, (t, g) in enumerate(zip(tile, grid)):
        if g == 1:
            continue
        dim = 2 + axis
        n = out.shape[dim]
        position = (torch.arange(n, device=out.device, dtype=torch.float32) + (t * n + 0.5)) / g - 0.5
        position = position.clamp(min=0.0)
        low = position.floor()
        weight_shape = [1] * out.ndim
        weight_shape[dim] = n
        weight = (position - low).to(out.dtype).view(weight_shape)
        low = low.long().clamp(max=n - 1)
        high = (low + 1).clamp(max=n - 1)
        out = out.index_select(dim, low) * (1 - weight) + out.index_select(dim, high) * weight
    return out


def merge_tiles(local_maps: torch.Tensor, grid: Sequence[int], batch: int) -> torch.Tensor:
    """All tiles' local maps (prod(grid) * B, C, *n) -> their merge into the global map (B, C, *n).

    Each tile is area-resized to its footprint, summed into a zero canvas and divided by the coverage; since the
    tiles partition the window this is the area-downsampling of the stitched map."""
    return area_downsample(stitch_tiles(local_maps, grid, batch), grid)


def total_stride(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Per-axis product of the stage strides."""
    return tuple(int(v) for v in np.prod(np.array(strides, dtype=np.int64), axis=0))


def largest_tile_grid(window: Sequence[int], strides: Sequence[Sequence[int]], preferred: IntOrSequence = 2
                      ) -> tuple[int, ...]:
    """Per axis the largest grid g <= preferred with window % (g * total stride) == 0 (1 where none fits).

    For a planner or trainer that must build GLNet on a given patch (e.g. nnU-Net's default plans)."""
    stride = total_stride(strides)
    wanted = [preferred] * len(window) if isinstance(preferred, int) else list(preferred)
    grid = []
    for w, p, g in zip(window, stride, wanted):
        grid.append(next((c for c in range(int(g), 0, -1) if w % (c * p) == 0), 1))
    return tuple(grid)


def plans_defaults(patch_size: Sequence[int], arch_kwargs: dict) -> dict:
    """Keyword defaults for building GLNet on plans that do not set them (e.g. nnU-Net's default plans): the tile
    grid, 2 per axis where the patch allows it (:func:`largest_tile_grid`), else 1 on that axis."""
    return {"tile_grid": list(largest_tile_grid(patch_size, arch_kwargs["strides"]))}


# ------------------------------------------------------------------------------------------------- building blocks
class GlobalToLocal(nn.Module):
    """A global-to-local sharing path (parameter-free): crops and resizes a global map for a sub-batch of tiles.

    ``forward(global_map (B, C, *n), tiles)`` -> (len(tiles) * B, C, *n), tile-major."""

    def __init__(self, grid: Sequence[int]):
        super().__init__()
        self.grid = tuple(grid)

    def forward(self, global_map: torch.Tensor, tiles: Sequence[Tile]) -> torch.Tensor:
        parts = [crop_global(global_map, tile, self.grid) for tile in tiles]
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)


class LocalToGlobal(nn.Module):
    """A local-to-global sharing path (parameter-free): merges all tiles' maps into one global-sized map.

    ``forward(local_maps (prod(grid) * B, C, *n), batch)`` -> (B, C, *n)."""

    def __init__(self, grid: Sequence[int]):
        super().__init__()
        self.grid = tuple(grid)

    def forward(self, local_maps: torch.Tensor, batch: int) -> torch.Tensor:
        return merge_tiles(local_maps, self.grid, batch)


class BranchEncoder(nn.Module):
    """Encoder stages as PlainConvEncoder builds them (``stages[s]`` = Sequential(StackedConvBlocks)); stage
    ``s >= 1`` takes ``in_factor * features[s-1]`` channels (2 when the other branch's map is concatenated)."""

    def __init__(self, input_channels: int, cfg: dict, in_factor: int):
        super().__init__()
        stages, channels = [], input_channels
        for s in range(cfg["n_stages"]):
            stages.append(nn.Sequential(StackedConvBlocks(
                cfg["n_conv_per_stage"][s], cfg["conv_op"], channels, cfg["features_per_stage"][s],
                cfg["kernel_sizes"][s], cfg["strides"][s], cfg["conv_bias"], cfg["norm_op"], cfg["norm_op_kwargs"],
                cfg["dropout_op"], cfg["dropout_op_kwargs"], cfg["nonlin"], cfg["nonlin_kwargs"],
                cfg["nonlin_first"])))
            channels = in_factor * cfg["features_per_stage"][s]
        self.stages = nn.Sequential(*stages)


class BranchDecoder(nn.Module):
    """PlainConvUNet-style decoder, deepest stage first: ``transpconvs[k]`` takes ``in_factor * F[level + 1]``
    channels (level = L - 1 - k), ``stages[k]`` the concatenation with the skip (2 F[level])."""

    def __init__(self, cfg: dict, in_factor: int):
        super().__init__()
        features, strides, depth = cfg["features_per_stage"], cfg["strides"], cfg["n_stages"] - 1
        transp_op = get_matching_convtransp(conv_op=cfg["conv_op"])
        transpconvs, stages = [], []
        for k in range(depth):
            level = depth - 1 - k
            transpconvs.append(transp_op(in_factor * features[level + 1], features[level], strides[level + 1],
                                         strides[level + 1], bias=cfg["conv_bias"]))
            stages.append(StackedConvBlocks(
                cfg["n_conv_per_stage_decoder"][k], cfg["conv_op"], 2 * features[level], features[level],
                cfg["kernel_sizes"][level], 1, cfg["conv_bias"], cfg["norm_op"], cfg["norm_op_kwargs"],
                cfg["dropout_op"], cfg["dropout_op_kwargs"], cfg["nonlin"], cfg["nonlin_kwargs"],
                cfg["nonlin_first"]))
        self.transpconvs = nn.ModuleList(transpconvs)
        self.stages = nn.ModuleList(stages)


class GLBranch(nn.Module):
    """One U-Net branch as a chain of ``2L + 1`` steps, so that two branches can be interleaved level by level.

    Step ``i <= L``: encoder stage ``i``; step ``L + k``: decoder stage ``k - 1`` (level ``L - k``). With
    ``shared=True`` steps ``i >= 1`` take ``cat(h[i-1], other branch's map of the same level)``."""

    def __init__(self, input_channels: int, cfg: dict, shared: bool):
        super().__init__()
        self.depth = cfg["n_stages"] - 1
        self.shared = shared
        self.features = list(cfg["features_per_stage"])
        self.strides = [list(s) for s in cfg["strides"]]
        self.encoder = BranchEncoder(input_channels, cfg, 2 if shared else 1)
        self.decoder = BranchDecoder(cfg, 2 if shared else 1)

    @property
    def n_steps(self) -> int:
        return 2 * self.depth + 1

    def step_level(self, i: int) -> int:
        """Resolution level of step ``i``'s output (0 = full tile resolution)."""
        return i if i <= self.depth else 2 * self.depth - i

    def step(self, i: int, h: torch.Tensor, shared: torch.Tensor | None = None,
             skip: torch.Tensor | None = None) -> torch.Tensor:
        """Step ``i`` on the previous output ``h`` (the image for i = 0), the shared map and (decoder) the skip."""
        x = h if shared is None else torch.cat((h, shared), 1)
        if i <= self.depth:
            return self.encoder.stages[i](x)
        k = i - self.depth - 1
        return self.decoder.stages[k](torch.cat((self.decoder.transpconvs[k](x), skip), 1))

    def run(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All step outputs of an unshared branch: ``[h_0, ..., h_2L]``, h_i (B, F_level(i), *size_level(i))."""
        maps = [self.step(0, x)]
        for i in range(1, self.n_steps):
            maps.append(self.step(i, maps[-1], None, maps[2 * self.depth - i] if i > self.depth else None))
        return maps

    def level_sizes(self, input_size: Sequence[int]) -> list[list[int]]:
        sizes, size = [], list(input_size)
        for stride in self.strides:
            size = [s // k for s, k in zip(size, stride)]
            sizes.append(size)
        return sizes

    def step_feature_map_sizes(self, input_size: Sequence[int]) -> tuple[list[int], list[int]]:
        """Per step: (elements of all its conv / transposed-conv outputs, elements of its output), one sample."""
        sizes, inner, outer = self.level_sizes(input_size), [], []
        previous = list(input_size)
        for s in range(self.depth + 1):
            inner.append(int(self.encoder.stages[s][0].compute_conv_feature_map_size(previous)))
            outer.append(self.features[s] * int(np.prod(sizes[s])))
            previous = sizes[s]
        for k in range(self.depth):
            level = self.depth - 1 - k
            voxels = int(np.prod(sizes[level]))
            inner.append(int(self.decoder.stages[k].compute_conv_feature_map_size(sizes[level]))
                         + self.features[level] * voxels)
            outer.append(self.features[level] * voxels)
        return inner, outer


class GLNetHeads(nn.Module):
    """GLNet's output heads and nnU-Net's deep-supervision switch (``network.decoder.deep_supervision``).

    ``aggregation``: conv (kernel ``kernel_size``, same padding) on cat(local, cropped global) final features
    (2 F_0 channels) -> fused logits; ``local_head`` / ``global_head``: 1x1 convs on each branch's final features."""

    def __init__(self, conv_op: type[_ConvNd], features: int, num_classes: int, kernel_size: Sequence[int],
                 deep_supervision: bool):
        super().__init__()
        self.deep_supervision = deep_supervision
        padding = [k // 2 for k in kernel_size]
        self.aggregation = conv_op(2 * features, num_classes, list(kernel_size), 1, padding, bias=True)
        self.local_head = conv_op(features, num_classes, 1, 1, 0, bias=True)
        self.global_head = conv_op(features, num_classes, 1, 1, 0, bias=True)


# ------------------------------------------------------------------------------------------------------- validation
def _per_stage(value, n: int, name: str, hint: str = "one entry per stage") -> list:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} needs {n} entries ({hint}), got {value}")
    return value


def _per_axis(conv_op, value, name: str, dim: int) -> list[int]:
    value = [int(v) for v in maybe_convert_scalar_to_list(conv_op, value)]
    if len(value) != dim:
        raise ValueError(f"{name} entries need {dim} values (one per spatial axis of {conv_op.__name__}), got {value}")
    return value


def _parse_grid(tile_grid: IntOrSequence, dim: int) -> tuple[int, ...]:
    values = [tile_grid] * dim if isinstance(tile_grid, (int, np.integer)) and not isinstance(tile_grid, bool) \
        else list(tile_grid) if isinstance(tile_grid, (list, tuple)) else None
    if values is None or len(values) != dim or any(
            isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1 for g in values):
        raise ValueError(f"tile_grid must be a positive int or {dim} positive ints (tiles per spatial axis; 1 keeps "
                         f"an axis whole), got {tile_grid!r}")
    return tuple(int(g) for g in values)


# ------------------------------------------------------------------------------------------------------------ GLNet
class GLNet(AbstractDynamicNetworkArchitectures):
    """GLNet on nnU-Net plans (see the module docstring for the design, the contract and the memory bounds).

    Input (B, input_channels, *W), W the window (nnU-Net patch). Output with ``deep_supervision``
    ``[fused, local_aux, global_aux]``, each (B, num_classes, *W); without it ``fused``. Extra options:
    ``tile_grid`` (tiles per axis), ``local_to_global`` (bidirectional sharing), ``feature_regularization``
    (lambda of the regulariser left in ``self.auxiliary_loss``), ``tiles_per_batch`` (tile sub-batch; None = all
    tiles at once, or 1 tile per checkpoint segment), ``checkpoint_tiles`` (recompute each tile sub-batch in
    backward during training)."""

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSequence,
                 conv_op: type[_ConvNd], kernel_sizes: IntOrSequence, strides: IntOrSequence,
                 n_conv_per_stage: IntOrSequence, num_classes: int, n_conv_per_stage_decoder: IntOrSequence,
                 conv_bias: bool = False, norm_op: None | type[nn.Module] = None, norm_op_kwargs: dict | None = None,
                 dropout_op: None | type[_DropoutNd] = None, dropout_op_kwargs: dict | None = None,
                 nonlin: None | type[nn.Module] = None, nonlin_kwargs: dict | None = None,
                 deep_supervision: bool = False, nonlin_first: bool = False,
                 tile_grid: IntOrSequence = 2, local_to_global: bool = False, feature_regularization: float = 0.15,
                 tiles_per_batch: int | None = None, checkpoint_tiles: bool = False):
        super().__init__()
        dim = convert_conv_op_to_dim(conv_op)
        if not isinstance(n_stages, (int, np.integer)) or n_stages < 2:
            raise ValueError(f"GLNet needs n_stages >= 2 (at least one downsampling step), got {n_stages!r}")
        cfg = dict(
            n_stages=int(n_stages), conv_op=conv_op, conv_bias=conv_bias, norm_op=norm_op,
            norm_op_kwargs=norm_op_kwargs, dropout_op=dropout_op, dropout_op_kwargs=dropout_op_kwargs,
            nonlin=nonlin, nonlin_kwargs=nonlin_kwargs, nonlin_first=nonlin_first,
            features_per_stage=[int(f) for f in _per_stage(features_per_stage, n_stages, "features_per_stage")],
            kernel_sizes=[_per_axis(conv_op, k, "kernel_sizes", dim)
                          for k in _per_stage(kernel_sizes, n_stages, "kernel_sizes")],
            strides=[_per_axis(conv_op, s, "strides", dim) for s in _per_stage(strides, n_stages, "strides")],
            n_conv_per_stage=_per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage"),
            n_conv_per_stage_decoder=_per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder",
                                                "n_stages - 1, deepest decoder stage first, as PlainConvUNet"))
        if any(k % 2 == 0 for k in cfg["kernel_sizes"][0]):
            raise ValueError(f"GLNet's aggregation conv uses the first stage's kernel, which must be odd per axis "
                             f"(same padding), got kernel_sizes[0] = {cfg['kernel_sizes'][0]}")
        self.key_to_encoder = "local_branch.encoder.stages"
        self.key_to_stem = "local_branch.encoder.stages.0"
        self.keys_to_in_proj = tuple(f"{branch}.encoder.stages.0.0.convs.0.{leaf}" for branch in
                                     ("local_branch", "global_branch") for leaf in ("conv", "all_modules.0"))
        self.dim = dim
        self.input_channels = input_channels
        self.num_classes = num_classes
        self._grid = _parse_grid(tile_grid, dim)
        self._local_to_global = bool(local_to_global)
        self._stride = total_stride(cfg["strides"])
        self.feature_regularization = feature_regularization
        self.tiles_per_batch = tiles_per_batch
        self.checkpoint_tiles = checkpoint_tiles

        self.global_branch = GLBranch(input_channels, cfg, shared=self._local_to_global)
        self.local_branch = GLBranch(input_channels, cfg, shared=True)
        self.decoder = GLNetHeads(conv_op, cfg["features_per_stage"][0], num_classes, cfg["kernel_sizes"][0],
                                  deep_supervision)
        n_steps = self.local_branch.n_steps
        self.global_to_local_paths = nn.ModuleList(GlobalToLocal(self._grid) for _ in range(n_steps))
        self.local_to_global_paths = nn.ModuleList(
            LocalToGlobal(self._grid) for _ in range(n_steps - 1 if self._local_to_global else 0))
        self.auxiliary_loss: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------------------- options
    @property
    def tile_grid(self) -> tuple[int, ...]:
        return self._grid

    @property
    def local_to_global(self) -> bool:
        """Whether local-to-global (bidirectional) sharing is built."""
        return self._local_to_global

    @property
    def feature_regularization(self) -> float:
        return self._lambda

    @feature_regularization.setter
    def feature_regularization(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"feature_regularization (lambda of the feature-map MSE) must be a finite number >= 0, "
                             f"got {value!r}")
        self._lambda = float(value)

    @property
    def tiles_per_batch(self) -> int | None:
        return self._tiles_per_batch

    @tiles_per_batch.setter
    def tiles_per_batch(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"tiles_per_batch must be None (all tiles at once) or an int >= 1, got {value!r}")
        self._tiles_per_batch = None if value is None else int(value)

    @property
    def checkpoint_tiles(self) -> bool:
        return self._checkpoint_tiles

    @checkpoint_tiles.setter
    def checkpoint_tiles(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"checkpoint_tiles must be a bool, got {value!r}")
        self._checkpoint_tiles = value

    # ---------------------------------------------------------------------------------------------- geometry
    def tile_size(self, window: Sequence[int]) -> tuple[int, ...]:
        """The tile size for a window; ValueError naming window, grid, tile and the fix if it does not fit."""
        window = tuple(int(w) for w in window)
        if len(window) != self.dim:
            raise ValueError(f"GLNet({self.dim}D) needs a window with {self.dim} spatial axes, got {window}")
        multiple = tuple(g * p for g, p in zip(self._grid, self._stride))
        fix = tuple(int(math.ceil(w / m) * m) for w, m in zip(window, multiple))
        for axis, (w, g, p) in enumerate(zip(window, self._grid, self._stride)):
            if w % g:
                raise ValueError(
                    f"GLNet window {window} is not divisible by tile_grid {self._grid} (axis {axis}: {w} % {g} = "
                    f"{w % g}). Use a window (nnU-Net patch size) that is a multiple of tile_grid x total stride = "
                    f"{multiple} per axis, e.g. {fix}, or a smaller tile_grid on that axis.")
            if (w // g) % p:
                tile = tuple(v // k for v, k in zip(window, self._grid))
                raise ValueError(
                    f"GLNet tile {tile} (window {window} / tile_grid {self._grid}) is not divisible by the network's "
                    f"total stride {self._stride} (axis {axis}: {w // g} % {p} = {(w // g) % p}). Use a window that "
                    f"is a multiple of tile_grid x total stride = {multiple} per axis, e.g. {fix}, or a smaller "
                    f"tile_grid on that axis (largest_tile_grid picks one).")
        return tuple(w // g for w, g in zip(window, self._grid))

    def check_patch_size(self, patch_size: Sequence[int]) -> list[str]:
        """The network contract's patch check: ValueError (naming window, grid, tile and the fix) when the plans'
        patch cannot be this GLNet's window; no warnings otherwise."""
        self.tile_size(patch_size)
        return []

    def _chunks(self, use_checkpoint: bool) -> list[tuple[Tile, ...]]:
        tiles = tile_indices(self._grid)
        size = self._tiles_per_batch or (1 if use_checkpoint else len(tiles))
        return [tiles[i:i + size] for i in range(0, len(tiles), size)]

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if x.ndim != self.dim + 2:
            raise ValueError(f"GLNet({self.dim}D) expects input (B, C, *window) with {self.dim} spatial axes, "
                             f"got shape {tuple(x.shape)}")
        window = tuple(int(s) for s in x.shape[2:])
        tile = self.tile_size(window)
        batch = int(x.shape[0])
        deep_supervision = self.decoder.deep_supervision
        grad_training = self.training and torch.is_grad_enabled()
        use_checkpoint = self._checkpoint_tiles and grad_training
        need_reg = grad_training and self._lambda > 0
        chunks = self._chunks(use_checkpoint)
        global_view = area_downsample(x, self._grid)  # (B, C, *T)
        if self._local_to_global:
            fused, local, global_final, reg = self._forward_bidirectional(
                x, global_view, chunks, tile, window, batch, deep_supervision, need_reg, use_checkpoint)
        else:
            global_maps = self.global_branch.run(global_view)
            global_final = global_maps[-1]
            fused, local, reg = self._forward_global_to_local(
                x, global_maps, chunks, tile, window, batch, deep_supervision, need_reg, use_checkpoint)

        if need_reg:
            count = batch * len(tile_indices(self._grid)) * self.decoder.local_head.in_channels * math.prod(tile)
            self.auxiliary_loss = reg * (self._lambda / count)
        elif grad_training:
            self.auxiliary_loss = x.new_zeros((), dtype=torch.float32)
        else:
            self.auxiliary_loss = None
        if not deep_supervision:
            return fused
        global_logits = F.interpolate(self.decoder.global_head(global_final), size=window,
                                      mode=_LINEAR_MODE[self.dim], align_corners=False)
        return [fused, local, global_logits]

    def _heads(self, h_local: torch.Tensor, global_final: torch.Tensor, chunk: tuple[Tile, ...], need_local: bool,
               need_reg: bool):
        """Fused logits, local logits (or None) and the regulariser's sum of squares (or None) of a tile sub-batch."""
        crop = self.global_to_local_paths[-1](global_final, chunk)
        fused = self.decoder.aggregation(torch.cat((h_local, crop), 1))
        local = self.decoder.local_head(h_local) if need_local else None
        reg = (h_local.float() - crop.detach().float()).square().sum() if need_reg else None
        return fused, local, reg

    def _local_chunk(self, x_tiles: torch.Tensor, chunk: tuple[Tile, ...], need_local: bool, need_reg: bool,
                     *global_maps: torch.Tensor):
        """The local branch and heads for one tile sub-batch, given the whole global pyramid (global-to-local)."""
        depth, branch = self.local_branch.depth, self.local_branch
        h = branch.step(0, x_tiles)
        skips = [h]
        for i in range(1, branch.n_steps):
            shared = self.global_to_local_paths[i - 1](global_maps[i - 1], chunk)
            h = branch.step(i, h, shared, skips[2 * depth - i] if i > depth else None)
            if i < depth:
                skips.append(h)
        return self._heads(h, global_maps[-1], chunk, need_local, need_reg)

    def _forward_global_to_local(self, x, global_maps, chunks, tile, window, batch, need_local, need_reg,
                                 use_checkpoint):
        canvases, reg = [None, None], None
        for chunk in chunks:
            x_tiles = extract_tiles(x, chunk, tile)
            if use_checkpoint:
                fused, local, part = checkpoint(self._local_chunk, x_tiles, chunk, need_local, need_reg,
                                                *global_maps, use_reentrant=False)
            else:
                fused, local, part = self._local_chunk(x_tiles, chunk, need_local, need_reg, *global_maps)
            self._write(canvases, (fused, local), chunk, tile, window, batch)
            reg = part if reg is None else (reg if part is None else reg + part)
        return canvases[0], canvases[1], reg

    def _local_step(self, i: int, h: torch.Tensor, global_previous: torch.Tensor | None,
                    chunk: tuple[Tile, ...], skip: torch.Tensor | None) -> torch.Tensor:
        shared = None if i == 0 else self.global_to_local_paths[i - 1](global_previous, chunk)
        return self.local_branch.step(i, h, shared, skip)

    def _forward_bidirectional(self, x, global_view, chunks, tile, window, batch, need_local, need_reg,
                               use_checkpoint):
        def run(fn, *args):
            return checkpoint(fn, *args, use_reentrant=False) if use_checkpoint else fn(*args)

        depth, n_steps = self.local_branch.depth, self.local_branch.n_steps
        g = self.global_branch.step(0, global_view)
        local = [run(self._local_step, 0, extract_tiles(x, c, tile), None, c, None) for c in chunks]
        global_skips, local_skips = [g], [local]
        for i in range(1, n_steps):
            skip = 2 * depth - i if i > depth else None
            merged = self.local_to_global_paths[i - 1](local[0] if len(local) == 1 else torch.cat(local, 0), batch)
            local = [run(self._local_step, i, h, g, c, None if skip is None else local_skips[skip][n])
                     for n, (h, c) in enumerate(zip(local, chunks))]
            g = self.global_branch.step(i, g, merged, None if skip is None else global_skips[skip])
            if i < depth:
                global_skips.append(g)
                local_skips.append(local)
        canvases, reg = [None, None], None
        for h, chunk in zip(local, chunks):
            fused, local_logits, part = run(self._heads, h, g, chunk, need_local, need_reg)
            self._write(canvases, (fused, local_logits), chunk, tile, window, batch)
            reg = part if reg is None else (reg if part is None else reg + part)
        return canvases[0], canvases[1], g, reg

    @staticmethod
    def _write(canvases: list, outputs: tuple, chunk: tuple[Tile, ...], tile: Tile, window: Tile, batch: int):
        """Write a sub-batch's tile logits (len(chunk) * B, K, *T) into W-sized canvases (B, K, *W)."""
        for index, out in enumerate(outputs):
            if out is None:
                continue
            if canvases[index] is None:
                canvases[index] = out.new_zeros((batch, out.shape[1], *window))
            for q, position in enumerate(chunk):
                canvases[index][tile_box(position, tile)] = out[q * batch:(q + 1) * batch]

    # ---------------------------------------------------------------------------------------------- planning
    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements of one training forward on the WINDOW ``input_size`` (spatial only), one sample.

        PlainConvUNet's convention (each conv block / transposed conv output once): global branch at the tile size
        + its logits at T and, upsampled, at W; per tile the local branch, each shared (cropped) map, the fused and
        local logits; the merged maps under ``local_to_global``; the two W-sized output canvases. All tiles count,
        except with ``checkpoint_tiles``: then one sub-batch (global-to-local), or all tiles' step outputs + one
        sub-batch's largest step (``local_to_global``)."""
        tile = self.tile_size(input_size)
        n_tiles = math.prod(self._grid)
        classes, window_voxels, tile_voxels = self.num_classes, math.prod(input_size), math.prod(tile)
        g_inner, g_outer = self.global_branch.step_feature_map_sizes(tile)
        l_inner, l_outer = self.local_branch.step_feature_map_sizes(tile)
        shared = g_outer  # path p carries global step p's output, cropped to the tile's map size
        total = sum(g_inner) + classes * tile_voxels + classes * window_voxels + 2 * classes * window_voxels
        if self._local_to_global:
            total += sum(l_outer[:-1])  # merged maps, global-sized
        per_tile = sum(l_inner) + sum(shared) + 2 * classes * tile_voxels
        if not self._checkpoint_tiles:
            total += n_tiles * per_tile
        else:
            sub_batch = min(self._tiles_per_batch or 1, n_tiles)
            if self._local_to_global:
                steps = [inner + (shared[i - 1] if i else 0) for i, inner in enumerate(l_inner)]
                heads = shared[-1] + 2 * classes * tile_voxels
                total += n_tiles * sum(l_outer) + sub_batch * max(max(steps), heads)
            else:
                total += sub_batch * per_tile
        return np.int64(total)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He initialisation, as nnU-Net initialises PlainConvUNet."""
        InitWeights_He(1e-2)(module)
