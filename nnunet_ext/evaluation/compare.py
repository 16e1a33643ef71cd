"""``nnunet-ext compare``: several evaluations (e.g. one per trainer) side by side, with paired differences.

Inputs
    Summary JSON files shaped like nnU-Net's ``summary.json`` (``nnunet-ext evaluate``'s output, the trainers'
    ``validation/summary_topology.json``, nnU-Net's own ``summary.json``), or folders: ``FOLDER/
    summary_topology.json``, else ``FOLDER/validation/summary_topology.json`` (a fold folder).

Values
    Per result, ``foreground_mean[metric]`` as written (``--per-label``: also ``mean[label][metric]``).

Paired per-case differences against the first result
    Cases are paired by file name (the reference's, else the prediction's). A case's foreground value of a metric
    is the mean over its labels/regions other than 0 that have a non-NaN value (label 0 if only it has the
    metric); a label's value is the case's value for that label. Over the cases where both results have a value:
    d = value(result) - value(first); reported as mean ± sample std (ddof 1) of d, n, and the number of cases
    where the result is better and worse, by the metric's direction (:data:`HIGHER_IS_BETTER`,
    :data:`LOWER_IS_BETTER`; counts such as ``Comp_n_ref`` have none; equal values are neither).

Results computed under different settings (``"settings"`` in the JSON: convention, NSD tolerance, connectivity,
IoU threshold, ignore label) are compared with a warning on stderr: their numbers follow different rules.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

from nnunet_ext.evaluation.summary import METRIC_ORDER, case_name, key_text, load_summary

HIGHER_IS_BETTER = frozenset({"Dice", "clDice", "clDice_TopCoW", "NSD", "Comp_precision", "Comp_recall", "Comp_F1",
                              "Comp_matched_IoU", "Comp_TP", "ARE_precision", "ARE_recall", "IoU"})
LOWER_IS_BETTER = frozenset({"Betti0_error", "Betti1_error", "Betti2_error", "HD95", "HD", "ASSD", "Comp_FP",
                             "Comp_FN", "Comp_split", "Comp_merged", "ARE", "VI", "VI_split", "VI_merge"})
#: what ``compare`` shows unless ``--metrics`` is given (those present)
HEADLINE = ("Dice", "clDice", "clDice_TopCoW", "Betti0_error", "Betti1_error", "Betti2_error", "HD95", "ASSD",
            "NSD", "Comp_precision", "Comp_recall", "Comp_F1", "Comp_split", "Comp_merged", "ARE", "VI_split",
            "VI_merge")
SETTINGS_CHECKED = ("convention", "nsd_tolerance_mm", "connectivity", "iou_threshold", "ignore_label",
                    "foreground_rule")


@dataclass
class Result:
    """One summary to compare: its column name, file and content (keys as ints/tuples)."""
    name: str
    path: str
    summary: dict


def find_summary(path: str) -> str:
    """The summary JSON that ``path`` names (see the module docstring)."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        for candidate in (os.path.join(path, "summary_topology.json"),
                          os.path.join(path, "validation", "summary_topology.json")):
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(f"{path} holds no summary_topology.json (nor validation/summary_topology.json): pass "
                                "the summary JSON itself, or run nnunet-ext evaluate first")
    raise FileNotFoundError(f"{path} does not exist")


def default_names(paths: Sequence[str]) -> list[str]:
    """The shortest distinct path ends of the results' folders (``.../validation`` and file names dropped)."""
    parts = []
    for path in paths:
        folder = os.path.dirname(os.path.abspath(path))
        pieces = [p for p in folder.split(os.sep) if p]
        if pieces and pieces[-1] == "validation":
            pieces = pieces[:-1]
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem not in ("summary_topology", "summary"):
            pieces = pieces + [stem]
        parts.append(pieces or [stem])
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{'/'.join(p)} ({i + 1})" for i, p in enumerate(parts)]


def load_results(paths: Sequence[str], names: Sequence[str] | None = None) -> list[Result]:
    """Every input as a :class:`Result` (``names``: one per input, default :func:`default_names`)."""
    files = [find_summary(str(p)) for p in paths]
    if names is not None and len(names) != len(files):
        raise ValueError(f"--names has {len(names)} names for {len(files)} results: give one per result")
    names = list(names) if names is not None else default_names(files)
    return [Result(n, f, load_summary(f)) for n, f in zip(names, files)]


