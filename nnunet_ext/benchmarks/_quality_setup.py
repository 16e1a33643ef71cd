"""The quality benchmark's configuration: budgets, trainers from the registry, datasets and environments."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_ext.trainers.registry import ARCHITECTURES, trainer_name, trainer_specs

SHORT = "_short"
#: generated datasets: id = a kind's variant's id base (per dim) + seed (in the benchmark's own nnUNet_raw)
MAX_GENERATED_SEED = 99
#: architectures trained on their own planner's plans (at the kind's VRAM target), not on nnU-Net's default plans
OWN_PLANS_ARCHITECTURES = ("GLNet",)
DEFAULT_PLANS = "nnUNetPlans"


@dataclass(frozen=True)
class Schedule:
    """Training length; None everywhere = the full trainers' own (nnU-Net: 1000 epochs x 250 iterations)."""
    epochs: int | None = None
    iterations: int | None = None
    val_iterations: int | None = None

    @property
    def short(self) -> bool:
        """Whether the ``*_short`` trainers (NNUNET_EXT_EPOCHS/_ITERATIONS/_VAL_ITERATIONS) are used."""
        return self.epochs is not None

    def describe(self) -> str:
        if not self.short:
            return "nnU-Net's full schedule (1000 epochs x 250 iterations, 50 validation iterations)"
        def count(n: int, what: str) -> str:
            return f"{n} {what}{'' if n == 1 else 's'}"
        return (f"{count(self.epochs, 'epoch')} x {count(self.iterations, 'iteration')} "
                f"({count(self.val_iterations, 'validation iteration')} per epoch)")


@dataclass(frozen=True)
class Budget:
    """Everything a budget fixes; the command line may override parts (dataclasses.replace)."""
    name: str
    size: dict[int, tuple[int, ...]]           # dim -> shape of a generated case
    cases: dict[int, tuple[int, int]]          # dim -> (training cases, held-out cases)
    schedule: dict[int, Schedule]              # dim -> schedule
    feature_scale: float                       # 1.0 = nnU-Net's plans as planned
    seeds: tuple[int, ...]
    jobs: int                                  # trainings run at the same time
    device: str
    processes: int                             # nnU-Net worker processes (planning, prediction, evaluation)
    data_note: str = ""                        # what the generated data reduces (not said for --dataset)
    reductions: tuple[str, ...] = field(default=())
    gpu_memory_target: dict[int, float] = field(default_factory=dict)  # dim -> planning target (GB); absent = 8


BUDGETS: dict[str, Budget] = {
    "cpu": Budget(
        name="cpu", size={2: (128, 128), 3: (32, 32, 32)}, cases={2: (16, 6), 3: (10, 4)},
        schedule={2: Schedule(10, 12, 2), 3: Schedule(8, 8, 1)}, feature_scale=0.5, seeds=(0, 1, 2), jobs=2,
        device="cpu", processes=1,
        data_note="data: small generated cases (sizes and counts above), so nnU-Net plans small patches",
        reductions=(
            "two trainings at a time (nnU-Net gives each torch all cores; OMP_WAIT_POLICY=PASSIVE keeps the two "
            "from spinning against each other), data augmentation in the training process (nnUNet_n_proc_DA=0), "
            "torch.compile off, prediction without worker processes (-npp 0 -nps 0)",
        )),
    "gpu": Budget(
        name="gpu", size={2: (256, 256), 3: (96, 96, 96)}, cases={2: (40, 10), 3: (30, 10)},
        schedule={2: Schedule(), 3: Schedule()}, feature_scale=1.0, seeds=(0, 1, 2), jobs=1, device="cuda",
        processes=min(8, os.cpu_count() or 1)),
}


def default_trainers() -> list[str]:
    """nnUNetTrainer, Skeleton Recall, clDice, and every registered network with nnU-Net's loss."""
    return ([trainer_name(), trainer_name(loss="SkelRecall"), trainer_name(loss="ClDice")]
            + [trainer_name(architecture) for architecture in ARCHITECTURES if architecture])


def known_trainers() -> list[str]:
    """Every full-schedule trainer name the registry defines (variants included), nnUNetTrainer first."""
    return [trainer_name()] + [spec.name for spec in trainer_specs() if not spec.short]


def resolve_trainers(requested: list[str] | None) -> list[str]:
    """Registry names (``_short`` stripped, duplicates dropped); ValueError listing the known ones."""
    known = known_trainers()
    names: list[str] = []
    for name in requested or default_trainers():
        base = name.removesuffix(SHORT)
        if base not in known:
            raise ValueError(f"unknown trainer {name!r}; available: {', '.join(known)}")
        if base not in names:
            names.append(base)
    return names


def for_kind(budget: Budget, kind) -> Budget:
    """``budget`` with the data and schedule of ``kind`` (a :class:`~._quality_kinds.Kind`) under that budget."""
    import dataclasses
    settings = kind.budgets[budget.name]
    return dataclasses.replace(budget, size=dict(settings.size), cases=dict(settings.cases),
                               schedule=dict(settings.schedule), gpu_memory_target=dict(settings.gpu_memory_target))


def own_plans_architecture(base: str):
    """The registry architecture whose own planner's plans ``base`` trains on (GLNet), else None."""
    for spec in trainer_specs():
        if spec.name == base:
            return spec.architecture if spec.architecture.name in OWN_PLANS_ARCHITECTURES else None
    return None


