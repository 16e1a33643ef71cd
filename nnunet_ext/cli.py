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


def _plan(args: argparse.Namespace) -> int:
    from nnunet_ext.planning import plan_dataset
    try:
        for dataset_id in args.dataset_ids:
            identifier = plan_dataset(dataset_id, args.arch, args.gpu_memory_target, args.plans_name,
                                      args.configurations if args.preprocess else (), args.num_processes,
                                      args.fingerprint_processes)
            print(f"Dataset {dataset_id}: plans {identifier}.json written. Train with: nnUNetv2_train "
                  f"{dataset_id} CONFIGURATION FOLD -p {identifier} -tr nnUNetTrainerUNetPlusPlus")
            if not args.preprocess:
                print(f"Preprocess first: nnUNetv2_preprocess -d {dataset_id} -plans_name {identifier} -c "
                      f"{' '.join(args.configurations)}")
    except (KeyError, RuntimeError, FileNotFoundError) as error:
        print(f"nnunet-ext plan: {error}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nnunet_ext.demo import run_demo
    return run_demo(args.workdir, epochs=args.epochs, iterations=args.iterations)


def _label_or_region(text: str) -> int | tuple[int, ...]:
    """'1' -> 1; '1,2' -> the region (1, 2)."""
    try:
        parts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a label or region: {text!r} (use e.g. 1 or 1,2)") from None
    if not parts:
        raise argparse.ArgumentTypeError(f"not a label or region: {text!r} (use e.g. 1 or 1,2)")
    return parts[0] if len(parts) == 1 and "," not in text else tuple(parts)


def _evaluate(args: argparse.Namespace) -> int:
    import os
    from nnunetv2.configuration import default_num_processes
    from nnunet_ext.evaluation.folders import evaluate_folders
    output_file = args.output_file or os.path.join(args.pred_folder, "summary_topology.json")
    try:
        result = evaluate_folders(args.ref_folder, args.pred_folder, output_file, labels=args.labels,
                                  num_processes=args.num_processes or default_num_processes,
                                  file_ending=args.file_ending, dataset_json=args.dataset_json,
                                  plot_file=args.plot, ignore_label=args.ignore_label)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"nnunet-ext evaluate: {error}", file=sys.stderr)
        return 1
    print(output_file)
    if args.plot:
        print(args.plot)
    print("foreground mean: " + ", ".join(f"{k} {v:.4f}" for k, v in result["foreground_mean"].items()))
    return 0


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

    p = sub.add_parser("plan", help="nnU-Net's planner for an nnunet-ext network: writes nnUNetPlans_<Network>.json")
    p.add_argument("-d", dest="dataset_ids", type=int, nargs="+", required=True, help="dataset id(s)")
    p.add_argument("--arch", default="unetpp", choices=("unetpp",), help="network to plan for (default unetpp)")
    p.add_argument("-gpu_memory_target", type=float, default=None,
                   help="VRAM target in GB (default: nnU-Net's default planner's, 8)")
    p.add_argument("-overwrite_plans_name", dest="plans_name", default=None,
                   help="plans identifier (default nnUNetPlans_UNetPlusPlus)")
    p.add_argument("--preprocess", action="store_true", help="also run nnU-Net's preprocessing for -c")
    p.add_argument("-c", dest="configurations", nargs="+", default=["2d", "3d_fullres", "3d_lowres"],
                   help="configurations to preprocess (default 2d 3d_fullres 3d_lowres)")
    p.add_argument("-np", dest="num_processes", type=int, default=4, help="preprocessing processes (4)")
    p.add_argument("-npfp", dest="fingerprint_processes", type=int, default=4,
                   help="fingerprint processes, if the fingerprint is missing (4)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("demo", help="generate data, plan, train Skeleton Recall on the CPU, predict, evaluate")
    p.add_argument("--workdir", default="demo_output")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None)
    p.set_defaults(func=_demo)

    p = sub.add_parser("evaluate", help="Dice, clDice and Betti errors of a prediction folder against references")
    p.add_argument("ref_folder", help="folder with reference segmentations")
    p.add_argument("pred_folder", help="folder with predictions (same file names)")
    p.add_argument("-o", dest="output_file", default=None,
                   help="output .json (default: PRED_FOLDER/summary_topology.json)")
    p.add_argument("-l", dest="labels", type=_label_or_region, nargs="+", default=None,
                   help="labels, or regions as comma-separated labels (e.g. 1 2 1,2); default: dataset.json's "
                        "foreground labels/regions, else every label > 0 in the references")
    p.add_argument("-np", dest="num_processes", type=int, default=None,
                   help="worker processes (default: nnU-Net's default_num_processes)")
    p.add_argument("--plot", default=None, help="also write a bar chart of the per-label means to this .png")
    p.add_argument("-djfile", dest="dataset_json", default=None,
                   help="dataset.json: file ending, reader, labels/regions and ignore label")
    p.add_argument("-il", dest="ignore_label", type=int, default=None, help="ignore label (default: dataset.json's)")
    p.add_argument("--file-ending", default=None, help="e.g. .nii.gz (default: dataset.json's, else inferred)")
    p.set_defaults(func=_evaluate)
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