def direction(metric: str) -> int:
    """+1 if higher is better, -1 if lower is better, 0 if neither (counts)."""
    return 1 if metric in HIGHER_IS_BETTER else -1 if metric in LOWER_IS_BETTER else 0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def case_values(summary: dict, metric: str, key: Hashable | None = None) -> dict[str, float]:
    """Case name -> the case's value of ``metric`` (foreground value if ``key`` is None; see module docstring)."""
    values: dict[str, float] = {}
    for case in summary["metric_per_case"]:
        metrics = case["metrics"]
        if key is not None:
            value = metrics.get(key, {}).get(metric)
            if _finite(value):
                values[case_name(case)] = float(value)
            continue
        chosen = [k for k in metrics if k != 0 and metric in metrics[k]] or \
                 [k for k in metrics if k == 0 and metric in metrics[k]]
        finite = [float(metrics[k][metric]) for k in chosen if _finite(metrics[k][metric])]
        if finite:
            values[case_name(case)] = float(np.mean(finite))
    return values


@dataclass
class Difference:
    """Paired per-case differences (result - first) of one metric."""
    n: int
    mean: float
    std: float
    better: int
    worse: int


def paired_difference(first: dict[str, float], other: dict[str, float], metric: str) -> Difference:
    """:class:`Difference` over the cases both value dicts have."""
    common = sorted(set(first) & set(other))
    d = np.array([other[c] - first[c] for c in common], dtype=float)
    sign = direction(metric)
    if d.size == 0:
        return Difference(0, math.nan, math.nan, 0, 0)
    better = int(np.count_nonzero(sign * d > 0)) if sign else 0
    worse = int(np.count_nonzero(sign * d < 0)) if sign else 0
    return Difference(int(d.size), float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else math.nan, better, worse)


@dataclass
class Row:
    """One line of the comparison: a metric of the foreground mean (``label`` None) or of one label."""
    metric: str
    label: Hashable | None
    values: list[float]
    differences: list[Difference | None]  # None for the first result

    @property
    def title(self) -> str:
        return self.metric if self.label is None else f"{self.metric} [{key_text(self.label)}]"


def _chosen_metrics(results: Sequence[Result], metrics: Sequence[str] | None) -> list[str]:
    available: dict[str, None] = {}
    for r in results:
        available.update(dict.fromkeys(r.summary["foreground_mean"]))
    if metrics is not None:
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise ValueError(f"no result has the metric(s) {', '.join(unknown)}; available: {', '.join(available)}")
        return list(metrics)
    headline = [m for m in HEADLINE if m in available]
    return headline or [m for m in METRIC_ORDER if m in available] + [m for m in available if m not in METRIC_ORDER]


def compare_results(results: Sequence[Result], metrics: Sequence[str] | None = None,
                    per_label: bool = False) -> list[Row]:
    """The rows of the comparison (foreground means, then per label if ``per_label``)."""
    chosen = _chosen_metrics(results, metrics)
    labels: list[Hashable | None] = [None]
    if per_label:
        seen: dict[Hashable, None] = {}
        for r in results:
            seen.update(dict.fromkeys(r.summary["mean"]))
        labels += list(seen)
    rows = []
    for label in labels:
        for metric in chosen:
            if label is None:
                values = [r.summary["foreground_mean"].get(metric, math.nan) for r in results]
            else:
                values = [r.summary["mean"].get(label, {}).get(metric, math.nan) for r in results]
            if label is not None and all(not _finite(v) for v in values):
                continue
            first = case_values(results[0].summary, metric, label)
            differences = [None] + [paired_difference(first, case_values(r.summary, metric, label), metric)
                                    for r in results[1:]]
            rows.append(Row(metric, label, [float(v) if _finite(v) else math.nan for v in values], differences))
    return rows


def settings_warnings(results: Sequence[Result]) -> list[str]:
    """One line per result whose settings (or case set) differ from the first result's."""
    lines = []
    first = results[0]
    first_settings = first.summary.get("settings") or {}
    first_cases = {case_name(c) for c in first.summary["metric_per_case"]}
    for r in results[1:]:
        settings = r.summary.get("settings") or {}
        differ = [f"{k} {settings.get(k)!r} vs {first_settings.get(k)!r}" for k in SETTINGS_CHECKED
                  if k in settings and k in first_settings and settings[k] != first_settings[k]]
        if differ:
            lines.append(f"{r.name} was evaluated under other settings than {first.name} ({'; '.join(differ)}): "
                         "the same metric names follow different rules, do not read the differences as "
                         "improvements")
        cases = {case_name(c) for c in r.summary["metric_per_case"]}
        if cases != first_cases:
            lines.append(f"{r.name} has {len(cases)} cases, {first.name} {len(first_cases)}; "
                         f"{len(cases & first_cases)} are in both and the paired differences use only those")
    return lines


