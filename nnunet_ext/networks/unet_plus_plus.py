"""UNet++ with the keyword interface of dynamic_network_architectures' PlainConvUNet.

A plans file can name it: ``"network_class_name": "nnunet_ext.networks.UNetPlusPlus"`` with PlainConvUNet's
``arch_kwargs`` (see ``nnunet-ext plan --arch unetpp``).
"""
from __future__ import annotations

from typing import List, Tuple, Type, Union

import numpy as np
import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from nnunet_ext.networks.nested_decoder import InferenceHead, NestedDecoder

IntOrSequence = Union[int, List[int], Tuple[int, ...]]


class UNetPlusPlus(AbstractDynamicNetworkArchitectures):
    """UNet++: PlainConvUNet's encoder + the nested dense decoder (:class:`NestedDecoder`).

    Input (B, input_channels, *patch); output with ``deep_supervision`` a list of ``n_stages`` tensors
    ``[primary, head_1, ..., head_{n_stages-1}]``, each (B, num_classes, *patch / strides[0]); without it the
    primary output alone. ``inference_head``: ``"ensemble"`` (mean of the heads' logits) or an int d, the pruned
    UNet++ L^d: without deep supervision only encoder stages 0..d and the nodes under head d are computed.
    ``None`` is the ensemble. (The trainers pass ``$NNUNET_EXT_UNETPP_INFERENCE_HEAD`` here when they build the
    network for ``nnUNetv2_predict``, so prediction can prune.)
    """

    def __init__(self, input_channels: int, n_stages: int, features_per_stage: IntOrSequence,
                 conv_op: Type[_ConvNd], kernel_sizes: IntOrSequence, strides: IntOrSequence,
                 n_conv_per_stage: IntOrSequence, num_classes: int, n_conv_per_stage_decoder: IntOrSequence,
                 conv_bias: bool = False, norm_op: Union[None, Type[nn.Module]] = None, norm_op_kwargs: dict = None,
                 dropout_op: Union[None, Type[_DropoutNd]] = None, dropout_op_kwargs: dict = None,
                 nonlin: Union[None, Type[nn.Module]] = None, nonlin_kwargs: dict = None,
                 deep_supervision: bool = False, nonlin_first: bool = False,
                 inference_head: InferenceHead | None = None):
        super().__init__()
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = ("encoder.stages.0.0.convs.0.all_modules.0", "encoder.stages.0.0.convs.0.conv")
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * n_stages
        self.encoder = PlainConvEncoder(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                                        n_conv_per_stage, conv_bias, norm_op, norm_op_kwargs, dropout_op,
                                        dropout_op_kwargs, nonlin, nonlin_kwargs, return_skips=True,
                                        nonlin_first=nonlin_first)
        self.decoder = NestedDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                     nonlin_first=nonlin_first, inference_head=inference_head)

    @property
    def inference_head(self) -> InferenceHead:
        return self.decoder.inference_head

    @inference_head.setter
    def inference_head(self, value: InferenceHead | None) -> None:
        self.decoder.inference_head = value

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for stage in self.encoder.stages[:self.decoder.computed_depth + 1]:  # pruned L^d stops at stage d
            x = stage(x)
            skips.append(x)
        return self.decoder(skips)

    def compute_conv_feature_map_size(self, input_size: Tuple[int, ...]) -> np.int64:
        """Feature-map elements of a training forward pass on a patch ``input_size`` (spatial only), as nnU-Net's
        planner expects (see :meth:`NestedDecoder.compute_conv_feature_map_size`)."""
        if len(input_size) != convert_conv_op_to_dim(self.encoder.conv_op):
            raise ValueError(f"input_size is the spatial patch size only, e.g. (x, y, z); got {tuple(input_size)}")
        return self.encoder.compute_conv_feature_map_size(input_size) + \
            self.decoder.compute_conv_feature_map_size(input_size)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """He initialisation, as nnU-Net initialises PlainConvUNet."""
        InitWeights_He(1e-2)(module)
