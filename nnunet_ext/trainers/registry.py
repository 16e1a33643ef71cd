"""The registry of architectures and losses that every trainer is generated from.

One naming rule for every trainer: ``nnUNetTrainer<Architecture><Loss>[_<variant>][_short]``. The empty
architecture is the network the plans name (nnU-Net's own), the empty loss is nnU-Net's Dice+CE. Trainers, the
command line (``nnunet-ext trainers``, ``nnunet-ext plan --arch``), the quality benchmark and the tests read these
tables; adding a network or a loss is its module plus one entry here (see the README, "Adding a network or a
loss").

This module is import-light on purpose (no torch, no nnU-Net): classes are named by dotted paths and resolved only
when a trainer is generated, so listing trainers costs nothing.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

#: the module that declares the trainer classes (their pickled location)
GENERATED_MODULE = "nnunet_ext.trainers.generated"
SHORT = "_short"


@dataclass(frozen=True)
class Variant:
    """A named set of class attributes, e.g. ``Variant("w0p1", {"skeleton_recall_weight": 0.1})``; ``note`` is
    added to the description (where the summary does not show the attributes)."""
    suffix: str
    attributes: Mapping[str, Any]
    note: str = ""


@dataclass(frozen=True)
class Component:
    """What architectures and losses share: a name in trainer names, class attributes and variants.

    ``summary`` is formatted with the attributes (defaults, overridden by a variant), e.g.
    ``"Dice+CE + {skeleton_recall_weight} x Skeleton Recall"``.
    """
    name: str
    summary: str
    #: class attributes every trainer with this component gets (the defaults users override by subclassing)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    variants: tuple[Variant, ...] = ()

    def attributes_of(self, variant: str = "") -> dict[str, Any]:
        """The class attributes of this component, with ``variant``'s applied."""
        attributes = dict(self.attributes)
        if variant:
            attributes.update(self.variant(variant).attributes)
        return attributes

    def variant(self, suffix: str) -> Variant:
        for v in self.variants:
            if v.suffix == suffix:
                return v
        raise KeyError(f"{self.name or 'the default'} has no variant {suffix!r}; it has: "
                       f"{[v.suffix for v in self.variants]}")

    def describe(self, variant: str = "") -> str:
        text = self.summary.format(**self.attributes_of(variant))
        note = self.variant(variant).note if variant else ""
        return f"{text}; {note}" if note else text


@dataclass(frozen=True)
class Architecture(Component):
    """A network built from the plans' U-Net configuration instead of the one the plans name.

    - ``network``: dotted path of the class (importable, so a plans file can name it too); it takes
      PlainConvUNet's keyword arguments plus ``options`` and follows nnU-Net's network contract
      (``decoder.deep_supervision``; full-resolution output first).
    - ``accepts``: plans network class names (last dotted part) whose keyword arguments it takes as they are
      (plans naming the network itself are always accepted).
    - ``options``: network keyword -> trainer attribute; a non-None attribute overrides the plans' value.
    - ``inference_options``: network keyword -> environment variable, read only when the network is built for
      inference (deep supervision off: ``nnUNetv2_predict``, ``--val``); training refuses a set variable.
    - ``output_weights``: None = nnU-Net's deep supervision (one output per scale, downsampled targets); else a
      function ``(arch_kwargs, trainer attributes) -> weights`` of the network's outputs, all at full resolution
      against one target (every weight > 0, so DDP gets a gradient for every head).
    - ``planner``: dotted path of an nnU-Net ExperimentPlanner subclass for ``nnunet-ext plan --arch KEY``,
      which writes ``plans_name``; ``key`` is the ``--arch`` name.
    - ``auxiliary_loss``: the network sets ``network.auxiliary_loss`` (a scalar) in training forward passes and the
      trainer adds it to the loss (e.g. GLNet's feature regularisation).
    - ``plans_defaults``: dotted path of ``(patch_size, arch_kwargs) -> keyword defaults`` for plans that do not
      set the network's own options (nnU-Net's default plans), e.g. GLNet's tile grid.
    - ``mixins``: dotted paths of trainer mixins for training behaviour of this network alone (e.g. GLNet's window
      sampling and staged schedule), placed before the generic architecture mixin, first one outermost.
    """
    network: str = ""
    key: str = ""
    accepts: tuple[str, ...] = ("PlainConvUNet",)
    options: Mapping[str, str] = field(default_factory=dict)
    inference_options: Mapping[str, str] = field(default_factory=dict)
    output_weights: Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[float, ...]] | None = None
    planner: str | None = None
    plans_name: str | None = None
    auxiliary_loss: bool = False
    plans_defaults: str | None = None
    mixins: tuple[str, ...] = ()


