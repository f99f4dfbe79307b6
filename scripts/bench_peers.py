"""Step time and memory of mtlbench's per-task-gradient strategies against their peers.

One optimizer step per case, on the same model and batch, in one process: interleaved rounds,
medians, paired ratios to a floor.

Every case (row) owns a copy of one seeded model (same initial weights) and an Adam optimizer
(lr 1e-4, as ``bench_strategies.prepare``; torch's default implementation, or with
``--fused-adam`` the fused one in every row) and trains on the same seeded synthetic batch: n
classification heads (10 classes each) on the shared representation. Rows:

* ``floor``: ``sum(losses).backward()`` + Adam step (no per-task gradient at all).
* ``mtlbench <strategy>``: ``mtlbench.train.train_step`` (the training loop's step, finiteness
  check included) with ``equal``, ``gradnorm_ideal`` (``params`` = ``shared``, the exact
  Σ_i g_i/||g_i||; ``last_shared`` and ``representation`` as extra rows), ``upgrad``, ``mgda`` and
  ``db_mtl``, each as its ``conf/strategy/*.yaml`` sets it; the ``gradnorm_ideal[shared]`` row
  runs the default gradient engine (``trainer.gradient_engine=auto``, ``linear_gramian=auto``),
  the indented ``engine: <traversal>, linear <policy>`` rows below it the same strategy with one
  fixed :class:`mtlbench.gradients.GradientEngine` each.
  The indented ``heads=unweighted`` row below it is the same step with the heads' option that
  computes the by-hand row's update exactly (each head keeps ∇L_i; checked on every parameter).
* ``the same step in C++ (not mtlbench)`` (only with ``--native``; under the mtlbench
  ``gradnorm_ideal[shared]`` row): not mtlbench, a measure of what its step costs without Python.
  The same forward and losses in Python, then one call into ``scripts/native_loop.cpp`` (built
  with ``torch.utils.cpp_extension``: needs a C++ compiler and ninja) that does what mtlbench's step
  does for this strategy after the forward: per-task ``autograd::grad``, norms, weights, the
  running sum, weighted heads, the finiteness check (losses, weights, heads; the shared update by
  its bound), then Adam in Python if it passed; checked against the mtlbench row on every
  parameter.
* ``by hand: n x autograd.grad + normalize``: what one writes without a library: per task,
  ``torch.autograd.grad(L_i, shared + head_i params, retain_graph=True)``, divide the shared part by
  its norm, sum over tasks; head i keeps its own gradient; Adam step.
* ``by hand, torch.compile(model)`` (only with ``--compile``): the same loop on the model
  compiled by ``torch.compile`` (inductor's defaults; compiled in the warm-up rounds; checked
  against the by-hand row on every parameter).
* ``torchjd mtl_backward + Mean`` / ``+ UPGrad``: torchjd 0.18's documented MTL usage,
  ``mtl_backward(losses, features=z)`` (heads get ∇L_i, the shared parameters the Jacobian in
  ``.jac``) then ``jac_to_grad(backbone.parameters(), aggregator)``.
  The indented ``tuned`` rows under each: the same with the options torchjd documents for
  speed, ``parallel_chunk_size=1``, ``tasks_params``/``shared_params`` given, and for UPGrad
  ``jac_to_grad(..., optimize_gramian_computation=True)`` (checked equal to the untuned row on
  every parameter).
* ``torchjd autogram + UPGradWeighting``: ``Engine(backbone, batch_dim=None)`` built once;
  per step ``compute_gramian(losses)`` over the backbone's parameters, weights from
  ``UPGradWeighting``, then ``losses.backward(weights)`` (heads get w_i ∇L_i). ``batch_dim=None``
  because the task losses are batch means (the output has no batch dimension).
* ``LibMTL-style DB-MTL``: LibMTL's ``AbsWeighting._compute_grad(mode='backward')`` and
  ``DB_MTL.backward`` (median-research-group/LibMTL, DB_beta 0.9, DB_beta_sigma 0) re-expressed:
  ``optimizer.zero_grad(set_to_none=False)``; per task ``log(L_i + 1e-8).backward(retain_graph=
  True)`` (not for the last), the shared ``.grad`` copied into a host vector (``_grad2vec`` builds
  it with ``torch.zeros(grad_dim)``, on the CPU even when training on CUDA) and then into row i of
  an [n, P] matrix, shared grads zeroed in place (``encoder.zero_grad(set_to_none=False)``); moving
  average of the rows, update max_j||ĝ_j|| Σ_i ĝ_i/(||ĝ_i|| + 1e-8) written back to each shared
  ``.grad`` as a clone of its slice (``_reset_grad``); heads keep the ∇log L_i the backwards left.

Before timing, one step of each from the same weights and batch must agree (asserted; printed as
``checked:`` lines): by-hand normalize == gradnorm_ideal[shared] (shared ``.grad``), and == its
``heads=unweighted`` row on every parameter; torchjd's
Jacobian rows (``.jac`` after ``mtl_backward``), normalized and summed == gradnorm_ideal[shared];
torchjd Mean == mtlbench equal (shared: both apply 1/n; heads: torchjd's ∇L_i = n x equal's);
torchjd UPGrad == mtlbench upgrad (shared and heads); autogram UPGradWeighting == torchjd UPGrad
(shared); LibMTL-style DB-MTL == mtlbench db_mtl (first step, shared and heads).

Timing: after warm-up rounds, each round runs every case once (one untimed step, then ``--steps``
consecutive steps, timed together, reported per step) in a freshly shuffled order; the ratio of a
case in a round is its time over the floor's time in the same round. The tables give the median over
rounds of the ratio and of ms/step (and the ratio's quartiles per configuration). Without
``--rounds``, rounds run until ``--seconds`` (30) have passed per configuration (model, n), at least
5. Python's garbage collector runs between rounds, not during them.

Each configuration's heading gives the load average before and after its rounds and the share
of all CPUs' time that other processes ran during them (``/proc/stat`` minus this process); on a
shared machine ``--wait-quiet SECONDS`` waits, before each configuration, until others use < 10%.

Memory (``--memory``): one extra step per case, all ``.grad`` set to None before it (so every row
counts its gradient buffers; parameters, Adam state and the batch exist before and are not
counted). CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` at the step's
start, after ``reset_peak_memory_stats``: peak bytes of tensors the step allocated, caching
allocator's view. CPU: the torch profiler's allocation/free events (``profile_memory=True``) over
the step, replayed in time order: the peak of bytes allocated during the step and live at once;
tensors freed by the step that existed before it are not subtracted; glibc/allocator slack,
Python objects and quadprog's numpy arrays are not included. Neither is the process RSS.

    .venv/bin/python scripts/bench_peers.py --model mlp --tasks 2 4 10
    .venv/bin/python scripts/bench_peers.py --model mlp128 --tasks 2 4 10 --memory
    .venv/bin/python scripts/bench_peers.py --model lenet --tasks 2 4 --seconds 20
    .venv/bin/python scripts/bench_peers.py --model lenet --tasks 2 4 --compile --cases "by hand"
    .venv/bin/python scripts/bench_peers.py --model mlp128 --native --cases "by hand" "[shared]" C++
    .venv/bin/python scripts/bench_peers.py --model mlp --device cuda --memory

Models: ``mlp`` MLP 784-256-256 (ReLU), linear heads; ``mlp128`` MLP 32-128-128 (the input size
of ``data=synthetic``; ``--input-dim`` changes it), linear heads (``--width`` and ``--depth`` change
either MLP); ``lenet`` MultiLeNet on 1x36x36
inputs (the MultiMNIST canvas), heads 50-50-10; ``resnet18`` ``model=resnet18`` (torchvision's
ResNet-18, small stem, fc 512-100 + ReLU) on 1x36x36, linear heads. Batch ``--batch`` (256).
``--cases TEXT ...`` times only the rows whose label contains one of the texts (and the floor).
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from bench_strategies import cpu_model, prepare
from torch import Tensor
from torchjd.aggregation import Mean, UPGrad, UPGradWeighting
from torchjd.autogram import Engine
from torchjd.autojac import jac_to_grad, mtl_backward

from mtlbench.allocator import retain_freed_memory
from mtlbench.gradients import GradientEngine
from mtlbench.models.multitask import MultiTaskModel, build_model
from mtlbench.tasks import TaskSpec
from mtlbench.train import task_losses, train_step

LR = 1e-4  # bench_strategies.prepare's Adam learning rate, used for every row
FLOOR = "floor: sum backward + Adam"
HAND = "by hand: n x autograd.grad + normalize"
GNI = "mtlbench gradnorm_ideal[shared]"
TUNED_MEAN = "  tuned: chunk=1, params given"
TUNED_UPGRAD = "  tuned: chunk=1, params, optimize_gramian"
#: (mtlbench row, peer row): each pair's time ratio in the same round, median over rounds
PAIRS = [(GNI, HAND), ("mtlbench equal", "torchjd mtl_backward + Mean"),
         ("mtlbench equal", TUNED_MEAN), ("mtlbench upgrad", "torchjd mtl_backward + UPGrad"),
         ("mtlbench upgrad", TUNED_UPGRAD),
         ("mtlbench upgrad", "torchjd autogram + UPGradWeighting"),
         ("mtlbench db_mtl", "LibMTL-style DB-MTL (per-task backward)")]
MIN_ROUNDS = 5  # with --seconds: at least this many rounds
Step = Callable[[], object]


@dataclass
class Problem:
    """One configuration: the seeded model every case copies, its tasks and one batch."""

    model: MultiTaskModel
    tasks: list[TaskSpec]
    x: Tensor
    y: dict[str, Tensor]
    device: torch.device

    @property
    def n(self) -> int:
        return len(self.tasks)


def make_problem(args: argparse.Namespace, n: int) -> Problem:
    torch.manual_seed(args.seed)
    tasks = [TaskSpec(f"t{i}", "classification", 10) for i in range(n)]
    if args.model == "lenet":
        cfg: dict = {"_target_": "mtlbench.models.lenet.LeNetBackbone", "head_hidden": 50}
        shape: tuple[int, ...] = (1, 36, 36)
    elif args.model == "resnet18":
        cfg = {"_target_": "mtlbench.models.resnet.ResNet18Backbone", "head_hidden": 0}
        shape = (1, 36, 36)
    else:
        cfg = {"_target_": "mtlbench.models.mlp.MLPBackbone", "depth": args.depth,
               "head_hidden": 0, "width": mlp_width(args)}
        shape = (input_dim(args),)
    device = torch.device(args.device)
    model = build_model(cfg, shape, tasks).to(device)
    x = torch.randn(args.batch, *shape, device=device)
    y = {t.name: torch.randint(0, 10, (args.batch,), device=device) for t in tasks}
    return Problem(model, tasks, x, y, device)


def mlp_width(args: argparse.Namespace) -> int:
    return args.width or (256 if args.model == "mlp" else 128)


def input_dim(args: argparse.Namespace) -> int:
    return args.input_dim or (784 if args.model == "mlp" else 32)


def describe_model(args: argparse.Namespace) -> str:
    if args.model == "lenet":
        return "MultiLeNet on 1x36x36 (conv10-conv20-fc50), heads 50-50-10"
    if args.model == "resnet18":
        return ("torchvision ResNet-18 on 1x36x36 (model=resnet18: small stem, fc 512-100 + "
                "ReLU), linear heads 100-10")
    width = mlp_width(args)
    return (f"MLP {input_dim(args)}" + f"-{width}" * args.depth
            + f" (ReLU), linear heads {width}-10")


# ----------------------------------------------------------------------------- the cases
#: Keyword arguments of every row's Adam: {} (torch's default implementation) or, with
#: ``--fused-adam``, {"fused": True} (mtlbench's ``optimizer.fused=true``).
ADAM_OPTIONS: dict[str, bool] = {}


def adam(model: MultiTaskModel) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=LR, **ADAM_OPTIONS)


def with_adam_options(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``opt`` (an Adam from ``bench_strategies.prepare``) rebuilt with :data:`ADAM_OPTIONS` over
    the same parameter groups (a fresh state: no step has been taken yet)."""
    if not ADAM_OPTIONS:
        return opt
    return torch.optim.Adam([{**group, "foreach": None, **ADAM_OPTIONS}
                             for group in opt.param_groups], lr=LR)


