"""``nnunet-ext benchmark glnet`` and ``nnunet-ext benchmark dawmr``: their helpers against independent references,
the memory worker on GLNet vs PlainConvUNet, and each ``--smoke`` run printing its tables."""
from __future__ import annotations

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nnunet_ext.benchmarks import BENCHMARKS, run_benchmark
from nnunet_ext.benchmarks import glnet as glnet_benchmark
from nnunet_ext.benchmarks.dawmr import half_patch, input_multiple, random_batch
from nnunet_ext.benchmarks.glnet import (build_network, forward_flops, glnet_architecture, plain_architecture,
                                         window_problem)

NUMBER = r"\d+(?:\.\d+)?"


def test_both_benchmarks_are_registered_with_a_summary():
    assert {"glnet", "dawmr"} <= set(BENCHMARKS)
    assert "GLNet" in BENCHMARKS["glnet"] and "LED" in BENCHMARKS["dawmr"]


# ------------------------------------------------------------------------------------------------------ helpers

@pytest.mark.parametrize("window, grid", [((64, 64), 4), ((16, 16, 16), 2)])
def test_flop_estimate_equals_torch_flop_counter(window, grid):
    """The duration estimate's convolution count, checked against torch's own FLOP counter on real forwards."""
    for architecture in (plain_architecture(window), glnet_architecture(window, grid),
                         glnet_architecture(window, grid, local_to_global=True)):
        network = build_network(architecture).eval()
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            network(torch.randn(1, 1, *window))
        assert forward_flops(architecture, window) == counter.get_total_flops()


def test_glnet_architecture_follows_the_tile_and_plain_the_window():
    plain, glnet = plain_architecture((1024, 1024)), glnet_architecture((1024, 1024), 4)
    # nnU-Net's planner pools down to 4 voxels: 1024 -> 8 poolings (9 stages); the 256² tile -> 6 (7 stages)
    assert plain["arch_kwargs"]["n_stages"] == 9 and glnet["arch_kwargs"]["n_stages"] == 7
    assert glnet["arch_kwargs"]["tile_grid"] == [4, 4] and glnet["arch_kwargs"]["tiles_per_batch"] == 1
    assert glnet["network_class_name"] == "nnunet_ext.networks.glnet.GLNet"


def test_window_problem_names_windows_the_planner_or_the_grid_would_change():
    assert window_problem((1024, 1024), 4) is None and window_problem((96, 96, 96), 2) is None
    assert "not divisible by the tile grid 4" in window_problem((1022, 1022), 4)
    assert "(1000, 1000)" in window_problem((1000, 1000), 4)  # the planner pads a 1000² window


def test_input_multiple_and_half_patch_by_hand():
    # total stride 1*2*2 = 4 and 1*2*1 = 2 per axis, times the tile grid (4, 2)
    assert input_multiple({"strides": [[1, 1], [2, 2], [2, 1]], "tile_grid": [4, 2]}) == [16, 4]
    assert input_multiple({"strides": [1, 2, 2]}) == [4]
    assert half_patch([256, 96], [16, 4]) == [128, 48]
    assert half_patch([32, 20], [16, 4]) == [32, 8]  # at least 2 x the multiple, at most the patch


