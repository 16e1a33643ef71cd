"""Checks shared by the functions that take a 2D/3D label map (tube, border weight map)."""
from __future__ import annotations

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
