"""The shared plumbing of the synthetic dataset writers: argument checks, nnU-Net raw layout, safe replacement.

Every writer (:mod:`~nnunet_ext.testing.context`, :mod:`~nnunet_ext.testing.em`, :mod:`~nnunet_ext.testing.trees`)
checks all its arguments first, then calls :func:`write_raw_dataset` with a ``fill(folder)`` callback::

    raw_root = checked_raw_root(raw_root)                 # $nnUNet_raw, or a clear error naming the export
    folder = write_raw_dataset(raw_root, 990, "Cells3D", overwrite, fill)

``fill`` writes into a hidden staging folder; only when it returned is the staging folder renamed to
``Dataset{ID:03d}_{name}``. An existing id (any ``Dataset{ID:03d}_*`` folder) is refused unless ``overwrite``,
and then exactly those folders are removed, after the new dataset is complete: an error or Ctrl-C never leaves a
half-written dataset and never mixes old and new cases.

Images are written with their spacing (:func:`write_image`, spacing in numpy axis order, as nnU-Net reports it).
Bad arguments raise :class:`DatasetArgumentError`, which is both a :class:`~nnunet_ext.errors.UserInputError` (the
CLI prints its one line) and a ``ValueError`` (Python callers catching ``ValueError`` keep working).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ext.errors import UserInputError

MIN_SIZE = 8           # smallest image size per axis the generators accept
MAX_DATASET_ID = 999   # nnU-Net names datasets Dataset%03d_<name>
SPLIT_FOLDERS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
INSTANCES_FOLDER = "instancesTs"


class DatasetArgumentError(UserInputError, ValueError):
    """A generator argument is invalid; the message names the argument and what it must be."""


def check_int(value, what: str, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (bools refused); DatasetArgumentError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DatasetArgumentError(f"{what} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise DatasetArgumentError(f"{what} must be {bound}, got {value}")
    return int(value)


def check_float(value, what: str, minimum: float | None = None, maximum: float | None = None,
                strict_minimum: bool = False) -> float:
    """``value`` as a finite float within the bounds; DatasetArgumentError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        raise DatasetArgumentError(f"{what} must be a finite number, got {value!r}")
    value = float(value)
    too_low = minimum is not None and (value <= minimum if strict_minimum else value < minimum)
    if too_low or (maximum is not None and value > maximum):
        low = "" if minimum is None else (f"> {minimum}" if strict_minimum else f">= {minimum}")
        high = "" if maximum is None else f"<= {maximum}"
        raise DatasetArgumentError(f"{what} must be {' and '.join(b for b in (low, high) if b)}, got {value}")
    return value


