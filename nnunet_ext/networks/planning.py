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
from nnunet_ext.networks.dawmr import DAWMR  # noqa: E402
from nnunet_ext.networks.glnet import GLNet  # noqa: E402
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


class DAWMRPlanner(NetworkPlanner):
    """nnU-Net's default planner for DAWMR (its wide full-resolution layers fit a smaller patch or batch);
    writes ``nnUNetPlans_DAWMR.json``."""

    network_class = DAWMR
    default_plans_name = "nnUNetPlans_DAWMR"


class GLNetPlanner(NetworkPlanner):
    """GLNet plans: the plans' patch is GLNet's window, ``tile_grid`` tiles per axis (4 in 2D, 2 in 3D; 1 on an
    axis whose median image size is below ``tile_grid * 4 * UNet_featuremap_min_edge_length``).

    nnU-Net's own planning loop runs on the tile: its initial size is the median image shape divided by the grid
    (so the window is capped by the median shape), its topology (pooling, kernels) follows the tile, and the memory
    estimate of a tile is GLNet's on the whole window with ``checkpoint_tiles`` (the global branch at tile size,
    one tile's local branch, the window-sized outputs). The loop shrinks the tile and sets the batch size until
    that fits the same VRAM target as nnU-Net's default plans. Writes ``nnUNetPlans_GLNet.json`` naming
    :class:`~nnunet_ext.networks.glnet.GLNet` with ``tile_grid`` and ``checkpoint_tiles`` in its arch_kwargs."""

    network_class = GLNet
    default_plans_name = "nnUNetPlans_GLNet"
    #: tiles per axis by dimensionality (the paper: a 2448² image, 508² tiles)
    tile_grid = {2: 4, 3: 2}

    def _grid_for(self, median_shape: Sequence[float]) -> list[int]:
        grid, smallest_tile = self.tile_grid[len(median_shape)], 4 * self.UNet_featuremap_min_edge_length
        return [grid if m / grid >= smallest_tile else 1 for m in median_shape]

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier, approximate_n_voxels_dataset,
                                    _cache):
        median = np.asarray(median_shape[:len(spacing)], dtype=float)
        self._grid = self._grid_for(median)
        _cache.clear()  # estimates depend on the grid, which differs between configurations
        plan = super().get_plans_for_configuration(spacing, median / np.array(self._grid), data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        window = [int(t) * g for t, g in zip(plan["patch_size"], self._grid)]
        five_percent = round(approximate_n_voxels_dataset * self.max_dataset_covered / np.prod(window, dtype=np.float64))
        plan["batch_size"] = int(max(min(plan["batch_size"], five_percent), self.UNet_min_batch_size))
        plan["patch_size"] = tuple(window)
        plan["median_image_size_in_voxels"] = median_shape
        plan["architecture"]["arch_kwargs"].update(tile_grid=list(self._grid), checkpoint_tiles=True)
        return plan

    def static_estimate_VRAM_usage(self, patch_size, input_channels, output_channels, arch_class_name, arch_kwargs,
                                   arch_kwargs_req_import):
        """GLNet's estimate on the window ``patch_size * grid`` (``patch_size`` is the tile)."""
        window = tuple(int(p) * g for p, g in zip(patch_size, self._grid))
        kwargs = {**arch_kwargs, "tile_grid": list(self._grid), "checkpoint_tiles": True}
        return super().static_estimate_VRAM_usage(window, input_channels, output_channels, arch_class_name, kwargs,
                                                  arch_kwargs_req_import)
