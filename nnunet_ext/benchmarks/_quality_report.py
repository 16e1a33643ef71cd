"""The quality benchmark's report: mean ± std over seeds, paired differences, markdown tables, the PNG plot.

A run result (one trainer, one dataset, one seed) is a dict with ``dataset``, ``trainer``, ``seed``,
``metrics`` (the foreground mean of ``nnunet-ext evaluate``), ``epoch_time_s``, ``peak_rss_bytes`` and
``peak_cuda_bytes`` (None off CUDA).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

#: evaluated metric -> (column title, decimals); ↑ higher is better, ↓ lower
METRICS: dict[str, tuple[str, int]] = {
    "Dice": ("Dice ↑", 4), "clDice": ("clDice ↑", 4), "Betti0_error": ("Betti-0 error ↓", 2),
    "Betti1_error": ("Betti-1 error ↓", 2), "Betti2_error": ("Betti-2 error ↓", 2),
    # context
    "Dice_1": ("Dice near_disc ↑", 4), "Dice_2": ("Dice near_ring ↑", 4), "Dice_any": ("Dice any class ↑", 4),
    "Class_accuracy": ("structures right ↑", 3),
    # EM
    "ARE": ("ARE ↓", 4), "VI": ("VI ↓", 3), "VI_split": ("VI split ↓", 3), "VI_merge": ("VI merge ↓", 3),
    # components
    "Comp_FP": ("Comp FP ↓", 2), "Comp_split": ("Comp split ↓", 2), "Comp_merged": ("Comp merged ↓", 2),
    # trees: where the Betti-0 errors come from (_quality_analysis)
    "B0_breaks": ("breaks ↓", 2), "B0_false_blobs": ("false blobs ↓", 2), "B0_wrong_class": ("wrong-class ↓", 2),
    "B0_missed": ("missed trees ↓", 2), "Class_bleeds": ("class bleeds ↓", 2), "Fg_merged": ("fg merges ↓", 2),
    "Fg_betti0_error": ("Betti-0 error, classes merged ↓", 2), "Class_swapped": ("vessel voxels of the other class ↓", 3),
}
GB = 1024 ** 3


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n) of the finite values; NaN std for n < 2, NaN mean for n = 0."""
    finite = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if finite.size == 0:
        return math.nan, math.nan, 0
    std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return float(finite.mean()), std, int(finite.size)


