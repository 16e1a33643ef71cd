"""Small UNet++ / PlainConvUNet configurations for tests (any number of stages, 2D/3D, anisotropic)."""
from __future__ import annotations

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_ext.networks import UNetPlusPlus


def arch_kwargs(n_stages: int, dim: int, anisotropic: bool = False, base: int = 2, max_features: int = 16) -> dict:
    """PlainConvUNet keyword arguments as nnU-Net's plans give them (stage 0 unstrided).

    Anisotropic: the first axis is pooled only every other stage and gets 1-wide kernels until it is pooled."""
    strides, kernels, pooled_first = [[1] * dim], [], 0
    for stage in range(1, n_stages):
        first = 2 if (not anisotropic or stage % 2 == 0) else 1
        strides.append([first] + [2] * (dim - 1))
    for stage in range(n_stages):
        pooled_first += strides[stage][0] == 2
        first_kernel = 3 if (not anisotropic or pooled_first >= 1) else 1
        kernels.append([first_kernel] + [3] * (dim - 1))
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    return dict(n_stages=n_stages, features_per_stage=[min(max_features, base * 2 ** i) for i in range(n_stages)],
                conv_op=conv, kernel_sizes=kernels, strides=strides, n_conv_per_stage=[2] * n_stages,
                n_conv_per_stage_decoder=[2] * (n_stages - 1), conv_bias=True, norm_op=norm,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
                nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def smallest_input(kwargs: dict, batch: int = 2, channels: int = 1, bottleneck: int = 1) -> torch.Tensor:
    """A random input whose bottleneck is 2 voxels along the first axis, ``bottleneck`` along the others
    (instance norm needs more than one element)."""
    factor = np.prod(np.array(kwargs["strides"]), axis=0)
    shape = [int(f * (2 if axis == 0 else bottleneck)) for axis, f in enumerate(factor)]
    return torch.randn(batch, channels, *shape, generator=torch.Generator().manual_seed(0))


def unetpp(kwargs: dict, num_classes: int = 3, deep_supervision: bool = True, seed: int = 0, **extra) -> UNetPlusPlus:
    torch.manual_seed(seed)
    net = UNetPlusPlus(input_channels=1, num_classes=num_classes, deep_supervision=deep_supervision,
                       **kwargs, **extra)
    net.apply(net.initialize)
    return net


def plain_unet(kwargs: dict, num_classes: int = 3, deep_supervision: bool = True) -> PlainConvUNet:
    return PlainConvUNet(input_channels=1, num_classes=num_classes, deep_supervision=deep_supervision, **kwargs)
