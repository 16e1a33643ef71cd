"""The trainer side of a loss that reads extra target channels computed by the data loader."""
from __future__ import annotations

import inspect

from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_ext.losses.deep_supervision import extend_per_scale_loss
from nnunet_ext.losses.extra_target import AuxiliaryTermLoss, rejoin_extra_channels, split_extra_channels
from nnunet_ext.transforms.extra_target import insert_extra_target_transform

_TRAINING_SIGNATURE = inspect.signature(nnUNetTrainer.get_training_transforms)
_VALIDATION_SIGNATURE = inspect.signature(nnUNetTrainer.get_validation_transforms)


class ExtraTargetLossMixin:
    """A loss term fed by extra target channels that the data loader computes on the CPU per sample.

    Subclasses define :meth:`extra_target_transform` (appends ``n_channels`` channels to the (1, *sp) label
    map) and :meth:`build_auxiliary_loss` (or override :meth:`loss_with_extra_target`); this mixin puts the
    transform into nnU-Net's training and validation pipelines (before region conversion and deep-supervision
    downsampling, so every scale gets its target), adds ``auxiliary_loss_weight * term`` to nnU-Net's own loss at
    every deep-supervision scale (nnU-Net's scale weights unchanged), and hides the extra channels from the online
    validation Dice. The channel layout is :mod:`nnunet_ext.losses.extra_target`'s.

    Two extra-target losses in one trainer would write their channels over each other: such a class is refused
    when it is made.
    """

    auxiliary_loss_weight: float = 1.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        providers = [k for k in cls.__mro__ if "extra_target_transform" in vars(k) and k is not ExtraTargetLossMixin]
        # a subclass overriding its provider's transform is the same provider: count the base-most ones
        roots = {k for k in providers if not any(issubclass(k, o) for o in providers if o is not k)}
        if len(roots) > 1:
            names = ", ".join(sorted(k.__name__ for k in roots))
            raise TypeError(f"{cls.__name__} combines extra-target losses ({names}): each appends its own target "
                            "channels after nnU-Net's, so two cannot share one target. Combine at most one of them "
                            "with losses that need no extra target (e.g. ClDice).")

    def extra_target_transform(self, regions, ignore_label) -> BasicTransform:
        """The transform appending this loss's channels to a (1, *sp) label map; has ``n_channels``."""
        raise NotImplementedError

    def build_auxiliary_loss(self) -> nn.Module:
        raise NotImplementedError

    def _add_extra_target(self, pipeline, signature, args, kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        regions, ignore_label = bound.arguments["regions"], bound.arguments["ignore_label"]
        transform = self.extra_target_transform(regions, ignore_label)
        return insert_extra_target_transform(pipeline, transform, transform.n_channels, regions, ignore_label)

    def get_training_transforms(self, *args, **kwargs):
        pipeline = super().get_training_transforms(*args, **kwargs)
        return self._add_extra_target(pipeline, _TRAINING_SIGNATURE, args, kwargs)

    def get_validation_transforms(self, *args, **kwargs):
        pipeline = super().get_validation_transforms(*args, **kwargs)
        return self._add_extra_target(pipeline, _VALIDATION_SIGNATURE, args, kwargs)

    @property
    def n_extra_target_channels(self) -> int:
        lm = self.label_manager
        return self.extra_target_transform(lm.foreground_regions if lm.has_regions else None,
                                           lm.ignore_label).n_channels

    def loss_with_extra_target(self, inner: nn.Module) -> nn.Module:
        """nnU-Net's per-scale loss -> the per-scale loss that also reads the extra channels.

        Default: ``inner(output, seg) + auxiliary_loss_weight * build_auxiliary_loss()(output, extra)``."""
        return AuxiliaryTermLoss(inner, self.build_auxiliary_loss(), self.auxiliary_loss_weight,
                                 self.n_extra_target_channels)

    def _build_loss(self):
        return extend_per_scale_loss(super()._build_loss(), self.loss_with_extra_target)

    def validation_step(self, batch: dict) -> dict:
        # nnU-Net's online Dice expects the plain segmentation target; the loss needs the extra channels.
        seg, extra = split_extra_channels(batch["target"], self.n_extra_target_channels)
        full_loss = self.loss
        self.loss = lambda output, target: full_loss(output, rejoin_extra_channels(target, extra))
        try:
            return super().validation_step({**batch, "target": seg})
        finally:
            self.loss = full_loss
