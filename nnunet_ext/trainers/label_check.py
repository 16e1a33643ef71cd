"""Trainer mixin: the preprocessed labels are checked against dataset.json before the data loaders start.

Without ``--verify_dataset_integrity``, nnU-Net plans and preprocesses a dataset whose label maps hold values that
dataset.json does not declare (255 without an ignore label, a gap in the labels); training then crashes inside
the data-augmentation workers ("index 255 is out of bounds", "background workers are no longer alive"). Here
every case of the fold's training and validation split is read once (segmentations only, in threads) and the
first problem stops training with one message naming the value, the case and the fix.

``NNUNET_EXT_CHECK_LABELS=0`` skips the check (it reads every segmentation once: seconds for most datasets).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from nnunetv2.configuration import default_num_processes
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

from nnunet_ext.core.labelmaps import (OUTSIDE_MASK_VALUE, declared_label_values, undeclared_label_message,
                                       undeclared_values)
from nnunet_ext.errors import UserInputError

SWITCH = "NNUNET_EXT_CHECK_LABELS"


def present_values(seg: np.ndarray) -> np.ndarray:
    """The distinct values of an integer label map, ascending (a bincount: faster than np.unique on volumes)."""
    seg = np.asarray(seg)
    if seg.size == 0:
        return np.zeros(0, dtype=np.int64)
    low, high = int(seg.min()), int(seg.max())
    if high - low > 1 << 16:  # a wide range (corrupt data): fall back to sorting
        return np.unique(seg).astype(np.int64)
    counts = np.bincount((seg.ravel().astype(np.int64) - low))
    return np.flatnonzero(counts).astype(np.int64) + low


def consecutive_labels_problem(labels: dict) -> str | None:
    """A message when dataset.json's labels (the ignore label aside; label mode) are not 0, 1, ..., K, else None."""
    values = sorted(int(v) for name, v in labels.items() if name != "ignore")
    if values != list(range(len(values))):
        return (f"dataset.json's labels {values} are not consecutive from 0 (nnU-Net needs 0, 1, ..., K; the ignore "
                "label, if any, is the highest value). Renumber the labels in the images and dataset.json, then "
                "preprocess again (nnUNetv2_plan_and_preprocess --verify_dataset_integrity checks this).")
    return None


class LabelCheckMixin:
    """Checks the fold's preprocessed segmentations against dataset.json's labels before training starts."""

    def check_preprocessed_labels(self) -> None:
        """UserInputError naming the first case with an undeclared value (and the fix)."""
        labels = self.dataset_json["labels"]
        if not self.label_manager.has_regions:
            problem = consecutive_labels_problem(labels)
            if problem:
                raise UserInputError(problem)
        declared = declared_label_values(labels) | {OUTSIDE_MASK_VALUE}
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        jobs = [(dataset, key) for dataset in (dataset_tr, dataset_val) for key in dataset.identifiers]

        def undeclared(job) -> tuple[str, list[int]]:
            dataset, key = job
            seg = dataset.load_case(key)[1]
            return key, undeclared_values(present_values(seg[:]), declared)

        with ThreadPoolExecutor(max(1, min(default_num_processes, len(jobs)))) as pool:
            for key, values in pool.map(undeclared, jobs):
                if values:
                    where = f"case {key} (preprocessed in {self.preprocessed_dataset_folder})"
                    raise UserInputError(undeclared_label_message(values, where, declared - {OUTSIDE_MASK_VALUE}))

    def get_dataloaders(self):
        if os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "f", "no"):
            self.check_preprocessed_labels()
        return super().get_dataloaders()
