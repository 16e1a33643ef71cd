"""Evaluate a folder of predictions against a folder of references, like nnU-Net's evaluation.

Files are read with nnU-Net's own readers (any file ending one of them supports: .nii.gz, .nrrd, .mha,
.png, .tif, ...). A prediction is matched to the reference file of the same name. The JSON has the
shape of nnU-Net's ``summary.json`` (written by nnU-Net's ``save_summary_json``: label/region keys as
strings, e.g. ``"1"`` or ``"(1, 2)"``)::

    {"foreground_mean": {metric: value},
     "mean": {label: {metric: value}},
     "metric_per_case": [{"reference_file": ..., "prediction_file": ..., "metrics": {label: {metric: value}}}]}

with metrics Dice, clDice, Betti0_error, Betti1_error and, for 3D images, Betti2_error
(see :mod:`nnunet_ext.evaluation.topology`).

NaN handling (nnU-Net's conventions): Dice and clDice are NaN for a case where prediction and
reference are both empty. ``mean`` is the NaN-ignoring mean over cases (NaN only if every case is NaN);
``foreground_mean`` is the plain mean of the per-label means of all labels except 0, so a label whose
every case is NaN makes it NaN, as in nnU-Net. JSON stores NaN as ``NaN``, as nnU-Net does.
"""
from __future__ import annotations

import multiprocessing
import os
from contextlib import nullcontext
from typing import Hashable, Iterable, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key, save_summary_json
from nnunetv2.imageio.base_reader_writer import BaseReaderWriter
from nnunetv2.imageio.reader_writer_registry import (LIST_OF_IO_CLASSES, determine_reader_writer_from_dataset_json,
                                                     determine_reader_writer_from_file_ending)
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from tqdm import tqdm

from nnunet_ext.evaluation.topology import _hashable, topology_metrics

BETTI_KEYS = ("Betti0_error", "Betti1_error", "Betti2_error")


def _supported_endings() -> list[str]:
    endings = {e.lower() for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}
    return sorted(endings, key=len, reverse=True)  # '.nii.gz' before '.gz'-like shorter matches


def _infer_file_ending(folder: str) -> str:
    endings = _supported_endings()
    found = set()
    for name in os.listdir(folder):
        if os.path.isfile(os.path.join(folder, name)):
            match = next((e for e in endings if name.lower().endswith(e)), None)
            if match is not None:
                found.add(match)
    if not found:
        raise FileNotFoundError(f"no segmentation file in {folder} (supported endings: {', '.join(sorted(endings))}). "
                                "Check the reference folder.")
    if len(found) > 1:
        raise ValueError(f"{folder} holds files with several endings {sorted(found)}: pass the one to evaluate "
                         "(file_ending= / --file-ending) or a dataset.json (-djfile).")
    return found.pop()


def _segmentation_files(folder: str, file_ending: str) -> list[str]:
    return sorted(n for n in os.listdir(folder)
                  if n.lower().endswith(file_ending.lower()) and os.path.isfile(os.path.join(folder, n)))


def _labels_in_file(reader: BaseReaderWriter, path: str) -> np.ndarray:
    return np.unique(reader.read_seg(path)[0])


def _case_metrics(reference_file: str, prediction_file: str, reader: BaseReaderWriter,
                  labels_or_regions: list, ignore_label: int | None) -> dict:
    seg_ref, _ = reader.read_seg(reference_file)
    seg_pred, _ = reader.read_seg(prediction_file)
    if seg_ref.shape != seg_pred.shape:
        raise ValueError(f"{prediction_file} has shape {seg_pred.shape} but its reference {reference_file} has "
                         f"{seg_ref.shape}: predictions must be on the reference grid.")
    return {"reference_file": reference_file, "prediction_file": prediction_file,
            "metrics": topology_metrics(seg_pred, seg_ref, labels_or_regions, ignore_label)}


def _star(args: tuple):
    function, *rest = args
    return function(*rest)


def _map(function, argument_tuples: list[tuple], pool, description: str) -> list:
    """Ordered map over cases with a tqdm bar, in ``pool`` if one is given, else in this process."""
    jobs = [(function, *a) for a in argument_tuples]
    bar = dict(total=len(jobs), desc=description, unit="case")
    if pool is None:
        return [_star(j) for j in tqdm(jobs, **bar)]
    return list(tqdm(pool.imap(_star, jobs), **bar))


