"""``nnunet-ext evaluate`` (metrics of a prediction folder against references) and ``nnunet-ext compare``
(several evaluations side by side, with paired per-case differences against the first)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

FAMILY_CHOICES = ("dice", "cldice", "betti", "surface", "components", "instance")
DEFAULT_FAMILY_TEXT = "dice cldice betti surface components"


def _label_or_region(text: str) -> int | tuple[int, ...]:
    """'1' -> 1; '1,2' -> the region (1, 2)."""
    try:
        parts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a label or region: {text!r} (use e.g. 1 or 1,2)") from None
    if not parts:
        raise argparse.ArgumentTypeError(f"not a label or region: {text!r} (use e.g. 1 or 1,2)")
    return parts[0] if len(parts) == 1 and "," not in text else tuple(parts)


def _connectivity(text: str) -> str | int:
    value = text.strip().lower()
    if value in ("full", "face"):
        return value
    if value in ("4", "8", "6", "26"):
        return int(value)
    raise argparse.ArgumentTypeError(f"connectivity must be full, face, 4, 8, 6 or 26, got {text!r}")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _evaluate(args: argparse.Namespace) -> int:
    import os
    from nnunetv2.configuration import default_num_processes
    from nnunet_ext.evaluation.folders import evaluate_folders
    from nnunet_ext.evaluation.compare import HEADLINE
    from nnunet_ext.evaluation.plots import cases_plot_path
    output_file = args.output_file or os.path.join(args.pred_folder, "summary_topology.json")
    families = args.families
    if families is not None and "all" in families:
        families = list(FAMILY_CHOICES)
    try:
        result = evaluate_folders(
            args.ref_folder, args.pred_folder, output_file, labels=args.labels,
            num_processes=args.num_processes or default_num_processes, file_ending=args.file_ending,
            dataset_json=args.dataset_json, plot_file=args.plot, ignore_label=args.ignore_label,
            families=families, nsd_tolerance=args.nsd_tolerance, connectivity=args.connectivity,
            convention=args.convention, iou_threshold=args.iou_threshold,
            instance_metrics=args.instance_metrics, instances_folder=args.instances_folder,
            instance_labels=args.instance_labels, chill=args.chill, csv_file=args.csv,
            progress=not args.no_progress)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"nnunet-ext evaluate: {error}", file=sys.stderr)
        return 1
    print(output_file)
    for path in ([args.csv] if args.csv else []) + ([args.plot, cases_plot_path(args.plot)] if args.plot else []):
        print(path)
    means = result["foreground_mean"]
    shown = [m for m in HEADLINE if m in means] or list(means)  # every metric is in the JSON and the CSV
    print("foreground mean: " + ", ".join(f"{m} {means[m]:.4f}" for m in shown))
    return 0


def _compare(args: argparse.Namespace) -> int:
    try:
        return run_compare(args.results, names=args.names, metrics=args.metrics, per_label=args.per_label,
                           markdown_file=args.markdown, png_file=args.png)
    except (FileNotFoundError, ValueError) as error:
        print(f"nnunet-ext compare: {error}", file=sys.stderr)
        return 1


def run_compare(paths: Sequence[str], names: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                per_label: bool = False, markdown_file: str | None = None, png_file: str | None = None) -> int:
    """The ``nnunet-ext compare`` command: tables on stdout, warnings on stderr, optional markdown and PNG."""
    from nnunet_ext.benchmarks._report import table
    from nnunet_ext.evaluation.compare import (compare_results, load_results, markdown, plot_comparison,
                                               settings_warnings, tables)
    if len(paths) < 2:
        raise ValueError("compare needs at least two results (summary JSON files or folders holding one)")
    results = load_results(paths, names)
    for line in settings_warnings(results):
        print(f"WARNING: {line}", file=sys.stderr)
    rows = compare_results(results, metrics, per_label)
    for i, r in enumerate(results):
        print(f"[{i + 1}] {r.name}: {r.path} ({len(r.summary['metric_per_case'])} cases)")
    for title, header, body in tables(results, rows):
        table(title, header, body)
    if markdown_file:
        os.makedirs(os.path.dirname(os.path.abspath(markdown_file)), exist_ok=True)
        with open(markdown_file, "w") as handle:
            handle.write(markdown(results, rows))
        print(markdown_file)
    if png_file:
        plot_comparison(results, list(dict.fromkeys(row.metric for row in rows)), png_file)
        print(png_file)
    return 0


def add_evaluation_commands(sub) -> None:
    """Adds ``evaluate`` and ``compare`` to the ``nnunet-ext`` subcommands."""
    p = sub.add_parser(
        "evaluate", help="Dice, clDice, Betti errors, surface distances and component detection of a prediction "
                         "folder against references (nnU-Net-shaped JSON, CSV, plots)",
        description="Evaluates every prediction in PRED_FOLDER against the reference of the same file name in "
                    "REF_FOLDER, per label/region, and writes an nnU-Net-shaped summary JSON (foreground_mean, mean, "
                    "metric_per_case). Voxel spacing for the surface metrics comes from the reference files' "
                    "headers. Truncated or corrupt files are refused by name; labels that neither the references "
                    "nor dataset.json declare are reported on stderr.")
    p.add_argument("ref_folder", help="folder with reference segmentations")
    p.add_argument("pred_folder", help="folder with predictions (same file names)")
    p.add_argument("-o", dest="output_file", default=None,
                   help="output .json (default: PRED_FOLDER/summary_topology.json)")
    p.add_argument("-l", dest="labels", type=_label_or_region, nargs="+", default=None,
                   help="labels, or regions as comma-separated labels (e.g. 1 2 1,2); default: dataset.json's "
                        "foreground labels/regions, else every label > 0 in the references")
    p.add_argument("-djfile", dest="dataset_json", default=None,
                   help="dataset.json: file ending, reader, labels/regions and ignore label; also the declared "
                        "labels that predictions and references are checked against")
    p.add_argument("-il", dest="ignore_label", type=int, default=None,
                   help="ignore label: reference voxels with it are left out of every metric (default: "
                        "dataset.json's)")
    p.add_argument("--file-ending", default=None, help="e.g. .nii.gz (default: dataset.json's, else inferred)")
    p.add_argument("-np", dest="num_processes", type=_positive_int, default=None,
                   help="worker processes, one case each at a time (default: nnU-Net's default_num_processes, "
                        "i.e. $nnUNet_def_n_proc or 8)")
    p.add_argument("-chill", dest="chill", action="store_true",
                   help="evaluate only the reference cases that have a prediction (as nnUNetv2_evaluate_folder "
                        "-chill); without it a missing prediction is an error")
    p.add_argument("--families", nargs="+", default=None, choices=FAMILY_CHOICES + ("all",), metavar="FAMILY",
                   help=f"metric families to compute: {', '.join(FAMILY_CHOICES)} or all (default: "
                        f"{DEFAULT_FAMILY_TEXT}; --instance-metrics adds instance)")
    p.add_argument("--nsd-tolerance", type=_non_negative, default=1.0, metavar="MM",
                   help="tolerance in mm of the normalised surface Dice (NSD): the fraction of both surfaces "
                        "within this distance of the other (default 1.0)")
    p.add_argument("--connectivity", type=_connectivity, default="full",
                   help="foreground connectivity of Betti numbers, components and instances: full (8 in 2D, 26 "
                        "in 3D; default, TopCoW's) or face (4 / 6); the background gets the complementary one "
                        "(4 / 6, or 8 / 26). Numbers 4, 8, 6, 26 are accepted too")
    p.add_argument("--iou-threshold", type=_non_negative, default=0.5,
                   help="component detection: a reference and a predicted component are matched (one-to-one) "
                        "when their IoU is at least this (default 0.5)")
    p.add_argument("--convention", choices=("default", "topcow"), default="default",
                   help="default: our rules (per-label clDice, NaN when both masks are empty, ...). topcow: "
                        "TopCoW's rules, to compare with its leaderboard: clDice_TopCoW on the merged foreground "
                        "(0 when both are empty), HD95 = 90 mm for a label in one mask only, only labels present "
                        "in either mask scored, foreground mean = mean over cases of per-case class averages")
    p.add_argument("--instance-metrics", action="store_true",
                   help="also compute EM instance metrics: adapted Rand error (ARE, with precision/recall) and "
                        "variation of information (VI split/merge) between connected components")
    p.add_argument("--instances-folder", default=None, metavar="DIR",
                   help="reference instance maps (same file names, 0 = background) to use instead of the "
                        "reference's connected components (implies --instance-metrics)")
    p.add_argument("--instance-labels", type=_label_or_region, nargs="+", default=None, metavar="LABEL",
                   help="labels/regions whose connected components are the instances (default: the evaluated "
                        "ones; 0 for membrane labels: the cells are the regions between membranes; implies "
                        "--instance-metrics)")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="also write the per-case metrics to this CSV, one row per case and label/region")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also write a bar chart of the per-label means to PNG and box plots of the per-case "
                        "values to PNG's name + _cases (e.g. out.png and out_cases.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "compare", help="several evaluations side by side, with paired per-case differences against the first",
        description="Puts the foreground means of several nnU-Net-style summaries side by side (e.g. one per "
                    "trainer) and, for every result after the first, the paired per-case differences against the "
                    "first: mean ± std of (result - first) over the cases both have, and in how many cases it is "
                    "better or worse (by each metric's direction; counts and ties are neither).")
    p.add_argument("results", nargs="+", metavar="RESULT",
                   help="summary JSON files (summary_topology.json, nnU-Net's summary.json, evaluate -o output) or "
                        "folders holding summary_topology.json (an evaluate output folder, a fold's validation "
                        "folder or the fold folder itself)")
    p.add_argument("--names", nargs="+", default=None,
                   help="column names, one per RESULT (default: the shortest distinct ends of their paths)")
    p.add_argument("--metrics", nargs="+", default=None, metavar="METRIC",
                   help="metrics to show, e.g. Dice clDice HD95 (default: the headline metrics any result has: Dice, "
                        "clDice, Betti errors, HD95, ASSD, NSD, component precision/recall/F1/splits/merges, ARE, "
                        "VI split/merge)")
    p.add_argument("--per-label", action="store_true", help="also show every label/region, not only the "
                                                             "foreground mean")
    p.add_argument("--markdown", default=None, metavar="FILE", help="also write the tables as markdown to FILE")
    p.add_argument("--png", default=None, metavar="FILE",
                   help="also write a figure to FILE: per metric, box plots of the per-case values of every "
                        "result, with each case's values joined across results")
    p.set_defaults(func=_compare)
