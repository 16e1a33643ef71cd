"""The nested dense decoder of UNet++ (Zhou et al., TMI 2019), for any number of stages, 2D or 3D.

Nodes ``X[i, j]`` (level ``i`` = resolution, ``j`` = column) for ``i + j <= L`` with ``L = n_stages - 1``:
``X[i, 0]`` are the encoder's outputs and, for ``j >= 1``,
``X[i, j] = convs(cat[X[i, 0], ..., X[i, j-1], up(X[i+1, j-1])])``. Heads are 1x1 convolutions on
``X[0, 1..L]``, all at the resolution of the first stage. Every node and head exists in every mode, so a state
dict loads strictly whatever ``deep_supervision`` and ``inference_head`` are.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from torch import nn

InferenceHead = Union[str, int]


def node_key(level: int, column: int) -> str:
    """The ModuleDict key of node X[level, column] (and of the up-convolution feeding it)."""
    return f"x{level}_{column}"


def parse_inference_head(value: InferenceHead | None, n_heads: int) -> InferenceHead:
    """'ensemble' (also for ``None``) or an int d in 1..n_heads (ints or their strings, e.g. from the environment)."""
    if value is None:
        return "ensemble"
    if isinstance(value, str) and value.strip().lower() == "ensemble":
        return "ensemble"
    try:
        depth = int(value)
    except (TypeError, ValueError):
        depth = None
    if depth is None or isinstance(value, bool) or not 1 <= depth <= n_heads or str(depth) != str(value).strip():
        raise ValueError(f"inference_head must be 'ensemble' or an integer 1..{n_heads} (pruned UNet++ L^d: only the "
                         f"sub-network up to head d is computed), got {value!r}")
    return depth


class NestedDecoder(nn.Module):
    """UNet++'s nested decoder over a :class:`PlainConvEncoder`'s skips.

    ``forward(skips)``: ``skips[i]`` is X[i, 0], shape (B, F_i, *spatial_i). Returns, with ``deep_supervision``,
    a list ``[primary, head_1, ..., head_L]`` of (B, num_classes, *spatial_0) tensors; without it, ``primary``
    alone. ``primary`` is the mean of the L heads' logits (``inference_head="ensemble"``) or head d (int d).
    """

    def __init__(self, encoder: PlainConvEncoder, num_classes: int, n_conv_per_stage: Union[int, Sequence[int]],
                 deep_supervision: bool, nonlin_first: bool = False, inference_head: InferenceHead | None = None):
        super().__init__()
        n_levels = len(encoder.output_channels)
        if n_levels < 2:
            raise ValueError(f"UNet++ needs at least 2 stages (one pooling step), got n_stages={n_levels}")
        self.depth = n_levels - 1  # L: number of heads, deepest level
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * self.depth
        if len(n_conv_per_stage) != self.depth:
            raise ValueError(f"n_conv_per_stage_decoder needs n_stages - 1 = {self.depth} entries (deepest level "
                             f"first, as PlainConvUNet), got {list(n_conv_per_stage)}")
        self.encoder_channels = list(encoder.output_channels)
        self.encoder_strides = [list(s) for s in encoder.strides]
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        self.inference_head = inference_head  # validated by the property setter

        up_op = get_matching_convtransp(conv_op=encoder.conv_op)
        blocks, ups = {}, {}
        for level in range(self.depth):
            features = encoder.output_channels[level]
            stride = encoder.strides[level + 1]
            convs_here = n_conv_per_stage[self.depth - 1 - level]  # PlainConvUNet lists the deepest level first
            for column in range(1, self.depth - level + 1):
                key = node_key(level, column)
                ups[key] = up_op(encoder.output_channels[level + 1], features, stride, stride, bias=encoder.conv_bias)
                blocks[key] = StackedConvBlocks(
                    convs_here, encoder.conv_op, (column + 1) * features, features, encoder.kernel_sizes[level], 1,
                    encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op,
                    encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs, nonlin_first)
        self.ups = nn.ModuleDict(ups)
        self.blocks = nn.ModuleDict(blocks)
        self.heads = nn.ModuleList(
            encoder.conv_op(encoder.output_channels[0], num_classes, 1, 1, 0, bias=True) for _ in range(self.depth))

    @property
    def inference_head(self) -> InferenceHead:
        return self._inference_head

    @inference_head.setter
    def inference_head(self, value: InferenceHead | None) -> None:
        self._inference_head = parse_inference_head(value, self.depth)

    @property
    def computed_depth(self) -> int:
        """How deep this forward pass goes: all L levels, except for a pruned head without deep supervision."""
        if self.deep_supervision or self.inference_head == "ensemble":
            return self.depth
        return int(self.inference_head)

    def node(self, nodes: dict[tuple[int, int], torch.Tensor], level: int, column: int) -> torch.Tensor:
        """X[level, column] from the nodes computed so far (same level, all columns < column; one level below)."""
        key = node_key(level, column)
        same_level = [nodes[(level, c)] for c in range(column)]
        return self.blocks[key](torch.cat(same_level + [self.ups[key](nodes[(level + 1, column - 1)])], 1))

    def forward(self, skips: Sequence[torch.Tensor]) -> Union[torch.Tensor, list[torch.Tensor]]:
        depth = self.computed_depth
        nodes = {(level, 0): skips[level] for level in range(depth + 1)}
        heads: list[torch.Tensor] = []
        for diagonal in range(1, depth + 1):  # encoder level `diagonal` reached: X[diagonal-1, 1] ... X[0, diagonal]
            for column in range(1, diagonal + 1):
                level = diagonal - column
                nodes[(level, column)] = self.node(nodes, level, column)
            heads.append(self.heads[diagonal - 1](nodes[(0, diagonal)]))
        primary = torch.stack(heads).mean(0) if self.inference_head == "ensemble" else heads[
            int(self.inference_head) - 1]
        return [primary] + heads if self.deep_supervision else primary

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements of the training forward pass (all nodes and heads), for nnU-Net's planner.

        Counted as PlainConvUNet's decoder counts them (conv outputs, up-convolution outputs, heads), plus half of
        the concatenated inputs beyond the two that PlainConvUNet's decoder concatenates (which its estimate, and
        nnU-Net's reference values, leave implicit): autograd keeps a concatenation once for backward but a conv
        output about twice (conv and norm outputs). Measured peak memory (``nnunet-ext benchmark unetpp``) lies
        just below the resulting ratio to PlainConvUNet. ``input_size`` is the encoder's input (spatial only)."""
        sizes, size = [], list(input_size)
        for stride in self.encoder_strides:
            size = [s // k for s, k in zip(size, stride)]
            sizes.append(size)
        total = np.int64(0)
        for level in range(self.depth):
            voxels = np.prod(sizes[level], dtype=np.int64)
            features = self.encoder_channels[level]
            for column in range(1, self.depth - level + 1):
                total += self.blocks[node_key(level, column)].compute_conv_feature_map_size(sizes[level])
                total += features * voxels + (column - 1) * features * voxels // 2  # up-conv + extra concat
        total += self.depth * self.num_classes * np.prod(sizes[0], dtype=np.int64)
        return total
