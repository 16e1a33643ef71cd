"""Per-structure analyses the quality benchmark adds to ``nnunet-ext evaluate`` (one process per run)::

    python -m nnunet_ext.benchmarks._quality_analysis {context|trees} REF_FOLDER PRED_FOLDER -o OUT.json

``context`` (:func:`context_case_metrics`): the fraction of reference structures (connected components of the
foreground) whose predicted foreground voxels are mostly of the structure's class, ``Class_accuracy`` (a
structure with no predicted voxel counts as wrong).

``trees`` (:func:`tree_case_metrics`): where the Betti-0 errors come from. Per class c, every predicted component of
c (full connectivity, as the Betti numbers) is

- *on-tree* if it overlaps the reference of c,
- *wrong-class* if it overlaps only the reference of another class (a piece of the other tree labelled c),
- a *false blob* if it overlaps no reference foreground.

``B0_breaks`` = sum over the reference components of c of (on-tree components overlapping it - 1, at least 0): a
tree predicted in pieces; ``B0_missed`` = reference components no predicted component of c overlaps. When no
predicted component overlaps two reference components of its class, b0(pred) - b0(ref) = breaks + false blobs +
wrong-class - missed exactly (``B0_difference`` holds the left side). ``Class_bleeds``: on-tree components of c
that also overlap another class's reference (a class-c prediction running into the other tree); per case,
``Fg_merged``: components of the binary prediction (any class) overlapping the references of two or more classes.

Two per-case measures with the classes merged tell a wrong class from a wrong shape: ``Fg_betti0_error`` =
|b0(prediction > 0) - b0(reference > 0)|, the Betti-0 error of the vessels whatever their class (a tree found in
one piece whose class flips along it has none), and ``Class_swapped``, the share of the reference vessel voxels
predicted as vessel that carry another class's label (NaN where no vessel voxel is predicted).

``foreground_mean`` is the mean over cases of the per-case mean over classes, the order of ``nnunet-ext
evaluate``'s foreground mean when no value is NaN.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import cc3d
import numpy as np

TREE_KEYS = ("B0_breaks", "B0_false_blobs", "B0_wrong_class", "B0_missed", "Class_bleeds", "B0_difference")
TREE_CASE_KEYS = ("Fg_merged", "Fg_betti0_error", "Class_swapped")


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels, count) of ``mask`` at full connectivity (8 in 2D, 26 in 3D)."""
    labels, count = cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8),
                                              connectivity=26 if mask.ndim == 3 else 8, return_N=True)
    return labels, int(count)


def _touched(components: np.ndarray, count: int, mask: np.ndarray) -> np.ndarray:
    """(count + 1,) bool: which component ids have at least one voxel in ``mask`` (index 0 unused)."""
    hit = np.zeros(count + 1, bool)
    hit[np.unique(components[mask])] = True
    hit[0] = False
    return hit


def context_case_metrics(reference: np.ndarray, prediction: np.ndarray) -> dict:
    """``Class_accuracy``, ``structures``, ``missed`` of one case (label maps of the same shape)."""
    components, count = _components(reference > 0)
    if count == 0:
        return {"Class_accuracy": math.nan, "structures": 0, "missed": 0}
    right = missed = 0
    for index in range(1, count + 1):
        inside = components == index
        true_class = np.bincount(reference[inside]).argmax()
        predicted = prediction[inside]
        predicted = predicted[predicted > 0]
        if predicted.size == 0:
            missed += 1
            continue
        right += int(np.bincount(predicted).argmax() == true_class)
    return {"Class_accuracy": right / count, "structures": count, "missed": missed}


