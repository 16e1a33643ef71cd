"""Trainer mixin: topology metrics of the fold's validation, next to nnU-Net's ``validation/summary.json``.

After nnU-Net's own fold validation, ``validation/summary_topology.json`` gets Dice, clDice and Betti errors per
label/region of the validation cases against nnU-Net's ``gt_segmentations`` (shaped like nnU-Net's summary; see
``nnunet-ext evaluate``). It never changes nnU-Net's results or the run's exit status: a failure is logged as a
warning. Switch it off with ``NNUNET_EXT_TOPOLOGY_SUMMARY=0`` or the class attribute ``topology_summary = False``.
Its time per case is logged.
"""
from __future__ import annotations

import os
import time
import traceback

from nnunetv2.configuration import default_num_processes

SWITCH = "NNUNET_EXT_TOPOLOGY_SUMMARY"


def switched_on(default: bool) -> bool:
    value = os.environ.get(SWITCH, "").strip().lower()
    if not value:
        return default
    return value not in ("0", "false", "f", "no", "off")


class TopologySummaryMixin:
    """Writes ``validation/summary_topology.json`` after nnU-Net's fold validation (see module docstring)."""

    topology_summary: bool = True

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

    def write_topology_summary(self) -> tuple[int, str]:
        """Evaluates the fold's validation folder; returns (number of cases, the foreground means as text)."""
        from nnunet_ext.evaluation.folders import evaluate_folders
        validation = os.path.join(self.output_folder, "validation")
        ending = self.dataset_json["file_ending"]
        cases = sorted(f for f in os.listdir(validation) if f.endswith(ending))
        if not cases:
            return 0, ""
        summary = evaluate_folders(os.path.join(self.preprocessed_dataset_folder_base, "gt_segmentations"),
                                   validation, output_file=os.path.join(validation, "summary_topology.json"),
                                   dataset_json=self.dataset_json, num_processes=default_num_processes,
                                   case_names=cases)
        return len(cases), ", ".join(f"{k} {v:.4f}" for k, v in summary["foreground_mean"].items())
