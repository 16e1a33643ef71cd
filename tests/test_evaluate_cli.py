"""``nnunet-ext evaluate`` as a user types it (subprocesses) on small synthetic folders written with SimpleITK,
and evaluate_folders in-process for the rest."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage
from skimage.morphology import skeletonize

from nnunet_ext.cli.nnunet_commands import run_command
from nnunet_ext.evaluation.folders import evaluate_folders
from nnunet_ext.evaluation.reading import UnreadableFile
from nnunet_ext.testing.synthetic import tubular_case

NNUNET_EXT = str(Path(sys.executable).parent / "nnunet-ext")
METRICS_2D = {"Dice", "clDice", "Betti0_error", "Betti1_error"}
SURFACE = {"HD95", "HD", "ASSD", "NSD"}
COMPONENTS = {"Comp_n_ref", "Comp_n_pred", "Comp_TP", "Comp_FP", "Comp_FN", "Comp_precision", "Comp_recall",
              "Comp_F1", "Comp_matched_IoU", "Comp_split", "Comp_merged"}
DEFAULT_3D = METRICS_2D | {"Betti2_error"} | SURFACE | COMPONENTS
SPACING_3D = (2.0, 0.8, 0.8)  # nnU-Net's order (z, y, x); SimpleITK's is reversed


def _write(array: np.ndarray, path: Path, spacing: tuple[float, ...] | None = None) -> None:
    image = sitk.GetImageFromArray(np.asarray(array, np.uint8))
    if spacing is not None:
        image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sitk.WriteImage(image, str(path), useCompression=True)


def _evaluate(*args: str):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "nnUNet_def_n_proc": "1"}
    return run_command([NNUNET_EXT, "evaluate", *args], env, timeout=300, check=False)


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


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: surfaces by scipy erosion (3^n neighbourhood, outside = background), exact EDT."""
    full = np.ones((3,) * a.ndim, bool)
    surf_a = a & ~ndimage.binary_erosion(a, full, border_value=0)
    surf_b = b & ~ndimage.binary_erosion(b, full, border_value=0)
    return (ndimage.distance_transform_edt(~surf_b, sampling=spacing)[surf_a],
            ndimage.distance_transform_edt(~surf_a, sampling=spacing)[surf_b])


@pytest.fixture(scope="module")
def folders_3d(tmp_path_factory) -> tuple[Path, Path]:
    """2 cases of 2 classes, 32^3, spacing 2.0 x 0.8 x 0.8 mm: case 0 perfect, case 1 with a gap in a class-1 tube."""
    root = tmp_path_factory.mktemp("eval3d")
    ref, pred = root / "ref", root / "pred"
    ref.mkdir()
    pred.mkdir()
    for i in range(2):
        _, label = tubular_case((32, 32, 32), n_classes=2, seed=i)
        _write(label, ref / f"case_{i}.nii.gz", SPACING_3D)
        _write(label if i == 0 else _cut_gap(label, 1), pred / f"case_{i}.nii.gz", SPACING_3D)
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


# --- subprocesses --------------------------------------------------------------------------------------

