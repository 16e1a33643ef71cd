"""DAWMR and LED benchmark: ``nnunet-ext benchmark dawmr [--quick | --smoke] [--patch3d N] [--patch2d N]``.

On the same plans (nnU-Net's topology for a 3D 64³ and a 2D 256² patch, batch 2: ``benchmark_plans``, i.e. the
default planner's pooling and kernels, 32 base features), the training step of

* ``nnUNetTrainer`` (PlainConvUNet, Dice + CE with nnU-Net's deep supervision), the baseline;
* ``nnUNetTrainerDAWMR`` (DAWMR built from the same plans, every iteration supervised at full resolution);
* ``nnUNetTrainerLED`` and ``nnUNetTrainerDAWMRLED`` (the same networks, LED-weighted Dice + CE at full
  strength, i.e. after its warm-up).

Each trainer is built as ``nnUNetv2_train`` builds it (its network from the plans, its optimizer and its own loss)
and its own ``train_step`` runs (forward, loss, backward, gradient clipping, SGD step) on batches of random
blob labels in the trainer's target layout (the same images for every trainer; LED's cost does not depend on
where the errors are). Reported per trainer: median step time and peak memory of a step, with ratios against
nnUNetTrainer's in the same run, and LED's overhead per step (nnUNetTrainerLED / nnUNetTrainer and
nnUNetTrainerDAWMRLED / nnUNetTrainerDAWMR). Also, for the plans used: the parameters of both networks,
nnU-Net's planning estimate (``compute_conv_feature_map_size``) and DAWMR's field of view after 1..K
iterations, with whether the patch covers it.

The segmentation quality of the four trainers (adapted Rand error and VI on synthetic EM data) is not measured
here: that comparison is ``nnunet-ext benchmark quality`` (it trains through the real nnU-Net CLI).

Measuring: each trainer runs in two fresh single-threaded subprocesses (:func:`~nnunet_ext.benchmarks._measure.measured`). Memory: with glibc's
mmap threshold fixed at 128 KiB (:mod:`nnunet_ext.benchmarks._measure`; freed tensors go back to the OS), one
step on a half-size batch (kernels, optimizer state), then the peak resident set (CUDA: ``max_memory_allocated``)
of one full step above the level before it: activations and temporaries of forward, loss and backward. Weights,
optimizer state, batches and the previous step's gradients exist before (nnU-Net's ``zero_grad(set_to_none=True)``
frees the gradients at the start of a step and backward makes them again, so they count only where they outgrow
the freed activations). Time: with glibc's default allocator (the fixed threshold makes every large tensor a fresh
mapping and slows allocation-heavy code), ``median_within_budget`` of steps (one step, then as many as fit in
``--time-budget``, at most ``--repeats``). torch.compile is off (``nnunet-ext benchmark train_step`` measures
compiled CUDA steps). ``--smoke`` runs everything in this process on tiny plans (a test of the code path; its
memory figures are indicative only). A default run takes 20-30 minutes on this loaded 2-core CPU (a DAWMR step on
3D 2 x 64³ takes 2-3 minutes on one thread), ``--quick`` a few.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nnunet_ext.benchmarks._measure import (CALIBRATION_MIB, PeakMeter, calibration_worker, measured,
                                            median_within_budget, run_worker, scratch_nnunet_folders, single_thread)
from nnunet_ext.benchmarks._plans import benchmark_plans
from nnunet_ext.benchmarks._report import package_version, print_header, table

_WORKER = "nnunet_ext.benchmarks.dawmr"
BASELINE = "nnUNetTrainer"
TRAINERS = (BASELINE, "nnUNetTrainerDAWMR", "nnUNetTrainerLED", "nnUNetTrainerDAWMRLED")
#: LED's overhead: (with LED, without)
LED_PAIRS = (("nnUNetTrainerLED", BASELINE), ("nnUNetTrainerDAWMRLED", "nnUNetTrainerDAWMR"))


# ------------------------------------------------------------------------------ training steps (shared with glnet)

def build_trainer(name: str, plans: dict, dataset_json: dict, configuration: str, device: torch.device):
    """Trainer ``name`` (nnUNetTrainer or a registered one) with network, optimizer and loss set up as
    ``initialize()`` sets them up (without the preprocessed dataset it also opens), torch.compile off, LED (if
    any) at full strength. Call inside :func:`scratch_nnunet_folders`."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_ext import trainers
    from nnunet_ext.losses.led import LEDWeightedDiceCELoss
    cls = nnUNetTrainer if name == BASELINE else getattr(trainers, name)
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's banner and device line
        trainer = cls({**plans, "continue_training": False}, configuration, 0, dataset_json, device=device)
    trainer.network = trainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, trainer.label_manager.num_segmentation_heads,
        trainer.enable_deep_supervision).to(device)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    for module in trainer.loss.modules():
        if isinstance(module, LEDWeightedDiceCELoss):
            module.strength = 1.0  # warm-up over
    return trainer


