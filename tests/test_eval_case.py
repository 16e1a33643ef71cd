"""One case through every metric family (hand-computed values), the TopCoW convention, the summary's means and
files, and the refusal of truncated or corrupt segmentation files."""
from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ext.evaluation.case import EvaluationSettings, case_metrics
from nnunet_ext.evaluation.folders import dataset_labels
from nnunet_ext.evaluation.reading import (UnreadableFile, check_complete, label_values, read_segmentation,
                                           to_spatial)
from nnunet_ext.evaluation.summary import load_summary, save_summary, summarize, write_csv


def _h(*p: float) -> float:
    return -sum(x * math.log2(x) for x in p if x > 0)


# --- case_metrics: 3D, anisotropic, one-sided and absent labels, ignore label ----------------------------

def _cubes() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((8, 6, 12), np.uint8)
    ref[1:4, 1:4, 1:4] = 1              # label 1: a 3x3x3 cube
    ref[1:3, 1:3, 7:10] = 2             # label 2: only in the reference
    ref[6:8, 4:6, 10:12] = 4            # ignore label, where the prediction has a false positive
    pred = np.zeros_like(ref)
    pred[2:5, 1:4, 1:4] = 1             # the cube shifted by one voxel along the 2.5 mm axis
    pred[6:8, 4:6, 10:12] = 1
    return pred, ref


SPACING = (2.5, 1.0, 1.0)


def test_case_metrics_hand_values_3d_anisotropic_with_ignore_label():
    pred, ref = _cubes()
    m = case_metrics(pred, ref, [1, 2, 3], spacing=SPACING, ignore_label=4)
    one, two, three = m[1], m[2], m[3]
    # label 1: 18 of 27 voxels shared; surfaces as in test_surface_metrics_anisotropic_3d_shifted_cube
    assert one["Dice"] == pytest.approx(2 / 3)
    assert (one["HD95"], one["HD"]) == pytest.approx((2.5, 2.5))
    assert one["ASSD"] == pytest.approx(2 * (9 * 2.5 + 1.0) / 52) and one["NSD"] == pytest.approx(2 * 17 / 52)
    assert (one["Betti0_error"], one["Betti1_error"], one["Betti2_error"]) == (0, 0, 0)
    # IoU 18 / 36 = 0.5 matches at the default threshold; the ignored false positive is no component
    assert (one["Comp_TP"], one["Comp_FP"], one["Comp_FN"], one["Comp_matched_IoU"]) == (1, 0, 0, 0.5)
    assert 0 < one["clDice"] <= 1
    # label 2, reference only: distances = the field-of-view diagonal in mm, Betti-0 error 1
    diagonal = math.sqrt((7 * 2.5) ** 2 + 5 ** 2 + 11 ** 2)
    assert (two["Dice"], two["NSD"], two["clDice"], two["Comp_recall"]) == (0.0, 0.0, 0.0, 0.0)
    assert (two["HD95"], two["HD"], two["ASSD"]) == pytest.approx((diagonal,) * 3)
    assert two["Betti0_error"] == 1 and math.isnan(two["Comp_precision"])
    # label 3 in neither mask: NaN where undefined, Betti errors 0 (default convention)
    assert all(math.isnan(three[k]) for k in ("Dice", "clDice", "HD95", "NSD", "Comp_F1"))
    assert three["Betti0_error"] == 0
    # without the ignore label the false positive counts
    plain = case_metrics(pred, ref, [1], spacing=SPACING)[1]
    assert plain["Dice"] == pytest.approx(36 / (54 + 8)) and plain["Comp_FP"] == 1
    # families and options reach the metrics
    only = case_metrics(pred, ref, [1], EvaluationSettings(families=("surface",), nsd_tolerance=2.5), SPACING, 4)
    assert set(only[1]) == {"HD95", "HD", "ASSD", "NSD"} and only[1]["NSD"] == 1.0
    strict = case_metrics(pred, ref, [1], EvaluationSettings(families=("components",), iou_threshold=0.6), SPACING, 4)
    assert strict[1]["Comp_TP"] == 0
    seconds: dict = {}
    case_metrics(pred, ref, [1], EvaluationSettings(families=("dice", "betti")), SPACING, seconds=seconds)
    assert set(seconds) == {"dice", "betti"} and all(s >= 0 for s in seconds.values())


