"""Hand-built label maps whose tubed skeleton is known without computing one: straight bars.

A bar 5 pixels thick (2D) or a rod with a 3 x 3 cross-section (3D) thins to its centre line (away from its ends,
where Zhang's and Lee's algorithms shorten or bend it), and the tube, two dilations with the cross (every voxel
within L1 distance 2), covers the whole cross-section there: in the middle section the tube equals the label.
"""
from __future__ import annotations

import numpy as np

SHAPES = {2: (32, 20), 3: (7, 14, 20)}


def bars(dim: int, values=(1,)) -> tuple[np.ndarray, list[tuple[slice, ...]]]:
    """A label map with one bar per value (separate, parallel), and the middle section of each bar."""
    seg = np.zeros(SHAPES[dim], np.int16)
    middles = []
    for i, value in enumerate(values):
        if dim == 2:
            rows = slice(4 + 14 * i, 9 + 14 * i)
            seg[rows, 2:18] = value
            middles.append((rows, slice(4, 15)))
        else:
            rows = slice(2 + 7 * i, 5 + 7 * i)
            seg[2:5, rows, 2:18] = value
            middles.append((slice(2, 5), rows, slice(4, 16)))
    return seg, middles


def assert_bar_tube(tube: np.ndarray, seg: np.ndarray, middles: list[tuple[slice, ...]]) -> None:
    """The tube lies inside the label, carries its values, and equals it in every bar's middle section."""
    tube = np.asarray(tube)
    assert tube.shape == seg.shape
    assert not tube[seg == 0].any()
    inside = tube != 0
    assert np.array_equal(tube[inside], seg[inside].astype(tube.dtype))
    for middle in middles:
        assert np.array_equal(tube[middle], seg[middle].astype(tube.dtype))