def shared_params(model: MultiTaskModel) -> list[torch.nn.Parameter]:
    return list(model.backbone.parameters())


def floor_case(p: Problem) -> tuple[MultiTaskModel, Step]:
    m = copy.deepcopy(p.model)
    opt = adam(m)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        task_losses(p.tasks, m(p.x)[1], p.y).sum().backward()
        opt.step()
    return m, step


def mtlbench_case(name: str, overrides: dict, engine: GradientEngine | None = None,
                  log_gradients: bool = False,
                  ) -> Callable[[Problem], tuple[MultiTaskModel, Step]]:
    def build(p: Problem) -> tuple[MultiTaskModel, Step]:
        prepared = prepare(name, overrides, p.model, p.tasks, p.x, p.y)
        if prepared is None:
            raise SystemExit(f"mtlbench strategy {name} {overrides} refused this task set")
        strategy, m, opt = prepared
        opt = with_adam_options(opt)
        return m, lambda: train_step(m, p.tasks, p.x, p.y, strategy, opt, engine=engine,
                                     log_gradients=log_gradients)
    return build


def by_hand_case(p: Problem, compiled: bool = False) -> tuple[MultiTaskModel, Step]:
    """n × autograd.grad with retain_graph, each shared gradient normalized, summed;
    ``compiled``: the model's forward through ``torch.compile`` (inductor, its defaults)."""
    m = copy.deepcopy(p.model)
    opt = adam(m)
    shared = shared_params(m)
    heads = [list(m.heads[t.name].parameters()) for t in p.tasks]
    forward = torch.compile(m) if compiled else m

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        outputs = forward(p.x)[1]
        total: list[Tensor] = []
        for i, t in enumerate(p.tasks):
            loss = t.loss(outputs[t.name], p.y[t.name])
            grads = torch.autograd.grad(loss, shared + heads[i], retain_graph=i + 1 < p.n)
            g_shared = grads[:len(shared)]
            norm = torch.nn.utils.get_total_norm(g_shared)
            if total:
                for acc, g in zip(total, g_shared, strict=True):
                    acc.add_(g / norm)
            else:
                total = [g / norm for g in g_shared]
            for q, g in zip(heads[i], grads[len(shared):], strict=True):
                q.grad = g
        for q, g in zip(shared, total, strict=True):
            q.grad = g
        opt.step()
    return m, step


