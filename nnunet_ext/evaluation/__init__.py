"""Topology-aware evaluation: Dice, clDice, Betti errors, surface distances, component detection, EM metrics.

- :mod:`~nnunet_ext.evaluation.topology`: clDice and Betti errors on numpy arrays (the default rules);
- :mod:`~nnunet_ext.evaluation.conventions`: connectivity choices, fast Euler characteristic, TopCoW's clDice;
- :mod:`~nnunet_ext.evaluation.surface`: HD95, HD, ASSD and NSD with voxel spacing;
- :mod:`~nnunet_ext.evaluation.components`: per-component detection (one-to-one IoU matching, splits, merges);
- :mod:`~nnunet_ext.evaluation.instances`: adapted Rand error and variation of information (scikit-image);
- :mod:`~nnunet_ext.evaluation.case`: every family on one case (:func:`case_metrics`, :class:`EvaluationSettings`);
- :mod:`~nnunet_ext.evaluation.reading`: truncated/corrupt file checks, nnU-Net's arrays to 2D/3D;
- :mod:`~nnunet_ext.evaluation.summary`: nnU-Net-shaped JSON and CSV; :mod:`~nnunet_ext.evaluation.plots`: PNGs;
- :mod:`~nnunet_ext.evaluation.folders`: a prediction folder against a reference folder (``nnunet-ext evaluate``);
- :mod:`~nnunet_ext.evaluation.compare`: several summaries side by side (``nnunet-ext compare``).
"""
from nnunet_ext.evaluation.topology import (betti_errors, betti_numbers, cldice, spatial_squeeze,
                                            topology_metrics)

__all__ = ["betti_errors", "betti_numbers", "cldice", "spatial_squeeze", "topology_metrics",
           "evaluate_folders", "case_metrics", "EvaluationSettings"]


def __getattr__(name: str):
    # evaluate_folders pulls in nnU-Net's readers: imported on first use only
    if name == "evaluate_folders":
        from nnunet_ext.evaluation.folders import evaluate_folders
        return evaluate_folders
    if name in ("case_metrics", "EvaluationSettings"):
        from nnunet_ext.evaluation import case
        return getattr(case, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
