"""The topology summary after fold validation: switched off, failing, or timed, nnU-Net's validation stands."""
from __future__ import annotations

import pytest

from nnunet_ext.trainers.topology_summary import TopologySummaryMixin


class _NnunetValidation:
    """Stands in for nnUNetTrainer: its validation just records that it ran."""

    local_rank = 0

    def __init__(self, labels: dict | None = None):
        self.log: list[str] = []
        self.validated = False
        self.dataset_json = {"labels": labels or {"background": 0, "vessel": 1}}

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.validated = True

    def print_to_log_file(self, *args, **kwargs):
        self.log.append(" ".join(str(a) for a in args))


class _Trainer(TopologySummaryMixin, _NnunetValidation):
    calls = 0

    def write_topology_summary(self):
        type(self).calls += 1
        return 4, "Dice 0.9000"


class _Failing(_Trainer):
    def write_topology_summary(self):
        raise OSError("disk full")


def test_summary_runs_and_logs_its_time_per_case(monkeypatch):
    monkeypatch.delenv("NNUNET_EXT_TOPOLOGY_SUMMARY", raising=False)
    trainer = _Trainer()
    trainer.perform_actual_validation()
    assert trainer.validated and _Trainer.calls == 1
    assert any("s per case" in line and "4 cases" in line for line in trainer.log)


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_environment_switch_turns_it_off(monkeypatch, value):
    monkeypatch.setenv("NNUNET_EXT_TOPOLOGY_SUMMARY", value)
    before = _Trainer.calls
    trainer = _Trainer()
    trainer.perform_actual_validation()
    assert trainer.validated and _Trainer.calls == before


def test_class_attribute_turns_it_off_and_the_variable_back_on(monkeypatch):
    class Quiet(_Trainer):
        topology_summary = False

    before = Quiet.calls
    monkeypatch.delenv("NNUNET_EXT_TOPOLOGY_SUMMARY", raising=False)
    Quiet().perform_actual_validation()
    assert Quiet.calls == before
    monkeypatch.setenv("NNUNET_EXT_TOPOLOGY_SUMMARY", "1")
    Quiet().perform_actual_validation()
    assert Quiet.calls == before + 1


def test_a_failure_is_a_warning_not_a_failed_run(monkeypatch):
    monkeypatch.delenv("NNUNET_EXT_TOPOLOGY_SUMMARY", raising=False)
    trainer = _Failing()
    trainer.perform_actual_validation()  # does not raise
    assert trainer.validated
    warning = next(line for line in trainer.log if line.startswith("WARNING"))
    assert "OSError: disk full" in warning and "NNUNET_EXT_TOPOLOGY_SUMMARY=0" in warning


@pytest.mark.parametrize("labels,setting,expected", [
    ({"background": 0, "membrane": 1}, None, {"instance_labels": (0,)}),
    ({"background": 0, "cell boundaries": 1}, None, {"instance_labels": (0,)}),
    ({"background": 0, "vessel": 1}, None, {}),
    ({"background": 0, "nucleus": 1}, True, {"instance_metrics": True}),
    ({"background": 0, "membrane": 1}, False, {}),
])
def test_instance_metrics_for_membrane_datasets(labels, setting, expected):
    trainer = _Trainer(labels)
    trainer.instance_metrics = setting
    assert trainer.instance_options() == expected