@pytest.mark.slow  # a spawn pool of workers
def test_evaluate_3d_anisotropic_default_families_csv_plots_in_parallel(folders_3d):
    ref, pred = folders_3d
    plot, table = pred.parent / "plots" / "topology.png", pred.parent / "out" / "metrics.csv"
    result = _evaluate(str(ref), str(pred), "--plot", str(plot), "--csv", str(table), "--nsd-tolerance", "1.5",
                       "-np", "2")
    assert result.returncode == 0, result.stderr
    output = pred / "summary_topology.json"
    cases_plot = plot.parent / "topology_cases.png"
    assert result.stdout.splitlines()[:4] == [str(output), str(table), str(plot), str(cases_plot)]
    assert "foreground mean: Dice" in result.stdout and "HD95" in result.stdout
    assert plot.read_bytes()[:8] == cases_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads(output.read_text())
    assert set(summary) == {"metric_per_case", "mean", "foreground_mean", "settings"}
    assert summary["settings"]["nsd_tolerance_mm"] == 1.5 and summary["settings"]["convention"] == "default"
    assert set(summary["mean"]) == {"1", "2"} and set(summary["foreground_mean"]) == DEFAULT_3D
    perfect, broken = summary["metric_per_case"]
    assert perfect["reference_file"] == str(ref / "case_0.nii.gz")
    for label in ("1", "2"):
        m = perfect["metrics"][label]
        assert (m["Dice"], m["clDice"], m["NSD"], m["Comp_F1"]) == (1.0, 1.0, 1.0, 1.0)
        assert (m["Betti0_error"], m["Betti1_error"], m["Betti2_error"], m["HD95"], m["Comp_split"]) == (0,) * 5
    cut = broken["metrics"]["1"]
    assert cut["Betti0_error"] == 1 and cut["Dice"] < 1 and cut["clDice"] < 1
    # the gap splits one reference tube into two predicted components
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(ref / "case_1.nii.gz"))) == 1
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "case_1.nii.gz"))) == 1
    assert (cut["Comp_n_ref"], cut["Comp_n_pred"]) == (_n_components(reference), _n_components(predicted))
    assert cut["Comp_split"] == 1 and cut["Comp_merged"] == 0
    # surface distances with the header's spacing, against scipy's exact distance transform
    d_pred, d_ref = _surface_distances(predicted, reference, SPACING_3D)
    assert cut["HD"] == pytest.approx(max(d_pred.max(), d_ref.max()))
    assert cut["HD95"] == pytest.approx(max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)))
    assert cut["NSD"] == pytest.approx((np.sum(d_pred <= 1.5) + np.sum(d_ref <= 1.5)) / (d_pred.size + d_ref.size))
    assert summary["mean"]["1"]["Betti0_error"] == 0.5
    assert summary["foreground_mean"]["HD"] == pytest.approx((cut["HD"] + broken["metrics"]["2"]["HD"]) / 4)

    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["case"], r["label"]) for r in rows] == [(f"case_{i}.nii.gz", label) for i in range(2)
                                                       for label in ("1", "2")]
    for row, (case, label) in zip(rows, [(c, lab) for c in summary["metric_per_case"] for lab in ("1", "2")]):
        assert row["prediction_file"] == case["prediction_file"]
        assert {k: float(row[k]) for k in DEFAULT_3D} == pytest.approx(case["metrics"][label])


def _topcow_case() -> tuple[np.ndarray, np.ndarray]:
    """A (1, 5, 22) volume as TopCoW's tests use: lines of labels 1 and 2, one voxel of label 4 (reference only)."""
    ref = np.zeros((1, 5, 22), np.uint8)
    ref[0, 1, 2:10] = 1
    ref[0, 3, 2:18] = 2
    ref[0, 0, 20] = 4
    pred = ref.copy()
    pred[0, 3, 9:11] = 0                # a 2-voxel gap in label 2
    pred[0, 0, 20] = 0
    return pred, ref


