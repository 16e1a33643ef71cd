"""Trainer mixin that builds any registered network from the plans' U-Net configuration.

What a registry :class:`~nnunet_ext.trainers.registry.Architecture` entry declares, this mixin does:

- ``build_network_architecture`` (called by nnU-Net's trainer and by ``nnUNetv2_predict``) builds the entry's
  network from the plans' PlainConvUNet keyword arguments, with the trainer's options (``entry.options``) and, for
  inference only, the entry's environment variables (``entry.inference_options``);
- full-resolution deep supervision when the entry gives ``output_weights``: one full-resolution target (the data
  loader makes no downsampled ones) and ``sum_k w_k * loss(output_k, target)``;
- ``network.auxiliary_loss`` (e.g. GLNet's feature regularisation) added to the loss when the entry says so.

Inference options are refused in training (a leftover ``export`` must not change the loss or the fold's
validation silently); ``nnUNetv2_train --val`` applies them to the validation, ``nnUNetv2_predict`` to prediction.
"""
from __future__ import annotations

import os
import pydoc
from typing import Any

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

from nnunet_ext.errors import UserInputError
from nnunet_ext.losses.deep_supervision import FullResolutionDeepSupervision, NetworkAuxiliaryLoss
from nnunet_ext.trainers.registry import ARCHITECTURES, Architecture


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(network, "module") and isinstance(network.module, nn.Module):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network


def environment_options(entry: Architecture) -> dict[str, str]:
    """The entry's inference options that are set in the environment: {network keyword: value}."""
    return {kwarg: os.environ[var].strip() for kwarg, var in entry.inference_options.items()
            if os.environ.get(var, "").strip()}


def build_registered_network(entry: Architecture, configuration_manager, num_input_channels: int,
                             num_output_channels: int, deep_supervision: bool,
                             options: dict[str, Any]) -> nn.Module:
    """The entry's network from a configuration whose plans name one of ``entry.accepts``.

    ``options`` (network keywords) override the plans' keyword arguments."""
    plans_class = configuration_manager.network_arch_class_name
    accepted = (*entry.accepts, entry.network.rsplit(".", 1)[-1])  # plans naming this network take its kwargs too
    if plans_class.rsplit(".", 1)[-1] not in accepted:
        suggestion = (f"`nnunet-ext plan -d DATASET --arch {entry.key}`, then train with -p {entry.plans_name}"
                      if entry.planner else "nnU-Net's default plans (-p nnUNetPlans)")
        raise UserInputError(
            f"{entry.name} is built from {' or '.join(entry.accepts)} plans, but this configuration names "
            f"{plans_class}. Use nnU-Net's default plans (-p nnUNetPlans) or {suggestion}.")
    kwargs = dict(configuration_manager.network_arch_init_kwargs)
    if entry.plans_defaults:
        defaults = pydoc.locate(entry.plans_defaults)(configuration_manager.patch_size, kwargs)
        kwargs = {**defaults, **kwargs}
    kwargs.update(options)
    return get_network_from_plans(entry.network, kwargs, configuration_manager.network_arch_init_kwargs_req_import,
                                  num_input_channels, num_output_channels, allow_init=True,
                                  deep_supervision=deep_supervision)


