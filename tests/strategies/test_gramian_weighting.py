"""The shared adapter of the Gramian-side peer methods (``strategies/gramian_weighting.py``):
``normalize``, the trace normalization, dtypes, claims, and the missing-solver message. The helpers
here (``stats``, ``update``, ``make``, ``weigh``, ``random_rows``, ``conflicting``,
``train_end_to_end``) are shared by the per-method tests."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torchjd._mixins
from conftest import compose_config
from omegaconf import OmegaConf
from torch import Tensor
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.instantiate import instantiate_group
from mtlbench.strategies.base import GradientStats
from mtlbench.strategies.gramian_weighting import GramianWeighting, cosine_matrix
from mtlbench.train import run

F64 = torch.float64
METHODS = ["mgda", "upgrad", "dualproj", "pcgrad", "imtl_g", "cagrad", "aligned_mtl", "fairgrad"]
#: What a 4-step run writes to metrics.json (train.Loop.train + train.run + train.finish).
METRICS_KEYS = {"strategy", "seed", "steps", "epochs", "steps_per_epoch", "tasks", "val",
                "skipped_steps", "train_seconds",
                "device", "num_threads", "optimizer_implementation", "gradient_engine",
                "segments", "config"}
TINY = ["trainer.max_steps=4", "trainer.eval_every=2", "trainer.batch_size=32",
        "data.n_train=256", "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]


# ----------------------------------------------------------------------------- shared helpers
def stats(a: Tensor) -> GradientStats:
    """GradientStats of per-task gradient rows a [n, m], as the loop computes them (float64)."""
    gramian = a.double() @ a.double().T
    return GradientStats(norms=gramian.diagonal().sqrt(), gramian=gramian)


def update(w: Tensor, a: Tensor) -> Tensor:
    """The shared update Σ_i w_i a_i [m]."""
    return w.double() @ a.double()


def make(name: str, **overrides: Any) -> GramianWeighting:
    """A strategy exactly as ``strategy=<name>`` composes it, with ``overrides``."""
    node = OmegaConf.to_container(compose_config([f"strategy={name}"]).strategy, resolve=True)
    return instantiate_group("strategy", {**node, **overrides}, _convert_="all")


def weigh(strategy: GramianWeighting, a: Tensor) -> Tensor:
    return strategy.weights(torch.zeros(a.shape[0], dtype=F64), stats(a))


def random_rows(n: int, m: int, seed: int, spread: float = 0.0) -> Tensor:
    """n standard normal rows of length m, row i times 10^(u_i), u_i uniform in ±``spread``."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, m, dtype=F64, generator=gen)
    return a * 10.0 ** (spread * (2 * torch.rand(n, 1, dtype=F64, generator=gen) - 1))


def conflicting(n: int, seed: int) -> Tensor:
    """Random gradient rows [n, n + 1] with at least one conflicting pair (g_i · g_j < 0)."""
    for offset in range(100):
        a = random_rows(n, n + 1, seed=1000 * seed + offset, spread=1.0)
        if (a @ a.T < 0).any():
            return a
    raise AssertionError("no conflicting example")


def assert_same_direction(u: Tensor, v: Tensor, rtol: float) -> None:
    """u = c v for some c > 0."""
    c = (u @ v) / (v @ v)
    assert c > 0, (u, v)
    assert_close(u, c * v, rtol=rtol, atol=rtol * float(v.abs().max()))


def train_end_to_end(tmp_path: Path, name: str, params: str, *extra: str) -> dict[str, Any]:
    """Four steps of ``mtlbench train strategy=<name> strategy.params=<params>`` through the real
    loop; checks metrics.json and returns it."""
    cfg = compose_config([f"strategy={name}", f"strategy.params={params}", *TINY, *extra])
    returned = run(cfg, tmp_path / name, name)
    written = json.loads((tmp_path / name / "metrics.json").read_text())
    assert set(written) == METRICS_KEYS, set(written) ^ METRICS_KEYS
    assert [s["gradient_engine"] for s in written["segments"]] == [written["gradient_engine"]]
    # auto on the CPU: a loop of VJPs; with batch 32 the second layer of the MLP (128 → 128)
    # takes the B×B kernel (linear_method: 0.7M against 2.1M multiply-adds for n = 4), the first
    # (32 → 128) does not
    # gradnorm_ideal (separable) adds up its weighted gradients task by task for ``shared``
    assert written["gradient_engine"] == {
        "traversal": "loop", "running_sum": name == "gradnorm_ideal" and params == "shared",
        "tasks_per_block": 4 if name == "gradnorm_ideal" and params == "shared" else None,
        "kernel_layers": {"shared": ["net.3"], "last_shared": ["last_shared"]}.get(params, [])}
    assert written["strategy"] == name and written["steps"] == 4
    assert written["skipped_steps"] == 0  # every step had finite weights and gradients
    assert written["config"]["strategy.params"] == params
    assert "nonfinite" not in written
    for task, metrics in written["tasks"].items():
        for key, value in metrics.items():
            assert key == "kind" or math.isfinite(value), (task, key, value)
    assert returned["tasks"] == written["tasks"]
    return written


