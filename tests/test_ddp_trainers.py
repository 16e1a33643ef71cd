"""Training steps of the registered trainers under DistributedDataParallel on the CPU (gloo, two processes).

nnU-Net wraps the network in DDP without ``find_unused_parameters``: a parameter that receives no gradient in a
step makes the next step fail. Each rank builds the trainer on tiny plans (as nnU-Net's DDP ranks do, with the
process group initialised, so the trainer's loss all-gathers its sums), wraps its network in DDP and runs three
of the trainer's own ``train_step`` calls on its own batch (GLNet's staged trainer: three in each of its two stages,
which freeze different parts); afterwards the replicas must be identical and every weight must have moved.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from test_ddp import TIMEOUT_S, WORLD_SIZE, _free_port

pytestmark = [pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="torch.distributed with the gloo backend is not available"),
              pytest.mark.slow]  # two spawned processes
STEPS = 3
TRAINERS = ["nnUNetTrainerUNetPlusPlus", "nnUNetTrainerGLNet", "nnUNetTrainerGLNet_bidirectional",
            "nnUNetTrainerGLNet_staged", "nnUNetTrainerDAWMRLED", "nnUNetTrainerLED"]


def _run_trainer(trainer_name: str, rank: int) -> dict:
    from conftest import tiny_plans, training_batch
    from nnunet_ext import trainers
    plans, dataset_json, configuration = tiny_plans(2)
    plans["continue_training"] = False
    trainer = getattr(trainers, trainer_name)(plans, configuration, 0, dataset_json, torch.device("cpu"))
    assert trainer.is_ddp
    trainer.device = torch.device("cpu")  # nnU-Net assumes CUDA under DDP; gloo runs on the CPU
    torch.manual_seed(0)
    net = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 2, True)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    trainer.network = torch.nn.parallel.DistributedDataParallel(net)  # no find_unused_parameters, as nnU-Net
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    for module in trainer.loss.modules():  # LED at full strength (it is warmed up in the first epochs)
        if hasattr(module, "strength"):
            module.strength = 1.0
    # GLNet's staged schedule: stage 1 (global branch only), then stage 2 (local branch only); each stage freezes
    # the other part, so the trainer must wrap the network in DDP anew or the next step fails
    epochs = [0, trainer.num_epochs - 1] if getattr(trainer, "glnet_stages", None) else [None]
    losses, stages = [], []
    for epoch in epochs:
        if epoch is not None:
            trainer.current_epoch = epoch
            trainer.on_train_epoch_start()
            stages.append(trainer.glnet_stage)
        losses += [float(trainer.train_step(training_batch(trainer, seed=10 * rank + step))["loss"])
                   for step in range(STEPS)]
    return {"state": net.state_dict(), "initial": initial, "losses": losses, "stages": stages}


def _worker(rank: int, port: int, result_dir: str, env: dict) -> None:
    """Every trainer of TRAINERS in one process group (process start-up dominates the test's time)."""
    try:
        os.environ.update(env)
        sys.path.insert(0, str(Path(__file__).parent))
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
        results = {}
        for name in TRAINERS:
            try:
                results[name] = _run_trainer(name, rank)
            except Exception:  # noqa: BLE001 - one trainer's failure is that trainer's test failure
                results[name] = {"error": traceback.format_exc()}
            dist.barrier()
        dist.destroy_process_group()
        torch.save(results, os.path.join(result_dir, f"rank{rank}.pt"))
    except BaseException:  # noqa: BLE001 - reported to the parent through the file system
        with open(os.path.join(result_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    env = {"nnUNet_raw": str(folder), "nnUNet_preprocessed": str(folder), "nnUNet_results": str(folder),
           "nnUNet_def_n_proc": "1", "nnUNet_compile": "f"}
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, str(folder), env), daemon=True)
             for rank in range(WORLD_SIZE)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S * len(TRAINERS))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.terminate()
    errors = [f.read_text() for f in sorted(folder.glob("*.err"))]
    assert not hung and not errors, "\n".join(errors)
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_ddp_training_steps_have_no_unused_parameters(trainer_name, ddp_results):
    first, second = (ranks[trainer_name] for ranks in ddp_results)
    assert "error" not in first and "error" not in second, first.get("error", "") + second.get("error", "")
    for key, value in first["state"].items():
        torch.testing.assert_close(value, second["state"][key], rtol=0, atol=0)  # replicas stayed in sync
    weights = {k for k in first["state"] if k.endswith("weight") and first["state"][k].dim() > 1}
    unchanged = [k for k in weights if torch.equal(first["state"][k], first["initial"][k])]
    assert weights and not unchanged
    assert first["losses"] != second["losses"]  # the ranks saw different batches
    if trainer_name.endswith("_staged"):
        assert first["stages"] == second["stages"] == [1, 2]