def torchjd_case(aggregator: Callable[[], object], tuned: bool = False,
                 gramian: bool = False) -> Callable[[Problem], tuple]:
    """torchjd's documented MTL step; ``tuned``: with the options its docs offer for speed,
    ``parallel_chunk_size=1`` (one task's backward at a time; its docs suggest larger chunks, but
    1 was the fastest here at small n), ``tasks_params``/``shared_params`` given (no graph search)
    and, for a Gramian-based aggregator (``gramian``), ``optimize_gramian_computation=True``."""
    def build(p: Problem) -> tuple[MultiTaskModel, Step]:
        m = copy.deepcopy(p.model)
        opt = adam(m)
        agg = aggregator()
        shared = shared_params(m)
        options: dict = ({"parallel_chunk_size": 1, "shared_params": shared, "tasks_params": [
            list(m.heads[t.name].parameters()) for t in p.tasks]} if tuned else {})
        jac_options = {"optimize_gramian_computation": True} if tuned and gramian else {}

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            z, outputs = m(p.x)
            mtl_backward([t.loss(outputs[t.name], p.y[t.name]) for t in p.tasks], features=z,
                         **options)
            jac_to_grad(shared, agg, **jac_options)
            opt.step()
        return m, step
    return build


def autogram_case(p: Problem) -> tuple[MultiTaskModel, Step]:
    m = copy.deepcopy(p.model)
    opt = adam(m)
    engine = Engine(m.backbone, batch_dim=None)  # hooks this copy's backbone modules
    weighting = UPGradWeighting()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        losses = task_losses(p.tasks, m(p.x)[1], p.y)
        weights = weighting(engine.compute_gramian(losses))
        losses.backward(weights)
        opt.step()
    return m, step


