"""torch.compile readiness of every registered network and loss, checked on the CPU.

nnU-Net trains with ``self.network = torch.compile(self.network)`` and ``loss.dc = torch.compile(loss.dc)`` by
default on CUDA. What can go wrong shows without a GPU: graph breaks happen in dynamo (the tracer), differences
from eager mode in AOTAutograd (functionalization of in-place writes, replayed attribute mutations, the backward
graph) and in inductor's lowering, and inductor generates C++ on the CPU from the same lowering it uses for
Triton. Everything is parametrized over the registry, so a newly registered network or loss is tested here with
no edit.

Graph breaks (``ExplainWithBackend``: the break reasons ``torch._dynamo.explain`` reports, collected while the
compiled module runs): none in any network forward (2D and 3D; deep supervision on, off, and in evaluation under
``no_grad``) and none in the forward of any loss as a trainer builds it (every architecture x loss, 2D and 3D),
beyond what plain nnU-Net has itself (``nnUNetTrainer``'s loss, PlainConvUNet: measured 0 with torch 2.14).
A break that cannot be removed would be named in ``ALLOWED_BREAKS`` with the reason; none is.

Values and gradients equal eager mode (float32; rtol 1e-4 / atol 1e-5 for values, gradients within 1e-4 of their
largest magnitude). Backends, chosen by measured compile time on 2 cores (inductor's Python-side lowering
dominates; numbers at ``INDUCTOR_NETWORK_CASES``):

* ``inductor``: each core loss module (Skeleton Recall, clDice with its custom autograd Function, border-weighted,
  LED-weighted Dice+CE and Dice+focal), 2D, and the smallest network of each architecture in 2D (2 stages, one
  conv per stage; ``SMALLEST_OPTIONS`` shrinks a network's own options), training forward and backward;
* ``aot_eager`` (dynamo + AOTAutograd's forward/backward graphs run by eager kernels, no code generation) in 2D
  and dynamo alone in 3D: every network with deep supervision on, off and in evaluation; every trainer loss
  (clDice with 3 skeleton iterations); nnU-Net's own compile path.

nnU-Net's compile path, as ``initialize()`` and ``train_step`` run it: ``_build_loss`` with ``_do_i_compile()``
true (so ``loss.dc`` is compiled), the network wrapped by ``torch.compile``, one ``train_step`` against an eager
twin (same loss, same updated parameters), and ``set_deep_supervision_enabled`` (which unwraps ``_orig_mod``)
changing the compiled network's output structure (a recompile) and back.

``NNUNET_EXT_COMPILE_FULL=1`` runs the inductor network cases in 3D too, and for nnU-Net's own PlainConvUNet
(tens of minutes on 2 cores).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import os
from typing import Any, Callable, Iterator, Sequence

import pytest
import torch
import torch._dynamo
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch._dynamo.backends.debugging import ExplainWithBackend

from conftest import make_tiny_trainer, tiny_plans, training_batch
from nnunet_ext import trainers
from nnunet_ext.losses.border_weighted import BorderWeightedDiceCELoss
from nnunet_ext.losses.cldice import SoftClDiceLoss
from nnunet_ext.losses.focal import DiceFocalLoss
from nnunet_ext.losses.led import LEDWeightedDiceCELoss
from nnunet_ext.losses.skeleton_recall import SoftSkeletonRecallLoss
from nnunet_ext.trainers import registry
from nnunet_ext.trainers.architecture import unwrap

#: compiling takes 1-30 s per case (5 minutes for the module on 2 cores): make test-quick skips it
pytestmark = pytest.mark.slow

#: graph breaks that remain, as {substring of the break reason: why it cannot be removed}. None remain: the last
#: ones (clDice: ``out=`` into non-contiguous views; ``torch.autograd.grad`` in its Function's backward) are fixed.
ALLOWED_BREAKS: dict[str, str] = {}

#: network options (trainer attributes) that make an architecture's network smallest for the inductor case;
#: architectures not listed use their defaults on the 2-stage plans.
SMALLEST_OPTIONS: dict[str, dict[str, Any]] = {
    "DAWMR": {"dawmr_iterations": 2},  # two iterations still cover the feedback of one into the next
}

FULL = os.environ.get("NNUNET_EXT_COMPILE_FULL", "").strip().lower() in ("1", "true", "yes")
ARCHITECTURES = list(registry.ARCHITECTURES)
LOSSES = list(registry.LOSSES)


# ----------------------------------------------------------------------------------------------------- helpers

def trainer_class(architecture: str = "", loss: str = "", **attributes: Any) -> type:
    """The generated trainer for ``architecture`` x ``loss`` (nnU-Net's own for neither), with ``attributes``."""
    cls = nnUNetTrainer if not (architecture or loss) else getattr(trainers, registry.trainer_name(architecture,
                                                                                                     loss))
    return type(cls.__name__ + "Small", (cls,), attributes) if attributes else cls


def smallest_configuration(dim: int):
    """The configuration manager of :func:`tiny_plans` shrunk to 2 stages with one convolution each."""
    plans, _, configuration = tiny_plans(dim)
    plans["configurations"][configuration]["architecture"]["arch_kwargs"].update(
        n_stages=2, features_per_stage=[4, 8], kernel_sizes=[[3] * dim] * 2, strides=[[1] * dim, [2] * dim],
        n_conv_per_stage=[1, 1], n_conv_per_stage_decoder=[1])
    return PlansManager(plans).get_configuration(configuration)


@contextlib.contextmanager
def compile_settings(backend: str) -> Iterator[None]:
    """Fresh dynamo state; for inductor, compilation in this process (no worker pool to start on 2 cores)."""
    torch._dynamo.reset()
    with contextlib.ExitStack() as stack:
        if backend == "inductor":
            import torch._inductor.config as inductor_config
            stack.enter_context(inductor_config.patch(compile_threads=1))
        try:
            yield
        finally:
            torch._dynamo.reset()


def compiled(module: Callable, backend: str) -> tuple[Callable, ExplainWithBackend]:
    """``torch.compile(module)`` on ``backend``, recording every graph and break reason while it runs."""
    explainer = ExplainWithBackend(backend)
    return torch.compile(module, backend=explainer), explainer


def _describe(reason) -> str:
    where = reason.user_stack[-1] if reason.user_stack else None
    place = f" at {where.filename}:{where.lineno}" if where is not None else ""
    return reason.reason.strip().splitlines()[0] + place


def unexplained_breaks(explainer: ExplainWithBackend, baseline: Sequence[str] = ()) -> list[str]:
    """Break reasons that are neither in ``ALLOWED_BREAKS`` nor (each at most as often) in ``baseline``."""
    remaining = list(baseline)
    unexplained = []
    for reason in explainer.output().break_reasons:
        text = _describe(reason)
        if any(key in reason.reason for key in ALLOWED_BREAKS):
            continue
        if text in remaining:
            remaining.remove(text)
            continue
        unexplained.append(text)
    return unexplained


def break_texts(explainer: ExplainWithBackend) -> list[str]:
    return [_describe(r) for r in explainer.output().break_reasons]


def leaves(tensors: Any) -> Any:
    """Detached copies requiring grad (floating tensors), nested in lists like the original."""
    if isinstance(tensors, (list, tuple)):
        return [leaves(t) for t in tensors]
    if torch.is_tensor(tensors) and tensors.is_floating_point():
        return tensors.detach().clone().requires_grad_()
    return tensors


def flat(tensors: Any) -> list[torch.Tensor]:
    if isinstance(tensors, (list, tuple)):
        return [t for part in tensors for t in flat(part)]
    return [tensors] if torch.is_tensor(tensors) else []


def objective(outputs: Any) -> torch.Tensor:
    """A scalar whose gradient reaches every output element with a different weight (not just a mean)."""
    total = 0
    for k, out in enumerate(flat(outputs)):
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        total = total + (out * weights).sum() / (k + 1)
    return total


def assert_gradients_close(compiled_grads: Sequence[torch.Tensor | None], eager_grads: Sequence[torch.Tensor | None],
                           names: Sequence[str], rtol: float = 1e-4) -> None:
    """Elementwise within ``rtol``, absolutely within ``rtol`` x the largest eager gradient of them all (gradients
    that are zero in exact arithmetic, e.g. of a conv bias followed by instance norm, are rounding noise whose
    size follows the gradients around them, not their own)."""
    present = [g for g in eager_grads if g is not None]
    scale = max((float(g.abs().max()) for g in present if g.numel()), default=1.0) or 1.0
    for name, g_c, g_e in zip(names, compiled_grads, eager_grads, strict=True):
        assert (g_c is None) == (g_e is None), f"{name}: gradient only in {'eager' if g_c is None else 'compiled'}"
        if g_e is not None:
            torch.testing.assert_close(g_c, g_e, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{name}: {m}")


def assert_same_outputs(out_c: Any, out_e: Any, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert type(out_c) is type(out_e) or (isinstance(out_c, (list, tuple)) and isinstance(out_e, (list, tuple))), \
        (type(out_c), type(out_e))
    assert len(flat(out_c)) == len(flat(out_e))
    for c, e in zip(flat(out_c), flat(out_e)):
        torch.testing.assert_close(c, e, rtol=rtol, atol=atol)


def network_step(call: Callable, network: torch.nn.Module, x: torch.Tensor) -> tuple[Any, list]:
    """``call`` (``network`` or its compiled wrapper) on a fresh leaf copy of ``x``, backward of
    :func:`objective`: (outputs, [grad of x, grads of network's parameters])."""
    network.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_()
    outputs = call(leaf)
    objective(outputs).backward()
    return outputs, [leaf.grad] + [p.grad for p in network.parameters()]


def compare_network(eager: torch.nn.Module, compiled_net: Callable, network: torch.nn.Module,
                    x: torch.Tensor) -> Any:
    """Training forward + backward of ``compiled_net`` (which wraps ``network``) against ``eager`` (a copy)."""
    out_c, grads_c = network_step(compiled_net, network, x)
    out_e, grads_e = network_step(eager, eager, x)
    assert_same_outputs(out_c, out_e)
    assert_gradients_close(grads_c, grads_e, ["input"] + [n for n, _ in network.named_parameters()])
    return out_c


def build_network(architecture: str, dim: int, deep_supervision: bool,
                  smallest: bool = False) -> tuple[Any, torch.nn.Module, tuple[int, ...]]:
    """(trainer, network in training mode, patch size): the architecture's network as its trainer builds it."""
    cls = trainer_class(architecture, **(SMALLEST_OPTIONS.get(architecture, {}) if smallest else {}))
    trainer = make_tiny_trainer(cls, dim)
    configuration = smallest_configuration(dim) if smallest else trainer.configuration_manager
    torch.manual_seed(0)
    network = cls.build_network_architecture(trainer.plans_manager, configuration, 1,
                                             trainer.label_manager.num_segmentation_heads, deep_supervision)
    return trainer, network.train(), tuple(configuration.patch_size)


def random_input(patch: Sequence[int], seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 1, *patch, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------- networks

@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda name: name or "plans")
def test_network_compiles_without_breaks_and_matches_eager(architecture, nnunet_env):
    """2D, aot_eager, in the order nnU-Net runs it: a training step with deep supervision on (a list of
    outputs); ``set_deep_supervision_enabled(False)`` (which unwraps ``_orig_mod``) and evaluation under no_grad,
    as the validation and the predictor run (a recompile: one tensor); on again and a training step (the first
    graph again, no third compile)."""
    trainer, network, patch = build_network(architecture, 2, deep_supervision=True)
    eager = copy.deepcopy(network)
    x = random_input(patch)
    with compile_settings("aot_eager"):
        compiled_net, explainer = compiled(network, "aot_eager")
        trainer.network = compiled_net
        outputs = compare_network(eager, compiled_net, network, x)
        assert isinstance(outputs, (list, tuple)) and len(outputs) > 1

        trainer.set_deep_supervision_enabled(False)
        assert network.decoder.deep_supervision is False
        eager.decoder.deep_supervision = False
        compiled_net.eval(), eager.eval()
        with torch.no_grad():
            single = compiled_net(x)
            assert torch.is_tensor(single) and single.shape == outputs[0].shape
            assert_same_outputs(single, eager(x))

        trainer.set_deep_supervision_enabled(True)
        eager.decoder.deep_supervision = True
        compiled_net.train(), eager.train()
        again = compare_network(eager, compiled_net, network, x)
        assert isinstance(again, (list, tuple)) and len(again) == len(outputs)
    output = explainer.output()
    assert output.graph_count == 2, f"one graph per mode expected, dynamo compiled {output.graph_count}"
    assert not unexplained_breaks(explainer, BASELINE.network_breaks()), break_texts(explainer)


@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda name: name or "plans")
def test_network_3d_traces_without_breaks(architecture, nnunet_env):
    """3D, dynamo alone (backend "eager": the captured graph run by eager kernels): training forward and backward
    with deep supervision on, no graph break, same values and gradients."""
    trainer, network, patch = build_network(architecture, 3, deep_supervision=True)
    eager = copy.deepcopy(network)
    with compile_settings("eager"):
        compiled_net, explainer = compiled(network, "eager")
        compare_network(eager, compiled_net, network, random_input(patch))
    assert explainer.output().graph_count == 1
    assert not unexplained_breaks(explainer, BASELINE.network_breaks()), break_texts(explainer)


#: inductor on whole networks: the smallest network of each architecture in 2D (compilation 20-90 s each on 2 cores:
#: GLNet 91 s, DAWMR 63 s, UNet++ 20 s measured); NNUNET_EXT_COMPILE_FULL=1 adds 3D and nnU-Net's own network
INDUCTOR_NETWORK_CASES = [(a, d) for a in ARCHITECTURES for d in ((2, 3) if FULL else (2,)) if a or (FULL and d == 3)]


@pytest.mark.parametrize("architecture,dim", INDUCTOR_NETWORK_CASES, ids=lambda v: str(v) or "plans")
def test_smallest_network_under_inductor_matches_eager(architecture, dim, nnunet_env):
    _, network, patch = build_network(architecture, dim, deep_supervision=True, smallest=True)
    eager = copy.deepcopy(network)
    with compile_settings("inductor"):
        compiled_net, explainer = compiled(network, "inductor")
        compare_network(eager, compiled_net, network, random_input(patch))
    assert not unexplained_breaks(explainer, BASELINE.network_breaks()), break_texts(explainer)


# ------------------------------------------------------------------------------------------------------- losses

def loss_inputs(trainer, seed: int = 2) -> tuple[Any, Any]:
    """(random logits shaped like the trainer's network outputs, the trainer's target of a synthetic batch)."""
    batch = training_batch(trainer)
    network = unwrap(trainer.network).train()
    with torch.no_grad():
        shapes = [o.shape for o in flat(network(batch["data"]))]
    generator = torch.Generator().manual_seed(seed)
    logits = [torch.randn(s, generator=generator) for s in shapes]
    return (logits if trainer.enable_deep_supervision else logits[0]), batch["target"]


def trainer_loss_case(architecture: str, loss: str, dim: int):
    """(trainer, loss inputs) with LED at full strength and a network auxiliary term that needs a gradient."""
    # 3 soft-skeleton iterations instead of 10: the same ops, unrolled fewer times (tracing time ~ iterations)
    attributes = {"cldice_iterations": 3} if loss == "ClDice" else {}
    trainer = make_tiny_trainer(trainer_class(architecture, loss, **attributes), dim)
    for module in trainer.loss.modules():
        if isinstance(module, LEDWeightedDiceCELoss):
            module.strength = 1.0  # the trainer starts it at 0 (warm-up), which would skip the weights
    outputs, target = loss_inputs(trainer)
    if registry.ARCHITECTURES[architecture].auxiliary_loss:
        unwrap(trainer.network).auxiliary_loss = torch.tensor(0.25, requires_grad=True)
    return trainer, outputs, target


def compare_loss(loss: Callable, compiled_loss: Callable, outputs: Any, target: Any,
                 extra_leaves: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """Loss value and gradients w.r.t. ``outputs`` (and ``extra_leaves``) of compiled vs eager."""
    results = []
    for fn in (compiled_loss, loss):
        for leaf in extra_leaves:
            leaf.grad = None
        out_leaves = leaves(outputs)
        value = fn(out_leaves, target)
        value.backward()
        results.append((value.detach(), [t.grad for t in flat(out_leaves)] +
                        [None if t.grad is None else t.grad.clone() for t in extra_leaves]))
    (v_c, g_c), (v_e, g_e) = results
    torch.testing.assert_close(v_c, v_e, rtol=1e-4, atol=1e-5)
    assert_gradients_close(g_c, g_e, [f"grad {i}" for i in range(len(g_e))])
    assert g_e[0] is not None, "the full-resolution output gets no gradient"
    return v_e


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("loss", LOSSES, ids=lambda name: name or "DiceCE")
@pytest.mark.parametrize("architecture", ARCHITECTURES, ids=lambda name: name or "plans")
def test_trainer_loss_compiles_without_breaks_and_matches_eager(architecture, loss, dim, nnunet_env):
    """The whole loss a training step calls (the deep-supervision wrapper around the per-scale loss, plus the
    network's auxiliary term where the architecture has one) against eager: aot_eager in 2D, dynamo alone
    (backend "eager") in 3D."""
    trainer, outputs, target = trainer_loss_case(architecture, loss, dim)
    extra = [unwrap(trainer.network).auxiliary_loss] if registry.ARCHITECTURES[architecture].auxiliary_loss else []
    backend = "aot_eager" if dim == 2 else "eager"
    with compile_settings(backend):
        compiled_loss, explainer = compiled(trainer.loss, backend)
        value = compare_loss(trainer.loss, compiled_loss, outputs, target, extra)
    assert torch.isfinite(value) and value > 0
    if extra:
        assert extra[0].grad is not None and float(extra[0].grad) == pytest.approx(1.0)
    assert explainer.output().graph_count == 1
    assert not unexplained_breaks(explainer, BASELINE.loss_breaks(dim)), break_texts(explainer)


def _dice_ce(ignore_label: int | None = None) -> DC_and_CE_loss:
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=ignore_label, dice_class=MemoryEfficientSoftDiceLoss)


def _dice_bce() -> DC_and_BCE_loss:
    return DC_and_BCE_loss({}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False},
                           use_ignore_label=True, dice_class=MemoryEfficientSoftDiceLoss)


def core_loss_cases(dim: int) -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
    """name -> (loss, logits (B, C, *sp), target) for each core loss module: 3 classes (or 2 regions), an ignore
    label where the loss has one, targets with structure (a tube-like stripe, a smooth weight map)."""
    generator = torch.Generator().manual_seed(3)
    spatial = (24, 20) if dim == 2 else (10, 12, 8)
    logits = torch.randn(2, 3, *spatial, generator=generator)
    labels = torch.randint(0, 3, (2, 1, *spatial), generator=generator)
    labels[..., 4:8, :] = 1  # a band of one class: skeletons and error clusters with extent
    with_ignore = labels.clone()
    with_ignore[..., :3] = 3  # ignore label 3 on a border strip
    weights = 1 + torch.rand(2, 1, *spatial, generator=generator) * 4
    regions = torch.cat([(labels > 0), (labels == 2), torch.zeros_like(labels, dtype=torch.bool)], 1).to(torch.int16)
    regions[:, -1:, ..., :2] = 1  # nnU-Net's ignore channel last
    return {
        "skeleton_recall": (SoftSkeletonRecallLoss(batch_dice=True), logits, labels),
        "skeleton_recall_regions": (SoftSkeletonRecallLoss(region_mode=True), logits[:, :2],
                                    regions[:, :2].float()),
        "cldice_ignore": (SoftClDiceLoss(iterations=2, ignore_label=3), logits, with_ignore),
        "border_weighted": (BorderWeightedDiceCELoss(_dice_ce(ignore_label=3)), logits,
                            torch.cat([with_ignore.float(), weights], 1)),
        "led": (LEDWeightedDiceCELoss(_dice_ce(), window=3, strength=1.0), logits, labels),
        "led_regions_half": (LEDWeightedDiceCELoss(_dice_bce(), window=5, strength=0.5), logits[:, :2], regions),
        "focal_ignore": (DiceFocalLoss(_dice_ce(ignore_label=3), gamma=2.0), logits, with_ignore),
        "focal_regions": (DiceFocalLoss(_dice_bce(), gamma=3.0), logits[:, :2], regions),
    }


CORE_LOSSES = list(core_loss_cases(2))


@pytest.mark.parametrize("name", CORE_LOSSES)
def test_core_loss_under_inductor_matches_eager(name):
    """Each core loss module compiled by inductor in 2D: same value and logit gradients, no graph break (clDice's
    soft skeleton is a custom autograd Function: dynamo traces its forward and its backward into the graphs)."""
    loss, logits, target = core_loss_cases(2)[name]
    with compile_settings("inductor"):
        compiled_loss, explainer = compiled(loss, "inductor")
        value = compare_loss(loss, compiled_loss, logits, target)
    assert torch.isfinite(value)
    assert not unexplained_breaks(explainer), break_texts(explainer)


@pytest.mark.parametrize("name", CORE_LOSSES)
def test_core_loss_3d_under_aot_eager_matches_eager(name):
    loss, logits, target = core_loss_cases(3)[name]
    with compile_settings("aot_eager"):
        compiled_loss, explainer = compiled(loss, "aot_eager")
        compare_loss(loss, compiled_loss, logits, target)
    assert not unexplained_breaks(explainer), break_texts(explainer)


def test_cldice_backward_runs_compiled():
    """The soft skeleton's Function is traced, backward included: with ``fullgraph=True`` (any break raises),
    AOTAutograd hands one forward and one backward graph to the backend, and the backward graph holds the
    Function's pooling-backward ops (an eager Function would leave them out)."""
    loss = SoftClDiceLoss(iterations=2)
    logits = torch.randn(1, 2, 12, 12, generator=torch.Generator().manual_seed(4))
    target = (torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(5)) > 0.5).long()
    compiled_graphs = []

    def counting(gm, example_inputs):
        from torch._dynamo.backends.common import aot_autograd
        from torch._functorch.aot_autograd import make_boxed_func

        def record(kind):
            def compiler(graph, inputs):
                compiled_graphs.append((kind, graph))
                return make_boxed_func(graph.forward)
            return compiler
        return aot_autograd(fw_compiler=record("forward"), bw_compiler=record("backward"))(gm, example_inputs)

    with compile_settings("aot_eager"):
        compiled_loss = torch.compile(loss, backend=counting, fullgraph=True)
        leaf = logits.clone().requires_grad_()
        compiled_loss(leaf, target).backward()
    kinds = [kind for kind, _ in compiled_graphs]
    assert kinds == ["forward", "backward"], kinds
    backward_ops = {str(node.target) for node in compiled_graphs[1][1].graph.nodes if node.op == "call_function"}
    assert any("max_pool2d_with_indices_backward" in op for op in backward_ops), sorted(backward_ops)[:20]
    eager_leaf = logits.clone().requires_grad_()
    loss(eager_leaf, target).backward()
    torch.testing.assert_close(leaf.grad, eager_leaf.grad, rtol=1e-5, atol=1e-7)