def test_evaluate_topcow_convention_chill_and_label_warnings(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    p, r = _topcow_case()
    p[0, 4, 0] = 9                      # a label nobody declares
    r[0, 4, 21] = 6                     # a reference value dataset.json does not declare
    spacing = (3.0, 1.0, 0.5)
    _write(r, ref / "a.nii.gz", spacing)
    _write(p, pred / "a.nii.gz", spacing)
    _write(r, ref / "b.nii.gz", spacing)  # not predicted: -chill skips it
    dataset = {"labels": {"background": 0, "l1": 1, "l2": 2, "l3": 3, "l4": 4}, "file_ending": ".nii.gz",
               "channel_names": {"0": "x"}, "numTraining": 2}
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    output = tmp_path / "out" / "topcow.json"
    result = _evaluate(str(ref), str(pred), "-djfile", str(tmp_path / "dataset.json"), "--convention", "topcow",
                       "-chill", "-o", str(output), "-np", "1", "--no-progress")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 3, result.stderr
    assert "-chill: 1 of 2 reference cases" in warnings[0] and "b.nii.gz" in warnings[0]
    assert "label 9" in warnings[1] and "a.nii.gz" in warnings[1] and "not scored" in warnings[1]
    assert "value(s) 6" in warnings[2] and "dataset.json does not declare" in warnings[2]

    summary = json.loads(output.read_text())
    assert summary["settings"]["convention"] == "topcow" and summary["settings"]["foreground_rule"] == "cases"
    (case,) = summary["metric_per_case"]
    metrics = case["metrics"]
    # TopCoW's clDice on the merged foreground, Lee thinning in 3D: tprec 22/22, tsens 22/25
    assert metrics["(1, 2, 3, 4)"] == {"clDice_TopCoW": pytest.approx(2 * (22 / 25) / (1 + 22 / 25))}
    assert metrics["4"]["HD95"] == 90.0 and metrics["4"]["Dice"] == 0.0
    assert math.isnan(metrics["3"]["Betti0_error"]) and math.isnan(metrics["3"]["Dice"])
    assert metrics["2"]["Dice"] == pytest.approx(28 / 30) and metrics["2"]["HD95"] == pytest.approx(0.5)
    # foreground mean: per case the mean over the labels present (1, 2, 4), then over cases
    fg = summary["foreground_mean"]
    assert fg["Dice"] == pytest.approx((1 + 28 / 30 + 0) / 3)
    assert fg["HD95"] == pytest.approx((0 + 0.5 + 90) / 3)
    assert fg["Betti0_error"] == pytest.approx((0 + 1 + 1) / 3)
    assert fg["clDice_TopCoW"] == pytest.approx(2 * (22 / 25) / (1 + 22 / 25))


def test_evaluate_2d_instances_from_a_folder_with_face_connectivity(tmp_path):
    ref, pred, instances = tmp_path / "ref", tmp_path / "pred", tmp_path / "instances"
    for folder in (ref, pred, instances):
        folder.mkdir()
    label = np.zeros((3, 6), np.uint8)
    label[1, 1:5] = 1
    ids = np.zeros((3, 6), np.uint8)
    ids[1, 1:3], ids[1, 3:5] = 7, 3     # two touching instances inside one component
    _write(label, ref / "c.nii.gz", (1.0, 0.4))
    _write(label, pred / "c.nii.gz", (1.0, 0.4))
    _write(ids, instances / "c.nii.gz", (1.0, 0.4))
    output = tmp_path / "instances.json"
    result = _evaluate(str(ref), str(pred), "--instances-folder", str(instances), "--connectivity", "face",
                       "--families", "dice", "betti", "-l", "1", "1,2", "-o", str(output), "-np", "1")
    assert result.returncode == 0, result.stderr
    summary = json.loads(output.read_text())
    assert summary["settings"]["connectivity"] == "face"
    assert summary["settings"]["families"] == ["dice", "betti", "instance"]
    m = summary["metric_per_case"][0]["metrics"]["1"]
    assert set(m) == {"Dice", "Betti0_error", "Betti1_error", "ARE", "ARE_precision", "ARE_recall", "VI",
                      "VI_split", "VI_merge"}                   # a 2D image: no Betti2_error
    # pairs: both 2 + 2 = 4 (ordered: 2*1 each), reference 2*(2*1) = 4, prediction 4*3 = 12
    assert (m["ARE_precision"], m["ARE_recall"], m["ARE"]) == pytest.approx((4 / 12, 1.0, 0.5))
    assert (m["VI_split"], m["VI_merge"]) == pytest.approx((0.0, 1.0))
    assert summary["metric_per_case"][0]["metrics"]["(1, 2)"]["Dice"] == 1.0


def test_a_truncated_prediction_is_refused_by_name(folders_2d, tmp_path):
    ref, pred = folders_2d
    bad = tmp_path / "pred"
    bad.mkdir()
    (bad / "case_0.nii.gz").write_bytes((pred / "case_0.nii.gz").read_bytes())
    data = (pred / "case_1.nii.gz").read_bytes()
    (bad / "case_1.nii.gz").write_bytes(data[: len(data) // 2])   # SimpleITK alone would read it silently
    result = _evaluate(str(ref), str(bad), "-np", "1", "--no-progress")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"nnunet-ext evaluate: {bad / 'case_1.nii.gz'} is truncated: its gzip stream ends before the end-of-stream "
        f"marker ({len(data) // 2} bytes on disk). Write the file again (an interrupted copy or export?)."]
    assert not (bad / "summary_topology.json").exists()


# --- in-process ----------------------------------------------------------------------------------------

def test_the_trainers_call_gets_the_default_families(folders_2d, tmp_path):
    ref, pred = folders_2d
    dataset = {"labels": {"background": 0, "tube": 1}, "file_ending": ".nii.gz"}
    summary = evaluate_folders(str(ref), str(pred), output_file=str(tmp_path / "s.json"), dataset_json=dataset,
                               num_processes=1, case_names=["case_1.nii.gz"], progress=False)
    (case,) = summary["metric_per_case"]
    assert set(case["metrics"][1]) == METRICS_2D | SURFACE | COMPONENTS
    assert case["metrics"][1]["Betti0_error"] == 1 and case["metrics"][1]["Comp_split"] == 1


def test_2d_cases_have_no_betti2_and_empty_classes_are_nan(folders_2d, tmp_path):
    ref, pred = folders_2d
    summary = evaluate_folders(str(ref), str(pred), str(tmp_path / "s.json"), labels=[1, 2], num_processes=1,
                               families=["dice", "cldice", "betti"], progress=False)
    case_perfect, case_broken = summary["metric_per_case"]
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
    summary = evaluate_folders(str(ref), str(pred), dataset_json=str(tmp_path / "dataset.json"), num_processes=1,
                               families=["dice", "betti"], progress=False)
    assert list(summary["mean"]) == [(1, 2), 2]
    assert summary["metric_per_case"][1]["metrics"][(1, 2)]["Betti0_error"] == 1
    assert summary["settings"]["ignore_label"] == 3
    # default labels without dataset.json: every label > 0 in the references
    assert list(evaluate_folders(str(ref), str(pred), num_processes=1, families=["dice"], progress=False)["mean"]) \
        == [1]


def test_missing_predictions_chill_and_several_bad_files(folders_2d, tmp_path):
    ref, pred = folders_2d
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "case_0.nii.gz").write_bytes((pred / "case_0.nii.gz").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"1 of 2 reference files have no prediction .*case_1.nii.gz.*-chill"):
        evaluate_folders(str(ref), str(partial), num_processes=1, progress=False)
    messages: list[str] = []
    summary = evaluate_folders(str(ref), str(partial), num_processes=1, chill=True, families=["dice"],
                               progress=False, warn=messages.append)
    assert [Path(c["prediction_file"]).name for c in summary["metric_per_case"]] == ["case_0.nii.gz"]
    assert messages == ["-chill: 1 of 2 reference cases have no prediction and are not evaluated (case_1.nii.gz)"]
    with pytest.raises(FileNotFoundError, match="none of the 2 reference files"):
        evaluate_folders(str(ref), str(tmp_path), num_processes=1, chill=True, progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("case_0.nii.gz", "case_1.nii.gz"):
        (broken / name).write_bytes(b"\x1f\x8b" + b"\0" * 30)
    with pytest.raises(UnreadableFile, match=r"2 files cannot be evaluated: .*case_0.nii.gz.*; .*case_1.nii.gz"):
        evaluate_folders(str(ref), str(broken), num_processes=1, progress=False)
    with pytest.raises(FileNotFoundError, match="instances folder"):
        evaluate_folders(str(ref), str(pred), instances_folder=str(tmp_path / "none"))


def test_unreadable_inputs_name_the_fix(tmp_path):
    (tmp_path / "ref").mkdir()
    with pytest.raises(FileNotFoundError, match="no segmentation file"):
        evaluate_folders(str(tmp_path / "ref"), str(tmp_path / "ref"))
    with pytest.raises(FileNotFoundError, match="prediction folder"):
        evaluate_folders(str(tmp_path / "ref"), str(tmp_path / "nope"))


def test_command_line_options_parse():
    from nnunet_ext.cli.main import build_parser
    parser = build_parser()
    args = parser.parse_args(["evaluate", "r", "p", "-l", "1", "1,2", "--connectivity", "6", "--nsd-tolerance", "2",
                              "--convention", "topcow", "--instance-labels", "0", "-chill", "--families", "all"])
    assert (args.labels, args.connectivity, args.nsd_tolerance, args.convention) == ([1, (1, 2)], 6, 2.0, "topcow")
    assert args.instance_labels == [0] and args.chill and args.families == ["all"]
    args = parser.parse_args(["compare", "a", "b", "--names", "x", "y", "--markdown", "m.md", "--png", "c.png"])
    assert (args.results, args.names, args.markdown, args.png) == (["a", "b"], ["x", "y"], "m.md", "c.png")
    for bad in (["--connectivity", "18"], ["--nsd-tolerance", "-1"], ["-np", "0"], ["--families", "hausdorff"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["evaluate", "r", "p", *bad])
