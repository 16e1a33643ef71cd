"""A user's first hour: the demo never deletes what it did not create, shows nnU-Net's progress, draws a readable
overlay and reports the held-out topology metrics; ``nnunet-ext plan`` suggests only configurations that exist;
``make test-quick`` skips the slow end-to-end tests. (The demo itself takes minutes: these tests drive its parts.)"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import clean_env, run
from nnunet_ext.cli import demo
from nnunet_ext.errors import UserInputError
from nnunet_ext.testing.synthetic import write_tubular_dataset

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- the work folder

def _tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def test_demo_refuses_a_folder_it_did_not_create_with_one_line_and_deletes_nothing(tmp_path):
    work = tmp_path / "my_project"
    (work / "results").mkdir(parents=True)
    (work / "results" / "model.pth").write_bytes(b"weeks of training")
    (work / "notes.txt").write_text("keep me")
    before = _tree(work)
    result = run(["nnunet-ext", "demo", "--workdir", str(work)], clean_env(), timeout=120, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"nnunet-ext demo: --workdir {work} is not empty and was not created by nnunet-ext demo (it has no "
        ".nnunet_ext_demo file); nothing was deleted. Pass a new or empty folder, e.g. --workdir demo_output"]
    assert _tree(work) == before  # not even the marker was written


def test_demo_refuses_a_file_as_workdir(tmp_path):
    target = tmp_path / "data.nii.gz"
    target.write_bytes(b"\x1f\x8b")
    with pytest.raises(UserInputError, match="is a file; pass a new or empty folder"):
        demo.prepare_workdir(target)
    assert target.read_bytes() == b"\x1f\x8b"


def test_demo_help_says_which_folders_it_accepts_and_what_it_replaces():
    helped = " ".join(run(["nnunet-ext", "demo", "--help"], clean_env(), timeout=120).stdout.split())
    assert "It must be new or empty, or an earlier demo's folder (marked by its .nnunet_ext_demo file)" in helped
    assert "only the demo's own outputs in it are replaced and anything else is kept" in helped
    assert "Any other non-empty folder is refused; nothing is deleted" in helped


@pytest.mark.parametrize("exists", [False, True])
def test_a_new_or_empty_folder_is_marked(tmp_path, exists):
    work = tmp_path / "a" / "demo_output"
    if exists:
        work.mkdir(parents=True)
    assert demo.prepare_workdir(work) == work.resolve()
    assert [p.name for p in work.iterdir()] == [demo.MARKER]
    assert "nnunet-ext demo" in (work / demo.MARKER).read_text()


def test_an_earlier_demo_folder_loses_only_the_demos_own_outputs(tmp_path):
    work = demo.prepare_workdir(tmp_path / "demo_output")
    for name in demo.NNUNET_FOLDERS + ("predictions",):
        (work / name / "Dataset990_DemoTubes2D").mkdir(parents=True)
        (work / name / "Dataset990_DemoTubes2D" / "case.nii.gz").write_bytes(b"old")
    for name in ("demo.log", "demo_overlay.png", "evaluation.json"):
        (work / name).write_text("old")
    (work / "my_notes.txt").write_text("mine")          # the user's files in the demo folder stay
    (work / "my_runs").mkdir()
    (work / "my_runs" / "checkpoint.pth").write_bytes(b"mine")
    demo.prepare_workdir(work)
    assert _tree(work) == {demo.MARKER: (work / demo.MARKER).read_bytes(), "my_notes.txt": b"mine",
                           "my_runs": None, "my_runs/checkpoint.pth": b"mine"}
    assert set(demo.DEMO_OUTPUTS) == {"nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "predictions",
                                      "demo.log", "demo_overlay.png", "evaluation.json"}


# ------------------------------------------------------------------------------------------------- progress

@pytest.mark.parametrize("line,shown", [
    ("2026-12-01 10:00:00.123456: Epoch 3", "Epoch 3"),
    ("2026-12-01 10:00:01.000001: train_loss -0.4211", "train_loss -0.4211"),
    ("2026-12-01 10:00:01.000002: val_loss -0.5", "val_loss -0.5"),
    ("2026-12-01 10:00:01.000003: Pseudo dice [np.float32(0.8812), np.float32(0.5)]", "Pseudo dice [0.8812, 0.5]"),
    ("2026-12-01 10:00:01.000004: Epoch time: 41.3 s", "Epoch time: 41.3 s"),
    ("2026-12-01 10:00:01.000005: Yayy! New best EMA pseudo Dice: 0.8812", "Yayy! New best EMA pseudo Dice: 0.8812"),
    ("2026-12-01 10:00:01.000006: Current learning rate: 0.00983", None),
    ("using pin_memory on device 0", None),
    ("", None),
])
def test_progress_shows_epochs_losses_and_pseudo_dice_as_nnunet_logs_them(line, shown):
    assert demo.progress_line(line) == shown


def test_a_demo_step_streams_progress_to_the_console_and_logs_everything(tmp_path, capsys):
    script = ("import sys; print('2026-12-01 10:00:00.1: Epoch 0', flush=True); "
              "print('some detail only for the log', file=sys.stderr, flush=True); "
              "print('2026-12-01 10:00:00.2: train_loss -0.25', flush=True)")
    log = tmp_path / "demo.log"
    demo._run("train", [sys.executable, "-c", script], clean_env(), log)
    console = capsys.readouterr().out.splitlines()
    assert console[0].startswith("[demo] train: ")  # the command, then only the progress lines and the time
    assert console[1:-1] == ["[demo]     Epoch 0", "[demo]     train_loss -0.25"]
    assert console[-1].startswith("[demo]   done in ")
    logged = log.read_text()
    assert "some detail only for the log" in logged and "Epoch 0" in logged and "train_loss -0.25" in logged


def test_a_failing_demo_step_shows_the_commands_last_words_and_names_the_log(tmp_path, capsys):
    log = tmp_path / "demo.log"
    with pytest.raises(UserInputError, match=rf"demo step 'predict' failed \(exit 3\); see {log}"):
        script = "import sys; print('no checkpoint_final.pth in fold_0', file=sys.stderr); sys.exit(3)"
        demo._run("predict", [sys.executable, "-c", script], clean_env(), log)
    assert "[demo]   | no checkpoint_final.pth in fold_0" in capsys.readouterr().out.splitlines()


# -------------------------------------------------------------------------------------------------- overlay

def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    label = np.zeros((40, 40), np.uint8)
    label[18:23, 4:36] = 1                      # a horizontal tube
    prediction = label.copy()
    prediction[18:23, 30:36] = 0                # missed end: false negatives
    prediction[5:8, 5:8] = 1                    # a spurious blob: false positives
    return image, label, prediction


def test_overlay_panels_colour_label_tube_prediction_and_errors_distinctly():
    image, label, prediction = _case()
    panels = demo.overlay_panels(image, label, prediction)
    assert [title for title, _ in panels] == ["image", "label", "tube", "prediction", "errors: FP red, FN cyan"]
    grey = panels[0][1]
    assert grey.shape == (40, 40, 3) and (grey[..., 0] == grey[..., 1]).all()
    pixel = {title: panel for title, panel in panels}
    colour_of = {"label": pixel["label"][20, 10], "tube": pixel["tube"][20, 10],
                 "prediction": pixel["prediction"][20, 10]}
    # the three foreground colours differ clearly from each other and from grey
    values = [c.astype(int) for c in colour_of.values()]
    assert min(np.abs(a - b).max() for i, a in enumerate(values) for b in values[i + 1:]) > 60
    assert all(np.ptp(c) > 60 for c in values)
    errors = pixel["errors: FP red, FN cyan"].astype(int)
    false_positive, false_negative, correct = errors[6, 6], errors[20, 33], errors[20, 10]
    assert false_positive[0] > 150 and false_positive[1] < 100 and false_positive[2] < 100        # red
    assert false_negative[0] < 100 and false_negative[1] > 150 and false_negative[2] > 150        # cyan
    assert (correct == grey[20, 10]).all() and (errors[30, 30] == grey[30, 30]).all()            # untouched
    # the tube is the label's tubed skeleton: thinner than the label, inside it
    tube_mask = np.abs(pixel["tube"].astype(int) - grey.astype(int)).max(-1) > 0
    assert tube_mask.any() and not (tube_mask & (label == 0)).any() and tube_mask.sum() < (label > 0).sum()


def test_overlay_png_has_five_titled_panels(tmp_path):
    image, label, prediction = _case()
    path = tmp_path / "overlay.png"
    returned = demo.write_overlay(image, label, prediction, path, scale=3)
    written = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(written, returned)
    assert written.shape == (demo.TITLE_HEIGHT + 120, 5 * 120 + 4 * demo.GAP, 3)
    for i in range(5):
        x = i * (120 + demo.GAP)
        title_strip = written[:demo.TITLE_HEIGHT, x:x + 120]
        assert (title_strip.max(-1) < 100).sum() > 10, f"panel {i} has no title"
        # the panel itself is the enlarged panel image (nearest neighbour)
        panel = demo.overlay_panels(image, label, prediction)[i][1]
        assert np.array_equal(written[demo.TITLE_HEIGHT::3, x:x + 120:3], panel)


# ----------------------------------------------------------------------------------------------- evaluation

def test_held_out_scores_are_nnunet_ext_evaluation_of_the_predictions(tmp_path):
    import SimpleITK as sitk
    raw = Path(write_tubular_dataset(5, n_train=1, n_test=2, shape=(32, 32), seed=3, raw_root=str(tmp_path)))
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    for reference in (raw / "labelsTs").iterdir():
        shutil.copy(reference, predictions / reference.name)
    output = tmp_path / "evaluation.json"
    perfect = demo.held_out_scores(raw, predictions, output)
    assert output.is_file()
    assert perfect["Dice"] == pytest.approx(1.0) and perfect["clDice"] == pytest.approx(1.0)
    assert perfect["Betti0_error"] == 0 and perfect["Betti1_error"] == 0
    # cut every tube of the first case across: its Dice drops and its component count changes
    first = sorted(predictions.glob("*.nii.gz"))[0]
    image = sitk.ReadImage(str(first))
    array = sitk.GetArrayFromImage(image)
    array[:, 14:17] = 0
    array[14:17, :] = 0
    cut = sitk.GetImageFromArray(array)
    cut.CopyInformation(image)
    sitk.WriteImage(cut, str(first))
    damaged = demo.held_out_scores(raw, predictions, output)
    assert damaged["Dice"] < 1.0 and damaged["Betti0_error"] > 0


def test_scores_line_names_dice_cldice_and_betti_errors():
    assert demo.format_scores({"Dice": 0.91234, "clDice": 0.8, "Betti0_error": 1.5, "Betti1_error": 0.25,
                               "other": 3}) == \
        "Dice 0.9123  clDice 0.8000  Betti-0 error 1.5000  Betti-1 error 0.2500"


# ------------------------------------------------------------------------------- nnunet-ext plan on 2D data

@pytest.mark.slow  # nnU-Net's fingerprint extraction and planner in subprocesses: ~30 s on 2 idle cores
def test_plan_on_a_2d_dataset_suggests_only_2d(tmp_path):
    env = clean_env(**{name: str(tmp_path / name) for name in ("nnUNet_raw", "nnUNet_preprocessed",
                                                                "nnUNet_results")})
    write_tubular_dataset(3, dim=2, n_train=2, n_test=0, shape=(32, 32), raw_root=env["nnUNet_raw"])
    result = run(["nnunet-ext", "plan", "-d", "3", "--arch", "unetpp", "-npfp", "1"],
                 {**env, "nnUNet_n_proc_DA": "1"}, timeout=300)
    lines = result.stdout.splitlines()
    suggestions = [line for line in lines if line.startswith(("Preprocess:", "Train:"))]
    assert suggestions == [
        "Preprocess: nnUNetv2_preprocess -d 3 -plans_name nnUNetPlans_UNetPlusPlus -c 2d",
        "Train: nnUNetv2_train 3 2d FOLD -p nnUNetPlans_UNetPlusPlus -tr nnUNetTrainerUNetPlusPlus"], result.stdout
    assert any("(configurations: 2d)" in line for line in lines)
    assert "3d_fullres" not in result.stdout and "3d_lowres" not in result.stdout


# ------------------------------------------------------------------------------------------- make test-quick

@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_quick_is_the_suite_without_slow_tests_and_make_test_is_everything():
    def commands(target: str) -> str:  # -n: print, do not run; -o: never rebuild the install stamp
        return subprocess.run(["make", "-n", "-o", ".venv/.installed", target], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
    quick, full = commands("test-quick"), commands("test")
    assert "-m pytest" in quick and '-m "not slow"' in quick
    assert "-m pytest" in full and "not slow" not in full