def test_case_metrics_rejects_bad_settings_and_shapes():
    pred, ref = _cubes()
    with pytest.raises(ValueError, match="unknown metric families"):
        EvaluationSettings(families=("hausdorff",))
    with pytest.raises(ValueError, match="convention"):
        EvaluationSettings(convention="challenge")
    with pytest.raises(ValueError, match="NSD tolerance"):
        EvaluationSettings(nsd_tolerance=-1.0)
    with pytest.raises(ValueError, match="IoU threshold"):
        EvaluationSettings(iou_threshold=0.0)
    with pytest.raises(ValueError, match="2D neighbourhood"):
        case_metrics(pred, ref, [1], EvaluationSettings(connectivity=8))
    with pytest.raises(ValueError, match="reference grid"):
        case_metrics(pred, ref[:, :, :5], [1])
    assert EvaluationSettings(connectivity="6").connectivity == 6


# --- the TopCoW convention, by TopCoW's rules ---------------------------------------------------------

def _lines() -> tuple[np.ndarray, np.ndarray]:
    """A TopCoW-style volume with a length-1 axis: two one-voxel lines (labels 1, 2) and a voxel of label 4."""
    ref = np.zeros((1, 5, 22), np.uint8)
    ref[0, 1, 2:10] = 1                 # 8 voxels
    ref[0, 3, 2:18] = 2                 # 16 voxels
    ref[0, 0, 20] = 4                   # reference only
    pred = ref.copy()
    pred[0, 3, 9:11] = 0                # a 2-voxel gap in label 2 (14 voxels left)
    pred[0, 0, 20] = 0
    return pred, ref


def test_topcow_convention_by_hand():
    pred, ref = _lines()
    spacing = (3.0, 1.0, 0.5)
    labels = [1, 2, 3, 4]
    topcow = case_metrics(pred, ref, labels, EvaluationSettings(convention="topcow"), spacing)
    default = case_metrics(pred, ref, labels, EvaluationSettings(), spacing)
    # merged foreground, Lee thinning in 3D: lines and the isolated voxel are their own skeletons.
    # S(P) = 8 + 14 voxels, all inside L: tprec = 1; S(L) = 8 + 16 + 1 = 25, 22 inside P: tsens = 22/25
    assert topcow[(1, 2, 3, 4)] == {"clDice_TopCoW": pytest.approx(2 * (22 / 25) / (1 + 22 / 25))}
    assert all("clDice" not in topcow[k] for k in labels)
    # default: clDice per label, the (1, 5, 22) volume evaluated in 2D (Zhang): label 2 tsens 14/16
    assert default[1]["clDice"] == 1.0 and default[2]["clDice"] == pytest.approx(14 / 15)
    assert (1, 2, 3, 4) not in default
    # label 4 in the reference only: TopCoW's 90 mm; default: the diagonal of the 2D image (4 x 1.0, 21 x 0.5 mm)
    assert topcow[4]["HD95"] == topcow[4]["HD"] == 90.0
    assert default[4]["HD95"] == pytest.approx(math.sqrt(4.0 ** 2 + 10.5 ** 2))
    # label 3 in neither mask: TopCoW does not score it (NaN); default Betti errors 0
    assert math.isnan(topcow[3]["Betti0_error"]) and default[3]["Betti0_error"] == 0
    assert topcow[2]["Betti0_error"] == default[2]["Betti0_error"] == 1
    # a single evaluated label: the merged foreground is that label
    assert "clDice_TopCoW" in case_metrics(pred, ref, [2], EvaluationSettings(convention="topcow"), spacing)[2]


# --- instance metrics in a case: membranes (label 0 instances) and given reference instances -------------