@dataclass(frozen=True)
class Loss(Component):
    """A loss: ``mixin`` is the dotted path of the trainer mixin that builds it (one module per loss under
    :mod:`nnunet_ext.trainers`); ``extra_target``: it reads extra target channels made by the data loader (at most
    one such loss per trainer)."""
    mixin: str = ""
    extra_target: bool = False
    #: (foreground channels, attributes) -> elements per output voxel this loss keeps for backward beyond nnU-Net's
    #: Dice+CE, in the units of nnU-Net's feature-map estimate (``nnunet-ext plan --loss``); None = negligible
    backward_elements_per_voxel: Callable[[int, Mapping[str, Any]], float] | None = None


def _normalised(weights: list[float]) -> tuple[float, ...]:
    total = sum(weights)
    return tuple(w / total for w in weights)


def cldice_backward_elements(foreground_channels: int, attributes: Mapping[str, Any]) -> float:
    """clDice keeps 2n + 1 skeleton tensors (n iterations) plus about five more (probabilities, target, both
    skeletons, products) per foreground channel, in float32: twice a half-precision feature map's element."""
    return 2.0 * (2 * int(attributes["cldice_iterations"]) + 6) * foreground_channels


def unetpp_output_weights(arch_kwargs: Mapping[str, Any], attributes: Mapping[str, Any]) -> tuple[float, ...]:
    """``[primary, head_1, ..., head_L]``: ``unetpp_primary_weight`` and 1 per head, normalised."""
    return _normalised([float(attributes["unetpp_primary_weight"])] + [1.0] * (int(arch_kwargs["n_stages"]) - 1))


def glnet_output_weights(arch_kwargs: Mapping[str, Any], attributes: Mapping[str, Any]) -> tuple[float, ...]:
    """``[fused, local_aux, global_aux]``: 1, ``glnet_auxiliary_weight``, ``glnet_auxiliary_weight``, normalised."""
    auxiliary = float(attributes["glnet_auxiliary_weight"])
    return _normalised([1.0, auxiliary, auxiliary])


def dawmr_output_weights(arch_kwargs: Mapping[str, Any], attributes: Mapping[str, Any]) -> tuple[float, ...]:
    """``[out_K, out_1, ..., out_{K-1}]``: 1 each, not normalised. No gradient crosses iterations, so each weight
    only scales its own iteration's network: 1 trains every iteration as if it were alone (1/K would divide their
    learning rates by K)."""
    iterations = attributes.get("dawmr_iterations") or arch_kwargs.get("iterations", 3)
    return (1.0,) * int(iterations)


ARCHITECTURES: dict[str, Architecture] = {}
LOSSES: dict[str, Loss] = {}


def _register(table: dict, component: Component, required: str, what: str) -> Component:
    if component.name and not getattr(component, required):
        raise ValueError(f"{component.name!r} needs {what}")
    if component.name and not component.name.isidentifier():
        raise ValueError(f"{component.name!r} cannot be part of a class name: use letters and digits")
    table[component.name] = component
    _sync_generated()
    return component


def register_architecture(architecture: Architecture) -> Architecture:
    """Add (or replace) an architecture; trainers for it are declared at once if the trainers are loaded."""
    return _register(ARCHITECTURES, architecture, "network", "the dotted path of its network class")


def register_loss(loss: Loss) -> Loss:
    """Add (or replace) a loss; trainers for it are declared at once if the trainers are loaded."""
    return _register(LOSSES, loss, "mixin", "the dotted path of its trainer mixin")


def unregister(name: str) -> None:
    """Remove an architecture or loss of that name (and its trainers). The defaults ('') stay."""
    if not name:
        raise ValueError("the default architecture and loss cannot be removed")
    ARCHITECTURES.pop(name, None)
    LOSSES.pop(name, None)
    _sync_generated()


def _sync_generated() -> None:
    declare_all = getattr(sys.modules.get(GENERATED_MODULE), "declare_all", None)
    if declare_all is not None:  # loaded (a module still being imported declares everything when it is done)
        declare_all()