def libmtl_db_mtl_case(p: Problem, beta: float = 0.9,
                       beta_sigma: float = 0.0) -> tuple[MultiTaskModel, Step]:
    """LibMTL's per-task-backward gradient collection and DB-MTL update (module doc)."""
    m = copy.deepcopy(p.model)
    opt = adam(m)
    shared = shared_params(m)
    bounds, start = [], 0
    for q in shared:
        bounds.append((start, start + q.numel()))
        start += q.numel()
    dim = start
    state = {"step": 0, "buffer": torch.zeros(p.n, dim, device=p.device)}

    def step() -> None:
        opt.zero_grad(set_to_none=False)  # LibMTL's Trainer
        losses = task_losses(p.tasks, m(p.x)[1], p.y)
        state["step"] += 1
        log_losses = torch.log(losses + 1e-8)
        grads = torch.zeros(p.n, dim, device=p.device)
        for i in range(p.n):
            log_losses[i].backward(retain_graph=i + 1 < p.n)
            vec = torch.zeros(dim)  # on the host, as LibMTL's _grad2vec
            for q, (lo, hi) in zip(shared, bounds, strict=True):
                if q.grad is not None:
                    vec[lo:hi] = q.grad.view(-1)
            grads[i] = vec
            m.backbone.zero_grad(set_to_none=False)  # LibMTL's zero_grad_share_params
        b = beta / state["step"] ** beta_sigma
        state["buffer"] = buffer = grads + b * (state["buffer"] - grads)
        norms = buffer.norm(dim=-1)
        alpha = norms.max() / (norms + 1e-8)
        update = sum(alpha[i] * buffer[i] for i in range(p.n))
        for q, (lo, hi) in zip(shared, bounds, strict=True):
            if q.grad is not None:
                q.grad = update[lo:hi].contiguous().view(q.shape).clone()
        opt.step()
    return m, step