# ----------------------------------------------------------------------------- the adapter
@pytest.mark.parametrize("name", METHODS)
def test_every_method_is_a_gradient_side_shift_invariant_strategy(name: str) -> None:
    strategy = make(name)
    assert isinstance(strategy, GramianWeighting)
    assert strategy.kind == "gramian"
    assert strategy.shift_invariant  # the losses are never read
    assert strategy.deterministic == (name != "pcgrad")
    for source in ("shared", "last_shared", "representation"):
        assert make(name, params=source).gradient_source == source


def test_claims_per_method() -> None:
    """Scale invariance of the whole update holds without ``normalize`` only for FairGrad with
    α = 1 (see each module's docstring; IMTL-G's Σα = 1 can flip the direction), and for every
    method with ``normalize``."""
    claimed = {name for name in METHODS if make(name, heads="weighted").scale_invariant}
    assert claimed == {"fairgrad"}
    assert not make("fairgrad", alpha=2.0).scale_invariant
    assert all(make(name, normalize=True, heads="weighted").scale_invariant for name in METHODS)
    # heads that keep their own ∇L_i scale with λ: the whole update is not invariant then
    assert not any(make(name, normalize=True, heads="unweighted").scale_invariant
                   for name in METHODS)


#: Each method's head convention (its authors' code / LibMTL / torchjd's mtl_backward).
HEADS = {"mgda": "weighted", "fairgrad": "weighted", "upgrad": "unweighted",
         "dualproj": "unweighted", "pcgrad": "unweighted", "imtl_g": "unweighted",
         "cagrad": "unweighted", "aligned_mtl": "unweighted"}


def test_head_convention_per_method() -> None:
    assert {name: make(name).heads for name in METHODS} == HEADS
    with pytest.raises(ConfigError, match=r"`strategy\.heads` must be one of weighted, "
                                          r"unweighted\. Found `strategy\.heads = both`"):
        make("mgda", heads="both")