def test_membrane_instances_from_label_zero():
    ref = np.zeros((5, 6), np.uint8)
    ref[:, 2] = 1                       # a membrane splits the image into cells of 10 and 15 pixels
    pred = ref.copy()
    pred[2, 2] = 0                      # a gap: the two cells merge
    settings = EvaluationSettings(families=("dice", "instance"), connectivity="face", instance_labels=(0,))
    m = case_metrics(pred, ref, [1], settings)
    assert set(m) == {1, 0} and set(m[1]) == {"Dice"}
    cells = m[0]
    # counted pixels: the 25 inside reference cells; one predicted segment of them. Pairs: both 10*9 + 15*14 = 300,
    # reference 300, prediction 25*24 = 600
    assert (cells["ARE_precision"], cells["ARE_recall"], cells["ARE"]) == pytest.approx((0.5, 1.0, 1 / 3))
    assert (cells["VI_split"], cells["VI_merge"]) == pytest.approx((0.0, _h(0.4, 0.6)))
    # the summary's foreground mean takes label 0's value for metrics only label 0 has
    summary = summarize([{"metrics": m}], [1, 0])
    assert summary["foreground_mean"]["ARE"] == pytest.approx(1 / 3) and "Dice" in summary["foreground_mean"]
    # given reference instances (two touching ids inside one label-1 component) are used within the label
    ref2 = np.array([[1, 1, 1, 1, 0]], np.uint8)
    ids = np.array([[7, 7, 3, 3, 9]])   # id 9 lies outside label 1: not counted
    m = case_metrics(ref2.copy(), ref2, [1], EvaluationSettings(families=("instance",)), ref_instances=ids)
    assert (m[1]["ARE_precision"], m[1]["ARE_recall"]) == pytest.approx((4 / 12, 1.0))
    assert (m[1]["VI_split"], m[1]["VI_merge"]) == pytest.approx((0.0, 1.0))


# --- summary: means, JSON and CSV ---------------------------------------------------------------------

def _cases() -> list[dict]:
    return [{"reference_file": "/r/a.nii.gz", "prediction_file": "/p/a.nii.gz",
             "metrics": {1: {"Dice": 1.0, "HD95": 2.0}, 2: {"Dice": 0.5, "HD95": 4.0}}},
            {"reference_file": "/r/b.nii.gz", "prediction_file": "/p/b.nii.gz",
             "metrics": {1: {"Dice": 0.0, "HD95": 6.0}, 2: {"Dice": math.nan, "HD95": math.nan}}}]


def test_summarize_label_and_case_rules():
    labels = summarize(_cases(), [1, 2])
    assert labels["mean"][1] == {"Dice": 0.5, "HD95": 4.0} and labels["mean"][2] == {"Dice": 0.5, "HD95": 4.0}
    assert labels["foreground_mean"] == {"Dice": 0.5, "HD95": 4.0}          # mean of the label means
    cases = summarize(_cases(), [1, 2], foreground_rule="cases")
    # per case over the labels with a value: a (1 + 0.5) / 2, b 0 -> 0.375; HD95 a 3, b 6 -> 4.5
    assert cases["foreground_mean"] == {"Dice": 0.375, "HD95": 4.5}
    every_nan = _cases()
    every_nan[0]["metrics"][2]["Dice"] = math.nan
    assert math.isnan(summarize(every_nan, [1, 2])["foreground_mean"]["Dice"])   # nnU-Net: NaN label -> NaN


def test_summary_json_and_csv_files_read_back(tmp_path):
    result = summarize(_cases(), [1, 2])
    result["metric_per_case"][0]["metrics"][(1, 2)] = {"clDice_TopCoW": 0.75}
    result["mean"][(1, 2)] = {"clDice_TopCoW": 0.75}
    result["settings"] = {"convention": "topcow"}
    save_summary(result, str(tmp_path / "s.json"))
    text = (tmp_path / "s.json").read_text()
    assert text.lstrip().startswith('{\n    "foreground_mean"') and "NaN" in text
    raw = json.loads(text)
    assert set(raw["mean"]) == {"1", "2", "(1, 2)"} and raw["settings"] == {"convention": "topcow"}
    loaded = load_summary(str(tmp_path / "s.json"))
    assert set(loaded["metric_per_case"][0]["metrics"]) == {1, 2, (1, 2)}
    write_csv(result, str(tmp_path / "m.csv"))
    with open(tmp_path / "m.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["case"], r["label"]) for r in rows] == [("a.nii.gz", "1"), ("a.nii.gz", "2"), ("a.nii.gz", "(1, 2)"),
                                                       ("b.nii.gz", "1"), ("b.nii.gz", "2")]
    assert list(rows[0])[:6] == ["case", "reference_file", "prediction_file", "label", "Dice", "clDice_TopCoW"]
    assert float(rows[1]["HD95"]) == 4.0 and rows[4]["Dice"] == "nan" and rows[0]["clDice_TopCoW"] == ""
    assert float(rows[2]["clDice_TopCoW"]) == 0.75 and rows[2]["Dice"] == ""
    with pytest.raises(ValueError, match="not an nnU-Net-style summary"):
        (tmp_path / "x.json").write_text("{}")
        load_summary(str(tmp_path / "x.json"))


