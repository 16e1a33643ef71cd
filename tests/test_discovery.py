"""How nnU-Net finds our trainers: the start-up hook, the explicit export, pickling under spawn/forkserver."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cli_helpers import clean_env, run
from nnunet_ext._compat import require_nnunetv2
from nnunet_ext.trainers.discovery import trainer_folder

LOOKUP_AND_PICKLE = r"""
import multiprocessing as mp, os, sys
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

def describe(cls):
    return cls.__module__ + "." + cls.__qualname__, cls.skeleton_recall_weight

def tube_middle_sum(transform, seg):
    return int(transform.tubes(seg)[0, 8:13, 4:15].sum())

if __name__ == "__main__":
    import numpy as np
    from nnunet_ext.transforms import SkeletonTubeTransform
    cls = recursive_find_trainer_class_by_name(sys.argv[1])
    seg = np.zeros((20, 20), np.int16); seg[8:13, 2:18] = 1
    for method in ("spawn", "forkserver"):
        with mp.get_context(method).Pool(1) as pool:
            name, weight = pool.apply(describe, (cls,))
            total = pool.apply(tube_middle_sum, (SkeletonTubeTransform(), seg))
        print(method, name, weight, total)
"""


def _lookup(trainer: str, env: dict, tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "lookup_and_pickle.py"  # a real file: spawn workers re-import the main module
    script.write_text(LOOKUP_AND_PICKLE)
    return subprocess.run([sys.executable, str(script), trainer], env=env, capture_output=True, text=True,
                          timeout=180)


@pytest.mark.slow  # fresh interpreters that import torch and nnU-Net
def test_startup_hook_registers_folder_and_classes_pickle_under_spawn_and_forkserver(tmp_path):
    result = _lookup("nnUNetTrainerSkelRecall_w0p1", clean_env(), tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines() if line.startswith(("spawn", "forkserver"))]
    # the class that crosses the process boundary is the installed one (not a copy from the scanned folder),
    # and the transform works in the worker: the tube of a 5-pixel bar covers its middle 5 x 11 pixels
    expected = str(5 * 11)
    name = "nnunet_ext.trainers.generated.nnUNetTrainerSkelRecall_w0p1"
    assert lines == [["spawn", name, "0.1", expected], ["forkserver", name, "0.1", expected]]


@pytest.mark.slow  # fresh interpreters that import torch and nnU-Net
def test_opt_out_then_documented_export_line_works(tmp_path):
    env = clean_env(NNUNET_EXT_NO_AUTOREGISTER="1")
    missing = _lookup("nnUNetTrainerSkelRecall", env, tmp_path)
    assert missing.returncode != 0 and "Could not find requested nnunet trainer" in missing.stderr
    folder = run(["nnunet-ext", "trainer-path"], env).stdout.strip()
    assert folder == trainer_folder() and os.path.isfile(os.path.join(folder, "nnunet_ext_trainer_exports.py"))
    found = _lookup("nnUNetTrainerSkelRecall", {**env, "nnUNet_extTrainer": folder}, tmp_path)
    assert found.returncode == 0, found.stderr


@pytest.mark.slow  # fresh interpreters that import torch and nnU-Net
def test_unknown_trainer_name_fails_with_nnunets_message(tmp_path):
    result = _lookup("nnUNetTrainerNoSuchThing", clean_env(), tmp_path)
    assert result.returncode != 0
    # nnU-Net's lookup searched its own trainers and ours (the folder the start-up hook registered)
    assert "Could not find requested nnunet trainer nnUNetTrainerNoSuchThing" in result.stderr
    assert trainer_folder() in result.stderr


@pytest.mark.parametrize("version,ok", [("2.8.0", True), ("2.8.1", True), ("2.10", True), ("3.0", True),
                                        ("2.7.9", False), ("2.6", False)])
def test_version_guard(version, ok):
    if ok:
        require_nnunetv2(version)
    else:
        with pytest.raises(RuntimeError, match=r"nnunetv2>=2\.8.*found nnunetv2 " + version.replace(".", r"\.")):
            require_nnunetv2(version)