_COUNTS = ("Betti", "Comp_n_", "Comp_TP", "Comp_FP", "Comp_FN", "Comp_split", "Comp_merged")


def _decimals(metric: str) -> int:
    """3 decimals for distances (mm) and counts, 4 for scores."""
    return 3 if metric in ("HD95", "HD", "ASSD") or metric.startswith(_COUNTS) else 4


def _number(value: float, metric: str, signed: bool = False) -> str:
    if not _finite(value):
        return "–"
    decimals = _decimals(metric)
    value = 0.0 if round(value, decimals) == 0 else value  # no "-0.0000"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _difference_cells(d: Difference | None, metric: str) -> tuple[str, str]:
    if d is None or d.n == 0:
        return "–", "–"
    spread = f" ± {_number(d.std, metric)}" if _finite(d.std) else ""
    counts = f"{d.better} / {d.worse} of {d.n}" if direction(metric) else f"– (n = {d.n})"
    return f"{_number(d.mean, metric, signed=True)}{spread}", counts


def tables(results: Sequence[Result], rows: Sequence[Row]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the two tables: values and paired differences against the first result."""
    names = [r.name for r in results]
    values = ("Foreground mean" + (" and per-label means" if any(r.label is not None for r in rows) else ""),
              ["metric", *names], [[row.title, *[_number(v, row.metric) for v in row.values]] for row in rows])
    out = [values]
    if len(results) > 1:
        header = ["metric"]
        for name in names[1:]:
            header += [f"{name} - {names[0]} (mean ± std)", "better / worse"]
        body = []
        for row in rows:
            cells = [row.title]
            for d in row.differences[1:]:
                cells += list(_difference_cells(d, row.metric))
            body.append(cells)
        out.append((f"Paired per-case differences against {names[0]}", header, body))
    return out


def markdown(results: Sequence[Result], rows: Sequence[Row]) -> str:
    """The tables as GitHub markdown, with the inputs listed."""
    lines = ["# nnunet-ext compare", ""]
    for r in results:
        lines.append(f"- **{r.name}**: `{r.path}` ({len(r.summary['metric_per_case'])} cases)")
    for title, header, body in tables(results, rows):
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += ["", "Differences: per case (paired by file name) result minus the first result, mean ± sample std over "
              "the cases both have; better / worse by the metric's direction (↑ Dice, clDice, NSD, Comp precision/"
              "recall/F1; ↓ Betti errors, HD95, ASSD, splits, merges, ARE, VI).", ""]
    return "\n".join(lines)


def plot_comparison(results: Sequence[Result], metrics: Sequence[str], png_file: str) -> None:
    """Per metric: box plots of the per-case foreground values of every result, each case's values joined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(len(metrics), 4)
    rows = math.ceil(len(metrics) / columns)
    figure = Figure(figsize=(max(3.4, 1.0 * len(results) + 1.6) * columns, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    positions = np.arange(1, len(results) + 1)
    for axis, metric in zip(axes, metrics):
        per_result = [case_values(r.summary, metric) for r in results]
        cases = sorted(set().union(*per_result))
        for case in cases:  # one grey line per case across the results
            axis.plot(positions, [v.get(case, np.nan) for v in per_result], "-", color="0.7", linewidth=0.6,
                      zorder=1)
        data = [np.array(list(v.values()), dtype=float) for v in per_result]
        axis.boxplot([d if d.size else [np.nan] for d in data], positions=positions, widths=0.5, showfliers=False,
                     zorder=2)
        for position, d in zip(positions, data):
            axis.plot(np.full(d.size, position), d, ".", color="C0", markersize=4, zorder=3)
        arrow = {1: " ↑", -1: " ↓"}.get(direction(metric), "")
        axis.set_title(f"{metric}{arrow} per case", fontsize="small")
        axis.set_xticks(positions, [r.name for r in results], rotation=20, fontsize="small")
    for axis in axes[len(metrics):]:
        axis.set_visible(False)
    os.makedirs(os.path.dirname(os.path.abspath(png_file)), exist_ok=True)
    figure.savefig(png_file, dpi=110)
