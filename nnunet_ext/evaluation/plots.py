"""PNG figures of an evaluation: bar charts of the per-label means, box plots of the per-case values.

``--plot FILE.png`` writes both: ``FILE.png`` (:func:`plot_summary`: one panel per group of metrics sharing a
scale, bars = mean over cases per label/region) and ``FILE_cases.png`` (:func:`plot_cases`: one panel per
metric, a box per label/region over the cases, every case drawn as a dot). Matplotlib's Agg backend only
(no display needed).
"""
from __future__ import annotations

import math
import os
from typing import Hashable, Sequence

import numpy as np

from nnunet_ext.evaluation.summary import key_text

#: panels of the bar chart: (title, y label, metrics); only metrics present are drawn, empty panels are dropped
PANELS = (
    ("Overlap (mean over cases)", "score", ("Dice", "clDice", "clDice_TopCoW", "NSD")),
    ("Betti number errors (mean over cases)", "|b_pred - b_ref|", ("Betti0_error", "Betti1_error", "Betti2_error")),
    ("Surface distances (mean over cases)", "mm", ("HD95", "ASSD")),
    ("Components (mean over cases)", "score", ("Comp_precision", "Comp_recall", "Comp_F1")),
    ("Instances (mean over cases)", "ARE / bits", ("ARE", "VI_split", "VI_merge")),
)
#: metrics of the per-case box plots, in this order
CASE_METRICS = ("Dice", "clDice", "clDice_TopCoW", "Betti0_error", "Betti1_error", "Betti2_error", "HD95", "ASSD",
                "NSD", "Comp_F1", "Comp_split", "Comp_merged", "ARE", "VI")


def cases_plot_path(plot_file: str) -> str:
    """``out/plot.png`` -> ``out/plot_cases.png`` (where the per-case box plots go)."""
    stem, ending = os.path.splitext(plot_file)
    return f"{stem}_cases{ending or '.png'}"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=110)


def plot_summary(mean: dict[Hashable, dict[str, float]], plot_file: str) -> None:
    """Bar charts of the per-label means, one panel per metric group present (see :data:`PANELS`)."""
    panels = [(title, ylabel, [m for m in metrics if any(m in v for v in mean.values())])
              for title, ylabel, metrics in PANELS]
    panels = [p for p in panels if p[2]]
    if not panels:
        raise ValueError("nothing to plot: the summary has none of the metrics of the bar chart")
    figure = _figure(max(6.0, 0.9 * len(mean) + 3.5) * min(len(panels), 3), 3.8 * math.ceil(len(panels) / 3))
    axes = np.atleast_1d(figure.subplots(math.ceil(len(panels) / 3), min(len(panels), 3), squeeze=False)).ravel()
    for axis, (title, ylabel, metrics) in zip(axes, panels):
        keys = [k for k in mean if any(m in mean[k] for m in metrics)]  # e.g. clDice_TopCoW: the merged region only
        names = [key_text(k) for k in keys]
        x = np.arange(len(keys))
        width = 0.8 / len(metrics)
        for i, metric in enumerate(metrics):
            axis.bar(x + (i - (len(metrics) - 1) / 2) * width, [mean[k].get(metric, np.nan) for k in keys], width,
                     label=metric)
        values = [mean[k].get(m, np.nan) for k in keys for m in metrics]
        highest = np.nanmax(values + [0.0]) if not all(np.isnan(v) for v in values) else 1.0
        axis.set_ylim(0, 1.2 if ylabel == "score" else 1.25 * highest + 0.5)
        axis.set(title=title, xlabel="label / region", ylabel=ylabel)
        axis.set_xticks(x, names)
        axis.legend(loc="upper center", ncol=min(len(metrics), 4), fontsize="small")
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    _save(figure, plot_file)


def plot_cases(metric_per_case: Sequence[dict], keys: Sequence[Hashable], plot_file: str) -> None:
    """Box plots per metric (:data:`CASE_METRICS` present): a box per label/region over the cases, dots = cases."""
    metrics = [m for m in CASE_METRICS if any(m in c["metrics"].get(k, {}) for c in metric_per_case for k in keys)]
    if not metrics:
        raise ValueError("nothing to plot: the cases have none of the metrics of the box plots")
    columns = min(len(metrics), 4)
    rows = math.ceil(len(metrics) / columns)
    figure = _figure(max(3.2, 0.7 * len(keys) + 1.6) * columns, 2.9 * rows)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    rng = np.random.default_rng(0)  # horizontal jitter of the dots only
    for axis, metric in zip(axes, metrics):
        shown = [k for k in keys if any(metric in c["metrics"].get(k, {}) for c in metric_per_case)]
        data = [np.array([c["metrics"][k][metric] for c in metric_per_case if metric in c["metrics"].get(k, {})],
                         dtype=float) for k in shown]
        data = [d[np.isfinite(d)] for d in data]
        positions = np.arange(1, len(shown) + 1)
        axis.boxplot([d if d.size else [np.nan] for d in data], positions=positions, widths=0.6, showfliers=False)
        for position, values in zip(positions, data):
            axis.plot(position + rng.uniform(-0.15, 0.15, values.size), values, ".", color="C0", alpha=0.6,
                      markersize=4)
        axis.set_xticks(positions, [key_text(k) for k in shown])
        axis.set_title(f"{metric} per case (n = {max((d.size for d in data), default=0)})", fontsize="small")
        axis.set_xlabel("label / region", fontsize="small")
    for axis in axes[len(metrics):]:
        axis.set_visible(False)
    _save(figure, plot_file)