class RegisteredArchitectureMixin:
    """Trains the registered network named by the class attribute ``architecture`` (set by the generator)."""

    architecture: str

    @classmethod
    def architecture_entry(cls) -> Architecture:
        if cls.architecture not in ARCHITECTURES:
            raise UserInputError(f"{cls.__name__} trains architecture {cls.architecture!r}, which is not registered; "
                                 f"registered: {', '.join(a for a in ARCHITECTURES if a)}")
        return ARCHITECTURES[cls.architecture]

    @classmethod
    def network_options(cls, for_inference: bool) -> dict[str, Any]:
        """Network keywords from the trainer's attributes (those not None) and, for inference, the environment."""
        entry = cls.architecture_entry()
        options = {kwarg: getattr(cls, attribute) for kwarg, attribute in entry.options.items()
                   if getattr(cls, attribute, None) is not None}
        if for_inference:
            options.update(environment_options(entry))
        return options

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        entry = cls.architecture_entry()
        options = cls.network_options(for_inference=not enable_deep_supervision)
        try:
            return build_registered_network(entry, configuration_manager, num_input_channels, num_output_channels,
                                            enable_deep_supervision, options)
        except ValueError as error:
            from_environment = {entry.inference_options[k]: v for k, v in options.items()
                                if k in entry.inference_options}
            if not from_environment:
                raise
            shown = ", ".join(f"{var}={value}" for var, value in from_environment.items())
            raise UserInputError(f"{shown} cannot be used: {error}") from error

    def _full_resolution_outputs(self) -> bool:
        return self.architecture_entry().output_weights is not None

    def _get_deep_supervision_scales(self):
        if not (self.enable_deep_supervision and self._full_resolution_outputs()):
            return super()._get_deep_supervision_scales()
        return [[1.0] * len(self.configuration_manager.patch_size)]  # one full-resolution target for every output

    def output_weights(self) -> tuple[float, ...]:
        """Loss weights of the network's deep-supervision outputs (full-resolution layout), summing to 1."""
        entry = self.architecture_entry()
        attributes = {name: getattr(self, name) for name in entry.attributes}
        return entry.output_weights(self.configuration_manager.network_arch_init_kwargs, attributes)

    def _build_loss(self):
        loss = self._deep_supervision_loss()
        if self.architecture_entry().auxiliary_loss:
            loss = NetworkAuxiliaryLoss(loss, lambda: unwrap(self.network))
        return loss

    def _deep_supervision_loss(self):
        """nnU-Net's loss with nnU-Net's deep supervision, or the full-resolution layout the entry declares."""
        if not self._full_resolution_outputs():
            return super()._build_loss()
        deep_supervision, self.enable_deep_supervision = self.enable_deep_supervision, False
        try:
            per_output_loss = super()._build_loss()  # nnU-Net's Dice+CE without its scale wrapper
        finally:
            self.enable_deep_supervision = deep_supervision
        if not deep_supervision:
            return per_output_loss
        return FullResolutionDeepSupervision(per_output_loss, self.output_weights())

    def initialize(self):
        super().initialize()
        network = unwrap(self.network)
        field_of_view = getattr(network, "field_of_view", None)
        if field_of_view is not None:
            self.print_to_log_file(f"{self.architecture} field of view (voxels per axis): one iteration "
                                   f"{tuple(field_of_view(1))}, all {tuple(field_of_view())}; patch "
                                   f"{tuple(self.configuration_manager.patch_size)}")
        check = getattr(network, "check_patch_size", None)
        if check is not None:
            try:
                warnings = check(self.configuration_manager.patch_size)
            except ValueError as error:
                raise UserInputError(f"{self.architecture} cannot use this configuration's patch size: {error}") \
                    from error
            for warning in warnings:
                self.print_to_log_file(f"WARNING: {warning}")

    def run_training(self):
        leftover = [var for var in self.architecture_entry().inference_options.values()
                    if os.environ.get(var, "").strip()]
        if leftover:
            raise UserInputError(
                f"{', '.join(sorted(leftover))} is set, but it only chooses how {self.architecture} predicts "
                "(nnUNetv2_predict, nnUNetv2_train --val); training always uses the training outputs. Unset it "
                f"for training: unset {' '.join(sorted(leftover))}")
        super().run_training()

    def perform_actual_validation(self, save_probabilities: bool = False):
        options = environment_options(self.architecture_entry())
        network = unwrap(self.network)
        previous = {name: getattr(network, name) for name in options}
        for name, value in options.items():
            setattr(network, name, value)
            self.print_to_log_file(f"Validation with {name} = {value} (from the environment)")
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            for name, value in previous.items():
                setattr(network, name, value)