def plans_identifier(base: str) -> str:
    """The plans ``base`` trains on at full width: its architecture's planner's (``nnUNetPlans_GLNet``) for
    :data:`OWN_PLANS_ARCHITECTURES`, else nnU-Net's default plans."""
    architecture = own_plans_architecture(base)
    return architecture.plans_name if architecture is not None else DEFAULT_PLANS


def reduced_plans_identifier(identifier: str) -> str:
    """``nnUNetPlans`` -> ``nnUNetPlans_cpu``; ``nnUNetPlans_GLNet`` -> ``nnUNetPlans_GLNet_cpu``."""
    return identifier + "_cpu"


def trainer_class(base: str, schedule: Schedule) -> str:
    """The class that trains: ``base`` for the full schedule, ``base_short`` for a short one."""
    return base + SHORT if schedule.short else base


def parse_seeds(values: list[int]) -> tuple[int, ...]:
    """One number N = seeds 0..N-1; several = those seeds. ValueError if invalid."""
    if len(values) == 1:
        if values[0] < 1:
            raise ValueError(f"--seeds N needs N >= 1 (the number of seeds), got {values[0]}")
        return tuple(range(values[0]))
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"--seeds: give one count or distinct non-negative seeds, got {values}")
    return tuple(values)


@dataclass(frozen=True)
class Dataset:
    """One dataset a comparison runs on (a generated seed, or a user's dataset), with its nnU-Net folders."""
    label: str                  # table heading, e.g. "2D tubes"
    dataset_id: int
    seed: int
    dim: int
    configuration: str
    raw_root: Path
    preprocessed_root: Path
    results_root: Path          # seed-specific, so repeated trainings of one dataset do not collide
    generated: bool
    kind: str = "tubes"         # a key of _quality_kinds.KINDS
    variant: str = ""           # the kind's variant key (trees: "thin", "thick")
    stem: str = "Tubes"         # generated name: Dataset{id}_Quality{stem}{dim}D_seed{seed}

    @property
    def raw(self) -> Path:
        return self.raw_root / self.name

    @property
    def name(self) -> str:
        """nnU-Net's DatasetXXX_Name (found in the raw root)."""
        found = sorted(self.raw_root.glob(f"Dataset{self.dataset_id:03d}_*"))
        if self.generated and not found:
            return f"Dataset{self.dataset_id:03d}_Quality{self.stem}{self.dim}D_seed{self.seed}"
        if not found:
            raise FileNotFoundError(f"no Dataset{self.dataset_id:03d}_* in {self.raw_root}")
        return found[0].name

    def env(self) -> dict[str, str]:
        return {"nnUNet_raw": str(self.raw_root), "nnUNet_preprocessed": str(self.preprocessed_root),
                "nnUNet_results": str(self.results_root)}


def generated_datasets(workdir: Path, dims: list[int], seeds: tuple[int, ...], kind=None,
                       variants: list[str] | None = None) -> list[Dataset]:
    """One generated dataset per (variant, dim, seed) of ``kind`` (default: tubes), all inside ``workdir``;
    ``variants`` (keys) chooses the kind's variants (default: those marked ``default``)."""
    if kind is None:
        from nnunet_ext.benchmarks._quality_kinds import TUBES as kind
    bad = [s for s in seeds if s > MAX_GENERATED_SEED]
    if bad:
        raise ValueError(f"generated datasets take seeds 0..{MAX_GENERATED_SEED}, got {bad}")
    chosen = [kind.variant(key) for key in variants] if variants else [v for v in kind.variants if v.default]
    return [Dataset(f"{dim}D {variant.label}", variant.id_base[dim] + seed, seed, dim,
                    "2d" if dim == 2 else "3d_fullres", workdir / "nnUNet_raw", workdir / "nnUNet_preprocessed",
                    workdir / "nnUNet_results" / f"seed_{seed}", True, kind.name, variant.key, variant.stem)
            for variant in chosen for dim in dims for seed in seeds]


def user_raw_root() -> Path:
    """$nnUNet_raw (where ``--dataset`` is read from); ValueError saying how to set it."""
    value = os.environ.get("nnUNet_raw", "").strip()
    if not value:
        raise ValueError("--dataset reads your nnU-Net raw data, but nnUNet_raw is not set: export "
                         "nnUNet_raw=/path/to/nnUNet_raw (the folder holding DatasetXXX_Name). Plans and results go "
                         "to the benchmark's --workdir, not to your nnUNet_preprocessed/nnUNet_results.")
    if not Path(value).is_dir():
        raise ValueError(f"nnUNet_raw={value} is not a folder")
    return Path(value)


def user_datasets(workdir: Path, dataset_ids: list[int], seeds: tuple[int, ...],
                  configuration: str | None, kind: str = "tubes") -> list[Dataset]:
    """The user's datasets (read from $nnUNet_raw), planned and trained under ``workdir/user``; one entry per
    seed (seeds are repeated trainings). ``configuration`` None = 3d_fullres if planned, else 2d."""
    raw_root = user_raw_root()
    datasets = []
    for dataset_id in dataset_ids:
        found = sorted(raw_root.glob(f"Dataset{dataset_id:03d}_*"))
        if not found:
            raise ValueError(f"dataset {dataset_id} not found: no {raw_root}/Dataset{dataset_id:03d}_* folder")
        for seed in seeds:
            datasets.append(Dataset(found[0].name, dataset_id, seed, 0, configuration or "", raw_root,
                                    workdir / "user" / "nnUNet_preprocessed",
                                    workdir / "user" / "nnUNet_results" / f"seed_{seed}", False, kind))
    return datasets
