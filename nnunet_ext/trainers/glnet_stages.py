"""Trainer mixin: GLNet's staged schedule (Chen et al., CVPR 2019; the official code's three training modes), an
option next to the default one-stage joint training.

``glnet_stages`` (class attribute): None trains everything jointly (the default); a tuple of epoch fractions
``(s2,)`` or ``(s2, s3)`` starts stage 2 at epoch ``s2 * num_epochs`` and stage 3 at ``s3 * num_epochs``:

====== ============================================ ============================= ==========================
stage  trains (``requires_grad``; the rest frozen)   loss on [fused, local, global] feature regularisation
====== ============================================ ============================= ==========================
1      global branch + global head                   0 : 0 : 1                     off
2      local branch + aggregation + local head       1 : a : 0                     on
3      global branch + global head (needs            1 : 0 : a                     off
       local-to-global: the paper's third stage)
====== ============================================ ============================= ==========================

(``a`` = ``glnet_auxiliary_weight``, weights normalised to sum 1.) Frozen parameters get ``requires_grad=False``
and, under DDP, the network is wrapped anew at each change of stage, so DDP only waits for parameters that get a
gradient (nnU-Net wraps without ``find_unused_parameters``). SGD skips parameters without a gradient, so frozen
ones keep their weights and momentum. The stage follows the epoch, so ``--c`` resumes in the right stage. In stage
1 the fused output is not trained: nnU-Net's pseudo Dice (of the fused output) means nothing until stage 2.
"""
from __future__ import annotations

import math
from typing import Sequence

from torch.nn.parallel import DistributedDataParallel

from nnunet_ext.errors import UserInputError
from nnunet_ext.losses.deep_supervision import FullResolutionDeepSupervision
from nnunet_ext.trainers.architecture import unwrap

#: parameter-name prefixes of the GLNet modules each stage trains
STAGE_MODULES = {1: ("global_branch.", "decoder.global_head."),
                 2: ("local_branch.", "decoder.aggregation.", "decoder.local_head."),
                 3: ("global_branch.", "decoder.global_head.")}


def check_stages(stages: Sequence[float] | None, local_to_global: bool) -> tuple[float, ...] | None:
    """``stages`` as a tuple of fractions, or a UserInputError naming the rule and the fix."""
    if stages is None:
        return None
    values = tuple(stages) if isinstance(stages, (list, tuple)) else (stages,)
    fix = "e.g. glnet_stages = (0.3,) or, with glnet_local_to_global = True, (0.3, 0.7); None trains jointly"
    if not (1 <= len(values) <= 2) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) and 0 < v < 1 for v in values):
        raise UserInputError(f"glnet_stages must be one or two epoch fractions in (0, 1), got {stages!r} ({fix})")
    if len(values) == 2 and not values[0] < values[1]:
        raise UserInputError(f"glnet_stages must increase (stage 2 starts before stage 3), got {stages!r} ({fix})")
    if len(values) == 2 and not local_to_global:
        raise UserInputError("glnet_stages has a third stage (the global branch trained with local-to-global "
                             "sharing), which needs glnet_local_to_global = True (the _bidirectional variant); "
                             f"got {stages!r} without it ({fix})")
    return tuple(float(v) for v in values)


def stage_at(epoch: int, num_epochs: int, stages: Sequence[float]) -> int:
    """The stage (1, 2 or 3) of ``epoch``: stage k + 2 from epoch ``stages[k] * num_epochs`` on (rounded up to a
    whole epoch). E.g. 100 epochs, (0.3,): epochs 0-29 stage 1, 30-99 stage 2."""
    stage = 1
    for k, fraction in enumerate(stages):
        if epoch >= math.ceil(fraction * num_epochs):
            stage = k + 2
    return stage


def stage_output_weights(stage: int, auxiliary: float) -> tuple[float, float, float]:
    """Loss weights of [fused, local_aux, global_aux] in ``stage`` (table above), normalised."""
    raw = {1: (0.0, 0.0, 1.0), 2: (1.0, auxiliary, 0.0), 3: (1.0, 0.0, auxiliary)}[stage]
    return tuple(w / sum(raw) for w in raw)


class GLNetStagesMixin:
    """The staged schedule of the module docstring when ``glnet_stages`` is set; nothing otherwise."""

    glnet_stages: Sequence[float] | None
    glnet_auxiliary_weight: float

    def staged_schedule(self) -> tuple[float, ...] | None:
        """The checked stage fractions (None: joint training)."""
        return check_stages(self.glnet_stages, bool(unwrap(self.network).local_to_global))

    def initialize(self):
        super().initialize()
        if self.staged_schedule() is not None and not self.enable_deep_supervision:
            raise UserInputError("GLNet's staged schedule trains the global and local heads in turn, which needs "
                                 "deep supervision on (nnU-Net's default); set glnet_stages = None to train "
                                 "without it")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # nnU-Net's epoch header first, so the stage is logged under it
        stages = self.staged_schedule()
        if stages is not None:
            stage = stage_at(self.current_epoch, self.num_epochs, stages)
            if stage != getattr(self, "glnet_stage", None):
                self.set_glnet_stage(stage)

    def set_glnet_stage(self, stage: int) -> None:
        """Freeze and unfreeze GLNet's parts, set the loss weights and the feature regularisation for ``stage``,
        and wrap the network anew under DDP."""
        network = unwrap(self.network)
        if not hasattr(self, "_glnet_regularization"):
            self._glnet_regularization = network.feature_regularization
        trained = STAGE_MODULES[stage]
        for name, parameter in network.named_parameters():
            parameter.requires_grad_(name.startswith(trained))
        network.feature_regularization = self._glnet_regularization if stage == 2 else 0.0
        weights = stage_output_weights(stage, float(self.glnet_auxiliary_weight))
        for module in self.loss.modules():
            if isinstance(module, FullResolutionDeepSupervision):
                module.weight_factors = weights
        if isinstance(self.network, DistributedDataParallel):  # DDP's reducer is built for the trainable set
            self.network = DistributedDataParallel(self.network.module, device_ids=self.network.device_ids)
        self.glnet_stage = stage
        self.print_to_log_file(f"GLNet stage {stage}: training {', '.join(p.rstrip('.') for p in trained)}; loss "
                               f"weights [fused, local, global] {tuple(round(w, 3) for w in weights)}; feature "
                               f"regularisation {network.feature_regularization}")
