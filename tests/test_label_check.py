"""Labels that dataset.json does not declare stop an nnunet-ext training at once, with the value, case and fix."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cli_helpers import clean_env, plan, run
from nnunet_ext.core.labelmaps import declared_label_values, undeclared_values
from nnunet_ext.testing.synthetic import write_tubular_dataset
from nnunet_ext.trainers.label_check import consecutive_labels_problem, present_values


@pytest.mark.parametrize("seg,expected", [
    (np.array([[0, 1], [1, 0]], np.uint8), [0, 1]),
    (np.array([[-1, 0], [255, 3]], np.int16), [-1, 0, 3, 255]),
    (np.zeros((0, 3), np.int8), []),
    (np.array([[0, 70000]], np.int32), [0, 70000]),  # a wide range falls back to sorting
])
def test_present_values(seg, expected):
    assert present_values(seg).tolist() == expected


def test_declared_values_include_regions_and_the_ignore_label():
    labels = {"background": 0, "any": [1, 2], "two": 2, "ignore": 3}
    assert declared_label_values(labels) == {0, 1, 2, 3}
    assert undeclared_values([0, 1, 255, 4], {0, 1, 2, 3}) == [4, 255]


@pytest.mark.parametrize("labels,problem", [
    ({"background": 0, "a": 1, "b": 2}, False),
    ({"background": 0, "a": 1, "ignore": 2}, False),
    ({"background": 0, "a": 1, "b": 3}, True),
    ({"a": 1, "b": 2}, True),
])
def test_labels_must_be_consecutive_from_zero(labels, problem):
    assert (consecutive_labels_problem(labels) is not None) == problem


@pytest.mark.slow
def test_undeclared_255_stops_training_with_the_value_the_case_and_the_fix(nnunet_env):
    raw = Path(write_tubular_dataset(981, dim=2, n_train=5, n_test=0, shape=(32, 32), seed=2))
    case = raw / "labelsTr" / "tube_0003.nii.gz"
    image = sitk.ReadImage(str(case))
    label = sitk.GetArrayFromImage(image)
    label[:4, :4] = 255  # unannotated pixels, no ignore label declared
    relabelled = sitk.GetImageFromArray(label)
    relabelled.CopyInformation(image)
    sitk.WriteImage(relabelled, str(case))
    env = clean_env(NNUNET_EXT_EPOCHS="1", NNUNET_EXT_ITERATIONS="1", NNUNET_EXT_VAL_ITERATIONS="1")
    plan(981, "2d", env)  # nnU-Net plans and preprocesses it without --verify_dataset_integrity
    result = run(["nnUNetv2_train", "981", "2d", "0", "-tr", "nnUNetTrainerSkelRecall_short", "-device", "cpu"],
                 env, check=False)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "255" in message and "tube_0003" in message and "--verify_dataset_integrity" in message
    assert '"ignore"' in message
    assert "Traceback" not in result.stderr
    skipped = run(["nnUNetv2_train", "981", "2d", "0", "-tr", "nnUNetTrainerSkelRecall_short", "-device", "cpu"],
                  {**env, "NNUNET_EXT_CHECK_LABELS": "0"}, check=False)
    assert "does not declare" not in skipped.stderr  # switched off: nnU-Net gets the data as it is
