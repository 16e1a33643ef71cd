"""Plans for benchmarks without a dataset: nnU-Net's topology for a given patch, as its default planner makes it."""
from __future__ import annotations

from typing import Sequence

_REQUIRES_IMPORT = ("conv_op", "norm_op", "dropout_op", "nonlin")


def planner_like_configuration(patch_size: Sequence[int], batch_size: int) -> dict:
    """A plans configuration (architecture, patch, batch) as nnU-Net's default planner makes it, spacing 1: its
    pooling and kernels for the patch (``get_pool_and_conv_props``), 32 base features capped at 512 (2D) / 320
    (3D), two convs per stage, instance norm, leaky ReLU."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
    dim = len(patch_size)
    _, strides, kernels, patch, _ = get_pool_and_conv_props([1.0] * dim, list(patch_size), 4, 999999)
    n_stages = len(strides)
    conv = "torch.nn.modules.conv.Conv3d" if dim == 3 else "torch.nn.modules.conv.Conv2d"
    norm = f"torch.nn.modules.instancenorm.InstanceNorm{dim}d"
    arch_kwargs = {"n_stages": n_stages, "features_per_stage": [min(32 * 2 ** i, 320 if dim == 3 else 512)
                                                                for i in range(n_stages)],
                   "conv_op": conv, "kernel_sizes": [list(k) for k in kernels], "strides": [list(s) for s in strides],
                   "n_conv_per_stage": [2] * n_stages, "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                   "conv_bias": True, "norm_op": norm, "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                   "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                   "nonlin_kwargs": {"inplace": True}}
    return {"patch_size": [int(p) for p in patch], "batch_size": batch_size,
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": arch_kwargs, "_kw_requires_import": list(_REQUIRES_IMPORT)}}


def benchmark_plans(patch_size: Sequence[int], batch_size: int, n_classes: int = 2) -> tuple[dict, dict, str]:
    """(plans, dataset_json, configuration name) of a one-channel dataset with ``n_classes`` labels (background
    included), spacing 1, whose one configuration is :func:`planner_like_configuration`'s."""
    dim = len(patch_size)
    name = "2d" if dim == 2 else "3d_fullres"
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    configuration = {"data_identifier": f"nnUNetPlans_{name}", "preprocessor_name": "DefaultPreprocessor",
                     "median_image_size_in_voxels": [float(p) for p in patch_size], "spacing": [1.0] * dim,
                     "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
                     "resampling_fn_data": "resample_data_or_seg_to_shape",
                     "resampling_fn_seg": "resample_data_or_seg_to_shape",
                     "resampling_fn_data_kwargs": resampling,
                     "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
                     "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                     "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
                     "batch_dice": False, **planner_like_configuration(patch_size, batch_size)}
    plans = {"dataset_name": "Dataset999_Benchmark", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [1.0] * dim,
             "original_median_shape_after_transp": [int(p) for p in patch_size], "image_reader_writer": "SimpleITKIO",
             "transpose_forward": list(range(dim)), "transpose_backward": list(range(dim)),
             "configurations": {name: configuration}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {"max": 1.0, "mean": 0.5, "median": 0.5, "min": 0.0,
                                                                   "percentile_00_5": 0.0, "percentile_99_5": 1.0,
                                                                   "std": 0.2}}}
    labels = {"background": 0, **{f"class_{c}": c for c in range(1, n_classes)}}
    dataset_json = {"channel_names": {"0": "image"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    return plans, dataset_json, name