def format_mean_std(values: Iterable[float], decimals: int) -> str:
    """'0.8123 ± 0.0100' ('0.8123' for one value, '–' for none)."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "–"
    if n == 1:
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def metric_names(results: Sequence[dict]) -> list[str]:
    """The metrics (in METRICS order) that at least one result has."""
    return [m for m in METRICS if any(m in r["metrics"] for r in results)]


def group(results: Sequence[dict]) -> dict[str, dict[str, list[dict]]]:
    """dataset -> trainer -> results (seeds), in first-seen order."""
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        grouped[result["dataset"]][result["trainer"]].append(result)
    return grouped


def paired_differences(rows: dict[str, list[dict]], baseline: str, metric: str) -> dict[str, list[float]]:
    """trainer -> per-seed differences ``trainer - baseline`` of ``metric`` (seeds both have)."""
    base = {r["seed"]: r["metrics"].get(metric, math.nan) for r in rows.get(baseline, [])}
    return {trainer: [r["metrics"].get(metric, math.nan) - base[r["seed"]] for r in runs if r["seed"] in base]
            for trainer, runs in rows.items() if trainer != baseline}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (first column left-aligned, the others right-aligned)."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(rows: dict[str, list[dict]], metrics: Sequence[str] | None = None, cost: bool = True) -> str:
    """Per trainer: mean ± std over seeds of every metric (``metrics``, default :func:`metric_names`) and, with
    ``cost``, seconds per epoch and peak memory."""
    runs = [r for trainer_runs in rows.values() for r in trainer_runs]
    metrics = list(metrics) if metrics is not None else metric_names(runs)
    cuda = cost and any(r.get("peak_cuda_bytes") is not None for r in runs)
    header = ["Trainer", "seeds"] + [METRICS[m][0] for m in metrics]
    header += ["s / epoch", "peak RSS (GB)"] if cost else []
    header += ["peak CUDA (GB)"] if cuda else []
    table_rows = []
    for trainer, trainer_runs in rows.items():
        row = [f"`{trainer}`", str(len(trainer_runs))]
        row += [format_mean_std((r["metrics"].get(m, math.nan) for r in trainer_runs), METRICS[m][1])
                for m in metrics]
        if cost:
            row.append(format_mean_std((r["epoch_time_s"] for r in trainer_runs), 2))
            row.append(format_mean_std((r["peak_rss_bytes"] / GB for r in trainer_runs), 2))
        if cuda:
            row.append(format_mean_std((math.nan if r.get("peak_cuda_bytes") is None else r["peak_cuda_bytes"] / GB
                                        for r in trainer_runs), 2))
        table_rows.append(row)
    return markdown_table(header, table_rows)


def differences_table(rows: dict[str, list[dict]], baseline: str, metrics: Sequence[str] | None = None) -> str:
    """Per trainer: mean ± std over seeds of its per-seed difference to ``baseline`` (same dataset seed)."""
    runs = [r for trainer_runs in rows.values() for r in trainer_runs]
    metrics = list(metrics) if metrics is not None else metric_names(runs)
    differences = {m: paired_differences(rows, baseline, m) for m in metrics}
    header = ["Trainer"] + [f"Δ {METRICS[m][0]}" for m in metrics]
    table_rows = [[f"`{trainer}`"] + [format_mean_std(differences[m][trainer], METRICS[m][1]) for m in metrics]
                  for trainer in rows if trainer != baseline]
    return markdown_table(header, table_rows)


def short_label(trainer: str) -> str:
    """'nnUNetTrainerClDice_short' -> 'ClDice'; the plain trainer -> 'nnU-Net'."""
    name = trainer.removesuffix("_short").removeprefix("nnUNetTrainer")
    return name or "nnU-Net"


def plot(results: Sequence[dict], path: Path, metrics: Sequence[str] | None = None) -> None:
    """PNG: one row per dataset, one panel per metric (``metrics`` that some result has, default every known one
    but Betti-2); bars = mean over seeds, whiskers = std, dots = seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grouped = group(results)
    known = metric_names(results)
    if metrics is None:
        metrics = [m for m in known if m != "Betti2_error"]
    else:
        metrics = [m for m in metrics if m in known and m != "Betti2_error"]
    metrics = metrics or ["Dice"]
    figure = Figure(figsize=(3.2 * len(metrics), 2.9 * len(grouped)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_2d(figure.subplots(len(grouped), len(metrics), squeeze=False))
    for row, (dataset, rows) in enumerate(grouped.items()):
        trainers = list(rows)
        x = np.arange(len(trainers))
        for column, metric in enumerate(metrics):
            axis = axes[row, column]
            per_trainer = [[r["metrics"].get(metric, math.nan) for r in rows[t]] for t in trainers]
            stats = [mean_std(v) for v in per_trainer]
            spread = [0.0 if math.isnan(s[1]) else s[1] for s in stats]
            lower_better = METRICS[metric][0].endswith("↓")
            below = [min(d, m) if lower_better else d for d, (m, _, _) in zip(spread, stats)]
            axis.bar(x, [s[0] for s in stats], yerr=[below, spread],  # errors: whiskers stop at 0
                     color=[f"C{i}" for i in range(len(trainers))], alpha=0.7, capsize=3)
            for i, values in enumerate(per_trainer):
                axis.plot(np.full(len(values), x[i]), values, "k.", markersize=4)
            axis.set_xticks(x, [short_label(t) for t in trainers], rotation=30, fontsize="small")
            axis.set_title(f"{dataset}: {METRICS[metric][0]}", fontsize="small")
            if metric in ("Dice", "clDice", "Dice_1", "Dice_2", "Dice_any"):
                low = np.nanmin([v for values in per_trainer for v in values] + [1.0])
                axis.set_ylim(max(0.0, low - 0.1), 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
