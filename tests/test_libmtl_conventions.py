"""mtlbench's applied update vs LibMTL's formulas, one real step (or two) at a time.

LibMTL (github.com/median-research-group/LibMTL, ``LibMTL/weighting/*.py`` at 4336804, read and
re-derived here as plain torch math, not copied) trains with ``rep_grad=False`` by one
``backward`` per task: each head keeps its own ∇L_i, and the shared parameters' gradient is then
replaced by the method's combination of the per-task gradients g_i. Every test below builds a tiny
mtlbench model (float64), applies ``mtlbench.train.train_step`` with a zero learning rate so that
``.grad`` holds what the step applies, and compares it with the LibMTL formula on the g_i from
separate backward passes. Agreement is asserted to ~1e-9 (1e-6 where LibMTL adds 1e-8 to a norm,
a loss or a variance, or where a solver is involved); a difference is asserted as its exact
relation.

Conventions (A = agree, D = differ; test that pins it):

- MGDA (2 tasks, ``mgda_gn=none`` = ``normalize=false``): shared update A. Heads D: LibMTL ∇L_i,
  mtlbench ``heads=weighted`` (default) w_i ∇L_i; ``heads=unweighted`` = LibMTL.
  ``test_mgda_interior``. Boundary D: when g_1·g_2 ≥ ||g_1||² LibMTL returns w = (0.999, 0.001),
  mtlbench the exact min-norm w = (1, 0): LibMTL's update = mtlbench's + 0.001 (g_2 − g_1).
  ``test_mgda_boundary``. n ≥ 3 (not tested): both Frank-Wolfe, LibMTL 250 iters / stop 1e-5,
  torchjd ε = 1e-3 / 100 iters: equal to the solvers' accuracy only.
- MGDA-UB / rep_grad (D): LibMTL's task "gradient" at the representation is Σ_b ∂L_i/∂z_b (summed
  over the batch, [D]); mtlbench's ``params=representation`` uses ∂L_i/∂z flattened ([B·D]), so the
  weights differ; both back-propagate Σ w_i ∂L_i/∂z. ``test_mgda_representation``.
- PCGrad (2 tasks): A, heads unweighted in both. LibMTL also loops j = i (a no-op) and divides by
  ||g_j||² + 1e-8 (relative 1e-8/||g_j||²). ``test_pcgrad`` (conflicting and not).
- CAGrad (c = 0.5, rescale 0/1/2): A, heads unweighted in both; rescale divides by 1, 1 + c², 1 + c
  in both. LibMTL adds 1e-8 to ||g_0||², c||g_0|| and ||g_w||; scipy vs cvxpy tolerance.
  ``test_cagrad``. Near Pareto stationarity D: where ||g_w*|| < 1e-6 sqrt(tr G) (torchjd's
  ``norm_eps`` as ``strategy=cagrad`` sets it, relative after mtlbench's trace normalization;
  torchjd's default is 1e-4) mtlbench applies the mean g_0 / r,
  LibMTL g_0 + c||g_0|| g_w/||g_w|| (norm up to (1 + c) times larger), a jump at the threshold.
  ``test_cagrad_near_pareto_stationary``.
- IMTL (first step): IMTL-G part A (Σα = 1, heads ∇L_i in both); LibMTL's IMTL also learns s in
  e^{s_i} L_i − s_i (IMTL-L, s = 0 at the first step), which ``imtl_g`` does not: from the second
  step LibMTL's heads get e^{s_i} ∇L_i (not tested). ``test_imtl_g_first_step``.
- DB-MTL: first step A (ĝ = (1 − β) ∇log L at step 1, update max_j||ĝ_j|| Σ ĝ_i/||ĝ_i||, heads
  ∇log L_i). β_σ A: LibMTL's default ``DB_beta_sigma = 0`` (β_t = 0.9) is mtlbench's default
  ``ema_sigma = 0``; ``ema_sigma = 0.5`` (β_t = 0.9/√t) differs from step 2 on. LibMTL takes
  log(L_i + 1e-8). ``test_db_mtl_two_steps``.
- UW: A (L_i/(2e^{s_i}) + s_i/2, s(0) = −0.5, all of the update weighted). Optimizer D: LibMTL's s
  are in ``model.parameters()`` (the network's optimizer, its weight decay, 1e-5 by default);
  mtlbench's own group, weight decay 0, ``strategy.lr`` or the network's. Adam's first step is
  ±lr either way; second step A with wd 0. ``test_uw_two_steps``.
- DWA: A (ones in epochs 0 and 1, then n·softmax(L̄(e−1)/L̄(e−2)/T), T = 2, heads weighted). LibMTL's
  L̄ is the sample-weighted epoch mean; mtlbench's the mean over full batches (same when batches are
  equal). ``test_dwa_third_epoch``.
- GradNorm: D throughout (first step A: w = 1, plain sum). LibMTL: w = n·softmax(λ), λ(0) = 1,
  learned by the network's optimizer on Σ|G_i − sg(Ḡ r_i^α)| only from epoch 1 (epoch 0 is the plain
  sum, L_i(0) = epoch-0 mean loss), G_i over all shared parameters, heads ∇L_i. mtlbench: w itself,
  its own Adam (0.025), updated from step 1 with L_i(0) = first-step losses, clamp + renormalize to
  Σw = n, ``params=last_shared`` by default, heads w_i ∇L_i. For 2 tasks and one Adam step of size
  lr, the same L_grad gives mtlbench w = 1 ∓ lr, LibMTL w = 1 ∓ tanh(lr).
  ``test_gradnorm_two_steps``.
- FAMO: A over two steps (w = z / (c D), heads weighted; after each step one Adam step of the
  logits on the log-loss decrease of the *same batch*, evaluated again after the network's step,
  as LibMTL's trainer and the authors' code do). ``test_famo_two_steps``.
- IMTL (``strategy=imtl``, IMTL-G over IMTL-L's e^{s_i} L_i − s_i): A over two steps, the learned
  s moving between them. ``test_imtl_two_steps``.
- STCH (``strategy=stch``): its warm-up (epochs < ``STCH_warmup_epoch`` = 4, and the epoch equal to
  it, which also averages the losses into the nadir vector) back-propagates Σ log(L_i + 1e-20):
  w_i = 1/L_i, as ``strategy=realtime``; mtlbench floors a zero loss instead of adding 1e-20 (exact
  scale invariance). ``test_stch_warmup_is_realtime``; the smooth-Tchebycheff phase after it is
  checked against the same formula in ``tests/strategies/test_stch.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from torch import Tensor
from torch.testing import assert_close

from mtlbench.data import build_data
from mtlbench.instantiate import instantiate_group
from mtlbench.models.multitask import MultiTaskModel, build_model
from mtlbench.strategies.base import GradientStats, SetupContext, Strategy
from mtlbench.tasks import TaskSpec
from mtlbench.train import build_optimizer, task_losses, train_step

F64 = torch.float64
STRATEGIES = Path(__file__).resolve().parents[1] / "conf" / "strategy"
ALL_TASKS = ("cls_k2", "cls_k10", "reg_x1", "reg_x100")
PAIR = ("cls_k2", "reg_x1")
#: Model seeds of the pair's geometry (on the synthetic data's first rows): cos(g_1, g_2) = -0.23,
#: and g_1·g_2 ≥ ||g_1||² (MGDA's min-norm point is g_1 itself).
CONFLICTING, BOUNDARY = 3, 38


# ----------------------------------------------------------------------------- mtlbench side
@dataclass
class Case:
    model: MultiTaskModel
    tasks: list[TaskSpec]
    targets: dict[str, Tensor]
    inputs: Tensor

    def batch(self, lo: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        y = {k: v[lo:lo + 16] for k, v in self.targets.items()}
        return self.inputs[lo:lo + 16].double(), {
            k: v.double() if v.is_floating_point() else v for k, v in y.items()}


def case(keep: tuple[str, ...] = PAIR, seed: int = CONFLICTING, depth: int = 1) -> Case:
    cfg = compose_config([f"~data.tasks.{t}" for t in ALL_TASKS if t not in keep] + [
        "model.width=8", f"model.depth={depth}", "data.n_train=64", "data.n_val=8",
        "data.n_test=8"])
    data = build_data(cfg.data, 0)
    torch.manual_seed(seed)
    model = build_model(cfg.model, data.input_shape, data.tasks).double()
    return Case(model, data.tasks, data.train.targets, data.train.inputs)


def make(name: str, c: Case | None = None, **overrides: Any) -> Strategy:
    """``strategy=<name>`` from its YAML with ``overrides``, set up on the case's tasks."""
    node = OmegaConf.merge(compose_config([f"strategy={name}"]).strategy, overrides)
    strategy = instantiate_group("strategy", OmegaConf.to_container(node), _convert_="all")
    if c is not None:
        strategy.setup(SetupContext(tasks=c.tasks, train_targets=c.targets))
    return strategy


