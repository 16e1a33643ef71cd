"""The ``nnunet-ext`` command line."""
from __future__ import annotations

import argparse
import sys


def _trainer_path(args: argparse.Namespace) -> int:
    from nnunet_ext.trainers.discovery import trainer_folder
    print(trainer_folder())
    return 0


def _trainers(args: argparse.Namespace) -> int:
    from nnunet_ext.trainers.registry import trainer_specs  # the registry only: no torch, no nnU-Net
    for spec in trainer_specs():
        print(f"{spec.name}\n    {spec.description}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from nnunet_ext.benchmarks import run_benchmark
    return run_benchmark("list" if args.list else args.name, args.rest)


def _synthetic(args: argparse.Namespace) -> int:
    from nnunet_ext.testing.synthetic import write_tubular_dataset
    try:
        folder = write_tubular_dataset(args.dataset_id, dim=args.dim, n_train=args.n_train, n_test=args.n_test,
                                       shape=args.shape, n_classes=args.n_classes, seed=args.seed,
                                       ignore_label=args.ignore_label, regions=args.regions,
                                       overwrite=args.overwrite)
    except ValueError as error:
        print(f"nnunet-ext synthetic: {error}", file=sys.stderr)
        return 2
    print(folder)
    _note_stale_preprocessing(args.dataset_id)
    return 0


def _note_stale_preprocessing(dataset_id: int) -> None:
    """After writing a dataset, point at an older preprocessed copy of the same id (nnU-Net would train on it)."""
    import os
    root = os.environ.get("nnUNet_preprocessed")
    if not root or not os.path.isdir(root):
        return
    stale = sorted(n for n in os.listdir(root) if n.startswith(f"Dataset{dataset_id:03d}_"))
    if stale:
        print(f"nnunet-ext synthetic: note: {os.path.join(root, stale[0])} holds an earlier preprocessing of this id; "
              f"run nnUNetv2_plan_and_preprocess -d {dataset_id} again before training", file=sys.stderr)


def _plan(args: argparse.Namespace) -> int:
    from nnunet_ext.cli.plan import run_plan
    return run_plan(args)


def _demo(args: argparse.Namespace) -> int:
    from nnunet_ext.cli.demo import run_demo
    return run_demo(args.workdir, epochs=args.epochs, iterations=args.iterations)


def build_parser() -> argparse.ArgumentParser:
    from nnunet_ext.cli.evaluate import add_evaluation_commands
    parser = argparse.ArgumentParser(prog="nnunet-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("trainer-path", help="print the folder to put in nnUNet_extTrainer")
    p.set_defaults(func=_trainer_path)

    p = sub.add_parser("trainers", help="list every trainer name with what it does")
    p.set_defaults(func=_trainers)

    p = sub.add_parser("benchmark", help="run a benchmark from nnunet_ext/benchmarks (see --list)",
                       description="Run a benchmark: nnunet-ext benchmark NAME [its arguments]. "
                                   "nnunet-ext benchmark --list (or: list) shows every NAME with what it measures.")
    p.add_argument("--list", action="store_true", help="list the benchmarks with what each measures, then exit")
    p.add_argument("name", nargs="?", default=None, help="benchmark name, or 'list' (same as --list)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")
    p.set_defaults(func=_benchmark)

    p = sub.add_parser("synthetic", help="write a synthetic tubular dataset into $nnUNet_raw")
    p.add_argument("dataset_id", type=int)
    p.add_argument("--dim", type=int, choices=(2, 3), default=2)
    p.add_argument("--n-train", type=int, default=10)
    p.add_argument("--n-test", type=int, default=2)
    p.add_argument("--shape", type=int, nargs="+", default=None)
    p.add_argument("--n-classes", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ignore-label", action="store_true", help="paint an ignore label over random boxes")
    p.add_argument("--regions", action="store_true", help="region-based labels (needs --n-classes >= 2)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset of this id (its folder Dataset<ID>_* in $nnUNet_raw is removed "
                        "first; without --overwrite an existing id is refused)")
    p.set_defaults(func=_synthetic)

    from nnunet_ext.trainers.registry import LOSSES, planner_keys
    keys = planner_keys()
    p = sub.add_parser("plan", help="nnU-Net's planner for an nnunet-ext network: writes nnUNetPlans_<Network>.json")
    p.add_argument("-d", dest="dataset_ids", type=int, nargs="+", required=True, help="dataset id(s)")
    p.add_argument("--arch", default=keys[0], choices=keys, help=f"network to plan for (default {keys[0]})")
    p.add_argument("--loss", default="", choices=[name for name in LOSSES if name], metavar="LOSS",
                   help="also count what this loss keeps for backward on every output (e.g. ClDice); the plans "
                        "name gets the loss appended")
    p.add_argument("-gpu_memory_target", type=float, default=None,
                   help="VRAM target in GB (default: nnU-Net's default planner's, 8)")
    p.add_argument("-overwrite_plans_name", dest="plans_name", default=None,
                   help="plans identifier (default nnUNetPlans_<Network>)")
    p.add_argument("--preprocess", action="store_true", help="also run nnU-Net's preprocessing for -c")
    p.add_argument("-c", dest="configurations", nargs="+", default=["2d", "3d_fullres", "3d_lowres"],
                   help="configurations to preprocess (default 2d 3d_fullres 3d_lowres)")
    p.add_argument("-np", dest="num_processes", type=int, default=4, help="preprocessing processes (4)")
    p.add_argument("-npfp", dest="fingerprint_processes", type=int, default=4,
                   help="fingerprint processes, if the fingerprint is missing (4)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("demo", help="generate data, plan, train Skeleton Recall on the CPU, predict, evaluate",
                       description="Generate a small 2D tubular dataset, plan and preprocess it with nnU-Net, train "
                                   "nnUNetTrainerSkelRecall_short on the CPU (progress shown, full log in "
                                   "WORKDIR/demo.log), predict the held-out cases, print their Dice, clDice and "
                                   "Betti errors and write WORKDIR/demo_overlay.png.")
    p.add_argument("--workdir", default="demo_output",
                   help="folder for everything the demo writes (default demo_output). It must be new or empty, or "
                        "an earlier demo's folder (marked by its .nnunet_ext_demo file): then only the demo's own "
                        "outputs in it are replaced and anything else is kept. Any other non-empty folder is "
                        "refused; nothing is deleted")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 12)")
    p.add_argument("--iterations", type=int, default=None, help="training iterations per epoch (default 25)")
    p.set_defaults(func=_demo)

    add_evaluation_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nnunet_ext._compat import require_nnunetv2
    from nnunet_ext.errors import UserInputError
    args = build_parser().parse_args(argv)
    try:
        require_nnunetv2()
    except RuntimeError as error:
        print(f"nnunet-ext: {error}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except UserInputError as error:  # bad input or environment: one line naming the fix, no traceback
        print(f"nnunet-ext {args.command}: {error.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
