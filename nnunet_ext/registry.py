"""The registry of architectures and losses that trainers are built from.

One naming rule for every trainer: ``nnUNetTrainer<Architecture><Loss>[_<variant>][_short]``.
The empty architecture is the network named by the plans (nnU-Net's own), the empty loss is nnU-Net's
Dice+CE. A new network or loss is added here, in one place; trainers, the CLI and the tests read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from nnunet_ext.architecture_mixins import UNetPlusPlusMixin
from nnunet_ext.mixins import BorderWeightMixin, ClDiceMixin, SkeletonRecallMixin


@dataclass(frozen=True)
class Component:
    """A registered architecture or loss: the mixin that adds it to nnUNetTrainer."""
    name: str
    mixin: type | None
    summary: str
    #: suffix -> class attributes, e.g. {"w0p1": {"skeleton_recall_weight": 0.1}}
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


ARCHITECTURES: dict[str, Component] = {
    "": Component("", None, "the network the plans name (nnU-Net's PlainConvUNet or ResEnc)"),
    "UNetPlusPlus": Component(
        "UNetPlusPlus", UNetPlusPlusMixin,
        "UNet++ (nested dense skips) built from the plans' U-Net configuration, deep supervision on every "
        "full-resolution head; inference head from $NNUNET_EXT_UNETPP_INFERENCE_HEAD (ensemble | d)"),
}

LOSSES: dict[str, Component] = {
    "": Component("", None, "nnU-Net's Dice+CE"),
    "SkelRecall": Component(
        "SkelRecall", SkeletonRecallMixin,
        "Dice+CE + w * Skeleton Recall (tubed skeleton computed on the CPU by the data loader), w = 1",
        variants={"w0p1": {"skeleton_recall_weight": 0.1}, "w1": {"skeleton_recall_weight": 1.0}}),
    "ClDice": Component(
        "ClDice", ClDiceMixin,
        "(1-a) * Dice+CE + a * clDice (memory-efficient soft skeleton, 10 iterations), a = 0.5"),
    "BorderWeight": Component(
        "BorderWeight", BorderWeightMixin,
        "Dice + CE weighted by the U-Net separation-border map (w0 = 10, sigma = 5 voxels, balanced w_c)"),
}


def trainer_name(architecture: str = "", loss: str = "", variant: str = "", short: bool = False) -> str:
    """The class name of a trainer, following the naming rule."""
    for kind, key, table in (("architecture", architecture, ARCHITECTURES), ("loss", loss, LOSSES)):
        if key not in table:
            known = ", ".join(repr(k) for k in table)
            raise KeyError(f"unknown {kind} {key!r}; registered: {known}")
    if variant and variant not in LOSSES[loss].variants:
        raise KeyError(f"loss {loss!r} has no variant {variant!r}; it has: {sorted(LOSSES[loss].variants)}")
    return "nnUNetTrainer" + architecture + loss + (f"_{variant}" if variant else "") + ("_short" if short else "")