def check_range(value, what: str, minimum: float = 0.0) -> tuple[float, float]:
    """A (low, high) pair of finite numbers with minimum < low <= high."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, Sequence) or len(value) != 2:
        raise DatasetArgumentError(f"{what} must be a (low, high) pair, got {value!r}")
    low = check_float(value[0], f"{what}[0]", minimum, strict_minimum=True)
    high = check_float(value[1], f"{what}[1]", minimum, strict_minimum=True)
    if low > high:
        raise DatasetArgumentError(f"{what} must be (low, high) with low <= high, got {tuple(value)}")
    return low, high


def check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim not in (2, 3):
        raise DatasetArgumentError(f"dim (--dim) must be 2 or 3, got {dim!r}")
    return int(dim)


def _per_axis(values, dim: int, what: str, example: str, noun: str = "value") -> tuple:
    """``values`` as a tuple of ``dim`` entries; DatasetArgumentError naming ``what`` and an example otherwise."""
    try:
        values = tuple(values)
    except TypeError:
        raise DatasetArgumentError(f"{what} must be {dim} {noun}s, e.g. {example}, got {values!r}") from None
    if len(values) != dim:
        raise DatasetArgumentError(f"{what} {values} has {len(values)} {noun}(s) but dim={dim} needs {dim}, "
                                   f"e.g. {example}")
    return values


def checked_shape(shape: Sequence[int], dim: int, minimum: int = MIN_SIZE, what: str = "shape (--shape)"
                  ) -> tuple[int, ...]:
    """``shape`` with ``dim`` sizes, each an integer >= ``minimum``."""
    shape = _per_axis(shape, dim, what, "--shape " + " ".join(["64"] * dim), noun="size")
    for size in shape:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < minimum:
            raise DatasetArgumentError(f"every size in {what} must be an integer >= {minimum}, got {shape}")
    return tuple(int(size) for size in shape)


def checked_spacing(spacing: Sequence[float], dim: int) -> tuple[float, ...]:
    """``spacing`` (numpy axis order) with ``dim`` finite positive values."""
    spacing = _per_axis(spacing, dim, "spacing (--spacing, axis 0 first)", " ".join(["1.0"] * dim))
    return tuple(check_float(s, "every value in spacing (--spacing)", 0.0, strict_minimum=True) for s in spacing)


def checked_name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise DatasetArgumentError(f"name must be letters, digits, '_' or '-' (it becomes Dataset<ID>_<name>), "
                                   f"got {name!r}")
    return name


def checked_counts(n_train, n_test) -> tuple[int, int]:
    """(n_train >= 1, n_test >= 0)."""
    return check_int(n_train, "n_train (--n-train)", 1), check_int(n_test, "n_test (--n-test)", 0)


def checked_raw_root(raw_root: str | os.PathLike | None) -> str:
    """``raw_root``, else ``$nnUNet_raw``; UserInputError naming the fix when neither is set."""
    raw_root = os.fspath(raw_root) if raw_root else os.environ.get("nnUNet_raw")
    if not raw_root:
        raise UserInputError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (the folder that holds "
                             "nnU-Net's raw datasets) and run the command again")
    if os.path.exists(raw_root) and not os.path.isdir(raw_root):
        raise UserInputError(f"nnUNet_raw={raw_root} is a file, not a folder: point nnUNet_raw at a folder")
    return raw_root


def existing_datasets(raw_root: str, dataset_id: int) -> list[str]:
    """Every folder ``Dataset{ID:03d}_*`` in ``raw_root`` (nnU-Net refuses an id that names more than one)."""
    if not os.path.isdir(raw_root):
        return []
    prefix = f"Dataset{dataset_id:03d}_"
    return sorted(os.path.join(raw_root, entry) for entry in os.listdir(raw_root)
                  if entry.startswith(prefix) and os.path.isdir(os.path.join(raw_root, entry)))


def refuse_existing(raw_root: str, dataset_id: int, overwrite: bool) -> list[str]:
    """The folders of ``dataset_id`` that ``overwrite`` will replace; UserInputError if there are some and not
    ``overwrite``."""
    if not isinstance(overwrite, bool):
        raise DatasetArgumentError(f"overwrite must be True or False, got {overwrite!r}")
    existing = existing_datasets(raw_root, dataset_id)
    if existing and not overwrite:
        raise UserInputError(f"dataset id {dataset_id} already exists in {raw_root}: "
                             f"{', '.join(os.path.basename(e) for e in existing)}; pass --overwrite (Python: "
                             "overwrite=True) to replace it, or choose another id")
    return existing


def write_raw_dataset(raw_root: str, dataset_id: int, name: str, overwrite: bool,
                      fill: Callable[[str], None]) -> str:
    """Write ``raw_root/Dataset{ID:03d}_{name}`` with ``fill(folder)`` and return its path (see the module doc)."""
    dataset_id = check_int(dataset_id, "dataset_id", 1, MAX_DATASET_ID)
    existing = refuse_existing(raw_root, dataset_id, overwrite)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{checked_name(name)}")
    os.makedirs(raw_root, exist_ok=True)
    staging = os.path.join(raw_root, f".{os.path.basename(folder)}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(staging)  # (not tempfile.mkdtemp: its 0700 mode would stay on the dataset folder)
        fill(staging)
        for old in existing:
            shutil.rmtree(old)
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def make_case_folders(folder: str, instances: bool = False) -> None:
    """imagesTr, labelsTr, imagesTs, labelsTs (and instancesTs) inside ``folder``."""
    for sub in SPLIT_FOLDERS + ((INSTANCES_FOLDER,) if instances else ()):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)


def write_image(array: np.ndarray, path: str, spacing: Sequence[float] | None = None) -> None:
    """Write ``array`` (numpy axis order) compressed, with ``spacing`` per numpy axis (default 1 everywhere).

    SimpleITK orders spacing x, y, z (the last numpy axis first); this reverses it, so that nnU-Net (which reverses
    it back) reports ``spacing`` as given."""
    spacing = tuple(float(s) for s in (spacing if spacing is not None else [1.0] * array.ndim))
    if len(spacing) != array.ndim:
        raise ValueError(f"spacing {spacing} does not match the array's {array.ndim} axes")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(spacing[::-1])
    sitk.WriteImage(image, path, useCompression=True)


def write_case(folder: str, split: str, case: str, image: np.ndarray, label: np.ndarray,
               spacing: Sequence[float] | None = None, instances: np.ndarray | None = None,
               file_ending: str = ".nii.gz") -> None:
    """One case in nnU-Net's layout: ``images{split}/{case}_0000``, ``labels{split}/{case}`` (and, for a held-out
    case with ``instances``, ``instancesTs/{case}``); ``split`` is "Tr" or "Ts"."""
    if split not in ("Tr", "Ts"):
        raise ValueError(f"split must be 'Tr' or 'Ts', got {split!r}")
    write_image(image.astype(np.float32, copy=False), os.path.join(folder, f"images{split}",
                                                                   f"{case}_0000{file_ending}"), spacing)
    write_image(label, os.path.join(folder, f"labels{split}", f"{case}{file_ending}"), spacing)
    if instances is not None and split == "Ts":
        write_image(instances.astype(np.int32, copy=False), os.path.join(folder, INSTANCES_FOLDER,
                                                                         f"{case}{file_ending}"), spacing)


def write_dataset_json(folder: str, labels: dict, n_train: int, name: str, description: str,
                       channel_names: dict | None = None, file_ending: str = ".nii.gz", **extra) -> dict:
    """nnU-Net's ``dataset.json`` (channel_names, labels, numTraining, file_ending, name, description, extras)."""
    content = {"channel_names": channel_names or {"0": "synthetic"}, "labels": labels, "numTraining": int(n_train),
               "file_ending": file_ending, "name": name, "description": description, **extra}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(content, f, indent=2)
    return content