# -------------------------------------------------------------------------------------------- nnU-Net's own path

def _compile_with(backend: str, real_compile: Callable = torch.compile) -> Callable:
    @functools.wraps(real_compile)
    def compile_(model=None, **kwargs):
        kwargs.setdefault("backend", backend)
        return real_compile(model, **kwargs)
    return compile_


#: every architecture with Dice+CE and every loss with the plans' network: every wrapper nnU-Net's path meets
COMPILE_PATH_CASES = [(a, "") for a in ARCHITECTURES] + [("", loss) for loss in LOSSES if loss]


@pytest.mark.parametrize("architecture,loss", COMPILE_PATH_CASES, ids=lambda v: v or "-")
def test_nnunet_compile_path_trains_like_eager(architecture, loss, nnunet_env, monkeypatch):
    """nnU-Net's own calls: ``_build_loss`` with compiling on (``loss.dc = torch.compile(loss.dc)``),
    ``self.network = torch.compile(self.network)``, ``train_step``; the trainer's deep-supervision toggle on the
    compiled network. torch.compile runs on aot_eager here (inductor: see the tests above)."""
    cls = trainer_class(architecture, loss)
    torch.manual_seed(0)
    eager = make_tiny_trainer(cls, 2)
    torch.manual_seed(0)
    monkeypatch.setattr(cls, "_do_i_compile", lambda self: True)
    monkeypatch.setattr(torch, "compile", _compile_with("aot_eager"))
    trainer = make_tiny_trainer(cls, 2)  # builds its loss with loss.dc compiled
    trainer.network.load_state_dict(eager.network.state_dict())
    trainer.network = torch.compile(trainer.network)  # as nnUNetTrainer.initialize()
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    assert isinstance(trainer.network, torch._dynamo.eval_frame.OptimizedModule)
    dice = [m for m in trainer.loss.modules() if isinstance(m, (DC_and_CE_loss, DC_and_BCE_loss))]
    assert dice and all(isinstance(m.dc, torch._dynamo.eval_frame.OptimizedModule) for m in dice)
    for t in (trainer, eager):
        for module in t.loss.modules():
            if isinstance(module, LEDWeightedDiceCELoss):
                module.strength = 1.0
    batch = training_batch(trainer)
    with compile_settings("aot_eager"):
        result, expected = trainer.train_step(batch), eager.train_step(batch)
        assert result["loss"] == pytest.approx(expected["loss"], rel=1e-4, abs=1e-6)
        for (name, p), q in zip(unwrap(trainer.network).named_parameters(), eager.network.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name} after one step: {m}")

        trainer.network.eval()
        with torch.no_grad():
            x = batch["data"]
            assert isinstance(trainer.network(x), (list, tuple))
            trainer.set_deep_supervision_enabled(False)
            single = trainer.network(x)
            assert torch.is_tensor(single)
            eager.network.eval()
            eager.set_deep_supervision_enabled(False)
            torch.testing.assert_close(single, eager.network(x), rtol=1e-4, atol=1e-5)
            trainer.set_deep_supervision_enabled(True)
            assert isinstance(trainer.network(x), (list, tuple))


# ------------------------------------------------------------------------------------------------------ baseline

class _Baseline:
    """Plain nnU-Net's own graph breaks (PlainConvUNet forward; nnUNetTrainer's loss), measured once per dim."""

    def __init__(self):
        self._networks: dict[int, list[str]] = {}
        self._losses: dict[int, list[str]] = {}

    def network_breaks(self, dim: int = 2) -> list[str]:
        if dim not in self._networks:
            _, network, patch = build_network("", dim, deep_supervision=True)
            with compile_settings("eager"):
                compiled_net, explainer = compiled(network, "eager")
                compiled_net(random_input(patch))
            self._networks[dim] = break_texts(explainer)
        return self._networks[dim]

    def loss_breaks(self, dim: int) -> list[str]:
        if dim not in self._losses:
            trainer, outputs, target = trainer_loss_case("", "", dim)
            with compile_settings("eager"):
                compiled_loss, explainer = compiled(trainer.loss, "eager")
                compiled_loss(outputs, target)
            self._losses[dim] = break_texts(explainer)
        return self._losses[dim]


BASELINE = _Baseline()
