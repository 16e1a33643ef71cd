"""Networks built from nnU-Net plans (PlainConvUNet's keyword interface), one module per network; they know
nothing of trainers or losses. :mod:`~nnunet_ext.networks.planning` holds nnU-Net's planner for them.

The contract every network here keeps (what the trainers rely on): PlainConvUNet's keyword arguments plus its own
options; ``decoder.deep_supervision`` (a bool the trainer toggles); with it on, a list with the full-resolution
primary output first, off one tensor, the same modules in both modes; ``compute_conv_feature_map_size(patch)`` for
the planner; a static ``initialize``; optionally ``check_patch_size(patch) -> warnings`` (ValueError when the patch
cannot work) and ``auxiliary_loss`` (a scalar the training forward leaves for the trainer to add).
"""
from nnunet_ext.networks.dawmr import DAWMR
from nnunet_ext.networks.glnet import GLNet
from nnunet_ext.networks.nested_decoder import NestedDecoder
from nnunet_ext.networks.unet_plus_plus import UNetPlusPlus

__all__ = ["DAWMR", "GLNet", "NestedDecoder", "UNetPlusPlus"]
