"""Benchmarks, run as ``nnunet-ext benchmark NAME [args]``.

Every benchmark reports ratios against a baseline measured in the same run (machines are noisy).
Register a new one in BENCHMARKS: name -> module under nnunet_ext.benchmarks with ``main(argv) -> int``.
"""
from __future__ import annotations

import importlib

BENCHMARKS: dict[str, str] = {
    "skeleton_recall": "Tube time vs the straightforward implementation and vs nnU-Net's default transforms "
                       "(2D 512², 3D 128³); training-step time of nnUNetTrainerSkelRecall vs nnUNetTrainer.",
    "losses": "Loss forward+backward time and peak memory of Dice+CE, +Skeleton Recall and +clDice on 3D patches "
              "with 1, 3 and 13 classes; memory-efficient vs straightforward soft skeleton.",
    "border_weight": "U-Net border weight map: fast vs per-object exact (5/27/64 objects, 128³); overhead vs "
                     "nnU-Net's transforms; touching-pair separation after a short CPU training vs nnUNetTrainer.",
    "quality": "Dice, clDice and Betti errors of nnUNetTrainer vs SkelRecall, ClDice and every registered network "
               "through the real nnU-Net CLI on generated 2D/3D tubes (or --dataset ID), mean ± std over seeds.",
    "unetpp": "UNet++ vs PlainConvUNet on the same plans (2D, 3D): parameters, training-step time and peak "
              "memory; pruned L1..Ln vs ensemble inference (time, memory, parameters).",
    "train_step": "Every registered trainer's training step on CUDA as nnUNetv2_train runs it (torch.compile, mixed "
                  "precision): step time and peak CUDA memory vs nnUNetTrainer (--device cpu --quick: smoke run).",
    "evaluation": "Evaluation time per 3D case (256³, 3 labels) of each metric family of nnunet-ext evaluate (Dice, "
                  "clDice, Betti, surface, components, instance), TopCoW clDice, reading; KD-tree vs EDT surfaces.",
    "glnet": "GLNet vs PlainConvUNet at the same field of view (2D 1024², 2048² [, 4096²], one 3D case): peak "
             "inference memory and time, global-to-local vs bidirectional; training memory with/without "
             "checkpoint_tiles.",
    "dawmr": "Training step of nnUNetTrainer, DAWMR, LED and DAWMR+LED on the same plans (3D 64³, 2D 256², batch 2): "
             "time, peak memory, LED's overhead; parameters and DAWMR's field of view.",
}


def list_benchmarks() -> None:
    """Print every benchmark name with what it measures (``nnunet-ext benchmark --list``)."""
    for key, summary in BENCHMARKS.items():
        print(f"{key}\n    {summary}")


def run_benchmark(name: str | None, argv: list[str]) -> int:
    """Run benchmark ``name`` with ``argv``; ``"list"``/``"--list"`` lists them. Unknown or missing names exit with
    the available ones."""
    if name in ("list", "--list"):
        list_benchmarks()
        return 0
    if not name:
        raise SystemExit(f"name a benchmark: nnunet-ext benchmark NAME; available: {', '.join(BENCHMARKS)} "
                         "(nnunet-ext benchmark --list says what each measures)")
    if name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)} "
                         "(nnunet-ext benchmark list)")
    module = importlib.import_module(f"nnunet_ext.benchmarks.{name}")
    return module.main(argv)
