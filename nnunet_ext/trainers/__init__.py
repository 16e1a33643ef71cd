"""All nnunet-ext trainers, generated from the registry (:mod:`nnunet_ext.trainers.registry`).

``from nnunet_ext.trainers import nnUNetTrainerSkelRecall`` loads the classes on first use
(:mod:`nnunet_ext.trainers.generated`, which imports torch and nnU-Net); importing this package alone stays cheap,
so the start-up hook (:mod:`nnunet_ext.trainers.discovery`) and ``nnunet-ext trainers`` never import torch.

Layout: ``registry`` (architectures and losses), one mixin module per component (``skeleton_recall``, ``cldice``,
``border_weight``, ``architecture``, ``label_check``, ``topology_summary``, ``schedule``; ``extra_target`` is what
extra-target losses share), ``generated`` (the classes), ``discovery`` and ``nnunet_trainer_exports/`` (how
nnU-Net finds them).
"""
from __future__ import annotations


def __getattr__(name: str):
    if name == "__all__" or name.startswith("nnUNetTrainer"):
        from nnunet_ext.trainers import generated
        if name == "__all__":
            return list(generated.__all__)
        if hasattr(generated, name):
            return getattr(generated, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
