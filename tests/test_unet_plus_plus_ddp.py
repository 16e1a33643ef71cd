"""UNet++ training steps under DistributedDataParallel on the CPU (gloo, two processes).

nnU-Net wraps the network in DDP without ``find_unused_parameters``: a parameter that receives no gradient in a
step makes the next step fail. Each rank runs three optimiser steps on its own half of a batch with the trainer's
loss (full-resolution deep supervision over nnU-Net's Dice+CE); afterwards the replicas must be identical
and differ from the initial weights.
"""
from __future__ import annotations

import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss

from nnunet_ext.losses.deep_supervision import FullResolutionDeepSupervision
from test_ddp import TIMEOUT_S, WORLD_SIZE, _free_port
from unetpp_helpers import arch_kwargs, smallest_input, unetpp

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")
N_STAGES = 4
STEPS = 3


def _batch(rank: int):
    x = smallest_input(arch_kwargs(N_STAGES, 2), batch=2 * WORLD_SIZE, bottleneck=2)
    target = (x > 0.5).float()
    half = slice(2 * rank, 2 * rank + 2)
    return x[half], [target[half]]


def _worker(rank: int, port: int, result_dir: str) -> None:
    try:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
        net = unetpp(arch_kwargs(N_STAGES, 2), num_classes=2, seed=0)
        initial = {k: v.clone() for k, v in net.state_dict().items()}
        model = torch.nn.parallel.DistributedDataParallel(net)  # no find_unused_parameters, as nnU-Net
        loss_fn = FullResolutionDeepSupervision(
            DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": True}, {}, weight_ce=1,
                           weight_dice=1), [1 / N_STAGES] * N_STAGES)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        data, target = _batch(rank)
        losses = []
        for _ in range(STEPS):
            optimizer.zero_grad()
            loss = loss_fn(model(data), target)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        dist.barrier()
        dist.destroy_process_group()
        torch.save({"state": net.state_dict(), "initial": initial, "losses": losses},
                   os.path.join(result_dir, f"rank{rank}.pt"))
    except BaseException:  # noqa: BLE001 - reported to the parent through the file system
        with open(os.path.join(result_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise


def test_ddp_training_steps_have_no_unused_parameters(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, str(tmp_path)), daemon=True) for rank in range(WORLD_SIZE)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.terminate()
    errors = [f.read_text() for f in sorted(tmp_path.glob("*.err"))]
    assert not hung and not errors, "\n".join(errors)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]
    first, second = results
    for key, value in first["state"].items():
        torch.testing.assert_close(value, second["state"][key], rtol=0, atol=0)  # replicas stayed in sync
    changed = [k for k, v in first["state"].items() if k.endswith("weight") and not torch.equal(v, first["initial"][k])]
    assert set(changed) == {k for k in first["state"] if k.endswith("weight")}
    assert first["losses"] != second["losses"]  # the ranks saw different halves
