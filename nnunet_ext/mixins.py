"""Shared pieces that trainers are composed of (combine with nnUNetTrainer, mixins first)."""
from __future__ import annotations

import inspect
import os
from typing import Callable

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.configuration import default_num_processes
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_ext.losses.border_weighted import BorderWeightedDiceCELoss
from nnunet_ext.losses.auxiliary import AuxiliaryTermLoss, rejoin_extra_channels, split_extra_channels
from nnunet_ext.losses.cldice import SoftClDiceLoss
from nnunet_ext.losses.mixed import WeightedSumLoss
from nnunet_ext.losses.skeleton_recall import SoftSkeletonRecallLoss
from nnunet_ext.transforms.border_weight import BorderWeightTransform
from nnunet_ext.transforms.extra_target import insert_extra_target_transform
from nnunet_ext.transforms.skeleton_tube import SkeletonTubeTransform

_TRAINING_SIGNATURE = inspect.signature(nnUNetTrainer.get_training_transforms)
_VALIDATION_SIGNATURE = inspect.signature(nnUNetTrainer.get_validation_transforms)


def extend_per_scale_loss(loss: nn.Module, extend: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Replace nnU-Net's per-scale loss by ``extend(loss)``, keeping its deep-supervision wrapper (and the wrapper's
    class, e.g. UNet++'s :class:`FullResolutionDeepSupervision`) and weights."""
    if isinstance(loss, DeepSupervisionWrapper):
        return type(loss)(extend(loss.loss), loss.weight_factors)
    return extend(loss)


class ExtraTargetLossMixin:
    """A loss term fed by extra target channels that the data loader computes on the CPU per sample.

    Subclasses define :meth:`extra_target_transform` (appends ``n_extra`` channels to the (1, *sp) label
    map) and :meth:`build_auxiliary_loss` (or override :meth:`loss_with_extra_target`); this mixin puts the transform into nnU-Net's training and
    validation pipelines (before region conversion and deep-supervision downsampling, so every scale gets
    its target), adds ``auxiliary_loss_weight * term`` to nnU-Net's own loss at every deep-supervision scale
    (nnU-Net's scale weights unchanged), and hides the extra channels from the online validation Dice.
    """

    auxiliary_loss_weight: float = 1.0

    @classmethod
    def extra_target_transform(cls, regions, ignore_label) -> BasicTransform:
        raise NotImplementedError

    def build_auxiliary_loss(self) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def _add_extra_target(cls, pipeline, signature, args, kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        regions, ignore_label = bound.arguments["regions"], bound.arguments["ignore_label"]
        transform = cls.extra_target_transform(regions, ignore_label)
        return insert_extra_target_transform(pipeline, transform, transform.n_channels, regions, ignore_label)

    @classmethod
    def get_training_transforms(cls, *args, **kwargs):
        pipeline = super().get_training_transforms(*args, **kwargs)
        return cls._add_extra_target(pipeline, _TRAINING_SIGNATURE, args, kwargs)

    @classmethod
    def get_validation_transforms(cls, *args, **kwargs):
        pipeline = super().get_validation_transforms(*args, **kwargs)
        return cls._add_extra_target(pipeline, _VALIDATION_SIGNATURE, args, kwargs)

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


class SkeletonRecallMixin(ExtraTargetLossMixin):
    """nnU-Net's Dice+CE (or Dice+BCE for regions) + ``skeleton_recall_weight`` * Skeleton Recall.

    The tubed skeleton is computed per augmented sample on the CPU (:class:`SkeletonTubeTransform`),
    one tube per region in region-based training; batch dice follows the plans; DDP-aware.
    Change the weight by subclassing: ``skeleton_recall_weight = 0.1``.
    """

    skeleton_recall_weight: float = 1.0

    @property
    def auxiliary_loss_weight(self) -> float:
        return self.skeleton_recall_weight

    @classmethod
    def extra_target_transform(cls, regions, ignore_label) -> SkeletonTubeTransform:
        return SkeletonTubeTransform(regions=regions, ignore_label=ignore_label)

    def build_auxiliary_loss(self) -> nn.Module:
        return SoftSkeletonRecallLoss(region_mode=self.label_manager.has_regions,
                                      batch_dice=self.configuration_manager.batch_dice, ddp=self.is_ddp)


class BorderWeightMixin(ExtraTargetLossMixin):
    """nnU-Net's Dice + cross-entropy weighted per voxel by the U-Net border weight map (Ronneberger 2015).

    ``w = w_c + border_w0 * exp(-(d1 + d2)^2 / (2 border_sigma^2))`` is computed on the CPU per augmented
    sample (:class:`BorderWeightTransform`), downsampled with the target for every deep-supervision scale;
    ``border_class_weights`` None balances class frequencies, a dict {label: weight} sets w_c. The ignore label
    gets weight 0 and is masked as nnU-Net masks it. Change the parameters by subclassing.
    """

    border_w0: float = 10.0
    border_sigma: float = 5.0
    border_class_weights: dict[int, float] | None = None

    @classmethod
    def extra_target_transform(cls, regions, ignore_label) -> BorderWeightTransform:
        return BorderWeightTransform(cls.border_w0, cls.border_sigma, cls.border_class_weights, ignore_label)

    def loss_with_extra_target(self, inner: nn.Module) -> nn.Module:
        return BorderWeightedDiceCELoss(inner)


class ClDiceMixin:
    """``(1 - cldice_alpha) * nnU-Net's Dice+CE + cldice_alpha * clDice`` at every deep-supervision scale.

    clDice (Shit et al., CVPR 2021) per foreground class (per region in region-based training) with the
    memory-efficient soft skeleton of ``cldice_iterations`` iterations; the ignore label is masked; batch
    dice as the plans say; DDP-aware. Change alpha or iterations by subclassing.
    """

    cldice_alpha: float = 0.5
    cldice_iterations: int = 10

    def _build_loss(self):
        if not 0 <= self.cldice_alpha <= 1:
            raise ValueError(f"cldice_alpha must lie in [0, 1], got {self.cldice_alpha}")
        lm = self.label_manager
        cldice = SoftClDiceLoss(region_mode=lm.has_regions, iterations=self.cldice_iterations,
                                batch_dice=self.configuration_manager.batch_dice, ddp=self.is_ddp,
                                ignore_label=None if lm.has_regions else lm.ignore_label,
                                region_ignore_channel=lm.has_regions and lm.ignore_label is not None)
        return extend_per_scale_loss(
            super()._build_loss(),
            lambda inner: WeightedSumLoss([(1 - self.cldice_alpha, inner), (self.cldice_alpha, cldice)]))


class TopologySummaryMixin:
    """After nnU-Net's fold validation, also writes ``validation/summary_topology.json``.

    Dice, clDice and Betti errors per label/region of the fold's validation cases against nnU-Net's
    ``gt_segmentations``, shaped like nnU-Net's ``validation/summary.json`` (see ``nnunet-ext evaluate``).
    """

    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)
        if self.local_rank != 0:
            return
        from nnunet_ext.evaluation.folders import evaluate_folders
        validation = os.path.join(self.output_folder, "validation")
        ending = self.dataset_json["file_ending"]
        cases = sorted(f for f in os.listdir(validation) if f.endswith(ending))
        if not cases:
            return
        summary = evaluate_folders(os.path.join(self.preprocessed_dataset_folder_base, "gt_segmentations"),
                                   validation, output_file=os.path.join(validation, "summary_topology.json"),
                                   dataset_json=self.dataset_json, num_processes=default_num_processes,
                                   case_names=cases)
        means = ", ".join(f"{k} {v:.4f}" for k, v in summary["foreground_mean"].items())
        self.print_to_log_file(f"Topology metrics (validation/summary_topology.json), foreground mean: {means}")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class ShortScheduleMixin:
    """A short schedule for smoke tests, demos and CPU benchmarks (``*_short`` trainers).

    Epochs from ``NNUNET_EXT_EPOCHS`` (default 2), training iterations per epoch from
    ``NNUNET_EXT_ITERATIONS`` (default 4), validation iterations from ``NNUNET_EXT_VAL_ITERATIONS``
    (default 2); a checkpoint every epoch so ``--c`` can resume.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int("NNUNET_EXT_EPOCHS", 2)
        self.num_iterations_per_epoch = _env_int("NNUNET_EXT_ITERATIONS", 4)
        self.num_val_iterations_per_epoch = _env_int("NNUNET_EXT_VAL_ITERATIONS", 2)
        self.save_every = 1
