"""The trainer classes, declared from :mod:`nnunet_ext.trainers.registry` (see its naming rule).

Each class is created in this module, so it pickles to ``nnunet_ext.trainers.generated.<name>`` (spawned data
loader workers and DDP ranks find it). Bases, mixins first: the loss's mixin, the architecture's own mixins (if
any), the architecture mixin, the checks every nnunet-ext trainer has (labels before training, topology summary
after validation), nnU-Net's trainer; the ``_short`` classes add the short schedule on top; a variant sets its class
attributes.
"""
from __future__ import annotations

import pydoc

from nnunet_ext._compat import require_nnunetv2

require_nnunetv2()

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402

from nnunet_ext.trainers import registry  # noqa: E402
from nnunet_ext.trainers.architecture import RegisteredArchitectureMixin  # noqa: E402
from nnunet_ext.trainers.label_check import LabelCheckMixin  # noqa: E402
from nnunet_ext.trainers.schedule import ShortScheduleMixin  # noqa: E402
from nnunet_ext.trainers.topology_summary import TopologySummaryMixin  # noqa: E402

__all__: list[str] = []

#: what every generated trainer has, after its loss and architecture mixins
COMMON_BASES = (LabelCheckMixin, TopologySummaryMixin, nnUNetTrainer)


def _mixin(path: str) -> type:
    found = pydoc.locate(path)
    if not isinstance(found, type):
        raise ImportError(f"registry names the trainer mixin {path!r}, which cannot be imported")
    return found


def _parent_name(spec: registry.TrainerSpec) -> str | None:
    """The generated class ``spec``'s class derives from: the long-schedule twin of a ``_short`` trainer, the plain
    trainer of a variant; None for a trainer made from mixins (and for nnUNetTrainer_short, whose twin is
    nnU-Net's own)."""
    if spec.short:
        name = registry.trainer_name(spec.architecture.name, spec.loss.name, spec.variant)
        return name if name != registry.trainer_name() else None
    if spec.variant:
        return registry.trainer_name(spec.architecture.name, spec.loss.name)
    return None


def _bases(spec: registry.TrainerSpec) -> tuple[type, ...]:
    parent = _parent_name(spec)
    if parent is not None:
        bases: tuple[type, ...] = (globals()[parent],)
    else:
        bases = ()
        if spec.loss.name:
            bases += (_mixin(spec.loss.mixin),)
        bases += tuple(_mixin(path) for path in spec.architecture.mixins)
        if spec.architecture.name:
            bases += (RegisteredArchitectureMixin,)
        bases += COMMON_BASES
    return (ShortScheduleMixin,) + bases if spec.short else bases


def declare(spec: registry.TrainerSpec) -> type:
    """Create the trainer class of ``spec`` in this module (its parent, if any, must be declared)."""
    attributes = {"__module__": __name__, "__qualname__": spec.name,
                  "__doc__": f"nnU-Net trainer: {spec.description}. Writes validation/summary_topology.json "
                             "(Dice, clDice, Betti errors, surface distances, components) after validation.",
                  **spec.attributes}
    if spec.architecture.name:
        attributes["architecture"] = spec.architecture.name
    cls = type(spec.name, _bases(spec), attributes)
    globals()[spec.name] = cls
    return cls


#: the spec each declared class was made from
_DECLARED: dict[str, registry.TrainerSpec] = {}


def declare_all() -> None:
    """Make the declared classes follow the registry: declare new or changed trainers, remove unregistered ones."""
    specs = registry.trainer_specs()
    wanted = [spec.name for spec in specs]
    for stale in set(_DECLARED) - set(wanted):
        globals().pop(stale, None)
        del _DECLARED[stale]
    redeclared: set[str] = set()
    for spec in specs:  # parents come before the trainers derived from them
        if _DECLARED.get(spec.name) != spec or _parent_name(spec) in redeclared:
            declare(spec)
            _DECLARED[spec.name] = spec
            redeclared.add(spec.name)
    __all__[:] = wanted


declare_all()
