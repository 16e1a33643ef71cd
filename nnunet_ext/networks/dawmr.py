"""DAWMR: a deep, wide, multiscale, recursive network (Huang & Jain, arXiv 1310.0354) built from nnU-Net plans.

A plans file can name it: ``"network_class_name": "nnunet_ext.networks.dawmr.DAWMR"`` with PlainConvUNet's
``arch_kwargs`` (plus the DAWMR options below). The original is a MATLAB library of unsupervised k-means feature
layers and an MLP; this is a supervised, GPU-friendly reading of the same four ingredients.

One iteration (:class:`DAWMRIteration`), input ``u`` (B, C_in, *sp):

* **wide core**: ``n_conv_per_stage[0]`` convolutions with the plans' first-stage kernel at full resolution,
  ``features_per_stage[0]`` channels, the last one ``width`` channels wide (conv, norm, nonlin each);
* **foveated pooling**: for the centre (window 1) and every foveation window ``f_j`` (odd per axis, growing), a
  1x1 projection of the wide features to ``mlp_hidden`` channels followed by a centred box mean over ``f_j``
  (separable cumulative-sum box filter, stride 1, voxels outside the volume excluded from the mean). Box means
  and a 1x1 convolution are both linear, so this equals pooling all ``width`` features at every window and
  applying one linear layer to their concatenation, at ``mlp_hidden / width`` of the cost;
* **multiscale path**: for scale s = 1..``scales``, ``u`` average-pooled by the plans' cumulative stride of stage
  s, ``n_conv_per_stage[s]`` convolutions with the plans' kernel of stage s, ``width`` channels (the wide
  channels stay at low resolution), a 1x1 projection to ``mlp_hidden`` channels *before* (bi/tri)linear
  upsampling to full resolution (a 1x1 convolution commutes with linear upsampling, so this equals projecting
  after upsampling);
* **MLP head**: the projected branches are summed (= one linear layer on their concatenation), then norm,
  nonlin, a 1x1 conv-dropout-norm-nonlin block and a 1x1 convolution to ``num_classes`` (named ``head``).

``DAWMR`` runs ``iterations`` = K such networks with separate weights. Iteration 1 sees the image; iteration
k > 1 sees ``cat[image, softmax(out_{k-1}).detach()]`` (``feedback="sigmoid"`` for region-based training): no
gradient crosses iterations, as in the paper, where each iteration is trained on its predecessor's fixed output.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple, Type, Union

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

IntOrSequence = Union[int, List[int], Tuple[int, ...]]
Offsets = Tuple[int, int]  # (lowest, highest) input offset, relative to an output voxel, along one axis

_UPSAMPLE_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def axis_box_sum(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Sum of ``x`` over a centred window of odd ``size`` along tensor dimension ``dim``, zero outside.

    Cumulative sum of the zero-padded axis, differenced ``size`` apart: cost independent of the window (and
    windows longer than the axis are fine)."""
    length, half = x.shape[dim], size // 2
    pad = [0, 0] * (x.ndim - 2)
    pad[2 * (x.ndim - 1 - dim)], pad[2 * (x.ndim - 1 - dim) + 1] = half + 1, half
    running = torch.cumsum(F.pad(x, pad), dim)
    return running.narrow(dim, size, length) - running.narrow(dim, 0, length)


