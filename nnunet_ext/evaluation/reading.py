"""Reading segmentation files for evaluation: refuse truncated or corrupt files, drop nnU-Net's extra axes.

nnU-Net's SimpleITK reader reads a truncated ``.nii.gz`` (or ``.nii``) without a word and fills the missing
voxels (a case scored Dice 0.555 that way). :func:`check_complete` therefore checks, before the reader runs:

- every ``.gz`` file: the gzip stream decompresses to its end-of-stream marker (streamed, nothing kept);
- NIfTI files (``.nii``, ``.nii.gz``; NIfTI-1 and NIfTI-2 headers, either byte order): the (decompressed)
  file holds at least ``vox_offset + voxels * bitpix / 8`` bytes, the size its header declares.

Any other failure of the reader is reported with the file's name too (:class:`UnreadableFile`). Other formats
(.nrrd, .mha, .png, .tif, ...) rely on their reader's own checks.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from typing import Sequence

import numpy as np

_CHUNK = 1 << 20


class UnreadableFile(ValueError):
    """A segmentation file that is truncated, corrupt or cannot be read; the message names the file."""


def _gzip_payload(path: str) -> tuple[int, bytes]:
    """(decompressed size, first 540 decompressed bytes) of a complete gzip file; UnreadableFile otherwise."""
    total, head = 0, b""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as handle:
        try:
            while True:
                chunk = handle.read(_CHUNK)
                if not chunk:
                    break
                while chunk:
                    out = decompressor.decompress(chunk)
                    total += len(out)
                    if len(head) < 540:
                        head += out[:540 - len(head)]
                    chunk = b""
                    if decompressor.eof:  # a next gzip member (concatenated files are valid gzip)
                        chunk = decompressor.unused_data
                        if chunk and not chunk.strip(b"\0"):  # trailing zero padding, as gzip readers allow
                            chunk = b""
                        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS) if chunk else decompressor
        except zlib.error as error:
            raise UnreadableFile(f"{path} is not a valid gzip file ({error}): write it again") from None
    if not decompressor.eof:
        raise UnreadableFile(f"{path} is truncated: its gzip stream ends before the end-of-stream marker "
                             f"({os.path.getsize(path)} bytes on disk). Write the file again (an interrupted "
                             "copy or export?).")
    return total, head


def _nifti_expected_size(head: bytes) -> int | None:
    """Bytes a NIfTI-1/-2 file must hold according to its header (None if ``head`` is not a NIfTI header)."""
    for order in "<>":
        if len(head) >= 348 and struct.unpack(order + "i", head[:4])[0] == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            offset = struct.unpack(order + "f", head[108:112])[0]
            header_size = 352
            break
        if len(head) >= 540 and struct.unpack(order + "i", head[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
            header_size = 544
            break
    else:
        return None
    n_dims = int(dims[0])
    if not 1 <= n_dims <= 7 or bitpix <= 0:
        return None
    voxels = math.prod(max(int(d), 1) for d in dims[1:n_dims + 1])
    return int(max(offset, header_size)) + voxels * int(bitpix) // 8


def check_complete(path: str) -> None:
    """Raise :class:`UnreadableFile` (naming ``path``) if the file is truncated or corrupt (module docstring)."""
    name = path.lower()
    if name.endswith(".gz"):
        size, head = _gzip_payload(path)
    elif name.endswith(".nii"):
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(540)
    else:
        return
    if name.endswith((".nii", ".nii.gz")):
        expected = _nifti_expected_size(head)
        if expected is None:
            raise UnreadableFile(f"{path} has no valid NIfTI header: write the file again")
        if size < expected:
            raise UnreadableFile(f"{path} is truncated: it holds {size} bytes of NIfTI data but its header declares "
                                 f"{expected}. Write the file again (an interrupted copy or export?).")


def is_nnunet_2d(shape: Sequence[int], spacing: Sequence[float]) -> bool:
    """Whether nnU-Net's reader marked a 2D image: shape (1, X, Y) with the dummy spacing 999 x the largest."""
    return len(shape) == 3 and shape[0] == 1 and len(spacing) == 3 and \
        float(spacing[0]) >= 999 * max(float(s) for s in spacing[1:]) * (1 - 1e-6)


def to_spatial(seg: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """nnU-Net's ``(1, *spatial)`` segmentation and ``properties['spacing']`` -> (2D or 3D array, spacing).

    2D files (read as ``(1, 1, X, Y)`` with spacing ``(999 * s, sx, sy)``) become ``(X, Y)``; 3D files stay 3D,
    also with a length-1 axis (the metrics decide what to do with it, see their modules)."""
    seg = np.asarray(seg)
    if seg.ndim == 4 and seg.shape[0] == 1:
        seg = seg[0]
    spacing = tuple(float(s) for s in spacing)
    if seg.ndim != len(spacing):
        raise ValueError(f"segmentation of shape {seg.shape} with spacing {spacing}: expected one spacing per axis")
    if is_nnunet_2d(seg.shape, spacing):
        return seg[0], spacing[1:]
    return seg, spacing


def read_segmentation(reader, path: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """(label map without channel axis, spacing in mm per axis) of ``path`` read with nnU-Net's ``reader``."""
    check_complete(path)
    try:
        seg, properties = reader.read_seg(path)
    except Exception as error:  # the readers raise RuntimeError, OSError, ...: name the file instead
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise UnreadableFile(f"cannot read {path}: {first_line}") from None
    return to_spatial(seg, properties["spacing"])


def label_values(seg: np.ndarray) -> list[int]:
    """The distinct values of a label map, ascending (non-integer values rounded down, as nnU-Net casts)."""
    seg = np.asarray(seg)
    if seg.size == 0:
        return []
    low, high = float(seg.min()), float(seg.max())
    if low >= 0 and high < 1 << 16:  # the usual case: a histogram is much faster than np.unique's sort
        counts = np.bincount(seg.astype(np.int64, copy=False).ravel(), minlength=1)
        return [int(v) for v in np.flatnonzero(counts)]
    return [int(v) for v in np.unique(seg.astype(np.int64))]