CASES: dict[str, Callable[[Problem], tuple[MultiTaskModel, Step]]] = {
    FLOOR: floor_case,
    "mtlbench equal": mtlbench_case("equal", {}),
    GNI: mtlbench_case("gradnorm_ideal", {}),
    "  heads=unweighted (the by-hand update)": mtlbench_case("gradnorm_ideal",
                                                             {"heads": "unweighted"}),
    "  engine: loop, linear direct": mtlbench_case("gradnorm_ideal", {},
                                                   GradientEngine("loop", "direct")),
    "  engine: loop, linear kernel": mtlbench_case("gradnorm_ideal", {},
                                                   GradientEngine("loop", "kernel")),
    "  engine: batched, linear direct": mtlbench_case("gradnorm_ideal", {},
                                                      GradientEngine("batched", "direct")),
    "  statistics logged (grad_log_every=1)": mtlbench_case("gradnorm_ideal", {},
                                                            log_gradients=True),
    "mtlbench gradnorm_ideal[last_shared]": mtlbench_case("gradnorm_ideal",
                                                          {"params": "last_shared"}),
    "mtlbench gradnorm_ideal[representation]": mtlbench_case("gradnorm_ideal",
                                                             {"params": "representation"}),
    "mtlbench upgrad": mtlbench_case("upgrad", {}),
    "mtlbench mgda": mtlbench_case("mgda", {}),
    "mtlbench db_mtl": mtlbench_case("db_mtl", {}),
    HAND: by_hand_case,
    "torchjd mtl_backward + Mean": torchjd_case(Mean),
    TUNED_MEAN: torchjd_case(Mean, tuned=True),
    "torchjd mtl_backward + UPGrad": torchjd_case(UPGrad),
    TUNED_UPGRAD: torchjd_case(UPGrad, tuned=True, gramian=True),
    "torchjd autogram + UPGradWeighting": autogram_case,
    "LibMTL-style DB-MTL (per-task backward)": libmtl_db_mtl_case,
}


#: ``--compile``'s row, under the by-hand one: the same loop with ``torch.compile(model)`` (not in
#: the default table: compiling takes seconds per configuration and needs a C++ compiler).
COMPILED = "  by hand, torch.compile(model)"


#: ``--native``'s row, under mtlbench's gradnorm_ideal[shared] row (not in the default table:
#: building the extension takes ~20 s once and needs a C++ compiler and ninja).
NATIVE = "  the same step in C++ (not mtlbench)"


def native_case(p: Problem) -> tuple[MultiTaskModel, Step]:
    """mtlbench's gradnorm_ideal[shared] step after the forward, in C++ (``native_loop.cpp``)."""
    from torch.utils.cpp_extension import load

    native = load("mtlbench_bench_native_loop", [str(Path(__file__).with_name("native_loop.cpp"))],
                  extra_cflags=["-O2"])
    m = copy.deepcopy(p.model)
    opt = adam(m)
    shared = shared_params(m)
    heads = [list(m.heads[t.name].parameters()) for t in p.tasks]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        outputs = m(p.x)[1]
        _, finite = native.gradnorm_step([t.loss(outputs[t.name], p.y[t.name]) for t in p.tasks],
                                         heads, shared)
        if finite:
            opt.step()
    return m, step


def add_row_under(anchor: str, label: str,
                  build: Callable[[Problem], tuple[MultiTaskModel, Step]]) -> None:
    """Put the row ``label`` (built by ``build``) into :data:`CASES` right under ``anchor``."""
    rows = list(CASES.items())
    rows.insert([name for name, _ in rows].index(anchor) + 1, (label, build))
    CASES.clear()
    CASES.update(rows)


# ----------------------------------------------------------------------------- correctness
def grads_of(model: MultiTaskModel, tasks: list[TaskSpec]) -> tuple[Tensor, list[Tensor]]:
    """(shared .grad flattened, each head's .grad flattened)."""
    def flat(params) -> Tensor:
        return torch.cat([q.grad.reshape(-1) for q in params])
    return flat(model.backbone.parameters()), [flat(model.heads[t.name].parameters())
                                               for t in tasks]


def one_step(p: Problem, label: str) -> tuple[Tensor, list[Tensor]]:
    """The .grad a case's first step leaves (Adam's step leaves .grad as it was)."""
    model, step = CASES[label](p)
    step()
    return grads_of(model, p.tasks)


def check(what: str, a: Tensor, b: Tensor, rtol: float) -> None:
    a, b = a.detach(), b.detach()
    scale = b.abs().max()
    rel = float((a - b).norm() / b.norm())
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * float(scale)), \
        f"{what}: relative difference {rel:.2e} (rtol {rtol:g})"
    print(f"checked: {what} (||a-b||/||b|| = {rel:.1e})")


