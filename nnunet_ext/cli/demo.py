"""``nnunet-ext demo`` (``make demo``): the core user story end to end on the CPU, on generated data.

Generates a small 2D tubular dataset, runs nnU-Net's own ``nnUNetv2_plan_and_preprocess``, trains
``nnUNetTrainerSkelRecall_short`` with ``nnUNetv2_train -device cpu`` (its epochs, losses and pseudo Dice shown as
nnU-Net logs them; everything goes to ``demo.log``), predicts the held-out cases with ``nnUNetv2_predict``, prints
their Dice, clDice and Betti errors (nnunet-ext's evaluation, also written to ``evaluation.json``) and writes
``demo_overlay.png`` (image | label | tube | prediction | errors).

The work folder is never emptied blindly: the demo writes a marker file (:data:`MARKER`) into the folder it creates,
refuses a non-empty folder without that marker, and in a folder with it replaces only its own outputs
(:data:`DEMO_OUTPUTS`).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from nnunet_ext.errors import UserInputError

DATASET_ID = 990
TRAINER = "nnUNetTrainerSkelRecall_short"
MARKER = ".nnunet_ext_demo"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
DEMO_OUTPUTS = (*NNUNET_FOLDERS, "predictions", "demo.log", "demo_overlay.png", "evaluation.json")

# progress: nnU-Net's per-epoch log lines (its print_to_log_file output) worth showing on the console
PROGRESS_MARKS = ("Epoch ", "train_loss", "val_loss", "Pseudo dice", "Epoch time", "New best EMA pseudo Dice",
                  "Mean Validation Dice")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d+)?: ")
_NUMPY_SCALAR = re.compile(r"np\.float\d+\(([^()]*)\)")

# overlay colours (RGB): one per panel, so label, tube and prediction are never confused
COLOURS = {"label": (40, 200, 40), "tube": (255, 170, 0), "prediction": (60, 110, 255),
           "false positive": (230, 30, 30), "false negative": (0, 220, 230)}
TITLE_HEIGHT = 16  # pixels of the title strip above the panels
GAP = 4            # white pixels between panels


# ------------------------------------------------------------------------------------------------ work folder

def prepare_workdir(workdir: str | Path) -> Path:
    """Make ``workdir`` ready for a demo run; returns it as an absolute path.

    A new or empty folder is created and marked with :data:`MARKER`. A folder holding that marker (an earlier demo's)
    keeps everything except the demo's own outputs (:data:`DEMO_OUTPUTS`), which are removed. Any other non-empty
    folder, or a file, raises UserInputError and nothing is touched.
    """
    work = Path(workdir).expanduser().resolve()
    marker = work / MARKER
    if work.exists() and not work.is_dir():
        raise UserInputError(f"--workdir {work} is a file; pass a new or empty folder")
    if work.is_dir() and any(work.iterdir()) and not marker.is_file():
        raise UserInputError(f"--workdir {work} is not empty and was not created by nnunet-ext demo (it has no "
                             f"{MARKER} file); nothing was deleted. Pass a new or empty folder, e.g. "
                             "--workdir demo_output")
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text("Created by `nnunet-ext demo`. Running the demo again in this folder replaces only: "
                      f"{', '.join(DEMO_OUTPUTS)}; anything else here is left alone.\n")
    for name in DEMO_OUTPUTS:
        path = work / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    return work


# --------------------------------------------------------------------------------------------------- progress

def progress_line(line: str) -> str | None:
    """The console form of one output line of an nnU-Net command: epoch, losses, pseudo Dice, epoch time and the
    final validation Dice, without nnU-Net's timestamp and numpy reprs; None for every other line."""
    if not any(mark in line for mark in PROGRESS_MARKS):
        return None
    text = _NUMPY_SCALAR.sub(r"\1", _TIMESTAMP.sub("", line.strip()))
    return text or None


def _show_progress(line: str) -> None:
    text = progress_line(line)
    if text is not None:
        print(f"[demo]     {text}", flush=True)


def _run(step: str, command: list[str], env: Mapping[str, str], log: Path) -> None:
    from nnunet_ext.cli.nnunet_commands import run_command
    print(f"[demo] {step}: {' '.join(command)}", flush=True)
    finished = run_command(command, env, log=log, on_line=_show_progress, check=False)
    if finished.returncode != 0:
        tail = (finished.stderr.strip() or finished.stdout.strip()).splitlines()[-15:]
        for line in tail:  # the end of what the command said, so the cause is visible without opening the log
            print(f"[demo]   | {line}", flush=True)
        raise UserInputError(f"demo step '{step}' failed (exit {finished.returncode}); see {log}")
    print(f"[demo]   done in {finished.wall_s:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------------------- overlay

def _grey(image: np.ndarray) -> np.ndarray:
    """(X, Y) float image -> (X, Y, 3) uint8 grey, min-max scaled."""
    image = np.asarray(image, dtype=np.float64)
    grey = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-6)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _tint(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.75) -> np.ndarray:
    """Copy of ``rgb`` (X, Y, 3) with ``mask`` (X, Y) blended towards ``colour``."""
    out = rgb.copy()
    out[mask] = ((1 - alpha) * out[mask] + alpha * np.array(colour)).astype(np.uint8)
    return out


def overlay_panels(image: np.ndarray, label: np.ndarray, prediction: np.ndarray,
                   tube: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """(title, (X, Y, 3) uint8 panel) for image, label, tube, prediction and errors of one 2D case.

    image, label, prediction: (X, Y). ``tube`` defaults to the label's tubed skeleton (what Skeleton Recall
    trains on). Errors are foreground-level: false positives (predicted, not labelled) red, false negatives
    (labelled, not predicted) cyan.
    """
    from nnunet_ext.core.skeleton import tubed_skeleton
    image, label, prediction = np.asarray(image), np.asarray(label), np.asarray(prediction)
    if not (image.shape == label.shape == prediction.shape) or label.ndim != 2:
        raise ValueError(f"image, label and prediction must be 2D arrays of one shape, got {image.shape}, "
                         f"{label.shape}, {prediction.shape}")
    tube = tubed_skeleton(label) if tube is None else np.asarray(tube)
    grey = _grey(image)
    false_positive = (prediction > 0) & (label == 0)
    false_negative = (prediction == 0) & (label > 0)
    errors = _tint(_tint(grey, false_positive, COLOURS["false positive"]), false_negative, COLOURS["false negative"])
    return [("image", grey),
            ("label", _tint(grey, label > 0, COLOURS["label"])),
            ("tube", _tint(grey, tube > 0, COLOURS["tube"])),
            ("prediction", _tint(grey, prediction > 0, COLOURS["prediction"])),
            ("errors: FP red, FN cyan", errors)]


def write_overlay(image: np.ndarray, label: np.ndarray, prediction: np.ndarray, path: str | Path,
                  scale: int = 3) -> np.ndarray:
    """Write the :func:`overlay_panels` side by side, each ``scale`` times enlarged under its title, as a PNG.

    Returns the written (TITLE_HEIGHT + X*scale, 5*Y*scale + 4*GAP, 3) uint8 image.
    """
    from PIL import Image, ImageDraw, ImageFont
    panels = overlay_panels(image, label, prediction)
    height, width = panels[0][1].shape[0] * scale, panels[0][1].shape[1] * scale
    canvas = np.full((TITLE_HEIGHT + height, len(panels) * (width + GAP) - GAP, 3), 255, np.uint8)
    for i, (_, panel) in enumerate(panels):
        x = i * (width + GAP)
        canvas[TITLE_HEIGHT:, x:x + width] = panel.repeat(scale, axis=0).repeat(scale, axis=1)
    picture = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(picture), ImageFont.load_default()
    for i, (title, _) in enumerate(panels):
        draw.text((i * (width + GAP) + 3, 2), title, fill=(0, 0, 0), font=font)
    picture.save(path)
    return np.asarray(picture)


# ------------------------------------------------------------------------------------------------- evaluation

def format_scores(foreground_mean: Mapping[str, float]) -> str:
    """One line of the held-out means: Dice, clDice, Betti-0 and Betti-1 errors (those present)."""
    names = {"Dice": "Dice", "clDice": "clDice", "Betti0_error": "Betti-0 error", "Betti1_error": "Betti-1 error"}
    return "  ".join(f"{shown} {float(foreground_mean[key]):.4f}" for key, shown in names.items()
                     if key in foreground_mean)


def held_out_scores(raw: Path, predictions: Path, output_file: Path) -> dict:
    """nnunet-ext's evaluation of ``predictions`` against ``raw/labelsTs`` (written to ``output_file``, .json);
    returns its foreground means (Dice, clDice, Betti0_error, Betti1_error, ...)."""
    from nnunet_ext.evaluation.folders import evaluate_folders
    result = evaluate_folders(str(raw / "labelsTs"), str(predictions), str(output_file),
                              dataset_json=str(raw / "dataset.json"))
    return result["foreground_mean"]


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk
    return np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


# ------------------------------------------------------------------------------------------------------- demo

def run_demo(workdir: str = "demo_output", epochs: int | None = None, iterations: int | None = None) -> int:
    """The whole demo in ``workdir`` (see :func:`prepare_workdir`); returns 0, raises UserInputError on failure."""
    for value, flag in ((epochs, "--epochs"), (iterations, "--iterations")):
        if value is not None and value < 1:
            raise UserInputError(f"{flag} must be >= 1, got {value}")
    work = prepare_workdir(workdir)
    from nnunet_ext.testing.synthetic import write_tubular_dataset

    folders = {name: work / name for name in NNUNET_FOLDERS}
    for folder in folders.values():
        folder.mkdir(parents=True)
    env = {**os.environ, **{k: str(v) for k, v in folders.items()},
           "nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "1", "nnUNet_compile": "f", "PYTHONUNBUFFERED": "1",
           "NNUNET_EXT_EPOCHS": str(epochs or 12), "NNUNET_EXT_ITERATIONS": str(iterations or 25),
           "NNUNET_EXT_VAL_ITERATIONS": "5"}
    log = work / "demo.log"
    total = time.perf_counter()

    raw = Path(write_tubular_dataset(DATASET_ID, dim=2, n_train=16, n_test=4, shape=(128, 128), seed=0,
                                     raw_root=str(folders["nnUNet_raw"]), name="DemoTubes2D"))
    print(f"[demo] wrote {raw} (16 training, 4 held-out cases); full log: {log}")
    ds = str(DATASET_ID)
    _run("plan and preprocess", ["nnUNetv2_plan_and_preprocess", "-d", ds, "-c", "2d", "-np", "1", "-npfp", "1"], env, log)
    _run("train", ["nnUNetv2_train", ds, "2d", "0", "-tr", TRAINER, "-device", "cpu"], env, log)
    predictions = work / "predictions"
    _run("predict", ["nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(predictions), "-d", ds,
                     "-c", "2d", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1"], env, log)

    evaluation = work / "evaluation.json"
    scores = held_out_scores(raw, predictions, evaluation)
    references = sorted((raw / "labelsTs").glob("*.nii.gz"))
    print(f"[demo] held-out cases ({len(references)}), mean: {format_scores(scores)}")
    print(f"[demo]   per case: {evaluation}")

    first = references[0]
    overlay = work / "demo_overlay.png"
    write_overlay(_read(raw / "imagesTs" / first.name.replace(".nii.gz", "_0000.nii.gz")), _read(first),
                  _read(predictions / first.name), overlay)
    print(f"[demo] overlay (image | label | tube | prediction | errors) of {first.name}: {overlay}")
    print(f"[demo] finished in {time.perf_counter() - total:.0f} s; nnU-Net output in {work}")
    return 0
