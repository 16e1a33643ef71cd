"""``nnunet-ext evaluate``: topology-aware metrics of a prediction folder against references."""
from __future__ import annotations

import argparse
import sys


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


def add_evaluation_commands(sub) -> None:
    """Adds ``evaluate`` to the ``nnunet-ext`` subcommands."""
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