def run_checks(p: Problem) -> None:
    """The agreements of the module doc, on CUDA with TF32 convolutions off while checking."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        _run_checks(p)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def _run_checks(p: Problem) -> None:
    rtol = 1e-4 if p.device.type == "cpu" else 1e-3
    gni, gni_heads = one_step(p, GNI)
    if NATIVE in CASES:
        native_shared, native_heads = one_step(p, NATIVE)
        check("the same step in C++ == mtlbench gradnorm_ideal[shared], every "
              ".grad", torch.cat([native_shared, *native_heads]), torch.cat([gni, *gni_heads]),
              rtol)
    hand_shared, hand_heads = one_step(p, HAND)
    if COMPILED in CASES:
        compiled_shared, compiled_heads = one_step(p, COMPILED)
        # inductor's kernels add float32 terms in another order: 1.2e-5 off on LeNet, 1.1e-3 on
        # ResNet-18 at batch 8, where eager float32 itself is 0.9e-3 off float64 (and compiled
        # float64 agrees with eager float64 to 6e-15)
        compiled_rtol = 1e-3 if hand_shared.numel() < 1_000_000 else 1e-2
        check("by-hand normalize, torch.compile(model) == by-hand normalize, every .grad",
              torch.cat([compiled_shared, *compiled_heads]), torch.cat([hand_shared, *hand_heads]),
              compiled_rtol)
    check("by-hand normalize == mtlbench gradnorm_ideal[shared], shared .grad",
          hand_shared, gni, rtol)
    same_shared, same_heads = one_step(p, "  heads=unweighted (the by-hand update)")
    check("by-hand normalize == gradnorm_ideal[shared] heads=unweighted, shared .grad",
          hand_shared, same_shared, rtol)
    check("by-hand normalize == gradnorm_ideal[shared] heads=unweighted, heads (grad L_i)",
          torch.cat(hand_heads), torch.cat(same_heads), rtol)

    m = copy.deepcopy(p.model)
    z, outputs = m(p.x)
    mtl_backward([t.loss(outputs[t.name], p.y[t.name]) for t in p.tasks], features=z)
    jac = torch.cat([q.jac.reshape(p.n, -1) for q in m.backbone.parameters()], dim=1)
    # (norms in float64: torch's float32 norm over 11M entries per row was off by 4e-4 here)
    check("torchjd mtl_backward Jacobian rows, normalized and summed == gradnorm_ideal[shared]",
          (jac / jac.double().norm(dim=1, keepdim=True).float()).sum(0), gni, rtol)

    mean_shared, mean_heads = one_step(p, "torchjd mtl_backward + Mean")
    eq_shared, eq_heads = one_step(p, "mtlbench equal")
    check("torchjd Mean == mtlbench equal, shared .grad (both (1/n) sum_i g_i)",
          mean_shared, eq_shared, rtol)
    check("torchjd Mean heads (grad L_i) == n x mtlbench equal heads ((1/n) grad L_i)",
          torch.cat(mean_heads), p.n * torch.cat(eq_heads), rtol)
    tuned_shared, tuned_heads = one_step(p, TUNED_MEAN)
    check("torchjd Mean tuned == torchjd Mean, every .grad",
          torch.cat([tuned_shared, *tuned_heads]), torch.cat([mean_shared, *mean_heads]), rtol)

    up_shared, up_heads = one_step(p, "torchjd mtl_backward + UPGrad")
    mine_shared, mine_heads = one_step(p, "mtlbench upgrad")
    qp_rtol = 1e-3  # both solve the QP with quadprog, on differently scaled Gramians
    check("torchjd UPGrad == mtlbench upgrad, shared .grad", mine_shared, up_shared, qp_rtol)
    check("torchjd UPGrad == mtlbench upgrad, heads (both grad L_i)",
          torch.cat(mine_heads), torch.cat(up_heads), rtol)
    tuned_shared, tuned_heads = one_step(p, TUNED_UPGRAD)
    check("torchjd UPGrad tuned == torchjd UPGrad, every .grad",
          torch.cat([tuned_shared, *tuned_heads]), torch.cat([up_shared, *up_heads]), qp_rtol)
    check("torchjd autogram UPGradWeighting == torchjd mtl_backward UPGrad, shared .grad",
          one_step(p, "torchjd autogram + UPGradWeighting")[0], up_shared, qp_rtol)

    lib_shared, lib_heads = one_step(p, "LibMTL-style DB-MTL (per-task backward)")
    db_shared, db_heads = one_step(p, "mtlbench db_mtl")
    # LibMTL takes the norms of its [n, P] float32 buffer with torch's float32 norm, which is
    # ~4e-4 off over a ResNet-18's P = 11M (mtlbench's come from float64 or chunked float32)
    long_rtol = rtol if lib_shared.numel() < 1_000_000 else 1e-3
    check("LibMTL-style DB-MTL == mtlbench db_mtl (first step), shared .grad",
          db_shared, lib_shared, long_rtol)
    check("LibMTL-style DB-MTL == mtlbench db_mtl (first step), heads (grad log L_i)",
          torch.cat(db_heads), torch.cat(lib_heads), rtol)


# ----------------------------------------------------------------------------- measurement
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Step, steps: int, device: torch.device) -> float:
    """ms per step over ``steps`` consecutive steps."""
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps * 1e3


def peak_step_bytes(model: MultiTaskModel, step: Step, device: torch.device) -> int:
    """Peak bytes of tensors allocated by one step and live at once (module doc)."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