def test_dataset_labels_like_nnunet_label_manager():
    assert dataset_labels({"labels": {"background": 0, "a": 1, "b": 2}}) == ([1, 2], None)
    assert dataset_labels({"labels": {"background": 0, "b": 2, "a": 1, "ignore": 3}}) == ([1, 2], 3)
    regions = {"labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": 3}, "regions_class_order": [1, 2, 3]}
    assert dataset_labels(regions) == ([(1, 2, 3), (2, 3), 3], None)
    with pytest.raises(ValueError, match="background"):
        dataset_labels({"labels": {"a": 1}})


# --- reading: truncated and corrupt files -------------------------------------------------------------

@pytest.fixture
def written(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    volume = (rng.random((12, 14, 16)) > 0.5).astype(np.uint8)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.5, 0.6, 2.0))
    paths = {"gz": tmp_path / "v.nii.gz", "nii": tmp_path / "v.nii", "png2d": tmp_path / "s.nii.gz"}
    sitk.WriteImage(image, str(paths["gz"]), useCompression=True)
    sitk.WriteImage(image, str(paths["nii"]))
    plane = sitk.GetImageFromArray(volume[0])
    plane.SetSpacing((0.5, 0.8))
    sitk.WriteImage(plane, str(paths["png2d"]), useCompression=True)
    return paths


def test_truncated_and_corrupt_files_are_refused_by_name(written, tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    reader = SimpleITKIO()
    for path in written.values():
        check_complete(str(path))
    data = written["gz"].read_bytes()
    cases = {
        "cut.nii.gz": data[: len(data) * 6 // 10],   # SimpleITK reads this without complaint
        "no_trailer.nii.gz": data[:-3],            # every voxel there, the gzip trailer cut
        "short.nii.gz": gzip.compress(written["nii"].read_bytes()[:-100]),  # complete gzip, short NIfTI data
        "garbage.nii.gz": b"not a gzip file" * 20,
        "short.nii": written["nii"].read_bytes()[:-100],
    }
    messages = {"cut.nii.gz": "is truncated", "no_trailer.nii.gz": "is truncated", "short.nii.gz": "header declares",
                "garbage.nii.gz": "not a valid gzip", "short.nii": "header declares"}
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(UnreadableFile, match=messages[name]) as error:
            read_segmentation(reader, str(path))
        assert str(path) in str(error.value)
    bad = tmp_path / "bad.mha"
    bad.write_bytes(b"ObjectType = Image\nNDims = 3\n")
    with pytest.raises(UnreadableFile, match="cannot read .*bad.mha"):
        read_segmentation(reader, str(bad))
    # intact files: 3D as (z, y, x) with nnU-Net's spacing order, 2D as (y, x) without the dummy axis
    seg, spacing = read_segmentation(reader, str(written["gz"]))
    assert seg.shape == (12, 14, 16) and spacing == pytest.approx((2.0, 0.6, 0.5))
    seg, spacing = read_segmentation(reader, str(written["png2d"]))
    assert seg.shape == (14, 16) and spacing == pytest.approx((0.8, 0.5))


def test_to_spatial_and_label_values():
    seg, spacing = to_spatial(np.zeros((1, 1, 4, 5)), (999.0, 1.0, 0.5))
    assert seg.shape == (4, 5) and spacing == (1.0, 0.5)
    seg, spacing = to_spatial(np.zeros((1, 1, 4, 5)), (3.0, 1.0, 0.5))     # a 3D file with one slice stays 3D
    assert seg.shape == (1, 4, 5) and spacing == (3.0, 1.0, 0.5)
    assert label_values(np.array([[0.0, 3.0], [3.0, 1.0]], np.float32)) == [0, 1, 3]
    assert label_values(np.array([-1, 70000, 5])) == [-1, 5, 70000]
