"""Plans for the nnunet-ext networks, made by nnU-Net's own planner (``nnunet-ext plan -d ID --arch unetpp``).

The planner is nnU-Net's ``ExperimentPlanner`` with another network class: nnU-Net estimates a configuration's
memory from the network's ``compute_conv_feature_map_size`` and shrinks the patch (then sets the batch size)
until the estimate fits the same VRAM target as its default plans. A nested decoder has several times the
feature maps of PlainConvUNet, so the fitted patch or batch is smaller.
"""
from __future__ import annotations

import os
from typing import Sequence

from nnunet_ext._compat import require_nnunetv2

require_nnunetv2()

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner  # noqa: E402

from nnunet_ext.networks import UNetPlusPlus  # noqa: E402

_ENVIRONMENT = ("nnUNet_raw", "nnUNet_preprocessed")


class UNetPlusPlusPlanner(ExperimentPlanner):
    """nnU-Net's default planner for UNet++: same spacing, normalisation and topology rules, patch and batch size
    fitted to the same VRAM target; writes ``nnUNetPlans_UNetPlusPlus.json`` naming UNetPlusPlus."""

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlans_UNetPlusPlus",
                 overwrite_target_spacing=None, suppress_transpose: bool = False):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self.UNet_class = UNetPlusPlus


#: ``--arch`` name -> planner class
PLANNERS: dict[str, type[ExperimentPlanner]] = {"unetpp": UNetPlusPlusPlanner}


def _check_environment() -> None:
    missing = [name for name in _ENVIRONMENT if not os.environ.get(name)]
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not set: export them as for nnU-Net (e.g. export "
                           f"nnUNet_raw=/data/nnUNet_raw nnUNet_preprocessed=/data/nnUNet_preprocessed)")


def planner_for(arch: str) -> type[ExperimentPlanner]:
    if arch not in PLANNERS:
        raise KeyError(f"no planner for architecture {arch!r}; available: {', '.join(PLANNERS)}")
    return PLANNERS[arch]


def plan_dataset(dataset_id: int, arch: str, gpu_memory_target_gb: float | None = None,
                 plans_name: str | None = None, preprocess_configurations: Sequence[str] = (),
                 num_processes: int = 4, fingerprint_processes: int = 4) -> str:
    """Plan ``dataset_id`` for ``arch`` (extracting the fingerprint first if there is none) and optionally
    preprocess the given configurations; returns the plans identifier (e.g. ``nnUNetPlans_UNetPlusPlus``)."""
    planner = planner_for(arch)
    _check_environment()
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints,
                                                                      plan_experiment_dataset, preprocess)
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    name = maybe_convert_to_dataset_name(dataset_id)
    if not os.path.isfile(os.path.join(os.environ["nnUNet_preprocessed"], name, "dataset_fingerprint.json")):
        extract_fingerprints([dataset_id], num_processes=fingerprint_processes, check_dataset_integrity=True)
    _, identifier = plan_experiment_dataset(dataset_id, planner, gpu_memory_target_gb,
                                            overwrite_plans_name=plans_name)
    if preprocess_configurations:
        preprocess([dataset_id], identifier, list(preprocess_configurations),
                   [num_processes] * len(preprocess_configurations))
    return identifier