def trainer_name(architecture: str = "", loss: str = "", variant: str = "", short: bool = False) -> str:
    """The class name of a trainer, following the naming rule."""
    for kind, key, table in (("architecture", architecture, ARCHITECTURES), ("loss", loss, LOSSES)):
        if key not in table:
            known = ", ".join(repr(k) for k in table)
            raise KeyError(f"unknown {kind} {key!r}; registered: {known}")
    if variant:
        owners = [c for c in (ARCHITECTURES[architecture], LOSSES[loss]) if any(v.suffix == variant
                                                                              for v in c.variants)]
        if not owners:
            raise KeyError(f"neither {architecture!r} nor {loss!r} has a variant {variant!r}")
    return "nnUNetTrainer" + architecture + loss + (f"_{variant}" if variant else "") + (SHORT if short else "")


@dataclass(frozen=True)
class TrainerSpec:
    """One generated trainer: its name, components, variant, schedule and description."""
    name: str
    architecture: Architecture
    loss: Loss
    variant: str = ""
    short: bool = False

    @property
    def attributes(self) -> dict[str, Any]:
        """Class attributes of the trainer: both components' defaults, the variant's applied to its owner."""
        attributes = {}
        for component in (self.architecture, self.loss):
            owns = any(v.suffix == self.variant for v in component.variants)
            attributes.update(component.attributes_of(self.variant if owns else ""))
        return attributes

    @property
    def description(self) -> str:
        parts = []
        for component in (self.architecture, self.loss):
            owns = any(v.suffix == self.variant for v in component.variants)
            parts.append(component.describe(self.variant if owns else ""))
        text = f"network: {parts[0]}; loss: {parts[1]}"
        if self.short:
            text += "; short schedule (NNUNET_EXT_EPOCHS / _ITERATIONS / _VAL_ITERATIONS)"
        return text


def trainer_specs() -> list[TrainerSpec]:
    """Every trainer the registry gives, in listing order. nnU-Net's own ``nnUNetTrainer`` is not among them
    (it is nnU-Net's), but its short variant ``nnUNetTrainer_short`` is."""
    specs = []
    for architecture in ARCHITECTURES.values():
        for loss in LOSSES.values():
            variants = [""] + [v.suffix for c in (architecture, loss) for v in c.variants]
            for variant in variants:
                for short in (False, True):
                    if not (architecture.name or loss.name or variant or short):
                        continue  # plain nnUNetTrainer
                    specs.append(TrainerSpec(trainer_name(architecture.name, loss.name, variant, short),
                                             architecture, loss, variant, short))
    return specs


def trainer_names() -> list[str]:
    return [spec.name for spec in trainer_specs()]


def architecture_for_key(key: str) -> Architecture:
    """The architecture whose ``nnunet-ext plan --arch`` key is ``key`` (KeyError naming the choices)."""
    for architecture in ARCHITECTURES.values():
        if architecture.key and architecture.key == key:
            return architecture
    raise KeyError(f"unknown architecture {key!r}; available: {', '.join(planner_keys())}")


def planner_keys() -> list[str]:
    """``--arch`` keys of the architectures that have a planner."""
    return [a.key for a in ARCHITECTURES.values() if a.key and a.planner]


# ------------------------------------------------------------------------------------------------ the entries

register_architecture(Architecture("", "the network the plans name (nnU-Net's PlainConvUNet or ResEnc)"))
register_architecture(Architecture(
    "UNetPlusPlus",
    "UNet++ (nested dense skips) built from the plans' U-Net configuration, deep supervision on every "
    "full-resolution head (primary weight {unetpp_primary_weight}); inference head from "
    "$NNUNET_EXT_UNETPP_INFERENCE_HEAD (ensemble | d) for prediction",
    attributes={"unetpp_primary_weight": 1.0},
    network="nnunet_ext.networks.unet_plus_plus.UNetPlusPlus", key="unetpp",
    inference_options={"inference_head": "NNUNET_EXT_UNETPP_INFERENCE_HEAD"},
    output_weights=unetpp_output_weights,
    planner="nnunet_ext.networks.planning.UNetPlusPlusPlanner", plans_name="nnUNetPlans_UNetPlusPlus"))

