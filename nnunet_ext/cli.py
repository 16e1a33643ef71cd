"""The ``nnunet-ext`` command line."""
from __future__ import annotations

import argparse
import sys


def _trainer_path(args: argparse.Namespace) -> int:
    from nnunet_ext.discovery import trainer_folder
    print(trainer_folder())
    return 0


def _trainers(args: argparse.Namespace) -> int:
    from nnunet_ext import trainers
    for name in trainers.__all__:
        print(f"{name}\n    {getattr(trainers, name).__doc__}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from nnunet_ext.benchmarks import run_benchmark
    return run_benchmark(args.name, args.rest)


def _synthetic(args: argparse.Namespace) -> int:
    from nnunet_ext.synthetic import write_tubular_dataset
    folder = write_tubular_dataset(args.dataset_id, dim=args.dim, n_train=args.n_train, n_test=args.n_test,
                                   shape=args.shape, n_classes=args.n_classes, seed=args.seed,
                                   ignore_label=args.ignore_label, regions=args.regions)
    print(folder)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nnunet_ext.demo import run_demo
    return run_demo(args.workdir, epochs=args.epochs, iterations=args.iterations)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("trainer-path", help="print the folder to put in nnUNet_extTrainer")
    p.set_defaults(func=_trainer_path)

    p = sub.add_parser("trainers", help="list every trainer name with what it does")
    p.set_defaults(func=_trainers)

    p = sub.add_parser("benchmark", help="run a benchmark from nnunet_ext/benchmarks (see --list)")
    p.add_argument("name", help="benchmark name, or 'list'")
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
    p.set_defaults(func=_synthetic)

    p = sub.add_parser("demo", help="generate data, plan, train Skeleton Recall on the CPU, predict, evaluate")
    p.add_argument("--workdir", default="demo_output")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nnunet_ext._compat import require_nnunetv2
    args = build_parser().parse_args(argv)
    try:
        require_nnunetv2()
    except RuntimeError as error:
        print(f"nnunet-ext: {error}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