def box_mean(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """Centred box mean of (B, C, *sp) ``x`` over odd ``window`` (one int per spatial axis), padding excluded.

    Separable: a windowed sum per axis (:func:`axis_box_sum`) divided by the number of voxels of that window
    inside the volume; excluding the outside per axis is exact for the box, whose part inside the volume is a
    product of intervals."""
    for axis, size in enumerate(window):
        if size == 1:
            continue
        dim, length = axis + 2, x.shape[axis + 2]
        position = torch.arange(length, device=x.device)
        inside = (position + size // 2).clamp_max(length - 1) - (position - size // 2).clamp_min(0) + 1
        x = axis_box_sum(x, dim, size) / inside.to(x.dtype).view([length] + [1] * (x.ndim - 1 - dim))
    return x


def conv_offsets(kernel: int, n_convs: int) -> Offsets:
    """Input offsets reached by ``n_convs`` stride-1 convolutions of ``kernel`` with nnU-Net's padding (k-1)//2."""
    pad = (kernel - 1) // 2
    return -n_convs * pad, n_convs * (kernel - 1 - pad)


def multiscale_offsets(stride: int, low_res: Offsets) -> Offsets:
    """Input offsets of the branch pool(stride) -> convs (``low_res`` offsets, in low-resolution voxels) ->
    linear upsampling by ``stride`` (align_corners=False), over all positions of an output voxel in its block.

    Output voxel y = i * stride + phase interpolates at low-resolution coordinate
    i + (2 * phase + 1 - stride) / (2 * stride): one low-resolution voxel if that is an integer, else the two
    around it; low-resolution voxel j averages input voxels j * stride .. j * stride + stride - 1."""
    lowest, highest = 0, 0
    for phase in range(stride):
        numerator = 2 * phase + 1 - stride
        first = numerator // (2 * stride)
        last = first if numerator % (2 * stride) == 0 else first + 1
        lowest = min(lowest, (first + low_res[0]) * stride - phase)
        highest = max(highest, (last + low_res[1]) * stride + stride - 1 - phase)
    return lowest, highest


def _as_stage_list(value: IntOrSequence, n_stages: int, dim: int, name: str) -> list[list[int]]:
    """An int or per-stage entries (each an int or one int per axis) -> n_stages lists of ``dim`` ints."""
    stages = [value] * n_stages if isinstance(value, int) else list(value)
    if len(stages) != n_stages:
        raise ValueError(f"{name} needs one entry per stage (n_stages={n_stages}), got {value!r}")
    out = []
    for entry in stages:
        axes = [int(entry)] * dim if isinstance(entry, (int, np.integer)) else [int(v) for v in entry]
        if len(axes) != dim or min(axes) < 1:
            raise ValueError(f"every entry of {name} must be a positive int or {dim} positive ints, got {entry!r}")
        out.append(axes)
    return out


def _norm_nonlin(channels: int, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs, nonlin_first: bool) -> nn.Module:
    """norm -> nonlin (or nonlin -> norm), as ConvDropoutNormReLU orders them, without the convolution."""
    ops = []
    if norm_op is not None:
        ops.append(norm_op(channels, **(norm_op_kwargs or {})))
    if nonlin is not None:
        ops.append(nonlin(**(nonlin_kwargs or {})))
    if nonlin_first and len(ops) == 2:
        ops.reverse()
    return nn.Sequential(*ops)


class DeepSupervisionSwitch(nn.Module):
    """Parameter-free holder of ``deep_supervision``, so nnU-Net's ``network.decoder.deep_supervision`` works."""

    def __init__(self, deep_supervision: bool):
        super().__init__()
        self.deep_supervision = bool(deep_supervision)


class DAWMRIteration(nn.Module):
    """One DAWMR iteration: (B, in_channels, *sp) -> (B, num_classes, *sp) logits (see the module docstring).

    ``scale_strides``/``scale_kernels``/``scale_convs``: per multiscale scale, the cumulative stride (per axis),
    kernel (per axis) and number of convolutions; ``foveation``: the growing windows (odd, per axis)."""

    def __init__(self, in_channels: int, num_classes: int, conv_op: Type[_ConvNd], core_features: int, width: int,
                 mlp_hidden: int, core_kernel: Sequence[int], core_convs: int,
                 scale_strides: Sequence[Sequence[int]], scale_kernels: Sequence[Sequence[int]],
                 scale_convs: Sequence[int], foveation: Sequence[Sequence[int]], conv_bias: bool, norm_op,
                 norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs, nonlin_first: bool):
        super().__init__()
        dim = convert_conv_op_to_dim(conv_op)
        norm = dict(conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin,
                    nonlin_kwargs=nonlin_kwargs, nonlin_first=nonlin_first)
        self.core = StackedConvBlocks(core_convs, conv_op, in_channels, [core_features] * (core_convs - 1) + [width],
                                      list(core_kernel), 1, **norm)
        self.center = conv_op(width, mlp_hidden, 1, bias=conv_bias)
        self.foveal = nn.ModuleList(conv_op(width, mlp_hidden, 1, bias=False) for _ in foveation)
        self.scales = nn.ModuleList(StackedConvBlocks(n, conv_op, in_channels, width, list(k), 1, **norm)
                                    for n, k in zip(scale_convs, scale_kernels))
        self.scale_proj = nn.ModuleList(conv_op(width, mlp_hidden, 1, bias=False) for _ in scale_strides)
        self.fuse = _norm_nonlin(mlp_hidden, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs, nonlin_first)
        self.mlp = ConvDropoutNormReLU(conv_op, mlp_hidden, mlp_hidden, 1, 1, dropout_op=dropout_op,
                                       dropout_op_kwargs=dropout_op_kwargs, **norm)
        self.head = conv_op(mlp_hidden, num_classes, 1, bias=True)
        self.foveation = [list(w) for w in foveation]
        self.scale_strides = [list(s) for s in scale_strides]
        self.upsample_mode = _UPSAMPLE_MODE[dim]
        self.pool = getattr(F, f"avg_pool{dim}d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.core(x)
        fused = self.center(wide)
        for proj, window in zip(self.foveal, self.foveation):
            fused = fused + box_mean(proj(wide), window)
        for blocks, proj, stride in zip(self.scales, self.scale_proj, self.scale_strides):
            low = proj(blocks(self.pool(x, stride, stride)))  # wide channels at low resolution only
            fused = fused + F.interpolate(low, size=x.shape[2:], mode=self.upsample_mode, align_corners=False)
        return self.head(self.mlp(self.fuse(fused)))

    def compute_conv_feature_map_size(self, input_size: Sequence[int], in_channels: int) -> np.int64:
        """Elements of the tensors autograd keeps for one iteration (:meth:`DAWMR.compute_conv_feature_map_size`)."""
        voxels = np.prod(input_size, dtype=np.int64)
        hidden = self.center.out_channels
        total = np.int64(in_channels) * voxels + self.core.compute_conv_feature_map_size(list(input_size))
        for blocks, stride in zip(self.scales, self.scale_strides):
            low = [s // k for s, k in zip(input_size, stride)]
            total += in_channels * np.prod(low, dtype=np.int64) + blocks.compute_conv_feature_map_size(low)
        total += hidden * voxels + self.mlp.compute_conv_feature_map_size(list(input_size))  # fused sum, MLP
        return total + self.head.out_channels * voxels


class DAWMR(AbstractDynamicNetworkArchitectures):
    """DAWMR on PlainConvUNet's keyword interface; 2D or 3D via ``conv_op``, anisotropic kernels and strides.

    Input (B, input_channels, *patch). Output, with ``decoder.deep_supervision`` on, a list of the K iterations'
    logits, each (B, num_classes, *patch), the LAST iteration first: ``[out_K, out_1, out_2, ..., out_{K-1}]``
    (the primary output first, as nnU-Net expects; inference uses out_K); off, ``out_K`` alone. Every iteration
    is computed in both modes and every module exists in both, so state dicts load strictly across modes.
    Train with deep supervision on and a non-zero weight on every entry: iteration k's parameters get a gradient
    only from the loss on out_k.

    Used from the plans: ``features_per_stage[0]`` (core width before the wide layer), ``kernel_sizes``,
    ``strides`` (cumulative strides of stages 1..scales), ``n_conv_per_stage``, norm/dropout/nonlin.
    ``n_conv_per_stage_decoder`` is accepted for the interface and unused; the core runs at full resolution
    (``strides[0]`` only enters the cumulative strides).

    DAWMR options:
        iterations: K >= 1 recursive iterations (default 3, the paper's best model).
        width: wide-layer channels (default ``min(4 * features_per_stage[0], 320)``).
        scales: number of multiscale scales, stages 1..scales of the plans (default ``min(3, n_stages - 1)``).
        foveation: growing odd windows, each an int or one int per axis (default: ``2 * c + 1`` per axis for the
            cumulative strides c of stages 1..min(3, n_stages - 1), e.g. 5, 9, 17 for isotropic stride 2).
        mlp_hidden: MLP width (default ``2 * features_per_stage[0]``).
        feedback: ``"softmax"`` (label training) or ``"sigmoid"`` (region-based training), the nonlinearity
            applied to iteration k-1's logits before iteration k sees them.
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSequence,
                 conv_op: Type[_ConvNd], kernel_sizes: IntOrSequence, strides: IntOrSequence,
                 n_conv_per_stage: IntOrSequence, num_classes: int, n_conv_per_stage_decoder: IntOrSequence = None,
                 conv_bias: bool = False, norm_op: Union[None, Type[nn.Module]] = None, norm_op_kwargs: dict = None,
                 dropout_op: Union[None, Type[_DropoutNd]] = None, dropout_op_kwargs: dict = None,
                 nonlin: Union[None, Type[nn.Module]] = None, nonlin_kwargs: dict = None,
                 deep_supervision: bool = False, nonlin_first: bool = False, iterations: int = 3,
                 width: int | None = None, scales: int | None = None,
                 foveation: Sequence[IntOrSequence] | None = None, mlp_hidden: int | None = None,
                 feedback: str = "softmax"):
        super().__init__()
        dim = convert_conv_op_to_dim(conv_op)
        if not isinstance(n_stages, (int, np.integer)) or n_stages < 1:
            raise ValueError(f"n_stages must be an int >= 1, got {n_stages!r}")
        if input_channels < 1 or num_classes < 1:
            raise ValueError(f"input_channels and num_classes must be >= 1, got {input_channels}, {num_classes}")
        features = [features_per_stage] * n_stages if isinstance(features_per_stage, int) else list(
            features_per_stage)
        if len(features) != n_stages or min(features) < 1:
            raise ValueError(f"features_per_stage needs {n_stages} positive entries, got {features_per_stage!r}")
        kernels = _as_stage_list(kernel_sizes, n_stages, dim, "kernel_sizes")
        stage_strides = _as_stage_list(strides, n_stages, dim, "strides")
        convs = [n_conv_per_stage] * n_stages if isinstance(n_conv_per_stage, int) else list(n_conv_per_stage)
        if len(convs) != n_stages or min(convs) < 1:
            raise ValueError(f"n_conv_per_stage needs {n_stages} entries >= 1, got {n_conv_per_stage!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 1:
            raise ValueError(f"iterations must be an int >= 1 (the paper's best model uses 3), got {iterations!r}")
        scales = min(3, n_stages - 1) if scales is None else scales
        if isinstance(scales, bool) or not isinstance(scales, (int, np.integer)) or not 0 <= scales <= n_stages - 1:
            raise ValueError(f"scales must be an int in 0..n_stages-1 = 0..{n_stages - 1} (how many of the plans' "
                             f"cumulative strides the multiscale path uses), got {scales!r}")
        width = min(4 * features[0], 320) if width is None else width
        mlp_hidden = 2 * features[0] if mlp_hidden is None else mlp_hidden
        for name, value in (("width", width), ("mlp_hidden", mlp_hidden)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if feedback not in ("softmax", "sigmoid"):
            raise ValueError(f"feedback must be 'softmax' (label training) or 'sigmoid' (region-based training), "
                             f"got {feedback!r}")
        cumulative = np.cumprod(np.array(stage_strides), axis=0).tolist()
        if foveation is None:
            foveation = [[2 * c + 1 for c in cumulative[s]] for s in range(1, min(3, n_stages - 1) + 1)]
        windows = []
        for window in foveation:
            window = [int(window)] * dim if isinstance(window, (int, np.integer)) else [int(w) for w in window]
            if len(window) != dim or any(w < 1 or w % 2 == 0 for w in window):
                raise ValueError(f"every foveation window must be an odd int >= 1 or {dim} of them (centred box "
                                 f"means), got {window!r}")
            windows.append(window)

        self.dim, self.num_classes, self.input_channels = dim, num_classes, input_channels
        self.iterations, self.n_scales, self.feedback = int(iterations), int(scales), feedback
        self.width, self.mlp_hidden, self.foveation = int(width), int(mlp_hidden), windows
        self.core_kernel, self.core_convs = kernels[0], convs[0]
        self.scale_strides = cumulative[1:scales + 1]
        self.scale_kernels, self.scale_convs = kernels[1:scales + 1], convs[1:scales + 1]
        self.nets = nn.ModuleList(
            DAWMRIteration(input_channels + (num_classes if k else 0), num_classes, conv_op, features[0], width,
                           mlp_hidden, kernels[0], convs[0], self.scale_strides, self.scale_kernels,
                           self.scale_convs, windows, conv_bias, norm_op, norm_op_kwargs, dropout_op,
                           dropout_op_kwargs, nonlin, nonlin_kwargs, nonlin_first)
            for k in range(iterations))
        self.decoder = DeepSupervisionSwitch(deep_supervision)
        self.key_to_encoder = "nets"
        self.key_to_stem = "nets.0.core"
        # the first convolution that sees the image (the multiscale convolutions of iteration 1 see it too)
        self.keys_to_in_proj = ("nets.0.core.convs.0.conv", "nets.0.core.convs.0.all_modules.0")

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        outputs = [self.nets[0](x)]
        for net in self.nets[1:]:
            previous = outputs[-1].detach()  # iteration k learns from iteration k-1's fixed output
            previous = torch.softmax(previous, 1) if self.feedback == "softmax" else torch.sigmoid(previous)
            outputs.append(net(torch.cat([x, previous.to(x.dtype)], 1)))
        if self.decoder.deep_supervision:
            return [outputs[-1]] + outputs[:-1]
        return outputs[-1]

    def iteration_offsets(self) -> list[Offsets]:
        """Per axis, the (lowest, highest) input offset that can influence an output voxel of ONE iteration:
        the union over the core with its widest foveation window and every multiscale scale (the 1x1 MLP adds
        nothing); for the multiscale scales the union runs over the voxel's position within its pooling block."""
        out = []
        for axis in range(self.dim):
            lowest, highest = conv_offsets(self.core_kernel[axis], self.core_convs)
            branches = [(lowest, highest)] + [(lowest - w[axis] // 2, highest + w[axis] // 2) for w in self.foveation]
            for stride, kernel, n in zip(self.scale_strides, self.scale_kernels, self.scale_convs):
                branches.append(multiscale_offsets(stride[axis], conv_offsets(kernel[axis], n)))
            out.append((min(b[0] for b in branches), max(b[1] for b in branches)))
        return out

    def field_of_view(self, iterations: int | None = None) -> tuple[int, ...]:
        """Field of view in voxels per axis after ``iterations`` iterations (default all K; 1 = one iteration).

        The extent ``highest - lowest + 1`` of :meth:`iteration_offsets` (the box of input offsets that can
        influence an output voxel, ignoring the volume border). Iteration k sees the image and iteration k-1's
        output through the same box, so the offsets add up: n iterations give ``n * (F_1 - 1) + 1``.
        Isotropic 3D plans (kernel 3, stride 2, 2 convs per stage, >= 4 stages, defaults): F_1 = 55, K=3: 163."""
        n = self.iterations if iterations is None else iterations
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= self.iterations:
            raise ValueError(f"iterations must be an int in 1..{self.iterations}, got {iterations!r}")
        return tuple(int(n * (hi - lo) + 1) for lo, hi in self.iteration_offsets())

    def check_patch_covers_field_of_view(self, patch_size: Sequence[int], iterations: int | None = None) -> list[str]:
        """One message per axis where ``patch_size`` is smaller than :meth:`field_of_view` (``iterations``,
        default all K); an empty list when the patch covers it. Never raises for a small patch (the network
        still runs, zero padding replaces the missing context): the caller decides whether to warn or fail."""
        if len(patch_size) != self.dim:
            raise ValueError(f"patch_size must have {self.dim} entries (spatial only), got {tuple(patch_size)}")
        fov = self.field_of_view(iterations)
        n = self.iterations if iterations is None else iterations
        return [f"axis {axis}: patch size {int(p)} < DAWMR field of view {f} voxels ({n} iteration(s)); the centre "
                f"voxel's context is cut off. Enlarge the patch or reduce iterations, scales or foveation."
                for axis, (p, f) in enumerate(zip(patch_size, fov)) if p < f]

    def check_patch_size(self, patch_size: Sequence[int]) -> list[str]:
        """The network contract's patch check: warnings where the patch does not cover the field of view of all
        iterations (:meth:`check_patch_covers_field_of_view`)."""
        return self.check_patch_covers_field_of_view(patch_size)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements of a training forward pass on a patch ``input_size`` (spatial only), for
        nnU-Net's planner, counted as it counts PlainConvUNet: the tensors autograd keeps, i.e. each iteration's
        input, every k x k convolution output (core and multiscale, at their resolution), the fused MLP input,
        the MLP hidden layer and the head output. Transient tensors (1x1 projections feeding a pool or an
        upsampling, pooled/upsampled terms consumed by the sum) are not kept for backward and not counted."""
        if len(input_size) != self.dim:
            raise ValueError(f"input_size is the spatial patch size only, e.g. (x, y, z); got {tuple(input_size)}")
        total = np.int64(0)
        for k, net in enumerate(self.nets):
            total += net.compute_conv_feature_map_size(input_size, self.input_channels + (self.num_classes if k else 0))
        return total

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He initialisation, as nnU-Net initialises PlainConvUNet."""
        InitWeights_He(1e-2)(module)