def flat(params: list[torch.nn.Parameter]) -> Tensor:
    return torch.cat([p.grad.flatten() for p in params])


def step(c: Case, strategy: Strategy, optimizer: torch.optim.Optimizer | None = None,
         lo: int = 0) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One mtlbench step: (weights [n], shared .grad [m], head .grad per task)."""
    x, y = c.batch(lo)
    optimizer = optimizer or torch.optim.SGD(c.model.parameters(), lr=0.0)
    result = train_step(c.model, c.tasks, x, y, strategy, optimizer)
    assert result.finite
    return (result.weights.double(), flat(c.model.shared_parameters()),
            [flat(c.model.head_parameters(t.name)) for t in c.tasks])


@dataclass
class Grads:
    losses: Tensor  # [n]
    g: Tensor  # shared per-task gradients [n, m]
    heads: list[Tensor]  # ∇ of head i's parameters of L_i
    rep: Tensor  # ∂L_i/∂z [n, B, D]


def per_task(c: Case, lo: int = 0) -> Grads:
    """Separate backward passes, as LibMTL's ``_compute_grad`` does."""
    x, y = c.batch(lo)
    losses, rows, heads, reps = [], [], [], []
    for i, t in enumerate(c.tasks):
        c.model.zero_grad()
        z = c.model.backbone(x)
        z.retain_grad()
        loss = task_losses(c.tasks, c.model.heads_forward(z), y)[i]
        loss.backward()
        losses.append(loss.detach())
        rows.append(flat(c.model.shared_parameters()))
        heads.append(flat(c.model.head_parameters(t.name)))
        reps.append(z.grad.clone())
    c.model.zero_grad()
    return Grads(torch.stack(losses), torch.stack(rows), heads, torch.stack(reps))