def _nanmean(values: Iterable[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarize(metric_per_case: list[dict], labels_or_regions: Sequence[Hashable]) -> dict:
    """``mean`` (NaN-ignoring over cases) and ``foreground_mean`` (plain mean over labels != 0)."""
    metric_names: list[str] = []
    for case in metric_per_case:
        for per_label in case["metrics"].values():
            metric_names += [m for m in per_label if m not in metric_names]
    means = {r: {m: _nanmean(c["metrics"][r][m] for c in metric_per_case if m in c["metrics"][r])
                 for m in metric_names if any(m in c["metrics"][r] for c in metric_per_case)}
             for r in labels_or_regions}
    foreground = [r for r in labels_or_regions if r != 0]
    foreground_mean = {m: float(np.mean([means[r][m] for r in foreground if m in means[r]]))
                       for m in metric_names if any(m in means[r] for r in foreground)}
    return {"metric_per_case": metric_per_case, "mean": means, "foreground_mean": foreground_mean}


def plot_summary(mean: dict, plot_file: str) -> None:
    """Bar chart PNG of the per-label means: Dice and clDice (left), Betti errors (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [label_or_region_to_key(r) for r in mean]
    x = np.arange(len(names))
    figure = Figure(figsize=(max(8.0, 1.2 * len(names) + 6), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    overlap, betti = figure.subplots(1, 2)
    for i, metric in enumerate(("Dice", "clDice")):
        overlap.bar(x + (i - 0.5) * 0.38, [mean[r].get(metric, np.nan) for r in mean], 0.38, label=metric)
    overlap.set(title="Overlap (mean over cases)", xlabel="label / region", ylabel="score", ylim=(0, 1.2))
    betti_keys = [k for k in BETTI_KEYS if any(k in v for v in mean.values())]
    width = 0.8 / max(len(betti_keys), 1)
    for i, metric in enumerate(betti_keys):
        betti.bar(x + (i - (len(betti_keys) - 1) / 2) * width, [mean[r].get(metric, np.nan) for r in mean],
                  width, label=metric)
    betti.set(title="Betti number errors (mean over cases)", xlabel="label / region", ylabel="|b_pred - b_ref|")
    highest = np.nanmax([mean[r].get(k, np.nan) for r in mean for k in betti_keys] + [0.0])
    betti.set_ylim(0, 1.25 * highest + 0.5)
    for axis in (overlap, betti):
        axis.set_xticks(x, names)
        axis.legend(loc="upper center", ncol=3, fontsize="small")
    directory = os.path.dirname(os.path.abspath(plot_file))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(plot_file, dpi=120)


def evaluate_folders(ref_folder: str, pred_folder: str, output_file: str | None = None,
                     labels: Sequence[int | Sequence[int]] | None = None,
                     num_processes: int = default_num_processes, file_ending: str | None = None,
                     dataset_json: str | dict | None = None, plot_file: str | None = None,
                     ignore_label: int | None = None, case_names: Sequence[str] | None = None) -> dict:
    """Dice, clDice and Betti errors of every prediction in ``pred_folder`` against ``ref_folder``.

    ``labels``: labels and/or regions (sequences of labels) to evaluate; default: the foreground
    labels/regions of ``dataset_json`` (path or dict) if given, else every label > 0 found in the
    reference files. ``ignore_label`` defaults to dataset.json's ``ignore``. ``file_ending`` defaults to
    dataset.json's, else the single supported ending found in ``ref_folder``. Every reference file needs a
    prediction of the same name (FileNotFoundError otherwise); extra predictions are ignored.
    ``case_names``: evaluate only these file names (e.g. one fold's validation cases) instead of every
    reference file.
    Returns the summary (label/region keys as ints/tuples, like nnU-Net's ``compute_metrics_on_folder``);
    ``output_file`` (.json) and ``plot_file`` (.png) are written when given.
    """
    ref_folder, pred_folder = str(ref_folder), str(pred_folder)
    output_file = None if output_file is None else str(output_file)
    for folder, what in ((ref_folder, "reference"), (pred_folder, "prediction")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{what} folder {folder} does not exist")
    if output_file is not None and not output_file.endswith(".json"):
        raise ValueError(f"output_file must end with .json, got {output_file}")
    if isinstance(dataset_json, (str, os.PathLike)):
        dataset_json = load_json(str(dataset_json))
    label_manager = None
    if dataset_json is not None:
        label_manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
        file_ending = file_ending or dataset_json["file_ending"]
        if ignore_label is None:
            ignore_label = label_manager.ignore_label
    file_ending = file_ending or _infer_file_ending(ref_folder)

    names = _segmentation_files(ref_folder, file_ending)
    if case_names is not None:
        unknown = sorted(set(case_names) - set(names))
        if unknown:
            raise FileNotFoundError(f"case_names not found in {ref_folder}: {', '.join(unknown[:5])}")
        names = sorted(case_names)
    if not names:
        raise FileNotFoundError(f"no reference files ending with {file_ending} in {ref_folder}")
    missing = [n for n in names if not os.path.isfile(os.path.join(pred_folder, n))]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} of {len(names)} reference files have no prediction of the same "
                                f"name in {pred_folder}: {shown}. Predict every case (or evaluate a reference "
                                "folder holding only the predicted cases).")
    ref_files = [os.path.join(ref_folder, n) for n in names]
    pred_files = [os.path.join(pred_folder, n) for n in names]

    if dataset_json is not None:
        reader = determine_reader_writer_from_dataset_json(dataset_json, ref_files[0], verbose=False)()
    else:
        reader = determine_reader_writer_from_file_ending(file_ending, ref_files[0], verbose=False)()

    if labels is None and label_manager is not None:
        labels = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    n_workers = min(num_processes, len(names))
    # one spawn pool (as nnU-Net) for both passes: starting workers costs seconds
    with (multiprocessing.get_context("spawn").Pool(n_workers) if n_workers > 1 else nullcontext()) as pool:
        if labels is None:
            found = _map(_labels_in_file, [(reader, f) for f in ref_files], pool, "finding labels")
            labels = [int(v) for v in np.unique(np.concatenate(found)) if v != 0 and v != ignore_label]
            if not labels:
                raise ValueError(f"the reference files in {ref_folder} hold no foreground label: pass labels (-l)")
        labels = [_hashable(r) for r in labels]
        cases = _map(_case_metrics, [(r, p, reader, labels, ignore_label) for r, p in zip(ref_files, pred_files)],
                     pool, "evaluating")
    result = summarize(cases, labels)
    for case in result["metric_per_case"]:
        recursive_fix_for_json_export(case)
    recursive_fix_for_json_export(result["mean"])
    recursive_fix_for_json_export(result["foreground_mean"])
    if output_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
        save_summary_json(result, output_file)
    if plot_file is not None:
        plot_summary(result["mean"], plot_file)
    return result
