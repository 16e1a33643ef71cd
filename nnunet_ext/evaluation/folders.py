"""Evaluate a folder of predictions against a folder of references, like nnU-Net's evaluation.

Files are read with nnU-Net's own readers (any file ending one of them supports: .nii.gz, .nrrd, .mha,
.png, .tif, ...); truncated or corrupt files are refused by name (:mod:`nnunet_ext.evaluation.reading`). A
prediction is matched to the reference file of the same name; the voxel spacing (mm) is the reference's
``properties['spacing']``. The JSON has the shape of nnU-Net's ``summary.json`` (label/region keys as strings,
e.g. ``"1"`` or ``"(1, 2)"``)::

    {"foreground_mean": {metric: value},
     "mean": {label: {metric: value}},
     "metric_per_case": [{"reference_file": ..., "prediction_file": ..., "metrics": {label: {metric: value}}}],
     "settings": {"families": [...], "convention": ..., "nsd_tolerance_mm": ..., ...}}

Metric families: :mod:`nnunet_ext.evaluation.case` (default: Dice, clDice, Betti errors, surface distances and
component detection; instance metrics on request). Means and NaN handling: :mod:`nnunet_ext.evaluation.summary`.

Warnings (one line each, through ``warn``; default: stderr): a prediction value that neither the references,
nor dataset.json, nor the evaluated labels know (its voxels count as background for every label), a reference
value dataset.json does not declare, predictions whose spacing differs from their reference's.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from collections import defaultdict
from contextlib import nullcontext
from typing import Callable, Hashable, Sequence

from nnunetv2.configuration import default_num_processes

from nnunet_ext.evaluation.case import DEFAULT_FAMILIES, EvaluationSettings, as_key, case_metrics
from nnunet_ext.evaluation.plots import cases_plot_path, plot_cases, plot_summary
from nnunet_ext.evaluation.reading import UnreadableFile, label_values, read_segmentation
from nnunet_ext.evaluation.summary import save_summary, summarize, write_csv

__all__ = ["evaluate_folders", "dataset_labels", "UnreadableFile"]


def _default_warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _supported_endings() -> list[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES
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


def dataset_labels(dataset_json: dict) -> tuple[list[Hashable], int | None]:
    """(foreground labels or regions, ignore label) of a dataset.json, as nnU-Net's LabelManager gives them.

    Regions when any entry of ``"labels"`` is a list of several labels (then every entry but background and
    ``"ignore"`` is one region, in dataset.json's order); otherwise the sorted labels > 0 except the ignore label.
    """
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or "background" not in labels:
        raise ValueError("dataset.json has no \"labels\" with a \"background\" entry: pass a valid dataset.json")
    ignore = labels.get("ignore")
    if ignore is not None and not isinstance(ignore, int):
        raise ValueError(f"dataset.json's ignore label must be one integer, got {ignore!r}")
    has_regions = any(isinstance(v, (list, tuple)) and len(v) > 1 for v in labels.values())
    if has_regions:
        regions = []
        for name, value in labels.items():
            if name == "ignore":
                continue
            key = as_key(value)
            if key == 0 or (isinstance(key, tuple) and set(key) == {0}):
                continue
            regions.append(key)
        return regions, ignore
    values = set()
    for name, value in labels.items():
        if name != "ignore":
            values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return sorted(v for v in values if v != 0), ignore


# ----------------------------------------------------------------------------------------------- per-case work

def _labels_in_file(reader, path: str) -> dict:
    try:
        seg, _ = read_segmentation(reader, path)
    except UnreadableFile as error:
        return {"error": str(error)}
    return {"values": label_values(seg)}


def _evaluate_case(reference_file: str, prediction_file: str, reader, labels: list, settings: EvaluationSettings,
                   ignore_label: int | None, instance_file: str | None) -> dict:
    """One case's record: metrics and the label values found, or ``{"error": message}``."""
    try:
        ref, spacing = read_segmentation(reader, reference_file)
        pred, pred_spacing = read_segmentation(reader, prediction_file)
        instances = None if instance_file is None else read_segmentation(reader, instance_file)[0]
    except UnreadableFile as error:
        return {"error": str(error)}
    if ref.shape != pred.shape:
        return {"error": f"{prediction_file} has shape {pred.shape} but its reference {reference_file} has "
                         f"{ref.shape}: predictions must be on the reference grid"}
    if instances is not None:
        if instances.shape != ref.shape:
            return {"error": f"{instance_file} has shape {instances.shape} but its reference {reference_file} has "
                             f"{ref.shape}"}
        if instances.min(initial=0) < 0 or instances.max(initial=0) >= 1 << 24 or (instances % 1).any():
            return {"error": f"{instance_file} must hold integer instance ids from 0 to 2^24 - 1 (nnU-Net's readers "
                             "return float32, which holds larger ids inexactly)"}
    metrics = case_metrics(pred, ref, labels, settings, spacing, ignore_label, instances)
    return {"reference_file": reference_file, "prediction_file": prediction_file, "metrics": metrics,
            "values_ref": label_values(ref), "values_pred": label_values(pred),
            "spacing_ref": spacing, "spacing_pred": pred_spacing}


def _star(args: tuple):
    function, *rest = args
    return function(*rest)


def _map(function, argument_tuples: list[tuple], pool, description: str, progress: bool) -> list:
    """Ordered map over cases with a tqdm bar, in ``pool`` if one is given, else in this process."""
    from tqdm import tqdm
    jobs = [(function, *a) for a in argument_tuples]
    bar = dict(total=len(jobs), desc=description, unit="case", disable=not progress)
    if pool is None:
        return [_star(j) for j in tqdm(jobs, **bar)]
    return list(tqdm(pool.imap(_star, jobs), **bar))


def _raise_errors(records: list[dict]) -> None:
    errors = [r["error"] for r in records if "error" in r]
    if errors:
        if len(errors) == 1:
            raise UnreadableFile(errors[0])
        raise UnreadableFile(f"{len(errors)} files cannot be evaluated: " + "; ".join(errors))


def _names(files: Sequence[str], limit: int = 3) -> str:
    shown = [os.path.basename(f) for f in files[:limit]]
    return ", ".join(shown) + (f" and {len(files) - limit} more" if len(files) > limit else "")


def _label_warnings(cases: list[dict], labels: list, declared: set[int] | None, warn: Callable[[str], None]) -> None:
    from nnunet_ext.core.labelmaps import undeclared_label_message
    in_references = {v for c in cases for v in c["values_ref"]}
    evaluated = {v for k in labels for v in (k if isinstance(k, tuple) else (k,))}
    known = in_references | evaluated | (declared or set()) | {0}
    unknown: dict[int, list[str]] = defaultdict(list)
    for case in cases:
        for value in case["values_pred"]:
            if value not in known:
                unknown[value].append(case["prediction_file"])
    source = "the references nor dataset.json" if declared is not None else "the references"
    for value, files in sorted(unknown.items()):
        warn(f"label {value} appears in {len(files)} prediction(s) ({_names(files)}) but neither {source} "
             f"declare it: its voxels are not scored (they count as background for every evaluated label)")
    if declared is None:
        return
    undeclared: dict[int, list[str]] = defaultdict(list)
    for case in cases:
        for value in case["values_ref"]:
            if value not in declared:
                undeclared[value].append(case["reference_file"])
    for value, files in sorted(undeclared.items()):
        warn(undeclared_label_message([value], f"{'reference' if len(files) == 1 else f'{len(files)} references'} "
                                               f"{_names(files)}", declared))


def _spacing_warning(cases: list[dict], warn: Callable[[str], None]) -> None:
    import numpy as np
    differ = [c for c in cases if len(c["spacing_ref"]) != len(c["spacing_pred"])
              or not np.allclose(c["spacing_ref"], c["spacing_pred"], rtol=1e-3, atol=1e-6)]
    if differ:
        first = differ[0]
        warn(f"{len(differ)} prediction(s) ({_names([c['prediction_file'] for c in differ])}) have another voxel "
             f"spacing than their reference (e.g. {tuple(first['spacing_pred'])} vs {tuple(first['spacing_ref'])}): "
             "surface distances use the reference's")


# ----------------------------------------------------------------------------------------------- the folder API

def evaluate_folders(ref_folder: str, pred_folder: str, output_file: str | None = None,
                     labels: Sequence[int | Sequence[int]] | None = None,
                     num_processes: int = default_num_processes, file_ending: str | None = None,
                     dataset_json: str | dict | None = None, plot_file: str | None = None,
                     ignore_label: int | None = None, case_names: Sequence[str] | None = None, *,
                     families: Sequence[str] | None = None, nsd_tolerance: float = 1.0,
                     connectivity: str | int = "full", convention: str = "default", iou_threshold: float = 0.5,
                     instance_metrics: bool = False, instances_folder: str | None = None,
                     instance_labels: Sequence[int | Sequence[int]] | None = None, chill: bool = False,
                     csv_file: str | None = None, progress: bool = True,
                     warn: Callable[[str], None] | None = None) -> dict:
    """Metrics of every prediction in ``pred_folder`` against ``ref_folder`` (see the module docstring).

    ``labels``: labels and/or regions (sequences of labels) to evaluate; default: the foreground
    labels/regions of ``dataset_json`` (path or dict) if given, else every label > 0 found in the
    reference files. ``ignore_label`` defaults to dataset.json's ``ignore``. ``file_ending`` defaults to
    dataset.json's, else the single supported ending found in ``ref_folder``. ``case_names``: evaluate only
    these file names (e.g. one fold's validation cases) instead of every reference file. Every evaluated
    reference needs a prediction of the same name (FileNotFoundError otherwise) unless ``chill``: then only the
    references that have one are evaluated. Extra predictions are ignored.

    ``families``: metric families (default :data:`~nnunet_ext.evaluation.case.DEFAULT_FAMILIES`);
    ``instance_metrics`` (or ``instances_folder``, a folder of reference instance maps of the same file names)
    adds ``"instance"``; ``instance_labels``: the labels whose components are the instances (default: the
    evaluated ones; 0 for membrane labels). ``nsd_tolerance`` (mm), ``connectivity`` (``"full"``/``"face"``/4/8/
    6/26, for Betti numbers, components and instances), ``convention`` (``"default"``/``"topcow"``) and
    ``iou_threshold`` (component matching): see :mod:`nnunet_ext.evaluation.case`.

    Returns the summary (label/region keys as ints/tuples, like nnU-Net's ``compute_metrics_on_folder``);
    ``output_file`` (.json), ``csv_file`` and ``plot_file`` (plus its ``_cases`` box plots) are written when
    given. Raises FileNotFoundError/ValueError (UnreadableFile for bad files) with the fix in the message.
    """
    warn = warn or _default_warn
    ref_folder, pred_folder = str(ref_folder), str(pred_folder)
    output_file = None if output_file is None else str(output_file)
    for folder, what in ((ref_folder, "reference"), (pred_folder, "prediction")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{what} folder {folder} does not exist")
    if output_file is not None and not output_file.endswith(".json"):
        raise ValueError(f"output_file must end with .json, got {output_file}")
    if num_processes < 1:
        raise ValueError(f"the number of processes must be >= 1, got {num_processes}")
    if instances_folder is not None:
        instances_folder = str(instances_folder)
        if not os.path.isdir(instances_folder):
            raise FileNotFoundError(f"instances folder {instances_folder} does not exist")
    chosen = tuple(families) if families is not None else DEFAULT_FAMILIES
    if instance_metrics or instances_folder is not None or instance_labels is not None:
        chosen += ("instance",)
    settings = EvaluationSettings(families=chosen, convention=convention, connectivity=connectivity,
                                  nsd_tolerance=float(nsd_tolerance), iou_threshold=float(iou_threshold),
                                  instance_labels=None if instance_labels is None else tuple(instance_labels))

    if isinstance(dataset_json, (str, os.PathLike)):
        from batchgenerators.utilities.file_and_folder_operations import load_json
        dataset_json = load_json(str(dataset_json))
    declared = None
    if dataset_json is not None:
        from nnunet_ext.core.labelmaps import declared_label_values
        dataset_keys, dataset_ignore = dataset_labels(dataset_json)
        declared = declared_label_values(dataset_json["labels"])
        file_ending = file_ending or dataset_json.get("file_ending")
        if ignore_label is None:
            ignore_label = dataset_ignore
        if labels is None:
            labels = dataset_keys
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
    if missing and chill:
        if len(missing) == len(names):
            raise FileNotFoundError(f"none of the {len(names)} reference files has a prediction of the same name in "
                                    f"{pred_folder}: check the folders and the file ending ({file_ending})")
        warn(f"-chill: {len(missing)} of {len(names)} reference cases have no prediction and are not evaluated "
             f"({_names(missing)})")
        names = [n for n in names if n not in set(missing)]
    elif missing:
        raise FileNotFoundError(f"{len(missing)} of {len(names)} reference files have no prediction of the same "
                                f"name in {pred_folder}: {_names(missing, 5)}. Predict every case, or evaluate only "
                                "the predicted ones with -chill (chill=True).")
    ref_files = [os.path.join(ref_folder, n) for n in names]
    pred_files = [os.path.join(pred_folder, n) for n in names]
    instance_files: list[str | None] = [None] * len(names)
    if instances_folder is not None:
        instance_files = [os.path.join(instances_folder, n) for n in names]
        absent = [f for f in instance_files if not os.path.isfile(f)]
        if absent:
            raise FileNotFoundError(f"{len(absent)} of {len(names)} cases have no reference instance map of the same "
                                    f"name in {instances_folder}: {_names(absent, 5)}")

    from nnunetv2.imageio.reader_writer_registry import (determine_reader_writer_from_dataset_json,
                                                         determine_reader_writer_from_file_ending)
    if dataset_json is not None:
        reader = determine_reader_writer_from_dataset_json(dataset_json, ref_files[0], verbose=False)()
    else:
        reader = determine_reader_writer_from_file_ending(file_ending, ref_files[0], verbose=False)()

    n_workers = min(num_processes, len(names))
    # one spawn pool (as nnU-Net) for both passes: starting workers costs seconds
    with (multiprocessing.get_context("spawn").Pool(n_workers) if n_workers > 1 else nullcontext()) as pool:
        if labels is None:
            found = _map(_labels_in_file, [(reader, f) for f in ref_files], pool, "finding labels", progress)
            _raise_errors(found)
            labels = sorted({v for r in found for v in r["values"]} - {0, ignore_label})
            if not labels:
                raise ValueError(f"the reference files in {ref_folder} hold no foreground label: pass labels (-l)")
        labels = [as_key(r) for r in labels]
        jobs = [(r, p, reader, labels, settings, ignore_label, i) for r, p, i in zip(ref_files, pred_files,
                                                                                     instance_files)]
        cases = _map(_evaluate_case, jobs, pool, "evaluating", progress)
    _raise_errors(cases)
    _label_warnings(cases, labels, declared, warn)
    _spacing_warning(cases, warn)

    keys: dict[Hashable, None] = {}
    for case in cases:
        keys.update(dict.fromkeys(case["metrics"]))
    per_case = [{k: case[k] for k in ("reference_file", "prediction_file", "metrics")} for case in cases]
    rule = "cases" if settings.convention == "topcow" else "labels"
    result = summarize(per_case, list(keys), foreground_rule=rule)
    result["settings"] = {**settings.to_json(), "ignore_label": ignore_label, "foreground_rule": rule,
                          "labels": [str(k) for k in labels]}
    if output_file is not None:
        save_summary(result, output_file)
    if csv_file is not None:
        write_csv(result, str(csv_file))
    if plot_file is not None:
        plot_summary(result["mean"], str(plot_file))
        plot_cases(result["metric_per_case"], list(keys), cases_plot_path(str(plot_file)))
    return result
