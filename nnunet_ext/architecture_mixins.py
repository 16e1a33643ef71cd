"""Trainer mixins that swap the network the plans name for another one built from the same plans."""
from __future__ import annotations

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_ext.losses.deep_supervision import FullResolutionDeepSupervision

UNET_PLUS_PLUS_CLASS = "nnunet_ext.networks.unet_plus_plus.UNetPlusPlus"
#: plans networks whose keyword arguments UNet++ accepts as they are
_PLAIN_CONV_UNET_INTERFACE = ("PlainConvUNet", "UNetPlusPlus")


def build_unet_plus_plus(arch_class_name: str, arch_kwargs: dict, arch_kwargs_req_import, num_input_channels: int,
                         num_output_channels: int, deep_supervision: bool) -> nn.Module:
    """UNet++ from a plans configuration that names PlainConvUNet (nnU-Net's default plans) or UNetPlusPlus."""
    if arch_class_name.rsplit(".", 1)[-1] not in _PLAIN_CONV_UNET_INTERFACE:
        raise ValueError(
            f"UNet++ is built from PlainConvUNet plans, but this configuration names {arch_class_name}. Use "
            f"nnU-Net's default plans (-p nnUNetPlans) or UNet++ plans: `nnunet-ext plan -d DATASET --arch unetpp`, "
            f"then train with -p nnUNetPlans_UNetPlusPlus.")
    return get_network_from_plans(UNET_PLUS_PLUS_CLASS, arch_kwargs, arch_kwargs_req_import, num_input_channels,
                                  num_output_channels, allow_init=True, deep_supervision=deep_supervision)


class UNetPlusPlusMixin:
    """Trains UNet++ (:class:`nnunet_ext.networks.UNetPlusPlus`) built from the plans' U-Net configuration.

    Deep supervision follows the paper: the network returns ``[primary, head_1, ..., head_L]``, all at full
    resolution, and the loss is ``sum_k w_k * loss(output_k, target)`` against the one full-resolution target
    (the data loader makes no downsampled targets). Weights: ``unetpp_primary_weight`` for the primary output,
    1 for every head, normalised; none is 0, so every parameter gets a gradient each step (DDP-safe).
    Inference head: ``$NNUNET_EXT_UNETPP_INFERENCE_HEAD`` (``ensemble`` or d) when the network is built.
    """

    unetpp_primary_weight: float = 1.0

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return build_unet_plus_plus(configuration_manager.network_arch_class_name,
                                    configuration_manager.network_arch_init_kwargs,
                                    configuration_manager.network_arch_init_kwargs_req_import,
                                    num_input_channels, num_output_channels, enable_deep_supervision)

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        return [[1.0] * len(self.configuration_manager.patch_size)]  # one full-resolution target for every output

    def unetpp_output_weights(self) -> tuple[float, ...]:
        """Loss weights of ``[primary, head_1, ..., head_L]``, summing to 1."""
        n_heads = self.configuration_manager.network_arch_init_kwargs["n_stages"] - 1
        weights = [float(self.unetpp_primary_weight)] + [1.0] * n_heads
        return tuple(w / sum(weights) for w in weights)

    def _build_loss(self):
        deep_supervision, self.enable_deep_supervision = self.enable_deep_supervision, False
        try:
            per_output_loss = super()._build_loss()  # nnU-Net's Dice+CE without its scale wrapper
        finally:
            self.enable_deep_supervision = deep_supervision
        if not deep_supervision:
            return per_output_loss
        return FullResolutionDeepSupervision(per_output_loss, self.unetpp_output_weights())