def close(a: Tensor, b: Tensor, rtol: float = 1e-9) -> None:
    assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


def assert_heads(heads: list[Tensor], grads: Grads, scale: Tensor | list[float],
                 rtol: float = 1e-9) -> None:
    for i, h in enumerate(heads):
        close(h, float(scale[i]) * grads.heads[i], rtol)


# ----------------------------------------------------------------------------- LibMTL side
def libmtl_mgda2(gram: Tensor) -> Tensor:
    """Min-norm point of the segment [g_2, g_1], w = (γ, 1 − γ); LibMTL replaces the end points
    γ = 1 and γ = 0 by 0.999 and 0.001."""
    g11, g12, g22 = gram[0, 0], gram[0, 1], gram[1, 1]
    if g12 >= g11:
        gamma = torch.tensor(0.999, dtype=F64)
    elif g12 >= g22:
        gamma = torch.tensor(0.001, dtype=F64)
    else:
        gamma = (g22 - g12) / (g11 + g22 - 2 * g12)
    return torch.stack([gamma, 1 - gamma])


def pcgrad(g: Tensor, eps: float) -> Tensor:
    """Σ_i p_i, p_i projected off every g_j (j = i included) with p_i · g_j < 0."""
    p = g.clone()
    for i in range(len(g)):
        for j in range(len(g)):
            dot = p[i] @ g[j]
            if dot < 0:
                p[i] = p[i] - dot / (g[j] @ g[j] + eps) * g[j]
    return p.sum(0)


