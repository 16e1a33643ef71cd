"""The quality benchmark's dataset kinds: what each generates, trains, evaluates and reports.

``nnunet-ext benchmark quality --kind KIND``:

- ``tubes`` (default): 2D and 3D tubular structures (:mod:`nnunet_ext.testing.synthetic`); nnUNetTrainer,
  Skeleton Recall, clDice and every registered network; Dice, clDice, Betti errors.
- ``context``: 2D images whose structures take their class from a marker in the far corner
  (:mod:`nnunet_ext.testing.context`); planned at a small VRAM target, so nnU-Net's patch (and every sliding
  window) never holds a structure together with the marker, while GLNet's planner, at the same target, gives a
  window of the whole image. nnUNetTrainer vs nnUNetTrainerGLNet; Dice per class, the class-agnostic Dice
  (region of both classes) and the fraction of structures given the right class.
- ``em``: 3D EM-like cells between thin membranes with faint gaps (:mod:`nnunet_ext.testing.em`); nnUNetTrainer,
  DAWMR, LED and DAWMR+LED; adapted Rand error and VI (split, merge) of the cells between predicted membranes
  against the reference instances, and the membrane Dice.
- ``trees``: thin and thick branching 3D vessel trees, two classes, anisotropic spacing
  (:mod:`nnunet_ext.testing.trees`), both variants on the same seeds; nnUNetTrainer, Skeleton Recall (weight 1
  and 0.1) and clDice; Dice, clDice, Betti errors, component errors and where the Betti-0 errors come from
  (:mod:`nnunet_ext.benchmarks._quality_analysis`).

A kind's :class:`DataSettings` per budget say what it generates and how long it trains (the CPU budget's are
sized to run in well under an hour on two shared cores).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from nnunet_ext.benchmarks._quality_setup import BUDGETS, Schedule
from nnunet_ext.trainers.registry import trainer_name


@dataclass(frozen=True)
class DataSettings:
    """What a kind generates and how long it trains, under one budget."""
    dims: tuple[int, ...]                       # what it runs without --dims
    size: dict[int, tuple[int, ...]]            # dim -> shape of a generated case
    cases: dict[int, tuple[int, int]]           # dim -> (training cases, held-out cases)
    schedule: dict[int, Schedule]               # dim -> schedule
    gpu_memory_target: dict[int, float] = field(default_factory=dict)  # dim -> planning target (GB); absent = 8


@dataclass(frozen=True)
class Variant:
    """One generated dataset per seed: ``label`` in table headings (after "2D "/"3D "), ``stem`` in its name
    (Dataset{id}_Quality{stem}{dim}D_seed{seed}), ``id_base[dim] + seed`` its id, ``options`` for the writer."""
    key: str
    label: str
    stem: str
    id_base: dict[int, int]
    options: Mapping[str, Any] = field(default_factory=dict)
    default: bool = True        # run without --variants (False: only when named)


@dataclass(frozen=True)
class Table:
    """A report table: heading (None = the main table, with cost columns) and its metric columns."""
    heading: str | None
    metrics: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class Kind:
    """Everything the benchmark needs to know about one kind of dataset."""
    name: str
    summary: str
    dims: tuple[int, ...]                       # dimensionalities it can generate
    variants: tuple[Variant, ...]
    trainers: Callable[[], list[str]]           # default trainer list (registry names)
    tables: tuple[Table, ...]                   # the first one is the main table (and the plot)
    budgets: dict[str, DataSettings]
    write: Callable[..., str]                   # (dataset_id, dim, n_train, n_test, shape, seed, raw_root, name, **options)
    families: tuple[str, ...] = ()              # `nnunet-ext evaluate --families` (empty = its default)
    labels: tuple[str, ...] = ()                # `nnunet-ext evaluate -l` (empty = dataset.json's)
    instances: bool = False                     # ARE / VI of the cells between membranes (label 0's components)
    analysis: str | None = None                 # mode of `python -m nnunet_ext.benchmarks._quality_analysis`
    notes: tuple[str, ...] = ()                 # extra lines for the report's settings
    metrics_text: str = ""                      # what the columns mean

    def variant(self, key: str) -> Variant:
        for variant in self.variants:
            if variant.key == key:
                return variant
        raise KeyError(f"kind {self.name} has no variant {key!r}; available: "
                       f"{', '.join(v.key for v in self.variants)}")


# ------------------------------------------------------------------------------------------- writers

def _write_tubes(dataset_id: int, dim: int, n_train: int, n_test: int, shape, seed: int, raw_root: str, name: str,
                 **options) -> str:
    from nnunet_ext.testing.synthetic import write_tubular_dataset
    return write_tubular_dataset(dataset_id, dim=dim, n_train=n_train, n_test=n_test, shape=shape, seed=seed,
                                 name=name, raw_root=raw_root, **options)


def _write_context(dataset_id: int, dim: int, n_train: int, n_test: int, shape, seed: int, raw_root: str, name: str,
                   **options) -> str:
    from nnunet_ext.testing.context import write_context_dataset
    return write_context_dataset(dataset_id, dim=dim, n_train=n_train, n_test=n_test, shape=shape, seed=seed,
                                 raw_root=raw_root, name=name, **options)


def _write_em(dataset_id: int, dim: int, n_train: int, n_test: int, shape, seed: int, raw_root: str, name: str,
              **options) -> str:
    from nnunet_ext.testing.em import write_em_dataset
    return write_em_dataset(dataset_id, dim=dim, n_train=n_train, n_test=n_test, shape=shape, seed=seed,
                            raw_root=raw_root, name=name, **options)


def _write_trees(dataset_id: int, dim: int, n_train: int, n_test: int, shape, seed: int, raw_root: str, name: str,
                 **options) -> str:
    from nnunet_ext.testing.trees import write_thick_tree_dataset
    if dim != 3:
        raise ValueError(f"trees are 3D only, got dim={dim}")
    return write_thick_tree_dataset(dataset_id, n_train=n_train, n_test=n_test, shape=shape, seed=seed,
                                    raw_root=raw_root, name=name, **options)


# ------------------------------------------------------------------------------------------- default trainers

def _tube_trainers() -> list[str]:
    from nnunet_ext.benchmarks._quality_setup import default_trainers
    return default_trainers()


def _context_trainers() -> list[str]:
    """nnU-Net, GLNet with global-to-local sharing (the default) and with local-to-global too (the paper's
    bidirectional GLNet), so one run compares both sharing modes on the same data."""
    return [trainer_name(), trainer_name("GLNet"), trainer_name("GLNet", variant="bidirectional")]


def _em_trainers() -> list[str]:
    return [trainer_name(), trainer_name("DAWMR"), trainer_name(loss="LED"), trainer_name("DAWMR", "LED")]


def _tree_trainers() -> list[str]:
    return [trainer_name(), trainer_name(loss="SkelRecall", variant="w1"),
            trainer_name(loss="SkelRecall", variant="w0p1"), trainer_name(loss="ClDice")]


# ------------------------------------------------------------------------------------------- the kinds

_CPU_REDUCTION = "CPU budget"

KINDS: dict[str, Kind] = {}


def _register(kind: Kind) -> Kind:
    KINDS[kind.name] = kind
    return kind


TUBES = _register(Kind(
    name="tubes", summary="2D and 3D tubular structures (cracks, vessels)", dims=(2, 3),
    variants=(Variant("", "tubes", "Tubes", {2: 700, 3: 800}),),
    trainers=_tube_trainers,
    tables=(Table(None, ("Dice", "clDice", "Betti0_error", "Betti1_error", "Betti2_error")),),
    budgets={
        name: DataSettings(dims=(2, 3), size=dict(BUDGETS[name].size), cases=dict(BUDGETS[name].cases),
                           schedule=dict(BUDGETS[name].schedule))   # the budgets' own data: they began with tubes
        for name in BUDGETS
    },
    write=_write_tubes,
    metrics_text="Betti errors are |b_pred - b_ref| per case (lower is better)."))

CONTEXT = _register(Kind(
    name="context", summary="structures whose class is set by a marker far away (long-range context)",
    dims=(2,),   # 3D: GLNet's planner (tile grid 2) covers 64x64x56 of a 96³ case at 0.25 GB, no test of context
    variants=(Variant("", "context", "Context", {2: 200}),),
    trainers=_context_trainers,
    tables=(Table(None, ("Dice", "Dice_1", "Dice_2", "Dice_any", "Class_accuracy")),),
    budgets={
        "cpu": DataSettings(dims=(2,), size={2: (256, 256)}, cases={2: (16, 6)}, schedule={2: Schedule(20, 12, 2)},
                            gpu_memory_target={2: 0.1}),
        "gpu": DataSettings(dims=(2,), size={2: (512, 512)}, cases={2: (40, 10)}, schedule={2: Schedule()},
                            gpu_memory_target={2: 0.25}),
    },
    write=_write_context, families=("dice",), labels=("1", "2", "1,2"), analysis="context",
    notes=("context: every structure lies at least half the image size (the margin, 128 px at 256²) from the "
           "corner marker along some axis, so an axis-aligned window of at most the margin (nnU-Net's 128² patch "
           "and every sliding window of its prediction) never holds a structure together with the marker: nnU-Net "
           "can segment the structures but can only guess their class. Both planners ran at the same VRAM target; "
           "GLNet's window (its plans' patch) is the whole image, its global branch sees the image at 1/4 "
           "resolution (tile grid 4).",),
    metrics_text="Dice: mean of the two classes' Dice (nnU-Net's foreground mean); Dice near_disc / near_ring: "
                 "each class; Dice any class: the region of both classes (segmentation regardless of the class); "
                 "structures right: the fraction of reference structures (connected components) whose predicted "
                 "voxels are mostly of the right class (a model that cannot see the marker gets about half)."))

EM = _register(Kind(
    name="em", summary="EM-like cells between thin membranes with faint gaps (boundary prediction)",
    dims=(2, 3),
    variants=(Variant("", "EM cells", "EMCells", {2: 400, 3: 500}),),
    trainers=_em_trainers,
    tables=(Table(None, ("ARE", "VI", "VI_split", "VI_merge", "Dice")),),
    budgets={
        "cpu": DataSettings(dims=(2,), size={2: (256, 256), 3: (16, 96, 96)}, cases={2: (16, 6), 3: (10, 4)},
                            schedule={2: Schedule(10, 10, 2), 3: Schedule(6, 5, 1)}),
        "gpu": DataSettings(dims=(3,), size={2: (256, 256), 3: (24, 128, 128)}, cases={2: (40, 10), 3: (30, 10)},
                            schedule={2: Schedule(), 3: Schedule()}),
    },
    write=_write_em, families=("dice", "instance"), instances=True,
    notes=("em: the CPU budget runs the 2D variant (256², cells ~20 px across, membranes ~1.6 px, 0.6 faint gaps "
           "per cell): a DAWMR training step on the 3D variant's (16, 96, 96) patch takes ~26 s of one core against "
           "~2.7 s for nnU-Net's U-Net, which the CPU budget cannot afford for 3 seeds; `--dims 3` runs it.",),
    metrics_text="Instances: the cells are the connected components (full connectivity) of the predicted "
                 "non-membrane voxels, scored against the reference cells (instancesTs) on the voxels inside "
                 "reference cells (predicted membrane there counts as singletons). ARE: adapted Rand error; "
                 "VI = VI split (H(prediction | reference): over-segmentation) + VI merge (H(reference | "
                 "prediction): cells merged through membrane gaps), in bits; all lower is better. Dice: the "
                 "membrane label's."))

TREES = _register(Kind(
    name="trees", summary="thin and thick branching 3D vessel trees, two classes, anisotropic spacing (2, 1, 1)",
    dims=(3,),
    variants=(Variant("thin", "thin trees", "ThinTrees", {3: 600}, {"radius": (1.0, 2.0)}),
              Variant("thick", "thick trees", "ThickTrees", {3: 900}, {"radius": (3.0, 4.5)}),
              # control, only with --variants: the thick trees' images and trees with both trees labelled 1
              Variant("thick1", "thick trees, one label", "ThickTreesOneLabel", {3: 300},
                      {"radius": (3.0, 4.5), "one_label": True}, default=False)),
    trainers=_tree_trainers,
    tables=(Table(None, ("Dice", "clDice", "Betti0_error", "Betti1_error", "Comp_FP", "Comp_split",
                         "Comp_merged")),
            Table("Where the Betti-0 errors come from", ("B0_breaks", "B0_false_blobs", "B0_wrong_class",
                                                         "B0_missed", "Class_bleeds", "Fg_merged"),
                  "Per case and class (mean over cases and the two classes, as the Betti-0 error): every predicted "
                  "component of class c (26-connected) is *on-tree* if it overlaps the reference tree of c, "
                  "*wrong-class* if it overlaps only the other class's tree, a *false blob* if it overlaps no "
                  "reference vessel. Breaks = on-tree components beyond one per reference tree (a tree predicted "
                  "in pieces); missed = reference trees no component overlaps. Betti-0 pred - ref = breaks + "
                  "false blobs + wrong-class - missed. Class bleeds: on-tree components of c that also overlap the "
                  "other class's tree; foreground merges: components of the binary prediction (any class) that "
                  "overlap both trees."),
            Table("Wrong class or wrong shape", ("Betti0_error", "Fg_betti0_error", "Class_swapped"),
                  "The same predictions with the two classes merged into one vessel label: the Betti-0 error of "
                  "the vessels whatever their class (per case), next to the per-class one above; vessel voxels of "
                  "the other class: the share of the reference vessel voxels predicted as vessel that carry the "
                  "other tree's class. A tree found in one piece whose class flips along it adds to the per-class "
                  "Betti-0 error only.")),
    budgets={
        "cpu": DataSettings(dims=(3,), size={3: (32, 64, 64)}, cases={3: (10, 4)}, schedule={3: Schedule(8, 5, 1)}),
        "gpu": DataSettings(dims=(3,), size={3: (48, 96, 96)}, cases={3: (30, 10)}, schedule={3: Schedule()}),
    },
    write=_write_trees, families=("dice", "cldice", "betti", "components"), analysis="trees",
    notes=("trees: each seed generates a thin and a thick dataset with the same seed (different trees: the radius "
           "changes which segments fit); spacing (2, 1, 1) mm, two classes (two trees that never touch), "
           "radius in mm: thin 1-2, thick 3-4.5 (1.5-2.25 voxels along axis 0); thick1 (only with --variants): "
           "the thick trees with both trees labelled 1, a control in which no class has to be told apart.",),
    metrics_text="Betti errors are |b_pred - b_ref| per case and class; Comp_FP: predicted components not matched "
                 "one-to-one to a reference component at IoU >= 0.5 (false blobs and pieces); Comp_split: "
                 "reference components overlapped by >= 2 predicted components (breaks); Comp_merged: predicted "
                 "components overlapping >= 2 reference components of the class (per case, mean over cases and "
                 "classes; lower is better)."))


def kind_names() -> list[str]:
    return list(KINDS)