def random_batch(trainer, patch: Sequence[int], batch: int, seed: int) -> dict:
    """``data`` (batch, 1, *patch) noise and, in the trainer's target layout (one tensor, or one per
    deep-supervision scale, nearest-downsampled), blob labels 0/1: thresholded box-smoothed noise."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(batch, 1, *patch, generator=generator)
    noise = torch.randn(batch, 1, *patch, generator=generator)
    pool = F.avg_pool2d if len(patch) == 2 else F.avg_pool3d
    label = (pool(noise, 5, 1, 2) > 0.1).float()
    scales = trainer._get_deep_supervision_scales()
    if scales is None:
        return {"data": data, "target": label}
    targets = [F.interpolate(label, size=[max(1, round(p * float(s))) for p, s in zip(patch, scale)],
                             mode="nearest") for scale in scales]
    return {"data": data, "target": targets}


def half_patch(patch: Sequence[int], multiple: Sequence[int]) -> list[int]:
    """About half of ``patch`` per axis, a multiple of ``multiple`` and at least 2 of it (a valid smaller input
    for a network whose input must be a multiple of ``multiple``; 2 keeps the bottleneck above one voxel)."""
    return [min(p, max(2 * m, (p // 2) // m * m)) for p, m in zip(patch, multiple)]


def input_multiple(arch_kwargs: dict) -> list[int]:
    """What an input of the plans' network must be a multiple of per axis: the total stride (times GLNet's tile
    grid)."""
    strides = arch_kwargs["strides"]
    dim = len(strides[0]) if isinstance(strides[0], (list, tuple)) else 1
    total = [1] * dim
    for stride in strides:
        stride = stride if isinstance(stride, (list, tuple)) else [stride] * dim
        total = [t * int(s) for t, s in zip(total, stride)]
    grid = arch_kwargs.get("tile_grid", 1)
    grid = grid if isinstance(grid, (list, tuple)) else [grid] * dim
    return [t * int(g) for t, g in zip(total, grid)]


def measure_training_step(trainer, device: torch.device, measure: str, repeats: int, time_budget: float) -> dict:
    """Training steps of ``trainer`` on two full random batches. ``measure`` "memory": one step on a half-size
    batch (kernels, optimizer state), then the peak memory of one full step above the level before it
    ({"peak_mib", "meter"}); "time": :func:`median_within_budget` of steps ({"step_s", "steps"}: the first step
    is its warm-up); "both": the warm-up step, then the timed steps with their peak memory (all keys)."""
    configuration = trainer.configuration_manager
    patch, batch = list(configuration.patch_size), configuration.batch_size
    if measure in ("memory", "both"):
        multiple = input_multiple(configuration.network_arch_init_kwargs)
        trainer.train_step(random_batch(trainer, half_patch(patch, multiple), batch, seed=1))
    batches = [random_batch(trainer, patch, batch, seed=seed) for seed in (2, 3)]
    state = {"step": 0, "loss": 0.0}

    def call() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        state["loss"] = float(trainer.train_step(batches[state["step"] % 2])["loss"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state["step"] += 1
        return time.perf_counter() - start

    result: dict = {}
    meter = PeakMeter(device)
    if measure in ("memory", "both"):
        meter.start()
    if measure == "memory":
        call()
    else:
        result["step_s"], result["steps"] = median_within_budget(call, repeats, time_budget)
    if measure in ("memory", "both"):
        result.update(peak_mib=meter.stop(), meter=meter.method)
    return {**result, "loss": state["loss"]}


# ------------------------------------------------------------------------------------------------------- worker

def run_case(spec: dict) -> dict:
    """One measurement: ``spec["kind"]`` "calibrate" or "train" (a trainer on ``benchmark_plans``; ``spec["measure"]``
    as :func:`measure_training_step` takes it)."""
    device = torch.device(spec["device"])
    with single_thread():
        if spec["kind"] == "calibrate":
            return calibration_worker(device)
        plans, dataset_json, configuration = benchmark_plans(spec["patch"], spec["batch"])
        torch.manual_seed(0)
        with scratch_nnunet_folders():
            trainer = build_trainer(spec["trainer"], plans, dataset_json, configuration, device)
            return measure_training_step(trainer, device, spec["measure"], spec["repeats"], spec["time_budget"])


def _worker(spec_json: str) -> int:
    """Subprocess entry: prints ``RESULT {json}``."""
    print("RESULT " + json.dumps(run_case(json.loads(spec_json))))
    return 0


# ------------------------------------------------------------------------------------------------------- report

def network_facts(patch: Sequence[int], batch: int) -> dict:
    """Parameters and planner estimates of nnUNetTrainer's and nnUNetTrainerDAWMR's networks on the plans of
    ``patch``, and DAWMR's field of view after 1..K iterations (built as the trainers build them)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ext import trainers
    plans, _, configuration = benchmark_plans(patch, batch)
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    plain = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, 1, 2, True)
    dawmr = trainers.nnUNetTrainerDAWMR.build_network_architecture(plans_manager, configuration_manager, 1, 2, True)
    patch = tuple(configuration_manager.patch_size)
    return {"patch": patch, "stages": len(configuration_manager.pool_op_kernel_sizes),
            "plain_params": sum(p.numel() for p in plain.parameters()),
            "dawmr_params": sum(p.numel() for p in dawmr.parameters()),
            "estimate_ratio": float(dawmr.compute_conv_feature_map_size(patch)
                                    / plain.compute_conv_feature_map_size(patch)),
            "iterations": dawmr.iterations, "width": dawmr.width,
            "fov": [dawmr.field_of_view(k) for k in range(1, dawmr.iterations + 1)],
            "uncovered": dawmr.check_patch_covers_field_of_view(patch)}