@dataclass
class Result:
    ms: dict[str, float]
    #: (mtlbench row, peer row) → median over rounds of their time ratio in the same round
    paired: dict[tuple[str, str], float]
    ratio: dict[str, float]
    quartiles: dict[str, tuple[float, float]]
    memory: dict[str, float]
    rounds: int
    seconds: float
    load: tuple[str, str]
    others: float | None  # share of all CPUs' time other processes ran during the rounds
    waited: str


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_ticks() -> tuple[int, int, int] | None:
    """(all CPUs' total ticks, their busy ticks, this process's ticks, all threads) from /proc;
    None where that is not readable."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        mine = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total, total - fields[3] - fields[4], int(mine[11]) + int(mine[12])


def others_share(before: tuple[int, int, int] | None) -> float | None:
    """Fraction of all CPUs' time since ``before`` that other processes were running."""
    after = cpu_ticks()
    if before is None or after is None or after[0] <= before[0]:
        return None
    total, busy, mine = (a - b for a, b in zip(after, before, strict=True))
    return max(busy - mine, 0) / total


def wait_for_quiet(limit_s: float) -> str:
    """Wait (at most ``limit_s``) until other processes use < 10% of the CPUs over 3 s."""
    deadline = time.monotonic() + limit_s
    share = None
    while True:
        before = cpu_ticks()
        time.sleep(3.0)
        share = others_share(before)
        if share is None or share < 0.10:
            return "quiet" if share is not None else "unknown (/proc unreadable)"
        if time.monotonic() > deadline:
            return f"still busy after {limit_s:.0f} s (others {share:.0%})"


def bench(args: argparse.Namespace, p: Problem) -> Result:
    waited = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else ""
    load_start = loadavg()
    cases = {label: build(p) for label, build in CASES.items()
             if label == FLOOR or not args.cases or any(c in label for c in args.cases)}
    names = list(cases)
    rng = random.Random(args.seed)
    for _ in range(args.warmup):
        rng.shuffle(names)
        for name in names:
            timed(cases[name][1], args.steps, p.device)
    times: dict[str, list[float]] = {name: [] for name in cases}  # rows in CASES order
    ticks = cpu_ticks()
    start = time.perf_counter()
    rounds = 0
    gc_was_enabled = gc.isenabled()
    try:
        while (rounds < args.rounds if args.rounds else
               rounds < MIN_ROUNDS or time.perf_counter() - start < args.seconds):
            rng.shuffle(names)
            gc.collect()
            gc.disable()
            for name in names:
                cases[name][1]()  # one untimed step: no case pays for running first
                times[name].append(timed(cases[name][1], args.steps, p.device))
            gc.enable()
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    elapsed = time.perf_counter() - start
    others = others_share(ticks)
    memory = ({name: peak_step_bytes(model, step, p.device) / 2**20
               for name, (model, step) in cases.items()} if args.memory else {})
    floor = times[FLOOR]
    ratios = {name: [t / f for t, f in zip(values, floor, strict=True)]
              for name, values in times.items()}
    quartiles = {}
    for name, values in ratios.items():
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        quartiles[name] = (q[0], q[2])
    paired = {(a, b): statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
              for a, b in PAIRS if a in times and b in times}
    return Result(ms={k: statistics.median(v) for k, v in times.items()}, paired=paired,
                  ratio={k: statistics.median(v) for k, v in ratios.items()},
                  quartiles=quartiles, memory=memory, rounds=rounds, seconds=elapsed,
                  load=(load_start, loadavg()), others=others, waited=waited)


# ----------------------------------------------------------------------------- report


def header(args: argparse.Namespace, retained: bool) -> str:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = args.device
    if args.device == "cuda":
        device += f" ({torch.cuda.get_device_name()})"
    memory = ""
    if args.memory:
        memory = ("; memory: torch.cuda.max_memory_allocated - memory_allocated at step start"
                  if args.device == "cuda" else
                  "; memory: peak live bytes of tensors allocated within the step (torch "
                  "profiler CPU allocation events; not RSS)")
    return (f"# machine: {cpu_model()}, {os.cpu_count()} cores ({usable} usable), load average "
            f"{loadavg()} at start; torch {torch.__version__}, torchjd {version('torchjd')}, "
            f"{torch.get_num_threads()} thread(s), device {device}, freed CPU memory "
            f"{'retained' if retained else 'released'}\n"
            f"# model: {describe_model(args)}, n x 10-class heads, batch {args.batch}, Adam lr "
            f"{LR:g} ({'fused' if args.fused_adam else 'torch default'} implementation, every "
            f"row); {args.steps} steps per case per round, rounds interleaved in shuffled order, "
            f"ratio = case / floor in the same round, medians over rounds{memory}")


