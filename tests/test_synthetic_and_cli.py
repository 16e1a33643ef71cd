"""The synthetic dataset writer and the nnunet-ext command line (in-process)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext import cli, trainers
from nnunet_ext.trainers import registry
from nnunet_ext.trainers.discovery import trainer_folder
from nnunet_ext.testing.synthetic import tubular_case, write_tubular_dataset


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.parametrize("shape,n_classes", [((64, 64), 1), ((64, 64), 3), ((24, 24, 24), 2)])
def test_tubular_case_is_deterministic_by_seed(shape, n_classes):
    image_a, label_a = tubular_case(shape, n_classes, seed=7)
    image_b, label_b = tubular_case(shape, n_classes, seed=7)
    _, label_c = tubular_case(shape, n_classes, seed=8)
    assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)
    assert not np.array_equal(label_a, label_c)
    assert image_a.shape == label_a.shape == shape and image_a.dtype == np.float32
    assert set(np.unique(label_a)) <= set(range(n_classes + 1)) and label_a.any()
    # tubes are brighter than background on average: the task is learnable
    assert image_a[label_a > 0].mean() > image_a[label_a == 0].mean() + 0.2


@pytest.mark.parametrize("options,expected_labels", [
    (dict(n_classes=1), {"background": 0, "tube_1": 1}),
    (dict(n_classes=2, ignore_label=True), {"background": 0, "tube_1": 1, "tube_2": 2, "ignore": 3}),
    (dict(n_classes=2, regions=True), {"background": 0, "any_tube": [1, 2], "tube_2": 2}),
])
def test_write_tubular_dataset_layout(tmp_path, options, expected_labels):
    folder = Path(write_tubular_dataset(7, dim=2, n_train=3, n_test=1, shape=(32, 32), seed=1,
                                        raw_root=str(tmp_path), **options))
    assert folder.name == "Dataset007_Tubes2D"
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == expected_labels and dataset["numTraining"] == 3
    assert ("regions_class_order" in dataset) == bool(options.get("regions"))
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"tube_{i:04d}_0000.nii.gz" for i in range(3)]
    assert [p.name for p in (folder / "labelsTs").iterdir()] == ["tube_0003.nii.gz"]
    labels = np.concatenate([_read(p).ravel() for p in (folder / "labelsTr").iterdir()])
    allowed = {0, 1, 2, 3} if options.get("ignore_label") else set(range(options["n_classes"] + 1))
    assert set(np.unique(labels)) <= allowed
    if options.get("ignore_label"):
        assert 3 in labels


def test_write_tubular_dataset_needs_nnunet_raw(monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(RuntimeError, match="nnUNet_raw is not set"):
        write_tubular_dataset(1)


def test_cli_trainer_path_and_trainer_list(capsys):
    assert cli.main(["trainer-path"]) == 0
    assert capsys.readouterr().out.strip() == trainer_folder()
    assert cli.main(["trainers"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert listed == trainers.__all__
    assert {"nnUNetTrainerSkelRecall", "nnUNetTrainerSkelRecall_w0p1", "nnUNetTrainerSkelRecall_short",
            "nnUNetTrainer_short"} <= set(listed)


def test_cli_unknown_benchmark_names_the_available_ones():
    from nnunet_ext.benchmarks import BENCHMARKS
    assert {"skeleton_recall", "losses", "border_weight", "unetpp"} <= set(BENCHMARKS)
    with pytest.raises(SystemExit, match="unknown benchmark 'nope'; available: " + ", ".join(BENCHMARKS)):
        cli.main(["benchmark", "nope"])


@pytest.mark.parametrize("arch,loss,variant,short,expected", [
    ("", "SkelRecall", "", False, "nnUNetTrainerSkelRecall"),
    ("", "SkelRecall", "w0p1", True, "nnUNetTrainerSkelRecall_w0p1_short"),
    ("", "", "", True, "nnUNetTrainer_short"),
])
def test_naming_rule(arch, loss, variant, short, expected):
    assert registry.trainer_name(arch, loss, variant, short) == expected
    assert hasattr(trainers, expected)


@pytest.mark.parametrize("kwargs,message", [
    (dict(architecture="NoNet"), "unknown architecture 'NoNet'"),
    (dict(loss="NoLoss"), "unknown loss 'NoLoss'"),
    (dict(loss="SkelRecall", variant="w9"), "has a variant 'w9'"),
])
def test_naming_rule_rejects_unknown_names(kwargs, message):
    with pytest.raises(KeyError, match=message):
        registry.trainer_name(**kwargs)


def test_skeleton_recall_benchmark_tube_section_runs_and_checks_identity(capsys):
    assert cli.main(["benchmark", "skeleton_recall", "--only", "tube", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("2D 512", "3D 128"))]
    assert len(rows) >= 4 and all(line.split()[-1] == "yes" for line in rows)  # fast tube identical to reference