def libmtl_cagrad(g: Tensor, calpha: float, rescale: int) -> Tensor:
    """min over the simplex of w·Gb + c·sqrt(wᵀGw), b = 1/n, c = calpha·||g_0||; then
    d = g_0 + c g_w / ||g_w||, divided by the rescale factor. 2 tasks: golden-section in w_1."""
    gram, n = g @ g.T, len(g)
    c = calpha * math.sqrt(float(gram.mean()) + 1e-8) + 1e-8
    b = torch.full((n,), 1.0 / n, dtype=F64)

    def objective(t: float) -> float:
        w = torch.tensor([t, 1 - t], dtype=F64)
        return float(w @ gram @ b) + c * math.sqrt(float(w @ gram @ w) + 1e-8)

    lo, hi, r = 0.0, 1.0, (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, bb = hi - r * (hi - lo), lo + r * (hi - lo)
        lo, hi = (lo, bb) if objective(a) < objective(bb) else (a, hi)
    gw = torch.tensor([lo, 1 - lo], dtype=F64) @ g
    d = g.mean(0) + c / (float(gw.norm()) + 1e-8) * gw
    return d / (1.0, 1 + calpha ** 2, 1 + calpha)[rescale]


def imtl_alpha(g: Tensor) -> Tensor:
    """α with d = Σα_j g_j: d·u_1 = d·u_i for every i, Σα = 1 (u_i = g_i / ||g_i||)."""
    u = g / g.norm(dim=1, keepdim=True)
    rows = (g @ (u[0] - u[1:]).T).T  # [n-1, n]: g_j · (u_1 − u_i)
    a = torch.cat([rows, torch.ones(1, len(g), dtype=F64)])
    rhs = torch.zeros(len(g), dtype=F64)
    rhs[-1] = 1.0
    return torch.linalg.solve(a, rhs)


def db_mtl(buffer: Tensor | float, t: int, h: Tensor, beta: float, sigma: float,
           eps: float) -> tuple[Tensor, Tensor]:
    """ĝ ← β_t ĝ + (1 − β_t) h, β_t = β/t^σ; update Σ_i (max_j||ĝ_j|| / ||ĝ_i||) ĝ_i."""
    beta_t = beta / t ** sigma
    buffer = beta_t * buffer + (1 - beta_t) * h
    norms = buffer.norm(dim=1)
    return buffer, (norms.max() / (norms + eps)) @ buffer


def adam_first_step(grad: Tensor, lr: float) -> Tensor:
    """Adam's first update of a parameter with gradient ``grad`` (bias-corrected m/√v)."""
    return -lr * grad / (grad.abs() + 1e-8)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("heads", ["weighted", "unweighted"])
def test_mgda_interior(heads: str) -> None:
    c = case(seed=CONFLICTING)
    grads = per_task(c)
    assert grads.g[0] @ grads.g[1] < 0
    w_lib = libmtl_mgda2(grads.g @ grads.g.T)
    w, shared, head_grads = step(c, make("mgda", c, heads=heads))
    close(w, w_lib)
    close(shared, w_lib @ grads.g)
    # LibMTL: head i keeps ∇L_i; mtlbench's default heads=weighted gives w_i ∇L_i
    assert_heads(head_grads, grads, w_lib if heads == "weighted" else [1.0, 1.0])


def test_mgda_boundary() -> None:
    c = case(seed=BOUNDARY)
    grads = per_task(c)
    gram = grads.g @ grads.g.T
    assert gram[0, 1] >= gram[0, 0]  # the min-norm point of the hull is g_1 itself
    w, shared, head_grads = step(c, make("mgda", c))
    assert w.tolist() == [1.0, 0.0]
    close(shared, grads.g[0], 1e-12)
    assert_close(libmtl_mgda2(gram), torch.tensor([0.999, 0.001], dtype=F64))
    close(libmtl_mgda2(gram) @ grads.g, shared + 0.001 * (grads.g[1] - grads.g[0]))
    assert_heads(head_grads, grads, [1.0, 0.0])  # LibMTL: ∇L_1, ∇L_2


def test_mgda_representation() -> None:
    c = case(seed=CONFLICTING)
    grads = per_task(c)
    flat_rows = grads.rep.flatten(1)  # mtlbench: ∂L_i/∂z, every sample
    summed = grads.rep.sum(1)  # LibMTL rep_grad: Σ_b ∂L_i/∂z_b
    w_mtl, w_lib = libmtl_mgda2(flat_rows @ flat_rows.T), libmtl_mgda2(summed @ summed.T)
    assert (w_mtl - w_lib).abs().max() > 0.05
    w, shared, _ = step(c, make("mgda", c, params="representation"))
    close(w, w_mtl)
    close(shared, w_mtl @ grads.g)  # Σ w_i ∂L_i/∂z back-propagated = Σ w_i g_i


@pytest.mark.parametrize("seed", [CONFLICTING, BOUNDARY])
def test_pcgrad(seed: int) -> None:
    c = case(seed=seed)
    grads = per_task(c)
    assert bool(grads.g[0] @ grads.g[1] < 0) == (seed == CONFLICTING)
    torch.manual_seed(0)
    _, shared, head_grads = step(c, make("pcgrad", c))
    close(shared, pcgrad(grads.g, eps=0.0))
    close(shared, pcgrad(grads.g, eps=1e-8), 1e-6)  # LibMTL's ||g_j||² + 1e-8
    if seed == BOUNDARY:
        close(shared, grads.g.sum(0))
    assert_heads(head_grads, grads, [1.0, 1.0])


@pytest.mark.parametrize("rescale", [0, 1, 2])
def test_cagrad(rescale: int) -> None:
    c = case(seed=CONFLICTING)
    grads = per_task(c)
    _, shared, head_grads = step(c, make("cagrad", c, rescale=rescale))
    expected = libmtl_cagrad(grads.g, 0.5, rescale)
    close(shared, expected, 1e-6)
    assert (shared - grads.g.mean(0) / (1, 1.25, 1.5)[rescale]).norm() > 0.01 * shared.norm()
    assert_heads(head_grads, grads, [1.0, 1.0])


@pytest.mark.parametrize("d", [1e-3, 1e-4, 1e-5])
def test_cagrad_near_pareto_stationary(d: float) -> None:
    """Nearly opposite gradients, common part d/2: ||g_w*|| is tiny relative to sqrt(tr G), and
    both keep g_0 + c||g_0|| g_w/||g_w|| (torchjd's default norm_eps of 1e-4 would have dropped the
    correction below d ≈ 2.8e-4; mtlbench passes 1e-6). Gradients scaled by 1e4 so that
    LibMTL's absolute 1e-8 terms do not matter."""
    g = 1e4 * torch.tensor([[1.0, 0.0], [-1.0, d]], dtype=F64)
    gram = g @ g.T
    stats = GradientStats(norms=gram.diagonal().sqrt(), gramian=gram)
    update = make("cagrad").weights(torch.zeros(2, dtype=F64), stats) @ g
    lib = libmtl_cagrad(g, 0.5, 1)
    close(update, lib, 1e-4)
    assert not torch.allclose(update, g.mean(0) / 1.25, rtol=1e-3)  # not the bare mean


def test_imtl_g_first_step() -> None:
    c = case(keep=("cls_k2", "cls_k10", "reg_x1"), seed=1)
    grads = per_task(c)
    alpha = imtl_alpha(grads.g)
    w, shared, head_grads = step(c, make("imtl_g", c))
    close(w, alpha)
    close(shared, alpha @ grads.g)
    u = grads.g / grads.g.norm(dim=1, keepdim=True)
    close(u @ shared, (u[0] @ shared).expand(3))  # equal projections on the unit gradients
    assert_heads(head_grads, grads, [1.0, 1.0, 1.0])  # LibMTL: ∇(e^0 L_i − 0) = ∇L_i


def test_imtl_two_steps() -> None:
    """``strategy=imtl`` (IMTL-G over IMTL-L's scaled losses) against LibMTL's IMTL: α from the
    gradients of e^{s_i} L_i − s_i, shared update Σ α_i ∇(e^{s_i} L_i), heads ∇(e^{s_i} L_i), and
    s trained on Σ e^{s_i} L_i − s_i (one Adam step between the two steps)."""
    c = case(keep=("cls_k2", "cls_k10", "reg_x1"), seed=1)
    strategy = make("imtl", c, loss_weighting={"lr": 0.05})
    strategy.loss_weighting.setup(SetupContext(tasks=c.tasks, train_targets=c.targets))
    network = OmegaConf.create({"_target_": "torch.optim.Adam", "lr": 0.0})
    optimizer = build_optimizer(network, c.model, strategy)
    assert optimizer.param_groups[-1]["lr"] == 0.05
    s = torch.zeros(3, dtype=F64)
    for t in (1, 2):  # the model does not move (lr 0); s takes one Adam step after step 1
        grads = per_task(c)
        scale = s.exp()  # ∇(e^{s_i} L_i − s_i) = e^{s_i} ∇L_i
        alpha = imtl_alpha(scale[:, None] * grads.g)
        w, shared, head_grads = step(c, strategy, optimizer)
        close(w, alpha * scale, 1e-6)  # logged: the coefficients of the shared update on ∇L_i
        close(shared, alpha @ (scale[:, None] * grads.g), 1e-6)
        assert_heads(head_grads, grads, scale, 1e-6)
        if t == 1:
            s = s + adam_first_step(grads.losses * s.exp() - 1.0, 0.05)  # ∂/∂s_i
            close(strategy.loss_weighting.parameters()[0].double(), s, 1e-6)
    assert (s != 0).all()


@pytest.mark.parametrize("sigma", [0.5, 0.0])
def test_db_mtl_two_steps(sigma: float) -> None:
    assert OmegaConf.load(STRATEGIES / "db_mtl.yaml").ema_sigma == 0.0  # LibMTL's default
    c = case(seed=CONFLICTING)
    strategy = make("db_mtl", c, ema_sigma=sigma)
    mine: Tensor | float = 0.0
    lib: dict[float, Tensor | float] = {0.0: 0.0, 0.5: 0.0}  # LibMTL, DB_beta_sigma 0 and 0.5
    for t, lo in ((1, 0), (2, 16)):  # two different batches, the model unchanged (lr 0)
        grads = per_task(c, lo)
        _, shared, head_grads = step(c, strategy, lo=lo)
        mine, exact = db_mtl(mine, t, grads.g / grads.losses[:, None], 0.9, sigma, eps=0.0)
        close(shared, exact)
        h_lib = grads.g / (grads.losses[:, None] + 1e-8)  # ∇ log(L_i + 1e-8)
        updates = {}
        for s in lib:
            lib[s], updates[s] = db_mtl(lib[s], t, h_lib, 0.9, s, eps=1e-8)
        close(shared, updates[sigma], 1e-6)
        if t == 1:  # β_1 = β whatever σ: the first step is (1 − β) × the unsmoothed update
            close(updates[0.0], updates[0.5], 1e-12)
            h_norm = h_lib.norm(dim=1)
            close(shared, 0.1 * (h_norm.max() / h_norm) @ h_lib, 1e-6)
        else:  # β_2 = 0.9 (LibMTL's default) vs 0.9/√2 (mtlbench's)
            assert (updates[0.0] - updates[0.5]).norm() > 0.1 * updates[0.5].norm()
        assert_heads(head_grads, grads, 1.0 / grads.losses)  # ∇ log L_i, unweighted in both


def test_uw_two_steps() -> None:
    c = case(seed=CONFLICTING)
    strategy = make("uw", c, lr=0.05)
    network = OmegaConf.create({"_target_": "torch.optim.Adam", "lr": 0.0, "weight_decay": 1e-3})
    optimizer = build_optimizer(network, c.model, strategy)
    assert optimizer.param_groups[-1]["weight_decay"] == 0.0  # LibMTL: the network's (1e-5)
    s = torch.full((2,), -0.5, dtype=F64)
    for t in (1, 2):  # the model does not move (lr 0); s takes one Adam step after step 1
        grads = per_task(c)
        w_lib = 1.0 / (2 * s.exp())  # ∂/∂L_i of Σ L_i / (2e^{s_i}) + s_i / 2
        w, shared, head_grads = step(c, strategy, optimizer)
        close(w, w_lib, 1e-6)  # s is float32 in both
        close(shared, w_lib @ grads.g, 1e-6)
        assert_heads(head_grads, grads, w_lib, 1e-6)  # heads weighted in both
        if t == 1:
            s = s + adam_first_step(0.5 - grads.losses / (2 * s.exp()), 0.05)  # ∂/∂s_i
            close(strategy.parameters()[0].double(), s, 1e-6)


def test_dwa_third_epoch() -> None:
    c = case(keep=("cls_k2", "cls_k10", "reg_x1"), seed=1)
    strategy = make("dwa", c)
    epochs = [torch.tensor([[1.0, 2.0, 4.0], [0.8, 2.2, 3.0]], dtype=F64),
              torch.tensor([[0.6, 2.1, 2.0], [0.7, 1.7, 1.8]], dtype=F64)]
    for e, losses in enumerate(epochs):  # epochs 0 and 1: w = 1
        w, shared, _ = step(c, strategy)
        assert w.tolist() == [1.0, 1.0, 1.0]
        for row in losses:
            strategy.after_step(row)
        strategy.end_of_epoch(e)
    ratio = epochs[1].mean(0) / epochs[0].mean(0)
    w_lib = 3 * torch.softmax(ratio / 2.0, dim=0)
    grads = per_task(c)
    w, shared, head_grads = step(c, strategy)
    close(w, w_lib, 1e-12)
    close(shared, w_lib @ grads.g)
    assert_heads(head_grads, grads, w_lib)  # LibMTL back-propagates Σ w_i L_i: heads weighted


def test_famo_two_steps() -> None:
    """LibMTL's FAMO (its trainer runs the batch again after ``optimizer.step()`` and calls
    ``update_w`` with those losses, as the authors' code does): w = z / (c D), z = softmax(ξ),
    D = L + 1e-8, c = Σ z/D; after each step ξ takes one step of its own Adam (lr 0.025, weight
    decay 1e-3) along J_softmax(ξ)ᵀ δ, δ = log D(batch, θ_t) − log D(batch, θ_{t+1})."""
    c = case(keep=("cls_k2", "cls_k10", "reg_x1"), seed=1)
    strategy = make("famo", c)
    optimizer = torch.optim.SGD(c.model.parameters(), lr=0.1)  # the model moves
    xi = torch.zeros(3, dtype=F64, requires_grad=True)
    xi_opt = torch.optim.Adam([xi], lr=0.025, weight_decay=1e-3)  # LibMTL's w_opt
    for lo in (0, 16):
        x, y = c.batch(lo)
        d = per_task(c, lo).losses + 1e-8
        z = torch.softmax(xi.detach(), 0)
        w_lib = z / ((z / d).sum() * d)
        result = train_step(c.model, c.tasks, x, y, strategy, optimizer)
        close(result.weights.double(), w_lib, 1e-9)
        with torch.no_grad():  # LibMTL: the same batch after the step
            after = task_losses(c.tasks, c.model(x)[1], y) + 1e-8
        assert result.losses_after is not None
        close(result.losses_after.double() + 1e-8, after, 1e-12)
        strategy.after_step_losses(result.losses, result.losses_after)  # as the loop does
        delta = d.log() - after.log()
        (grad,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
        xi_opt.zero_grad()
        xi.grad = grad
        xi_opt.step()
        close(strategy.logits.detach(), xi.detach(), 1e-9)
    assert not torch.allclose(torch.softmax(xi.detach(), 0), torch.full((3,), 1 / 3, dtype=F64))


def test_gradnorm_two_steps() -> None:
    c = case(seed=CONFLICTING, depth=2)
    assert OmegaConf.load(STRATEGIES / "gradnorm.yaml").params == "last_shared"  # LibMTL: all
    strategy = make("gradnorm", c, params="shared")
    grads = per_task(c)
    w, shared, head_grads = step(c, strategy)  # first step: w = 1 (LibMTL's epoch 0 as well)
    assert w.tolist() == [1.0, 1.0]
    close(shared, grads.g.sum(0))
    assert_heads(head_grads, grads, [1.0, 1.0])
    # L_grad = Σ|w_i ||g_i|| − sg(mean_j w_j ||g_j|| · r_i^α)| at w = 1 with r = 1 (L = L(0))
    norms = grads.g.norm(dim=1)
    a = torch.sign(norms - norms.mean()) * norms  # ∂L_grad/∂w_i
    w_mtl = 1 + adam_first_step(a, 0.025)
    w_mtl = 2 * w_mtl / w_mtl.sum()
    w2, shared, head_grads = step(c, strategy)
    close(w2, w_mtl, 1e-12)
    close(shared, w_mtl @ grads.g)
    assert_heads(head_grads, grads, w_mtl)  # LibMTL: ∇L_i
    # LibMTL: w = 2 softmax(λ); ∂L_grad/∂λ_k = w_k (a_k − mean_i a_i w_i) = a_k − mean(a) at w = 1
    lam = 1 + adam_first_step(a - a.mean(), 0.025)
    w_lib = 2 * torch.softmax(lam, dim=0)
    close(w_lib - 1, math.tanh(0.025) / 0.025 * (w_mtl - 1), 1e-6)
    assert (w_lib - w_mtl).abs().max() > 1e-6


def test_stch_warmup_is_realtime() -> None:
    c = case(keep=("cls_k2", "cls_k10", "reg_x1"), seed=1)
    grads = per_task(c)
    w_lib = 1.0 / (grads.losses + 1e-20)  # ∂/∂L_i of Σ log(L_i + 1e-20)
    for name in ("realtime", "stch"):
        w, shared, head_grads = step(c, make(name, c))
        close(w, w_lib, 1e-12)
        close(shared, w_lib @ grads.g)
        assert_heads(head_grads, grads, w_lib)
