"""Trainer mixin: topology metrics of the fold's validation, next to nnU-Net's ``validation/summary.json``.

After nnU-Net's own fold validation, ``validation/summary_topology.json`` gets ``nnunet-ext evaluate``'s default
metrics (Dice, clDice, Betti errors, surface distances, component detection) per label/region of the validation
cases against nnU-Net's ``gt_segmentations``, shaped like nnU-Net's summary, plus the EM metrics (adapted Rand
error, variation of information) for membrane datasets (a label named like "membrane" or "boundary": the
instances are the connected regions between membranes) or when the trainer sets ``instance_metrics = True``
(instances: the connected components of each label). It never changes nnU-Net's results or the run's exit status: a failure is logged as a
warning. Switch it off with ``NNUNET_EXT_TOPOLOGY_SUMMARY=0`` or the class attribute ``topology_summary = False``.
Its time per case is logged.
"""
from __future__ import annotations

import os
import time
import traceback

from nnunetv2.configuration import default_num_processes

SWITCH = "NNUNET_EXT_TOPOLOGY_SUMMARY"
MEMBRANE_WORDS = ("membrane", "boundary", "boundaries")


def switched_on(default: bool) -> bool:
    value = os.environ.get(SWITCH, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "f", "no", "off")


class TopologySummaryMixin:
    """Writes ``validation/summary_topology.json`` after nnU-Net's fold validation (see module docstring)."""

    topology_summary: bool = True
    #: adapted Rand error and variation of information too; None: for membrane datasets only
    instance_metrics: bool | None = None

    def membrane_task(self) -> bool:
        """dataset.json names a label like a membrane or boundary (EM-style boundary segmentation)."""
        return any(word in name.lower() for name in self.dataset_json["labels"] for word in MEMBRANE_WORDS)

    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)
        if self.local_rank != 0 or not switched_on(self.topology_summary):
            return
        start = time.perf_counter()
        try:
            n_cases, means = self.write_topology_summary()
        except Exception as error:  # nnU-Net's validation is done and saved: never fail the run for this
            self.print_to_log_file(f"WARNING: the topology summary failed and was skipped ({type(error).__name__}: "
                                   f"{error}); nnU-Net's validation/summary.json is unaffected. Switch the summary "
                                   f"off with {SWITCH}=0.\n{traceback.format_exc()}")
            return
        if n_cases:
            seconds = time.perf_counter() - start
            self.print_to_log_file(f"Topology metrics (validation/summary_topology.json), foreground mean: {means}; "
                                   f"{seconds:.1f} s for {n_cases} cases ({seconds / n_cases:.2f} s per case)")

    def instance_options(self) -> dict:
        """evaluate_folders' instance-metric options for this dataset (see the module docstring)."""
        membranes = self.membrane_task()
        if not (self.instance_metrics or (self.instance_metrics is None and membranes)):
            return {}
        return {"instance_labels": (0,)} if membranes else {"instance_metrics": True}

    def write_topology_summary(self) -> tuple[int, str]:
        """Evaluates the fold's validation folder; returns (number of cases, the foreground means as text)."""
        from nnunet_ext.evaluation.folders import evaluate_folders
        validation = os.path.join(self.output_folder, "validation")
        ending = self.dataset_json["file_ending"]
        cases = sorted(f for f in os.listdir(validation) if f.endswith(ending))
        if not cases:
            return 0, ""
        from nnunet_ext.evaluation.compare import HEADLINE
        summary = evaluate_folders(os.path.join(self.preprocessed_dataset_folder_base, "gt_segmentations"),
                                   validation, output_file=os.path.join(validation, "summary_topology.json"),
                                   dataset_json=self.dataset_json, num_processes=default_num_processes,
                                   case_names=cases, progress=False, warn=self.print_to_log_file,
                                   **self.instance_options())
        means = summary["foreground_mean"]
        return len(cases), ", ".join(f"{k} {means[k]:.4f}" for k in HEADLINE if k in means)