def tree_class_metrics(reference: np.ndarray, prediction: np.ndarray, label: int) -> dict:
    """The Betti-0 breakdown of class ``label`` (see the module doc): counts as ints."""
    ours, others = reference == label, (reference > 0) & (reference != label)
    predicted, n_pred = _components(prediction == label)
    on_tree = _touched(predicted, n_pred, ours)
    on_other = _touched(predicted, n_pred, others)
    ref_components, n_ref = _components(ours)
    both = (predicted > 0) & (ref_components > 0)
    pairs = np.unique(ref_components[both].astype(np.int64) * (n_pred + 1) + predicted[both])
    pieces = np.bincount(pairs // (n_pred + 1), minlength=n_ref + 1)[1:]
    return {"B0_breaks": int(np.maximum(pieces - 1, 0).sum()),
            "B0_false_blobs": int((~on_tree & ~on_other)[1:].sum()),
            "B0_wrong_class": int((~on_tree & on_other)[1:].sum()),
            "B0_missed": int((pieces == 0).sum()),
            "Class_bleeds": int((on_tree & on_other)[1:].sum()),
            "B0_difference": n_pred - n_ref}


def foreground_merges(reference: np.ndarray, components: np.ndarray, count: int) -> int:
    """Components of the binary prediction (``components``, ``count`` from :func:`_components` of prediction > 0)
    overlapping the references of two or more classes."""
    inside = (components > 0) & (reference > 0)
    pairs = np.unique(components[inside].astype(np.int64) * (int(reference.max()) + 1) + reference[inside])
    classes_per_component = np.bincount(pairs // (int(reference.max()) + 1), minlength=count + 1)
    return int((classes_per_component >= 2).sum())


def class_swapped(reference: np.ndarray, prediction: np.ndarray) -> float:
    """Share of the reference foreground voxels predicted as foreground whose predicted label differs (NaN if
    none is predicted as foreground)."""
    found = (reference > 0) & (prediction > 0)
    count = int(found.sum())
    return float((reference[found] != prediction[found]).sum() / count) if count else math.nan


def tree_case_metrics(reference: np.ndarray, prediction: np.ndarray, labels: Sequence[int]) -> dict:
    """{"per_label": {label: class metrics}, "Fg_merged": int, "Fg_betti0_error": int, "Class_swapped": float}
    of one case."""
    vessels, n_vessels = _components(prediction > 0)
    return {"per_label": {int(label): tree_class_metrics(reference, prediction, int(label)) for label in labels},
            "Fg_merged": foreground_merges(reference, vessels, n_vessels),
            "Fg_betti0_error": abs(n_vessels - _components(reference > 0)[1]),
            "Class_swapped": class_swapped(reference, prediction)}


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _cases(reference: Path, prediction: Path) -> list[tuple[str, Path, Path]]:
    found = []
    for ref in sorted(reference.iterdir()):
        if ref.name.startswith(".") or not ref.is_file() or ref.suffix == ".json":
            continue
        pred = prediction / ref.name
        if not pred.exists():
            raise FileNotFoundError(f"no prediction {pred} for the reference {ref}")
        found.append((ref.name, ref, pred))
    if not found:
        raise FileNotFoundError(f"no reference files in {reference}")
    return found


def _mean(values) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def analyse_folders(mode: str, reference: Path, prediction: Path) -> dict:
    """{"mode", "foreground_mean", "per_case"} of every reference case (see the module doc)."""
    per_case = []
    for name, ref_file, pred_file in _cases(reference, prediction):
        ref, pred = _read(ref_file).astype(np.int64), _read(pred_file).astype(np.int64)
        if ref.shape != pred.shape:
            raise ValueError(f"{name}: reference {ref.shape} and prediction {pred.shape} differ in shape")
        if mode == "context":
            per_case.append({"case": name, **context_case_metrics(ref, pred)})
        else:
            labels = sorted(set(np.unique(ref).tolist()) - {0})
            per_case.append({"case": name, **tree_case_metrics(ref, pred, labels)})
    if mode == "context":
        means = {"Class_accuracy": _mean(c["Class_accuracy"] for c in per_case)}
    else:
        means = {key: _mean(_mean(m[key] for m in c["per_label"].values()) for c in per_case) for key in TREE_KEYS}
        means.update({key: _mean(c[key] for c in per_case) for key in TREE_CASE_KEYS})
    return {"mode": mode, "foreground_mean": means, "per_case": per_case}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnunet_ext.benchmarks._quality_analysis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("context", "trees"))
    parser.add_argument("reference", type=Path)
    parser.add_argument("prediction", type=Path)
    parser.add_argument("-o", dest="output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        result = analyse_folders(args.mode, args.reference, args.prediction)
    except (FileNotFoundError, ValueError) as error:
        print(f"_quality_analysis: {error}", file=sys.stderr)
        return 1
    args.output.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