register_architecture(Architecture(
    "GLNet",
    "GLNet (global branch on the window downsampled by the tile grid, local branch on its full-resolution tiles, "
    "global-to-local sharing at every level, feature regularisation 0.15 x MSE), deep supervision on "
    "[fused, local, global] at full resolution (weights 1 : {glnet_auxiliary_weight} : {glnet_auxiliary_weight})",
    attributes={"glnet_auxiliary_weight": 0.5, "glnet_tile_grid": None, "glnet_local_to_global": None,
                "glnet_feature_regularization": None, "glnet_tiles_per_batch": None, "glnet_checkpoint_tiles": None,
                "glnet_stages": None, "glnet_foreground_oversampling": None},
    variants=(Variant("bidirectional", {"glnet_local_to_global": True},
                      "local-to-global sharing too (the paper's deep bidirectional GLNet)"),
              Variant("staged", {"glnet_stages": (0.3,)},
                      "the paper's staged schedule: the global branch alone for the first 30% of the epochs, then "
                      "the local branch and the fusion with the global branch frozen")),
    network="nnunet_ext.networks.glnet.GLNet", key="glnet",
    options={"tile_grid": "glnet_tile_grid", "local_to_global": "glnet_local_to_global",
             "feature_regularization": "glnet_feature_regularization", "tiles_per_batch": "glnet_tiles_per_batch",
             "checkpoint_tiles": "glnet_checkpoint_tiles"},
    output_weights=glnet_output_weights, auxiliary_loss=True, plans_defaults="nnunet_ext.networks.glnet.plans_defaults",
    mixins=("nnunet_ext.trainers.glnet_sampling.GLNetSamplingMixin",
            "nnunet_ext.trainers.glnet_stages.GLNetStagesMixin"),
    planner="nnunet_ext.networks.planning.GLNetPlanner", plans_name="nnUNetPlans_GLNet"))
register_architecture(Architecture(
    "DAWMR",
    "DAWMR (deep, wide, multiscale, recursive: {dawmr_iterations} iterations, each on the image plus the detached "
    "softmax of the previous one), every iteration supervised at full resolution",
    attributes={"dawmr_iterations": 3, "dawmr_width": None},
    network="nnunet_ext.networks.dawmr.DAWMR", key="dawmr",
    options={"iterations": "dawmr_iterations", "width": "dawmr_width"},
    output_weights=dawmr_output_weights,
    planner="nnunet_ext.networks.planning.DAWMRPlanner", plans_name="nnUNetPlans_DAWMR"))

register_loss(Loss("", "nnU-Net's Dice+CE"))
register_loss(Loss(
    "SkelRecall",
    "Dice+CE + {skeleton_recall_weight} x Skeleton Recall (tubed skeleton computed on the CPU by the data loader)",
    attributes={"skeleton_recall_weight": 1.0},
    variants=(Variant("w0p1", {"skeleton_recall_weight": 0.1}), Variant("w1", {"skeleton_recall_weight": 1.0})),
    mixin="nnunet_ext.trainers.skeleton_recall.SkeletonRecallMixin", extra_target=True))
register_loss(Loss(
    "ClDice",
    "(1 - {cldice_alpha}) x Dice+CE + {cldice_alpha} x clDice (memory-efficient soft skeleton, "
    "{cldice_iterations} iterations)",
    attributes={"cldice_alpha": 0.5, "cldice_iterations": 10},
    mixin="nnunet_ext.trainers.cldice.ClDiceMixin", backward_elements_per_voxel=cldice_backward_elements))
register_loss(Loss(
    "BorderWeight",
    "Dice + CE weighted by the U-Net separation-border map (w0 = {border_w0}, sigma = {border_sigma} voxels of the "
    "finest axis, class frequencies balanced unless border_class_weights is set)",
    attributes={"border_w0": 10.0, "border_sigma": 5.0, "border_class_weights": None},
    mixin="nnunet_ext.trainers.border_weight.BorderWeightMixin", extra_target=True))
register_loss(Loss(
    "LED",
    "Dice + CE weighted by the local density of the network's own errors (LED: window {led_window} voxels of the "
    "finest axis, alpha {led_alpha}, clipped at {led_max_weight}, mean 1; off for the first {led_warmup:.0%} of the "
    "epochs, then ramped in over the next {led_ramp:.0%})",
    attributes={"led_window": 7, "led_alpha": 10.0, "led_max_weight": 10.0, "led_warmup": 0.1, "led_ramp": 0.1},
    mixin="nnunet_ext.trainers.led.LEDMixin"))
register_loss(Loss(
    "Focal",
    "Dice + focal loss in place of CE (-(1 - p_t)^{focal_gamma} log p_t, Lin et al.; GLNet's code trains with one)",
    attributes={"focal_gamma": 2.0},
    mixin="nnunet_ext.trainers.focal.FocalMixin"))