@pytest.mark.parametrize("heads", ["weighted", "unweighted"])
def test_loop_gives_heads_their_own_or_weighted_gradient(heads: str) -> None:
    """Through the real step: head i's gradient is w_i ∇L_i (weighted) or ∇L_i (unweighted), and
    the backbone's is Σ w_i ∇L_i either way (IMTL-G, whose weights are not 1)."""
    from mtlbench.data import build_data
    from mtlbench.models.multitask import build_model
    from mtlbench.train import task_losses, train_step

    cfg = compose_config(["data.n_train=64", "data.n_val=8", "data.n_test=8"])
    data = build_data(cfg.data, 0)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_shape, data.tasks).double()
    x, y = data.train.inputs[:16].double(), {k: v[:16] for k, v in data.train.targets.items()}
    y = {k: v.double() if v.is_floating_point() else v for k, v in y.items()}
    per_task = []
    for i in range(len(data.tasks)):
        model.zero_grad()
        task_losses(data.tasks, model(x)[1], y)[i].backward()
        per_task.append({n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None})
    strategy = make("imtl_g", heads=heads)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = train_step(model, data.tasks, x, y, strategy, optimizer)
    w = result.weights.double()
    assert not torch.allclose(w, torch.ones_like(w))
    for name, p in model.named_parameters():
        if name.startswith("heads."):
            i = next(k for k, t in enumerate(data.tasks) if name.startswith(f"heads.{t.name}."))
            scale = w[i] if heads == "weighted" else 1.0
            assert_close(p.grad, scale * per_task[i][name], rtol=1e-9, atol=1e-12)
        else:
            expected = sum(w[i] * g[name] for i, g in enumerate(per_task) if name in g)
            assert_close(p.grad, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", METHODS)
def test_bad_params_and_normalize_are_one_line_errors(name: str) -> None:
    """As the CLI shows them: named by their config keys (``mtlbench.instantiate``)."""
    with pytest.raises(ConfigError, match=r"^Parameter `strategy\.params` must be one of shared, "
                       r"last_shared, representation\. Found `strategy\.params = encoder`\.$"):
        make(name, params="encoder")
    with pytest.raises(ConfigError, match=r"^Parameter `strategy\.normalize` must be true or "
                       r"false\. Found `strategy\.normalize = yes`\.$"):
        make(name, normalize="yes")


@pytest.mark.parametrize(("name", "package"), [("upgrad", "quadprog"), ("dualproj", "quadprog"),
                                               ("cagrad", "cvxpy"), ("fairgrad", "scipy")])
def test_missing_solver_names_the_pip_command(name: str, package: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """torchjd checks its optional dependencies with importlib's find_spec when a weighting is
    built; make it report the solver as missing: one line naming the package and the extra."""
    real = torchjd._mixins.find_spec
    missing = {"quadprog": "quadprog", "cvxpy": "cvxpy", "scipy": "scipy"}[package]
    monkeypatch.setattr(torchjd._mixins, "find_spec",
                        lambda mod, *a: None if mod == missing else real(mod, *a))
    with pytest.raises(ConfigError) as info:  # built as the loop builds it (instantiate_group)
        make(name)
    assert str(info.value) == f"strategy={name} needs {package}: pip install 'mtlbench[solvers]'"
    for other in ("mgda", "pcgrad", "imtl_g", "aligned_mtl"):  # no optional solver
        make(other)


def test_a_solver_that_does_not_import_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed but broken (torchjd's find_spec check passes; the first solve would raise a
    qpsolvers traceback): refused when the strategy is built, naming the package."""
    import importlib

    real = importlib.import_module

    def broken(name: str, *args: object) -> object:
        if name == "quadprog":
            raise ImportError("libquadprog.so: cannot open shared object file")
        return real(name, *args)
    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ConfigError) as info:
        make("upgrad")
    assert str(info.value) == (
        "strategy=upgrad needs quadprog, which does not import (ImportError: libquadprog.so: "
        "cannot open shared object file): pip install 'mtlbench[solvers]'")
    make("mgda")


def test_cosine_matrix_keeps_zero_gradients_zero() -> None:
    a = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=F64)
    cos, inv = cosine_matrix(stats(a).gramian)
    # C_ij = cos(g_i, g_j): g_0 · g_2 = 8 = 5 · 2 · 0.8; the zero gradient's row and column are 0
    expected = torch.tensor([[1.0, 0.0, 0.8], [0.0, 0.0, 0.0], [0.8, 0.0, 1.0]], dtype=F64)
    assert_close(cos, expected, rtol=1e-15, atol=1e-15)
    assert_close(inv, torch.tensor([0.2, 0.0, 0.5], dtype=F64))


@pytest.mark.parametrize("name", METHODS)
def test_normalize_weighs_the_unit_gradients(name: str) -> None:
    """normalize: w_i = w'_i / ||g_i|| with w' the method's weights for the unit gradients, so the
    update is Σ w'_i u_i — the same as running the method on the unit gradients themselves."""
    a = random_rows(4, 7, seed=1, spread=3.0)
    unit = a / a.norm(dim=1, keepdim=True)
    strategy = make(name, normalize=True)
    torch.manual_seed(5)
    w = weigh(strategy, a)
    torch.manual_seed(5)  # the same projection orders for pcgrad
    w_unit = weigh(make(name), unit)
    assert_close(w * a.norm(dim=1), w_unit, rtol=1e-6, atol=1e-9)
    assert_close(update(w, a), update(w_unit, unit), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_normalize_makes_every_method_scale_invariant(name: str) -> None:
    """G and diag(s) G diag(s) (task i's loss times s_i, s spanning 1e-9 … 1e9) give updates
    Σ w_i s_i g_i in the same direction — here even equal, w_i(s) s_i = w_i."""
    a = random_rows(4, 6, seed=2, spread=2.0)
    s = torch.tensor([1e-9, 3.0, 1e9, 0.02], dtype=F64)
    strategy = make(name, normalize=True)
    torch.manual_seed(0)
    w = weigh(strategy, a)
    torch.manual_seed(0)
    w_scaled = weigh(strategy, s[:, None] * a)
    assert_close(w_scaled * s, w, rtol=1e-7, atol=0.0)
    assert_same_direction(update(w_scaled, s[:, None] * a), update(w, a), rtol=1e-7)


@pytest.mark.parametrize("name", ["mgda", "upgrad", "dualproj", "cagrad", "aligned_mtl"])
def test_without_normalize_the_direction_depends_on_loss_scales(name: str) -> None:
    """The non-claims are not vacuous: scaling one task's gradient by 100 turns the update."""
    a = torch.tensor([[1.0, 0.2, 0.0], [-0.6, 1.0, 0.3], [0.1, -0.4, 1.0]], dtype=F64)
    strategy = make(name)
    d = update(weigh(strategy, a), a)
    scaled = a.clone()
    scaled[1] *= 100.0
    d_scaled = update(weigh(strategy, scaled), scaled)
    cos = (d @ d_scaled) / (d.norm() * d_scaled.norm())
    assert cos < 0.99, cos


@pytest.mark.parametrize("name", METHODS)
def test_weights_do_not_depend_on_the_gradients_size(name: str) -> None:
    """The Gramian is divided by its trace before the torchjd call (weights times tr^degree), so
    torchjd's absolute thresholds (norm_eps = 1e-4 on tr G) do not switch methods off for small
    gradients: weights at G · 1e-12 are the weights at G (FairGrad: times 1e-12^(-α/(1+α)))."""
    a = random_rows(3, 5, seed=3)
    strategy = make(name)
    torch.manual_seed(0)
    w = weigh(strategy, a)
    torch.manual_seed(0)
    w_small = weigh(strategy, a * 1e-6)
    factor = 1e6 if name == "fairgrad" else 1.0  # (1e-12)^(-1/2) for α = 1
    assert_close(w_small, factor * w, rtol=1e-6, atol=1e-12)


def test_torchjd_alone_switches_off_for_small_gradients() -> None:
    """Why the trace normalization: torchjd's UPGrad weighting returns the mean for tr G < 1e-4,
    and its CAGrad weighting all zeros."""
    from torchjd.aggregation import CAGradWeighting, UPGradWeighting

    a = random_rows(3, 5, seed=3)
    small = stats(a * 1e-3).gramian  # tr G ≈ 1.5e-5
    assert_close(UPGradWeighting()(small), torch.full((3,), 1 / 3, dtype=F64))
    assert (CAGradWeighting(c=0.5)(small) == 0).all()
    assert not torch.allclose(weigh(make("upgrad"), a * 1e-3), torch.full((3,), 1 / 3, dtype=F64))


@pytest.mark.parametrize("name", METHODS)
def test_dtype_and_zero_gradients(name: str) -> None:
    """Weights come back in the losses' dtype, finite, for float32 statistics too, with a zero
    gradient among the tasks, and when every gradient is 0."""
    a = random_rows(3, 5, seed=4)
    a[1] = 0.0
    for normalize in (False, True):
        strategy = make(name, normalize=normalize)
        g = stats(a)
        w = strategy.weights(torch.ones(3), GradientStats(g.norms.float(), g.gramian.float()))
        assert w.dtype == torch.float32 and w.shape == (3,)
        assert torch.isfinite(w).all() and (w != 0).any(), w
        zero = strategy.weights(torch.ones(3, dtype=F64), stats(torch.zeros(3, 5, dtype=F64)))
        assert torch.isfinite(zero).all() and (zero != 0).any(), zero


# ----------------------------------------------------------------------------- CR-MOGM
@pytest.mark.parametrize("name", METHODS)
def test_cr_mogm_smooths_the_method_weights(name: str) -> None:
    """λ_t = α λ_{t−1} + (1 − α) λ̂_t with λ_1 = λ̂_1 (Zhou et al. 2022), λ̂ the method's own
    weights, on three different steps; the state survives a state_dict round trip."""
    alpha = 0.75
    steps = [random_rows(3, 6, seed) for seed in (1, 2, 3)]
    plain = []
    for t, a in enumerate(steps):
        torch.manual_seed(t)  # PCGrad draws the same orders in both runs
        plain.append(weigh(make(name), a))
    smoothed = make(name, cr_mogm=alpha)
    expected = plain[0]
    for t, a in enumerate(steps):
        if t:
            expected = alpha * expected + (1 - alpha) * plain[t]
        torch.manual_seed(t)
        assert_close(weigh(smoothed, a), expected, rtol=1e-7, atol=1e-9)
    resumed = make(name, cr_mogm=alpha)
    resumed.load_state_dict(smoothed.state_dict())
    a = random_rows(3, 6, 4)
    torch.manual_seed(9)
    again = weigh(resumed, a)
    torch.manual_seed(9)
    assert_close(again, weigh(smoothed, a), rtol=0, atol=0)
    assert make(name).state_dict() == {}  # nothing to keep without smoothing


def test_cr_mogm_with_normalize_smooths_the_weights_on_the_unit_gradients() -> None:
    a = [random_rows(2, 5, seed, spread=2.0) for seed in (5, 6)]
    plain = [weigh(make("mgda", normalize=True), x) * x.norm(dim=1) for x in a]  # on u_i
    smoothed = make("mgda", normalize=True, cr_mogm=0.5)
    weigh(smoothed, a[0])
    expected = (0.5 * plain[0] + 0.5 * plain[1]) / a[1].norm(dim=1)
    assert_close(weigh(smoothed, a[1]), expected, rtol=1e-7, atol=1e-9)


def test_cr_mogm_bad_value() -> None:
    with pytest.raises(ConfigError, match=r"`strategy\.cr_mogm` must be in \[0, 1\)\. Found "
                                          r"`strategy\.cr_mogm = 1\.0`"):
        make("mgda", cr_mogm=1.0)
