"""Topology-aware evaluation: clDice and Betti-number errors next to nnU-Net's Dice.

- :mod:`nnunet_ext.evaluation.topology`: the metrics on numpy arrays;
- :mod:`nnunet_ext.evaluation.folders`: a folder of predictions against a folder of references, written
  like nnU-Net's ``summary.json`` (also ``nnunet-ext evaluate``).
"""
from nnunet_ext.evaluation.topology import (betti_errors, betti_numbers, cldice, spatial_squeeze,
                                            topology_metrics)

__all__ = ["betti_errors", "betti_numbers", "cldice", "spatial_squeeze", "topology_metrics",
           "evaluate_folders"]


def __getattr__(name: str):
    # evaluate_folders pulls in nnU-Net's readers (and torch): imported on first use only
    if name == "evaluate_folders":
        from nnunet_ext.evaluation.folders import evaluate_folders
        return evaluate_folders
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
