"""Checks of label maps: shape and dtype for the functions that take one (tube, border weight map), and label
values against the ones dataset.json declares."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np


def validated_label_map(seg: np.ndarray, caller: str) -> np.ndarray:
    """``seg`` as an array, after checking it is a 2D or 3D integer (or bool) map without a channel axis.

    ``caller`` names the function in the error messages.
    """
    seg = np.asarray(seg)
    if seg.ndim not in (2, 3):
        raise ValueError(f"{caller} expects a 2D or 3D label map without a channel axis, got shape {seg.shape}. "
                         "Pass seg[0] for a (1, *spatial) segmentation.")
    if not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == bool):
        raise TypeError(f"{caller} expects an integer label map, got dtype {seg.dtype}. "
                        "Cast it first, e.g. seg.astype(np.int16).")
    return seg


#: value nnU-Net's cropping writes into preprocessed segmentations outside the non-zero mask
OUTSIDE_MASK_VALUE = -1


def declared_label_values(labels: Mapping[str, int | Sequence[int]]) -> set[int]:
    """Every integer value that dataset.json's ``"labels"`` declares (the ignore label included; a region
    contributes the labels it is made of). ``{"background": 0, "vessel": 1, "ignore": 3}`` -> ``{0, 1, 3}``."""
    values: set[int] = set()
    for value in labels.values():
        values.update(int(v) for v in np.atleast_1d(value))
    return values


def undeclared_values(present: Iterable[int], declared: set[int]) -> list[int]:
    """The values of ``present`` (e.g. ``np.unique(seg)``) that are not in ``declared``, ascending."""
    return sorted(int(v) for v in present if int(v) not in declared)


def undeclared_label_message(values: Sequence[int], where: str, declared: set[int]) -> str:
    """One message naming the undeclared values, where they are and the two fixes."""
    shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
    return (f"{where} holds label value(s) {shown} that dataset.json does not declare (it declares "
            f"{sorted(declared)}). Fix the labels (check them with nnUNetv2_plan_and_preprocess "
            f"--verify_dataset_integrity), or declare the value in dataset.json's \"labels\" (an unannotated value "
            f"such as 255 as \"ignore\": 255 if it is the highest label), then preprocess again.")