def test_random_batch_follows_each_trainer_target_layout():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext.benchmarks._plans import benchmark_plans
    from nnunet_ext.benchmarks._measure import scratch_nnunet_folders
    from nnunet_ext.trainers import nnUNetTrainerDAWMR
    plans, dataset_json, configuration = benchmark_plans((32, 32), 2)
    with scratch_nnunet_folders():
        plain = nnUNetTrainer({**plans, "continue_training": False}, configuration, 0, dataset_json,
                              device=torch.device("cpu"))
        dawmr = nnUNetTrainerDAWMR({**plans, "continue_training": False}, configuration, 0, dataset_json,
                                   device=torch.device("cpu"))
    batch = random_batch(plain, (32, 32), 2, seed=0)
    # 32² plans: strides 1, 2, 2, 2: nnU-Net's targets at 32, 16, 8 (the lowest output gets none)
    assert [tuple(t.shape) for t in batch["target"]] == [(2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    assert batch["data"].shape == (2, 1, 32, 32) and set(batch["target"][0].unique().tolist()) == {0.0, 1.0}
    assert [tuple(t.shape) for t in random_batch(dawmr, (32, 32), 2, seed=0)["target"]] == [(2, 1, 32, 32)]


def test_target_line_reports_the_ratio_and_the_verdict():
    line = glnet_benchmark._target_line
    measured = {("2048²", (2048, 2048)): {"GLNet": {"peak_mib": 200.0}, "PlainConvUNet": {"peak_mib": 1000.0}}}
    assert "0.200x (200 / 1000 MiB, grid 4x4, tiles_per_batch 1): met" in line(measured, 4)
    measured[("2048²", (2048, 2048))]["GLNet"]["peak_mib"] = 300.0
    assert line(measured, 4).endswith("0.300x (300 / 1000 MiB, grid 4x4, tiles_per_batch 1): NOT met")
    assert "2048 not in --sizes" in line({}, 4)


@pytest.mark.slow  # a fresh worker process / a whole benchmark run (15-25 s)
def test_memory_worker_measures_glnet_below_plain_at_the_same_window():
    """The real memory worker (fresh process, fixed mmap threshold) on a 256² window: PlainConvUNet keeps at least
    its 32-channel full-resolution maps (an 8 MiB output of the first stage, the decoder's 16 MiB concatenation),
    GLNet's tiles are 64² (16x fewer voxels per map)."""
    window = [256, 256]
    peaks = {}
    for name, architecture in (("plain", plain_architecture(window)), ("glnet", glnet_architecture(window, 4))):
        spec = {"device": "cpu", "repeats": 1, "time_budget": 0.0, "kind": "infer", "measure": "memory",
                "architecture": architecture, "window": window,
                "warmup_window": half_patch(window, input_multiple(architecture["arch_kwargs"]))}
        peaks[name] = glnet_benchmark.run_worker(glnet_benchmark._WORKER, spec, memory=True)["peak_mib"]
    assert peaks["plain"] > 24
    assert peaks["glnet"] < 0.5 * peaks["plain"]


# ---------------------------------------------------------------------------------------------------- smoke runs

@pytest.mark.slow  # a fresh worker process / a whole benchmark run (15-25 s)
def test_glnet_smoke_run_prints_every_table(capsys):
    assert run_benchmark("glnet", ["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "Inference at the same field of view" in out and "expected duration" in out
    # 64² window: nnU-Net's planner gives 5 stages; GLNet's 16² tile 3 stages; 16³: 3 stages, tile 8³: 2 stages
    for window, plain, glnet in (("64²", "5 stages on 64²", "3 stages on tile 16², grid 4x4"),
                                 ("16³", "3 stages on 16³", "2 stages on tile 8³, grid 2x2x2")):
        assert re.search(rf"^{window}\s+PlainConvUNet\s+{plain}\s+{NUMBER}\s+{NUMBER}\s+1\.00x\s+1\s+{NUMBER}\s",
                         out, re.MULTILINE), window
        for label in ("GLNet", "GLNet bidirectional"):
            assert re.search(rf"^{window}\s+{label}\s+{glnet}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+1\s+{NUMBER}\s",
                             out, re.MULTILINE), (window, label)
        assert re.search(rf"^{window}\s+{NUMBER}x\s+\S+$", out, re.MULTILINE)  # bidirectional vs global-to-local
    assert "target (issue 12) at 2048²" in out
    for trainer in ("nnUNetTrainer \\(PlainConvUNet\\)", "nnUNetTrainerGLNet", "nnUNetTrainerGLNet checkpoint_tiles"):
        # peak, vs plain, vs GLNet (in-process peaks may be 0: "-"), step s, vs plain, steps
        assert re.search(rf"^{trainer}\s+{NUMBER}\s+\S+\s+\S+\s+{NUMBER}\s+{NUMBER}x\s+1$", out, re.MULTILINE), trainer
    assert "bidirectional checkpoint_tiles" not in out  # only with --train-bidirectional (or --full)


@pytest.mark.slow  # a fresh worker process / a whole benchmark run (15-25 s)
def test_dawmr_smoke_run_prints_every_table(capsys):
    assert run_benchmark("dawmr", ["--smoke"]) == 0
    out = capsys.readouterr().out
    for plans in ("16³", "32²"):
        for trainer in ("nnUNetTrainer", "nnUNetTrainerDAWMR", "nnUNetTrainerLED", "nnUNetTrainerDAWMRLED"):
            assert re.search(rf"^{plans} {trainer}\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}\s+\S+\s+1$", out,
                             re.MULTILINE), (plans, trainer)
        assert re.search(rf"^{plans}\s+nnUNetTrainerLED / nnUNetTrainer\s+{NUMBER}x\s+\S+$", out, re.MULTILINE)
        assert re.search(rf"^{plans}\s+nnUNetTrainerDAWMRLED / nnUNetTrainerDAWMR\s+{NUMBER}x", out, re.MULTILINE)
    # 16³ plans (strides 1, 2, 2; kernel 3, 2 convs per stage), DAWMR's defaults: foveation 5 and 9, scales at
    # strides 2 and 4. One iteration reaches -13..13 (the stride-4 scale: 2 low-resolution convs reach +-2 low
    # voxels, upsampling adds one, pooling a block of 4), i.e. 27 voxels; k iterations add up: 26 k + 1.
    assert re.search(r"^16³\s.*1: 27x27x27, 2: 53x53x53, 3: 79x79x79\s+no: patch 16³ < 79x79x79$", out,
                     re.MULTILINE)
    assert "nnunet-ext benchmark quality" in out