def detail(n: int, r: Result, memory: bool) -> str:
    others = "unknown" if r.others is None else f"{r.others:.0%}"
    lines = [f"\n## n = {n}: {r.rounds} rounds in {r.seconds:.1f} s, load average "
             f"{r.load[0]} -> {r.load[1]}, other processes ran {others} of the CPUs' time"
             + (f" (waited for quiet: {r.waited})" if r.waited else ""),
             f"| {'case':<42} | {'ms/step':>8} | {'x floor':>7} | {'x floor q1-q3':>13} |"
             + (f" {'peak MiB':>8} |" if memory else ""),
             f"|{'-' * 44}|{'-' * 9}:|{'-' * 8}:|{'-' * 14}:|" + (f"{'-' * 9}:|" if memory
                                                                 else "")]
    for name in r.ms:
        q1, q3 = r.quartiles[name]
        lines.append(f"| {name:<42} | {r.ms[name]:8.3f} | {r.ratio[name]:7.2f} | "
                     f"{q1:6.2f}-{q3:<6.2f} |" + (f" {r.memory[name]:8.2f} |" if memory else ""))
    return "\n".join(lines)


def summary(results: dict[int, Result], memory: bool) -> str:
    ns = list(results)
    head = "| case | " + " | ".join(f"n={n}" for n in ns) + " |"
    rule = "|---|" + "---:|" * len(ns)
    lines = ["\n## median ratio to the floor (median ms/step)", head, rule]
    for name in results[ns[0]].ms:
        cells = [f"{r.ratio[name]:.2f}x ({r.ms[name]:.2f} ms)" for r in results.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    pairs = [pair for pair in PAIRS if all(pair in r.paired for r in results.values())]
    if pairs:
        lines += ["\n## paired: mtlbench row / peer row in the same round, median over rounds "
                  "(< 1: mtlbench faster)", "| mtlbench row | peer row | "
                  + " | ".join(f"n={n}" for n in ns) + " |", "|---|---|" + "---:|" * len(ns)]
        for a, b in pairs:
            lines.append(f"| {a} | {b.strip()} | "
                         + " | ".join(f"{r.paired[(a, b)]:.3f}" for r in results.values()) + " |")
    if memory:
        lines += ["\n## peak MiB per step (see header for what is measured)", head, rule]
        for name in results[ns[0]].ms:
            lines.append(f"| {name} | "
                         + " | ".join(f"{r.memory[name]:.2f}" for r in results.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "mlp128", "lenet", "resnet18"), default="mlp")
    parser.add_argument("--cases", nargs="+", default=[], metavar="TEXT",
                        help="time only the rows whose label contains one of these (and the "
                             "floor); the agreement checks run in full")
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 10])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=0,
                        help="MLP width (default 256 for mlp, 128 for mlp128)")
    parser.add_argument("--depth", type=int, default=2, help="MLP hidden layers")
    parser.add_argument("--input-dim", type=int, default=0,
                        help="MLP input size (default 784 for mlp, 32 for mlp128)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, default=0,
                        help="timed rounds per configuration (default: rounds until --seconds have "
                             "passed, at least 5)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="timed seconds per configuration when --rounds is not set")
    parser.add_argument("--steps", type=int, default=5, help="steps per case per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--memory", action="store_true", help="also peak memory per step")
    parser.add_argument("--release-memory", action="store_true",
                        help="keep glibc's default of returning freed memory to the OS (the "
                             "training loop retains it: trainer.retain_cpu_memory=true)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each configuration, wait up to this long until other "
                             "processes use < 10%% of the CPUs (Linux /proc)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fused-adam", action="store_true",
                        help="every row's Adam with fused=True (mtlbench: optimizer.fused=true)")
    parser.add_argument("--native", action="store_true",
                        help=f"also the row {NATIVE.strip()!r} (builds scripts/native_loop.cpp)")
    parser.add_argument("--compile", action="store_true",
                        help=f"also the row {COMPILED.strip()!r}: the by-hand loop on "
                             "torch.compile(model)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to this torch")
    torch.set_num_threads(args.threads)
    ADAM_OPTIONS.update({"fused": True} if args.fused_adam else {})
    if args.compile:
        add_row_under(HAND, COMPILED, lambda p: by_hand_case(p, compiled=True))
    if args.native:
        add_row_under(GNI, NATIVE, native_case)
    retained = False if args.release_memory else retain_freed_memory()
    print(header(args, retained), flush=True)
    results = {}
    for n in args.tasks:
        p = make_problem(args, n)
        print(f"\n# n = {n}", flush=True)
        run_checks(p)
        results[n] = bench(args, p)
        print(detail(n, results[n], args.memory), flush=True)
    print(summary(results, args.memory))
    print(f"\n# load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
