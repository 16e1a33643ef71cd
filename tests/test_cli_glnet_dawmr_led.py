"""GLNet, DAWMR and LED through the real nnU-Net command line: plan, train, predict (and --val), 2D and 3D."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cli_helpers import assert_predicted_every_case, assert_trained, clean_env, fold_folder, plan, predict, run, train
from nnunet_ext.testing.synthetic import write_tubular_dataset

pytestmark = pytest.mark.slow
SHORT = dict(NNUNET_EXT_EPOCHS="1", NNUNET_EXT_ITERATIONS="2", NNUNET_EXT_VAL_ITERATIONS="1")


def _train_and_predict(dataset_id: int, raw: Path, configuration: str, trainer: str, env: dict, plans: str,
                       out: Path) -> Path:
    train(dataset_id, configuration, trainer, env, plans=plans)
    fold = fold_folder(env["nnUNet_results"], raw, trainer, configuration, plans=plans)
    assert_trained(fold, trainer)
    assert (fold / "validation" / "summary_topology.json").is_file()
    predict(dataset_id, raw, out, configuration, trainer, env, plans=plans)
    assert_predicted_every_case(out, raw)
    for reference in sorted((raw / "labelsTs").glob("*.nii.gz")):
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(out / reference.name)))
        assert prediction.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(reference))).shape
        assert set(np.unique(prediction)) <= {0, 1}
    return fold


def test_glnet_2d_plans_train_predict_and_validate(nnunet_env):
    """nnunet-ext plan --arch glnet: a window several times nnU-Net's patch on the same (small) VRAM target."""
    raw = Path(write_tubular_dataset(971, dim=2, n_train=5, n_test=1, shape=(256, 256), seed=7))
    env = clean_env(**SHORT)
    run(["nnunet-ext", "plan", "-d", "971", "--arch", "glnet", "-gpu_memory_target", "0.1", "--preprocess",
         "-c", "2d", "-np", "1", "-npfp", "1"], {**env, "nnUNet_n_proc_DA": "1"})
    run(["nnUNetv2_plan_experiment", "-d", "971", "-gpu_memory_target", "0.1"], {**env, "nnUNet_n_proc_DA": "1"})
    folder = nnunet_env["nnUNet_preprocessed"] / raw.name
    glnet = json.loads((folder / "nnUNetPlans_GLNet.json").read_text())["configurations"]["2d"]
    default = json.loads((folder / "nnUNetPlans.json").read_text())["configurations"]["2d"]
    kwargs = glnet["architecture"]["arch_kwargs"]
    assert glnet["architecture"]["network_class_name"] == "nnunet_ext.networks.glnet.GLNet"
    assert kwargs["checkpoint_tiles"] is True and kwargs["tile_grid"] == [4, 4]
    assert all(w <= 256 for w in glnet["patch_size"])  # capped by the median image shape
    assert all(w >= 2 * d for w, d in zip(glnet["patch_size"], default["patch_size"]))  # several times the patch
    strides = np.prod(np.array(kwargs["strides"]), axis=0)
    assert all(w % (g * s) == 0 for w, g, s in zip(glnet["patch_size"], kwargs["tile_grid"], strides))
    # the staged schedule over two epochs: stage 1 (global branch) in epoch 0, stage 2 (local branch) in epoch 1
    trainer, env = "nnUNetTrainerGLNet_staged_short", {**env, "NNUNET_EXT_EPOCHS": "2"}
    fold = _train_and_predict(971, raw, "2d", trainer, env, "nnUNetPlans_GLNet", raw.parent / "pred_glnet_2d")
    log = "".join(path.read_text() for path in fold.glob("training_log_*.txt"))
    assert "GLNet stage 1: training global_branch, decoder.global_head" in log
    assert "GLNet stage 2: training local_branch, decoder.aggregation, decoder.local_head" in log
    assert log.index("Epoch 0") < log.index("GLNet stage 1") < log.index("Epoch 1") < log.index("GLNet stage 2")
    # the window holds the whole (median) image: no foreground crops that would shift it out of view
    assert "GLNet: foreground oversampling 0 instead of nnU-Net's 0.33" in log
    state = assert_trained(fold, trainer)["network_weights"]
    assert any(k.startswith("global_branch.") for k in state) and any(k.startswith("local_branch.") for k in state)
    assert not any(".seg_layers." in k for k in state)  # -pretrained_weights would re-initialise those
    (fold / "validation" / "summary.json").unlink()
    run(["nnUNetv2_train", "971", "2d", "0", "-tr", trainer, "-p", "nnUNetPlans_GLNet", "-device", "cpu", "--val"],
        env)
    assert (fold / "validation" / "summary.json").is_file()


def test_glnet_3d_on_nnunets_default_plans(nnunet_env):
    raw = Path(write_tubular_dataset(972, dim=3, n_train=5, n_test=1, shape=(24, 24, 24), seed=8))
    env = clean_env(**SHORT)
    plan(972, "3d_fullres", env)
    trainer = "nnUNetTrainerGLNet_bidirectional_short"
    fold = _train_and_predict(972, raw, "3d_fullres", trainer, env, "nnUNetPlans", raw.parent / "pred_glnet_3d")
    (fold / "validation" / "summary.json").unlink()
    run(["nnUNetv2_train", "972", "3d_fullres", "0", "-tr", trainer, "-device", "cpu", "--val"], env)
    assert (fold / "validation" / "summary.json").is_file()


@pytest.mark.parametrize("dim", [2, 3])
def test_dawmr_led_and_both(nnunet_env, dim):
    """nnUNetTrainerDAWMR and nnUNetTrainerLED on nnU-Net's default plans, nnUNetTrainerDAWMRLED on DAWMR plans
    (nnunet-ext plan --arch dawmr)."""
    dataset_id, configuration = (973, "2d") if dim == 2 else (974, "3d_fullres")
    shape = (48, 48) if dim == 2 else (24, 24, 24)
    raw = Path(write_tubular_dataset(dataset_id, dim=dim, n_train=5, n_test=1, shape=shape, seed=9))
    env = clean_env(**SHORT)
    plan(dataset_id, configuration, env)
    run(["nnunet-ext", "plan", "-d", str(dataset_id), "--arch", "dawmr", "--preprocess", "-c", configuration,
         "-np", "1", "-npfp", "1"], {**env, "nnUNet_n_proc_DA": "1"})
    dawmr_plans = json.loads((nnunet_env["nnUNet_preprocessed"] / raw.name / "nnUNetPlans_DAWMR.json").read_text())
    assert dawmr_plans["configurations"][configuration]["architecture"]["network_class_name"] == \
        "nnunet_ext.networks.dawmr.DAWMR"
    for trainer, plans in (("nnUNetTrainerDAWMR_short", "nnUNetPlans"), ("nnUNetTrainerLED_short", "nnUNetPlans"),
                           ("nnUNetTrainerDAWMRLED_short", "nnUNetPlans_DAWMR")):
        fold = _train_and_predict(dataset_id, raw, configuration, trainer, env, plans,
                                  raw.parent / f"pred_{trainer}")
        log = next(fold.glob("training_log_*.txt")).read_text()
        if "LED" in trainer:
            assert "LED strength" in log
        if "DAWMR" in trainer:
            assert "DAWMR field of view" in log or "field of view" in log
