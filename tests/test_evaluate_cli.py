"""``nnunet-ext evaluate`` on small folders of synthetic tubes (subprocess) and evaluate_folders (in-process)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from skimage.morphology import skeletonize

from nnunet_ext.evaluation.folders import evaluate_folders
from nnunet_ext.testing.synthetic import tubular_case

NNUNET_EXT = Path(sys.executable).parent / "nnunet-ext"
METRICS_2D = {"Dice", "clDice", "Betti0_error", "Betti1_error"}
METRICS_3D = METRICS_2D | {"Betti2_error"}


def _write(array: np.ndarray, path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), useCompression=True)


def _n_components(mask: np.ndarray) -> int:
    """Independent of the code under test: scipy labelling with full (8/26) connectivity."""
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim))[1]


def _cut_gap(label: np.ndarray, value: int) -> np.ndarray:
    """Copy of ``label`` with one tube of class ``value`` cut in two (exactly one more component)."""
    mask = label == value
    skeleton = np.argwhere(skeletonize(mask))
    for point in skeleton[len(skeleton) // 3:]:
        box = tuple(slice(max(int(c) - 3, 0), int(c) + 4) for c in point)
        broken = label.copy()
        broken[box][broken[box] == value] = 0
        if _n_components(broken == value) == _n_components(mask) + 1:
            return broken
    raise AssertionError("no cut point found for this synthetic case")


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1"}
    return subprocess.run([str(NNUNET_EXT), "evaluate", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def folders_3d(tmp_path_factory) -> tuple[Path, Path]:
    """2 cases of 2 classes, 32^3: case 0 predicted perfectly, case 1 with a gap cut in a class-1 tube."""
    root = tmp_path_factory.mktemp("eval3d")
    ref, pred = root / "ref", root / "pred"
    ref.mkdir()
    pred.mkdir()
    for i in range(2):
        _, label = tubular_case((32, 32, 32), n_classes=2, seed=i)
        _write(label, ref / f"case_{i}.nii.gz")
        _write(label if i == 0 else _cut_gap(label, 1), pred / f"case_{i}.nii.gz")
    return ref, pred


@pytest.fixture(scope="module")
def folders_2d(tmp_path_factory) -> tuple[Path, Path]:
    """2D cases (nnU-Net reads them as (1, 1, X, Y)); case 1 broken in class 1."""
    root = tmp_path_factory.mktemp("eval2d")
    ref, pred = root / "ref", root / "pred"
    ref.mkdir()
    pred.mkdir()
    for i in range(2):
        _, label = tubular_case((64, 64), n_classes=1, seed=10 + i)
        _write(label, ref / f"case_{i}.nii.gz")
        _write(label if i == 0 else _cut_gap(label, 1), pred / f"case_{i}.nii.gz")
    return ref, pred


def test_evaluate_3d_json_values_and_plot(folders_3d):
    ref, pred = folders_3d
    plot = pred.parent / "plots" / "topology.png"
    result = _run(str(ref), str(pred), "--plot", str(plot), "-np", "2")
    assert result.returncode == 0, result.stderr
    output = pred / "summary_topology.json"
    assert str(output) in result.stdout and "foreground mean: Dice" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads(output.read_text())
    assert set(summary) == {"metric_per_case", "mean", "foreground_mean"}
    assert set(summary["mean"]) == {"1", "2"} and set(summary["foreground_mean"]) == METRICS_3D
    perfect, broken = summary["metric_per_case"]
    assert perfect["reference_file"] == str(ref / "case_0.nii.gz")
    assert broken["prediction_file"] == str(pred / "case_1.nii.gz")
    for label in ("1", "2"):
        assert perfect["metrics"][label] == {"Dice": 1.0, "clDice": 1.0, "Betti0_error": 0, "Betti1_error": 0,
                                             "Betti2_error": 0}
    assert broken["metrics"]["2"]["Dice"] == 1.0 and broken["metrics"]["2"]["Betti0_error"] == 0
    cut = broken["metrics"]["1"]
    assert cut["Betti0_error"] == 1 and cut["Dice"] < 1 and cut["clDice"] < 1
    assert summary["mean"]["1"]["Betti0_error"] == 0.5
    assert summary["mean"]["1"]["clDice"] == pytest.approx((1 + cut["clDice"]) / 2)
    assert summary["foreground_mean"]["Dice"] == pytest.approx(
        (summary["mean"]["1"]["Dice"] + summary["mean"]["2"]["Dice"]) / 2)


def test_evaluate_label_subset_and_regions(folders_3d, tmp_path):
    ref, pred = folders_3d
    output = tmp_path / "subset.json"
    result = _run(str(ref), str(pred), "-o", str(output), "-l", "2", "1,2", "-np", "1")
    assert result.returncode == 0, result.stderr
    summary = json.loads(output.read_text())
    assert set(summary["mean"]) == {"2", "(1, 2)"}
    assert all(set(case["metrics"]) == {"2", "(1, 2)"} for case in summary["metric_per_case"])
    assert summary["metric_per_case"][0]["metrics"]["(1, 2)"]["Dice"] == 1.0


def test_evaluate_missing_prediction_is_a_clear_error(folders_3d, tmp_path):
    ref, pred = folders_3d
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "case_0.nii.gz").write_bytes((pred / "case_0.nii.gz").read_bytes())
    result = _run(str(ref), str(partial), "-np", "1")
    assert result.returncode == 1
    assert "1 of 2 reference files have no prediction" in result.stderr and "case_1.nii.gz" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (partial / "summary_topology.json").exists()


def test_2d_cases_have_no_betti2_and_empty_classes_are_nan(folders_2d, tmp_path):
    ref, pred = folders_2d
    summary = evaluate_folders(str(ref), str(pred), str(tmp_path / "s.json"), labels=[1, 2], num_processes=1)
    case_perfect, case_broken = summary["metric_per_case"]
    assert set(case_perfect["metrics"][1]) == METRICS_2D
    assert case_perfect["metrics"][1] == {"Dice": 1.0, "clDice": 1.0, "Betti0_error": 0, "Betti1_error": 0}
    assert case_broken["metrics"][1]["Betti0_error"] == 1
    # label 2 is in no file: Dice/clDice NaN per case and in the mean; Betti errors 0; the foreground mean
    # of Dice is then NaN (nnU-Net's convention: plain mean over labels), the Betti errors' are not
    assert math.isnan(case_perfect["metrics"][2]["clDice"]) and math.isnan(summary["mean"][2]["Dice"])
    assert summary["mean"][2]["Betti0_error"] == 0.0
    assert math.isnan(summary["foreground_mean"]["Dice"])
    assert summary["foreground_mean"]["Betti0_error"] == pytest.approx(0.25)
    on_disk = json.loads((tmp_path / "s.json").read_text())  # NaN is written as NaN, like nnU-Net
    assert set(on_disk["mean"]) == {"1", "2"} and math.isnan(on_disk["mean"]["2"]["clDice"])


def test_labels_from_dataset_json_with_regions_and_ignore(folders_2d, tmp_path):
    ref, pred = folders_2d
    dataset = {"labels": {"background": 0, "any": [1, 2], "tube_2": 2, "ignore": 3}, "regions_class_order": [1, 2],
               "file_ending": ".nii.gz", "channel_names": {"0": "x"}, "numTraining": 2}
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    summary = evaluate_folders(str(ref), str(pred), dataset_json=str(tmp_path / "dataset.json"), num_processes=1)
    assert list(summary["mean"]) == [(1, 2), 2]
    assert summary["metric_per_case"][1]["metrics"][(1, 2)]["Betti0_error"] == 1
    # default labels without dataset.json: every label > 0 in the references
    assert list(evaluate_folders(str(ref), str(pred), num_processes=1)["mean"]) == [1]


def test_unreadable_inputs_name_the_fix(tmp_path):
    (tmp_path / "ref").mkdir()
    with pytest.raises(FileNotFoundError, match="no segmentation file"):
        evaluate_folders(str(tmp_path / "ref"), str(tmp_path / "ref"))
    with pytest.raises(FileNotFoundError, match="prediction folder"):
        evaluate_folders(str(tmp_path / "ref"), str(tmp_path / "nope"))