def _edge(patch: Sequence[int]) -> str:
    return f"{patch[0]}{'²' if len(patch) == 2 else '³'}" if len(set(patch)) == 1 else "x".join(map(str, patch))


def _ratio(results: dict, name: str, base: str, key: str) -> str:
    a, b = results.get(name, {}), results.get(base, {})
    if "error" in a or "error" in b or not b.get(key):
        return "-"
    return f"{a[key] / b[key]:.2f}x"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nnunet-ext benchmark dawmr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch3d", type=int, default=None, help="3D plans' patch edge (64; 0 skips 3D)")
    parser.add_argument("--patch2d", type=int, default=None, help="2D plans' patch edge (256; 0 skips 2D)")
    parser.add_argument("--batch", type=int, default=2, help="batch size of the plans (2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per trainer at most (3)")
    parser.add_argument("--time-budget", type=float, default=30.0, help="seconds of timed steps per trainer (30)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="3D 32³, 2D 128², at most 1 timed step after the first")
    parser.add_argument("--smoke", action="store_true",
                        help="3D 16³, 2D 32², in this process (a test of the code path, no fresh workers)")
    args = parser.parse_args(argv)
    defaults = (16, 32) if args.smoke else (32, 128) if args.quick else (64, 256)
    args.patch3d = defaults[0] if args.patch3d is None else args.patch3d
    args.patch2d = defaults[1] if args.patch2d is None else args.patch2d
    if args.quick or args.smoke:
        args.repeats, args.time_budget = 1, 0.0 if args.smoke else min(args.time_budget, 5.0)
    if args.quick and args.smoke:
        parser.error("--quick and --smoke exclude each other")
    if args.patch3d < 0 or args.patch2d < 0 or not (args.patch3d or args.patch2d):
        parser.error("--patch3d and --patch2d are edges >= 0 (0 skips that one), not both 0")
    if args.batch < 1 or args.repeats < 1 or args.time_budget < 0:
        parser.error("--batch and --repeats must be >= 1 and --time-budget >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available; run without it (CPU)")
    return args


def _header_lines(args: argparse.Namespace, calibration: dict, facts: dict) -> list[str]:
    lines = [f"GPU: {torch.cuda.get_device_name()}"] if args.device == "cuda" else []
    where = "in this process (--smoke)" if args.smoke else "fresh subprocesses per trainer (memory, time)"
    lines += [f"device {args.device}; {where}, torch 1 thread; step time: median of <= {args.repeats} steps "
              f"within {args.time_budget:.0f} s after the first; peak memory: {calibration.get('meter', '?')} (check: "
              f"a {CALIBRATION_MIB} MiB tensor measured as {calibration.get('peak_mib', float('nan')):.1f} MiB)"]
    return lines + [f"plans {_edge(f['patch'])}: nnU-Net's topology for the patch ({f['stages']} stages), batch "
                    f"{args.batch}; DAWMR {f['iterations']} iterations, width {f['width']}" for f in facts.values()]


def _run_trainers(args: argparse.Namespace, base: dict, patches: list[tuple[int, ...]]) -> dict:
    results: dict[tuple, dict] = {}
    for patch in patches:
        results[patch] = {}
        for name in TRAINERS:
            spec = {**base, "kind": "train", "trainer": name, "patch": list(patch), "batch": args.batch}
            results[patch][name] = result = measured(run_case, _WORKER, spec, args.smoke)
            shown = result.get("error") or f"{result['step_s'] * 1e3:.0f} ms, {result['peak_mib']:.0f} MiB"
            print(f"  {_edge(patch)} {name}: {shown}", flush=True)
    return results


def _network_table(facts: dict) -> None:
    rows = []
    for patch, f in facts.items():
        fov = ", ".join(f"{k + 1}: {'x'.join(map(str, v))}" for k, v in enumerate(f["fov"]))
        covered = "yes" if not f["uncovered"] else f"no: patch {_edge(patch)} < {'x'.join(map(str, f['fov'][-1]))}"
        rows.append([_edge(patch), f"{f['plain_params'] / 1e6:.2f}", f"{f['dawmr_params'] / 1e6:.2f}",
                     f"{f['dawmr_params'] / f['plain_params']:.2f}x", f"{f['estimate_ratio']:.2f}x", fov, covered])
    table("Networks on the same plans: parameters, planner estimate, DAWMR's field of view",
          ["plans", "PlainConvUNet M", "DAWMR M", "ratio", "planner estimate ratio",
           "DAWMR field of view after k iterations (voxels per axis)", "patch covers all"], rows,
          ["planner estimate ratio: DAWMR / PlainConvUNet compute_conv_feature_map_size (what nnU-Net's planner "
           "fits to the VRAM target)",
           "field of view: input offsets that can reach an output voxel; iteration k sees iteration k-1's output, "
           "so the offsets add up"])


def _step_tables(results: dict, args: argparse.Namespace) -> None:
    memory = "peak CUDA MiB" if args.device == "cuda" else "peak RSS MiB"
    rows = []
    for patch, by_trainer in results.items():
        for name, r in by_trainer.items():
            if "error" in r:
                rows.append([f"{_edge(patch)} {name}", r["error"], "", "", "", ""])
                continue
            rows.append([f"{_edge(patch)} {name}", f"{r['step_s'] * 1e3:.0f}",
                         _ratio(by_trainer, name, BASELINE, "step_s"), f"{r['peak_mib']:.0f}",
                         _ratio(by_trainer, name, BASELINE, "peak_mib"), str(r["steps"] + 1)])
    table(f"Training step (trainer.train_step: forward, own loss, backward, SGD step), batch {args.batch}, vs "
          f"nnUNetTrainer", ["plans, trainer", "step ms", "time", memory, "memory", "steps run"], rows,
          ["time, memory: ratio to nnUNetTrainer on the same plans in this run; LED at full strength (warm-up over)",
           "steps run: the first step and the timed ones (the median is over the timed ones where any fit the "
           "budget, else the first step's time)"])
    rows = [[_edge(patch), f"{with_led} / {without}", _ratio(by_trainer, with_led, without, "step_s"),
             _ratio(by_trainer, with_led, without, "peak_mib")]
            for patch, by_trainer in results.items() for with_led, without in LED_PAIRS]
    table("LED's overhead per training step", ["plans", "trainers", "time", "memory"], rows,
          ["LED: error map, box densities, weights and the weighted CE on every deep-supervision output"])


def main(argv: list[str]) -> int:
    """Run the benchmark; prints the tables. Returns 0."""
    args = _parse(argv)
    start = time.perf_counter()
    base = {"device": args.device, "repeats": args.repeats, "time_budget": args.time_budget}
    calibration = run_case({**base, "kind": "calibrate"}) if args.smoke else \
        run_worker(_WORKER, {**base, "kind": "calibrate"}, memory=True)
    patches = [(edge,) * 3 for edge in [args.patch3d] if edge] + [(edge,) * 2 for edge in [args.patch2d] if edge]
    facts = {patch: network_facts(patch, args.batch) for patch in patches}
    print_header("dawmr", f"torch {torch.__version__}, nnunetv2 {package_version('nnunetv2')}",
                 _header_lines(args, calibration, facts))
    results = _run_trainers(args, base, patches)
    _network_table(facts)
    _step_tables(results, args)
    print("\nSegmentation quality (adapted Rand error, VI) of these trainers: nnunet-ext benchmark quality")
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f} s")
    return 0
