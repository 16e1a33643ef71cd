"""All nnunet-ext trainers, generated from :mod:`nnunet_ext.registry` (see its naming rule).

Each class is created here, in this module, so it pickles to ``nnunet_ext.trainers.<name>``.
"""
from nnunet_ext._compat import require_nnunetv2

require_nnunetv2()

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402

from nnunet_ext.registry import ARCHITECTURES, LOSSES, trainer_name  # noqa: E402
from nnunet_ext.mixins import ShortScheduleMixin, TopologySummaryMixin  # noqa: E402

__all__: list[str] = []


def _declare(name: str, bases: tuple, attributes: dict, doc: str) -> type:
    cls = type(name, bases, {"__module__": __name__, "__qualname__": name, "__doc__": doc, **attributes})
    globals()[name] = cls
    __all__.append(name)
    return cls


def _declare_all() -> None:
    for arch in ARCHITECTURES.values():
        for loss in LOSSES.values():
            name = trainer_name(arch.name, loss.name)
            mixins = tuple(c.mixin for c in (loss, arch) if c.mixin is not None)
            doc = f"nnU-Net trainer: network = {arch.summary}; loss = {loss.summary}."
            doc += " Writes validation/summary_topology.json (Dice, clDice, Betti errors) after validation."
            bases = mixins + (TopologySummaryMixin, nnUNetTrainer)
            if mixins:
                base = _declare(name, bases, {}, doc)
                short_bases = (ShortScheduleMixin, base)
            else:  # plain nnUNetTrainer is nnU-Net's own: only its short variant is declared here
                short_bases = (ShortScheduleMixin,) + bases
            _declare(trainer_name(arch.name, loss.name, short=True), short_bases, {},
                     doc + " Short schedule (NNUNET_EXT_EPOCHS/_ITERATIONS).")
            for suffix, attributes in loss.variants.items():
                variant = _declare(trainer_name(arch.name, loss.name, suffix), (base,), dict(attributes),
                                   f"{doc} Variant {suffix}: {dict(attributes)}.")
                _declare(trainer_name(arch.name, loss.name, suffix, short=True), (ShortScheduleMixin, variant), {},
                         f"{variant.__doc__} Short schedule.")


_declare_all()
