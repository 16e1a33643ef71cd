"""Networks built from nnU-Net plans (PlainConvUNet keyword interface)."""
from nnunet_ext.networks.nested_decoder import INFERENCE_HEAD_ENV, NestedDecoder
from nnunet_ext.networks.unet_plus_plus import UNetPlusPlus

__all__ = ["INFERENCE_HEAD_ENV", "NestedDecoder", "UNetPlusPlus"]
