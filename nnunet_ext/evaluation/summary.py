"""The summary of an evaluation: nnU-Net-shaped JSON (``foreground_mean``, ``mean``, ``metric_per_case``) and CSV.

Means
    ``mean[label][metric]``: the NaN-ignoring mean over cases (NaN only if every case is NaN), as nnU-Net.
    ``foreground_mean[metric]``, ``foreground_rule="labels"`` (default, nnU-Net's): the plain mean of the
    per-label means over the labels/regions other than 0 that have the metric, so a label whose every case is
    NaN makes it NaN, as in nnU-Net. ``"cases"`` (TopCoW's class average): per case the mean over the labels
    that have a (non-NaN) value, then the NaN-ignoring mean over cases. A metric that only label 0 has (instance
    metrics of the regions between membranes) takes label 0's value under both rules.

Files
    JSON like nnU-Net's ``save_summary_json``: label/region keys as text (``"1"``, ``"(1, 2)"``), keys sorted
    (``foreground_mean`` first), NaN written as ``NaN``; plus ``"settings"`` (the metric families and rules,
    which ``nnunet-ext compare`` checks). CSV: one row per case and label/region, columns ``case``,
    ``reference_file``, ``prediction_file``, ``label``, then every metric (empty where a label lacks it,
    ``nan`` for NaN).
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Hashable, Iterable, Sequence

import numpy as np

#: metric columns in this order first (the rest follow in the order they appear)
METRIC_ORDER = ("Dice", "clDice", "clDice_TopCoW", "Betti0_error", "Betti1_error", "Betti2_error", "HD95", "HD",
                "ASSD", "NSD", "Comp_precision", "Comp_recall", "Comp_F1", "Comp_matched_IoU", "Comp_n_ref",
                "Comp_n_pred", "Comp_TP", "Comp_FP", "Comp_FN", "Comp_split", "Comp_merged", "ARE",
                "ARE_precision", "ARE_recall", "VI", "VI_split", "VI_merge")


def key_text(key: Hashable) -> str:
    """A label/region key as nnU-Net writes it: 1 -> "1", (1, 2) -> "(1, 2)"."""
    return str(key)


def text_key(text: str) -> Hashable:
    """The inverse of :func:`key_text`: "1" -> 1, "(1, 2)" -> (1, 2)."""
    try:
        return int(text)
    except ValueError:
        return tuple(int(t) for t in text.strip("()").split(",") if t.strip())


def _nanmean(values: Iterable[float]) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def metric_names(metric_per_case: Sequence[dict]) -> list[str]:
    """Every metric of the cases, :data:`METRIC_ORDER` first."""
    seen: dict[str, None] = {}
    for case in metric_per_case:
        for per_label in case["metrics"].values():
            seen.update(dict.fromkeys(per_label))
    return [m for m in METRIC_ORDER if m in seen] + [m for m in seen if m not in METRIC_ORDER]


def _foreground_keys(keys: Sequence[Hashable], means: dict, metric: str) -> list[Hashable]:
    """The labels other than 0 that have ``metric``; label 0 if only it has it."""
    foreground = [k for k in keys if k != 0 and metric in means[k]]
    return foreground or [k for k in keys if k == 0 and metric in means[k]]


def summarize(metric_per_case: list[dict], keys: Sequence[Hashable], foreground_rule: str = "labels") -> dict:
    """``{"foreground_mean", "mean", "metric_per_case"}`` of the per-case results (see the module docstring)."""
    if foreground_rule not in ("labels", "cases"):
        raise ValueError(f"foreground_rule must be 'labels' or 'cases', got {foreground_rule!r}")
    names = metric_names(metric_per_case)
    means: dict[Hashable, dict[str, float]] = {}
    for key in keys:
        present = [m for m in names if any(m in c["metrics"].get(key, {}) for c in metric_per_case)]
        means[key] = {m: _nanmean(c["metrics"][key][m] for c in metric_per_case if m in c["metrics"].get(key, {}))
                      for m in present}
    foreground_mean: dict[str, float] = {}
    for m in names:
        chosen = _foreground_keys(keys, means, m)
        if not chosen:
            continue
        if foreground_rule == "labels":
            foreground_mean[m] = float(np.mean([means[k][m] for k in chosen]))
        else:
            foreground_mean[m] = _nanmean(
                _nanmean(c["metrics"][k][m] for k in chosen if m in c["metrics"].get(k, {}))
                for c in metric_per_case)
    return {"foreground_mean": foreground_mean, "mean": means, "metric_per_case": metric_per_case}


def _plain(value):
    """numpy scalars -> Python numbers, recursively (json cannot write numpy types)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def to_json_dict(result: dict) -> dict:
    """The summary with text keys (nnU-Net's ``save_summary_json`` conversion)."""
    converted = {k: _plain(v) for k, v in result.items() if k not in ("mean", "metric_per_case")}
    converted["mean"] = {key_text(k): _plain(v) for k, v in result["mean"].items()}
    converted["metric_per_case"] = [
        {**_plain({k: v for k, v in case.items() if k != "metrics"}),
         "metrics": {key_text(k): _plain(v) for k, v in case["metrics"].items()}}
        for case in result["metric_per_case"]]
    return converted


def save_summary(result: dict, output_file: str) -> None:
    """Write the summary JSON (sorted keys, indent 4, NaN as ``NaN``, like nnU-Net's ``save_json``)."""
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    with open(output_file, "w") as handle:
        json.dump(to_json_dict(result), handle, sort_keys=True, indent=4)


def load_summary(path: str) -> dict:
    """A summary JSON with label/region keys converted back (ints and tuples), like nnU-Net's loader."""
    with open(path) as handle:
        result = json.load(handle)
    for name in ("foreground_mean", "mean", "metric_per_case"):
        if name not in result:
            raise ValueError(f"{path} is not an nnU-Net-style summary (no {name!r}): pass a summary.json, a "
                             "summary_topology.json or a folder holding one")
    result["mean"] = {text_key(k): v for k, v in result["mean"].items()}
    for case in result["metric_per_case"]:
        case["metrics"] = {text_key(k): v for k, v in case["metrics"].items()}
    return result


def case_name(case: dict) -> str:
    """A case's file name (the reference's, else the prediction's): how cases are paired across summaries."""
    return os.path.basename(case.get("reference_file") or case.get("prediction_file") or "")


def write_csv(result: dict, csv_file: str) -> None:
    """One row per case and label/region (see the module docstring)."""
    names = metric_names(result["metric_per_case"])
    os.makedirs(os.path.dirname(os.path.abspath(csv_file)), exist_ok=True)
    with open(csv_file, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "reference_file", "prediction_file", "label", *names])
        for case in result["metric_per_case"]:
            for key, metrics in case["metrics"].items():
                writer.writerow([case_name(case), case.get("reference_file", ""), case.get("prediction_file", ""),
                                 key_text(key), *[_cell(metrics.get(m)) for m in names]])


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return repr(value) if isinstance(value, float) else str(value)
