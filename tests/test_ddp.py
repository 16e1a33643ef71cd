"""SoftSkeletonRecallLoss under DDP: two CPU processes (gloo) against the single-process loss.

Each rank takes its half of a fixed batch of 4 (multi-class logits and tubes, fixed seed), computes the
loss with ``ddp=True`` and backpropagates; the parent compares with ``ddp=False`` on the whole batch
(batch_dice=True) or on each half (batch_dice=False).

Gradient relationship (batch_dice=True, derived from nnunetv2's AllGatherGrad):
  every rank computes the same global loss L from the all-gathered per-rank sums ``covered_r``. In
  backward each rank holds dL/d(gathered) -- identical on all ranks -- and AllGatherGrad all-reduces
  (SUMs) it before taking its own row, so rank r receives W * dL/d(covered_r) (W = world size = 2).
  Hence the local logits gradient on rank r is exactly W times the single-process gradient of the
  corresponding half of the batch. This is what training needs: DDP *averages* parameter gradients over
  ranks, (1/W) * sum_r W * dL/dcovered_r * dcovered_r/dtheta = dL/dtheta, the full-batch gradient.
  (Without DDP's averaging, e.g. summing gradients by hand, it would be W times too large.)
"""
from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_ext.losses import SoftSkeletonRecallLoss

pytestmark = [pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                 reason="torch.distributed with the gloo backend is not available"),
              pytest.mark.slow]  # two spawned processes

WORLD_SIZE = 2
N_CHANNELS = 4  # background + 3 classes
TIMEOUT_S = 120


def make_batch(spatial):
    g = torch.Generator().manual_seed(1234)
    logits = torch.randn(4, N_CHANNELS, *spatial, generator=g) * 2
    tube = torch.randint(0, N_CHANNELS, (4, 1, *spatial), generator=g)
    tube[torch.rand(tube.shape, generator=g) < 0.6] = 0
    tube[3, :, : spatial[0] // 2] = 0  # unequal tube sizes across samples (and ranks)
    # the second half predicts its tubes better, so the halves' losses clearly differ
    one_hot = torch.nn.functional.one_hot(tube[:, 0], N_CHANNELS).movedim(-1, 1)
    logits[2:] += 3 * one_hot[2:]
    return logits, tube


def loss_and_grad(loss_fn, logits, tube):
    x = logits.clone().requires_grad_()
    loss = loss_fn(x, tube)
    loss.backward()
    return loss.detach(), x.grad


CASES = [((6, 7), True), ((6, 7), False), ((4, 5, 3), True), ((4, 5, 3), False)]


def _worker(rank, port, result_dir):
    try:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
        results = {}
        for spatial, batch_dice in CASES:
            logits, tube = make_batch(spatial)
            half = slice(2 * rank, 2 * rank + 2)
            loss_fn = SoftSkeletonRecallLoss(batch_dice=batch_dice, ddp=True)
            results[(spatial, batch_dice)] = loss_and_grad(loss_fn, logits[half], tube[half])
        dist.barrier()
        dist.destroy_process_group()
        torch.save(results, os.path.join(result_dir, f"rank{rank}.pt"))
    except BaseException:  # noqa: BLE001 - reported to the parent through the file system
        with open(os.path.join(result_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    result_dir = str(tmp_path_factory.mktemp("ddp"))
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, port, result_dir), daemon=True)
             for rank in range(WORLD_SIZE)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(TIMEOUT_S)
    finally:
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.terminate()
            p.join(5)
    errors = [open(os.path.join(result_dir, f)).read() for f in sorted(os.listdir(result_dir)) if f.endswith(".err")]
    assert not hung, f"DDP workers did not finish within {TIMEOUT_S} s; errors: {errors}"
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(os.path.join(result_dir, f"rank{r}.pt")) for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 3)], ids=str)
def test_batch_dice_ddp_equals_single_process_on_global_batch(rank_results, spatial):
    logits, tube = make_batch(spatial)
    ref_loss, ref_grad = loss_and_grad(SoftSkeletonRecallLoss(batch_dice=True, ddp=False), logits, tube)
    # the halves alone give different losses: the comparison is meaningful
    half_loss, _ = loss_and_grad(SoftSkeletonRecallLoss(batch_dice=True), logits[:2], tube[:2])
    assert abs(half_loss.item() - ref_loss.item()) > 1e-3
    for rank, results in enumerate(rank_results):
        loss, grad = results[(spatial, True)]
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
        half = slice(2 * rank, 2 * rank + 2)
        # see the module docstring: AllGatherGrad's all-reduce makes the local gradient W times the
        # single-process one; DDP's gradient averaging divides by W again.
        torch.testing.assert_close(grad, WORLD_SIZE * ref_grad[half], rtol=1e-5, atol=1e-8)
        assert grad.abs().max() > 0
    # what DDP then does with parameter gradients: averaging the two ranks reproduces the full gradient
    stitched = torch.cat([r[(spatial, True)][1] for r in rank_results]) / WORLD_SIZE
    torch.testing.assert_close(stitched, ref_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("spatial", [(6, 7), (4, 5, 3)], ids=str)
def test_per_sample_ddp_is_local(rank_results, spatial):
    # batch_dice=False: ddp has no effect, each rank's loss is its own half's loss, gradients local
    logits, tube = make_batch(spatial)
    for rank, results in enumerate(rank_results):
        half = slice(2 * rank, 2 * rank + 2)
        ref_loss, ref_grad = loss_and_grad(SoftSkeletonRecallLoss(batch_dice=False), logits[half], tube[half])
        loss, grad = results[(spatial, False)]
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-8)
    losses = [r[(spatial, False)][0].item() for r in rank_results]
    assert abs(losses[0] - losses[1]) > 1e-3


def test_ddp_flag_without_process_group_is_plain_batch_dice():
    logits, tube = make_batch((6, 7))
    a, ga = loss_and_grad(SoftSkeletonRecallLoss(batch_dice=True, ddp=True), logits, tube)
    b, gb = loss_and_grad(SoftSkeletonRecallLoss(batch_dice=True, ddp=False), logits, tube)
    assert a.item() == b.item()
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)
