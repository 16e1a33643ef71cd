"""Plans for the nnunet-ext networks, made by nnU-Net's own planner (``nnunet-ext plan -d ID --arch KEY``).

:class:`NetworkPlanner` is nnU-Net's ``ExperimentPlanner`` with another network class: nnU-Net estimates a
configuration's memory from the network's ``compute_conv_feature_map_size`` and shrinks the patch (then sets the
batch size) until the estimate fits the same VRAM target as its default plans. A nested decoder has several times
the feature maps of PlainConvUNet, so the fitted patch or batch is smaller. ``loss_memory`` adds what a loss keeps
for backward (clDice's soft skeletons on every output, for example) to the estimate, in the same units.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from nnunet_ext._compat import require_nnunetv2

require_nnunetv2()

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner  # noqa: E402

from nnunet_ext.errors import UserInputError  # noqa: E402
from nnunet_ext.networks.unet_plus_plus import UNetPlusPlus  # noqa: E402

_ENVIRONMENT = ("nnUNet_raw", "nnUNet_preprocessed")

#: (patch_size, output_channels incl. background, arch_kwargs) -> feature-map elements the loss keeps for backward
LossMemory = Callable[[Sequence[int], int, dict], float]


class NetworkPlanner(ExperimentPlanner):
    """nnU-Net's default planner for another network (``network_class``): same spacing, normalisation and topology
    rules, patch and batch size fitted to the same VRAM target; writes plans naming ``network_class``."""

    network_class: type = None  # set by subclasses
    default_plans_name: str = "nnUNetPlans_custom"
    #: extra elements per configuration estimate (the loss's stored tensors); None = the network's feature maps only
    loss_memory: LossMemory | None = None

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or self.default_plans_name, overwrite_target_spacing, suppress_transpose)
        self.UNet_class = self.network_class

    def static_estimate_VRAM_usage(self, patch_size, input_channels, output_channels, arch_class_name, arch_kwargs,
                                   arch_kwargs_req_import):
        estimate = ExperimentPlanner.static_estimate_VRAM_usage(patch_size, input_channels, output_channels,
                                                                arch_class_name, arch_kwargs, arch_kwargs_req_import)
        if type(self).loss_memory is not None:
            estimate = estimate + np.int64(type(self).loss_memory(tuple(patch_size), output_channels, arch_kwargs))
        return estimate


class UNetPlusPlusPlanner(NetworkPlanner):
    """nnU-Net's default planner for UNet++; writes ``nnUNetPlans_UNetPlusPlus.json``."""

    network_class = UNetPlusPlus
    default_plans_name = "nnUNetPlans_UNetPlusPlus"


def with_loss_memory(planner: type[NetworkPlanner], loss_memory: LossMemory, suffix: str) -> type[NetworkPlanner]:
    """``planner`` whose estimate also counts ``loss_memory``; its default plans name gets ``suffix``."""
    return type(planner.__name__ + suffix, (planner,),
                {"loss_memory": staticmethod(loss_memory),
                 "default_plans_name": planner.default_plans_name + suffix})


def check_environment() -> None:
    missing = [name for name in _ENVIRONMENT if not os.environ.get(name)]
    if missing:
        raise UserInputError(f"{' and '.join(missing)} not set: export them as for nnU-Net (e.g. export "
                             f"nnUNet_raw=/data/nnUNet_raw nnUNet_preprocessed=/data/nnUNet_preprocessed)")


def plan_dataset(dataset_id: int, planner: type[ExperimentPlanner], gpu_memory_target_gb: float | None = None,
                 plans_name: str | None = None, preprocess_configurations: Sequence[str] = (),
                 num_processes: int = 4, fingerprint_processes: int = 4) -> str:
    """Plan ``dataset_id`` with ``planner`` (extracting the fingerprint first if there is none) and preprocess
    those of ``preprocess_configurations`` that the plans define (a 2D dataset has no 3d_fullres); returns the
    plans identifier (e.g. ``nnUNetPlans_UNetPlusPlus``)."""
    check_environment()
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints,
                                                                      plan_experiment_dataset, preprocess)
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        name = maybe_convert_to_dataset_name(dataset_id)
    except RuntimeError as error:
        raise UserInputError(f"dataset {dataset_id} is not in $nnUNet_raw or $nnUNet_preprocessed ({error})") from None
    if not os.path.isfile(os.path.join(os.environ["nnUNet_preprocessed"], name, "dataset_fingerprint.json")):
        extract_fingerprints([dataset_id], num_processes=fingerprint_processes, check_dataset_integrity=True)
    _, identifier = plan_experiment_dataset(dataset_id, planner, gpu_memory_target_gb,
                                            overwrite_plans_name=plans_name)
    configurations = [c for c in preprocess_configurations if c in planned_configurations(dataset_id, identifier)]
    if configurations:
        preprocess([dataset_id], identifier, configurations, [num_processes] * len(configurations))
    return identifier


def planned_configurations(dataset_id: int, plans_name: str) -> list[str]:
    """The configurations a written plans file defines (e.g. ['2d'] for a 2D dataset)."""
    import json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    path = os.path.join(os.environ["nnUNet_preprocessed"], maybe_convert_to_dataset_name(dataset_id),
                        plans_name + ".json")
    with open(path) as f:
        return list(json.load(f)["configurations"])
