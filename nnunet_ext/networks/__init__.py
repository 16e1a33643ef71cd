"""Networks built from nnU-Net plans (PlainConvUNet's keyword interface), one module per network; they know
nothing of trainers or losses. :mod:`~nnunet_ext.networks.planning` holds nnU-Net's planner for them."""
from nnunet_ext.networks.nested_decoder import NestedDecoder
from nnunet_ext.networks.unet_plus_plus import UNetPlusPlus

__all__ = ["NestedDecoder", "UNetPlusPlus"]
