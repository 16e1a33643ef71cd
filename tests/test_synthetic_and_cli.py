"""The synthetic dataset writer and the nnunet-ext command line (in-process, and as the user types it)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cli_helpers import clean_env, run
from nnunet_ext import cli, trainers
from nnunet_ext.errors import UserInputError
from nnunet_ext.trainers import registry
from nnunet_ext.trainers.discovery import trainer_folder
from nnunet_ext.testing.synthetic import tubular_case, write_touching_blobs_dataset, write_tubular_dataset


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


@pytest.mark.parametrize("writer", [write_tubular_dataset, write_touching_blobs_dataset])
def test_writers_need_nnunet_raw_and_name_the_fix(monkeypatch, writer):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(UserInputError, match="nnUNet_raw is not set: export nnUNet_raw="):
        writer(1)


# ------------------------------------------------------------------------- existing ids and argument checks

def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("writer,kwargs", [(write_tubular_dataset, dict(shape=(32, 32))),
                                           (write_touching_blobs_dataset, dict(shape=(32, 32), n_blobs=3))])
def test_existing_id_is_refused_unless_overwrite_which_replaces_only_that_dataset(tmp_path, writer, kwargs):
    first = Path(writer(7, n_train=4, n_test=2, seed=1, raw_root=str(tmp_path), **kwargs))
    neighbour = Path(write_tubular_dataset(8, n_train=1, n_test=0, shape=(16, 16), raw_root=str(tmp_path)))
    before = {p: p.read_bytes() for p in first.rglob("*.nii.gz")}
    # the same id, another name or dim: refused, nothing written or changed
    with pytest.raises(UserInputError, match=rf"dataset id 7 already exists in .*{first.name}.*--overwrite"):
        writer(7, n_train=2, n_test=1, seed=2, raw_root=str(tmp_path), name="Other", **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, neighbour.name]
    assert {p: p.read_bytes() for p in first.rglob("*.nii.gz")} == before

    # overwrite with fewer cases and another name: the old folder is gone, no old case survives (no train/test mix)
    new = Path(writer(7, n_train=2, n_test=1, seed=2, raw_root=str(tmp_path), name="Other", overwrite=True, **kwargs))
    assert sorted(p.name for p in tmp_path.iterdir()) == [new.name, neighbour.name] and new.name == "Dataset007_Other"
    stem = "tube" if writer is write_tubular_dataset else "blobs"
    assert sorted(p.name for p in (new / "labelsTr").iterdir()) == [f"{stem}_0000.nii.gz", f"{stem}_0001.nii.gz"]
    assert [p.name for p in (new / "labelsTs").iterdir()] == [f"{stem}_0002.nii.gz"]
    assert json.loads((new / "dataset.json").read_text())["numTraining"] == 2
    assert _files(neighbour) == ["dataset.json", "imagesTr", "imagesTr/tube_0000_0000.nii.gz", "imagesTs",
                                 "labelsTr", "labelsTr/tube_0000.nii.gz", "labelsTs"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(regions=True, n_classes=1), r"region-based labels \(--regions\) need n_classes >= 2"),
    (dict(dim=2, shape=(32, 32, 32)), r"shape \(--shape\) \(32, 32, 32\) has 3 size\(s\) but dim=2 needs 2"),
    (dict(dim=3, shape=(32, 32)), r"dim=3 needs 3, e.g. --shape 64 64 64"),
    (dict(shape=(32, 0)), r"every size in shape \(--shape\) must be an integer >= 8"),
    (dict(dim=4), r"dim \(--dim\) must be 2 or 3, got 4"),
    (dict(n_train=0), r"n_train \(--n-train\) must be >= 1, got 0"),
    (dict(n_test=-1), r"n_test \(--n-test\) must be >= 0, got -1"),
    (dict(n_classes=0), r"n_classes \(--n-classes\) must be between 1 and 255, got 0"),
    (dict(n_classes=255, ignore_label=True), r"n_classes \(--n-classes\) must be between 1 and 254, got 255"),
    (dict(seed=-3), r"seed \(--seed\) must be >= 0"),
    (dict(dataset_id=1000), r"dataset_id must be between 1 and 999, got 1000"),
    (dict(name="a/b"), r"name must be letters, digits"),
])
def test_every_argument_is_checked_before_anything_is_written(tmp_path, kwargs, message):
    arguments = dict(dataset_id=5, n_train=2, n_test=1, shape=(32, 32), raw_root=str(tmp_path / "raw"))
    with pytest.raises(ValueError, match=message):
        write_tubular_dataset(**{**arguments, **kwargs})
    assert not (tmp_path / "raw").exists()


def test_an_error_while_writing_leaves_no_dataset_folder(tmp_path, monkeypatch):
    import nnunet_ext.testing.synthetic as synthetic
    calls = []

    def failing_write(*args, **kwargs):  # the second case fails (a full disk, Ctrl-C, ...)
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = synthetic.write_case
    monkeypatch.setattr(synthetic, "write_case", failing_write)
    with pytest.raises(KeyboardInterrupt):
        write_tubular_dataset(5, n_train=3, n_test=1, shape=(16, 16), raw_root=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- nnunet-ext synthetic, as typed

def _synthetic(raw: Path | None, *arguments: str, preprocessed: Path | None = None):
    env = clean_env()
    for name, folder in (("nnUNet_raw", raw), ("nnUNet_preprocessed", preprocessed)):
        env.pop(name, None)
        if folder is not None:
            env[name] = str(folder)
    return run(["nnunet-ext", "synthetic", *arguments], env, timeout=120, check=False)


def test_cli_synthetic_refuses_an_existing_id_and_overwrite_replaces_it(tmp_path):
    made = _synthetic(tmp_path, "7", "--n-train", "3", "--n-test", "1", "--shape", "16", "16")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == str(tmp_path / "Dataset007_Tubes2D")
    again = _synthetic(tmp_path, "7", "--dim", "3", "--n-train", "2", "--n-test", "1", "--shape", "16", "16", "16")
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines() == [
        f"nnunet-ext synthetic: dataset id 7 already exists in {tmp_path}: Dataset007_Tubes2D; pass --overwrite "
        "(Python: overwrite=True) to replace it, or choose another id"]
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset007_Tubes2D"]  # no second folder with the same id
    preprocessed = tmp_path.parent / f"{tmp_path.name}_preprocessed"
    (preprocessed / "Dataset007_Tubes2D").mkdir(parents=True)  # an earlier preprocessing of the old dataset
    replaced = _synthetic(tmp_path, "7", "--dim", "3", "--n-train", "2", "--n-test", "1", "--shape", "16", "16", "16",
                          "--overwrite", preprocessed=preprocessed)
    assert replaced.returncode == 0, replaced.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["Dataset007_Tubes3D"]
    assert replaced.stderr.strip() == (
        f"nnunet-ext synthetic: note: {preprocessed / 'Dataset007_Tubes2D'} holds an earlier preprocessing of this "
        "id; run nnUNetv2_plan_and_preprocess -d 7 again before training")
    assert len(list((tmp_path / "Dataset007_Tubes3D" / "imagesTr").iterdir())) == 2


@pytest.mark.parametrize("arguments,message", [
    (["--regions"], "nnunet-ext synthetic: region-based labels (--regions) need n_classes >= 2 (--n-classes 2), got 1"),
    (["--dim", "3", "--shape", "32", "32"], "nnunet-ext synthetic: shape (--shape) (32, 32) has 2 size(s) but dim=3 "
                                           "needs 3, e.g. --shape 64 64 64"),
    (["--n-train", "0"], "nnunet-ext synthetic: n_train (--n-train) must be >= 1, got 0"),
])
def test_cli_synthetic_bad_arguments_one_line_and_nothing_written(tmp_path, arguments, message):
    result = _synthetic(tmp_path / "raw", "5", *arguments)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "raw").exists()


def test_cli_synthetic_without_nnunet_raw_names_the_export():
    result = _synthetic(None, "5")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "nnunet-ext synthetic: nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (the folder that holds "
        "nnU-Net's raw datasets) and run the command again"]


# --------------------------------------------------------------------------- nnunet-ext benchmark --list, as typed

def test_cli_benchmark_list_option_and_word_both_list_every_benchmark():
    from nnunet_ext.benchmarks import BENCHMARKS
    helped = run(["nnunet-ext", "benchmark", "--help"], clean_env(), timeout=120)
    assert "--list" in helped.stdout
    for arguments in (["--list"], ["list"]):
        listed = run(["nnunet-ext", "benchmark", *arguments], clean_env(), timeout=120)
        names = [line for line in listed.stdout.splitlines() if line and not line.startswith(" ")]
        assert names == list(BENCHMARKS), arguments
    missing = run(["nnunet-ext", "benchmark"], clean_env(), timeout=120, check=False)
    assert missing.returncode != 0 and "name a benchmark" in missing.stderr and "Traceback" not in missing.stderr


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


@pytest.mark.slow  # a benchmark run (~45 s on 2 cores); the tube itself is tested in test_skeleton.py
def test_skeleton_recall_benchmark_tube_section_runs_and_checks_identity(capsys):
    assert cli.main(["benchmark", "skeleton_recall", "--only", "tube", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("2D 512", "3D 128"))]
    assert len(rows) >= 4 and all(line.split()[-1] == "yes" for line in rows)  # fast tube identical to reference
