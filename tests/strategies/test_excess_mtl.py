"""ExcessMTL (He et al. 2024): three steps by hand, LibMTL's update rule re-derived over random
steps, the first-step baseline making the weights free of a task's gradient scale, an exact resume
from state_dict, skipped steps leaving no trace, and training end to end."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import compose_config, killed_and_resumed
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import GradientStats, PerTaskGradients
from mtlbench.strategies.excess_mtl import ExcessMTL
from mtlbench.train import run

F64 = torch.float64


def per_task(a: torch.Tensor) -> PerTaskGradients:
    """The Jacobian a [n, P] as two fake shared parameters: columns :2 and 2: ([n, 1, P - 2])."""
    gram = a @ a.T
    return PerTaskGradients([a[:, :2].clone(), a[:, 2:].reshape(a.shape[0], 1, -1).clone()],
                            GradientStats(gram.diagonal().sqrt(), gram))


def step(strategy: ExcessMTL, a: torch.Tensor, applied: bool = True
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One loop step: (flat update [P], weights [n], head weights); ``after_step`` if applied."""
    losses = torch.ones(a.shape[0], dtype=a.dtype)
    c = strategy.combine(losses, per_task(a))
    if applied:
        strategy.after_step(losses)
    return torch.cat([u.reshape(-1) for u in c.update]), c.weights, c.head_weights


def test_three_steps_by_hand() -> None:
    """ε = 7, η = 1, one coordinate per squared gradient so that A + ε is a perfect square.
    Step 1: A_a = (9, 0, 0), A_b = (0, 0, 9): E = (9/4, 9/4) is the baseline, w = (1, 1).
    Step 2: g_a = (0, 3, 0): A_a = (9, 9, 0), E_a = 9/4, r_a = 1; g_b = (0, 0, 3): A_b = (0, 0, 18),
    E_b = 9/5, r_b = 0.8: w = 2 softmax(1, 0.8).
    Step 3: g_b = 0 (r_b = 0); g_a = (3, 0, 0): A_a = (18, 9, 0), r_a = (9/5)/(9/4) = 0.8:
    log w = (1.8, 0.8) up to a constant."""
    strategy = ExcessMTL(robust_step_size=1.0, eps=7.0)
    d, w, head = step(strategy, torch.tensor([[3.0, 0, 0], [0, 0, 3.0]], dtype=F64))
    assert torch.equal(w, torch.ones(2, dtype=F64)) and torch.equal(head, w)
    assert torch.equal(d, torch.tensor([3.0, 0, 3.0], dtype=F64))
    assert_close(strategy.baseline, torch.tensor([2.25, 2.25], dtype=F64), rtol=1e-15, atol=0)

    a2 = torch.tensor([[0, 3.0, 0], [0, 0, 3.0]], dtype=F64)
    d, w, head = step(strategy, a2)
    e1, e08 = math.exp(1.0), math.exp(0.8)
    expected = torch.tensor([2 * e1 / (e1 + e08), 2 * e08 / (e1 + e08)], dtype=F64)
    assert_close(w, expected, rtol=1e-14, atol=0)
    assert torch.equal(head, w)
    assert_close(d, expected @ a2, rtol=1e-14, atol=0)

    a3 = torch.tensor([[3.0, 0, 0], [0, 0, 0]], dtype=F64)
    d, w, _ = step(strategy, a3)
    e18 = math.exp(1.8)
    expected = torch.tensor([2 * e18 / (e18 + e08), 2 * e08 / (e18 + e08)], dtype=F64)
    assert_close(w, expected, rtol=1e-14, atol=0)
    assert_close(d, expected @ a3, rtol=1e-14, atol=0)
    assert strategy.step == 3


def libmtl_weights(grads: list[torch.Tensor], eta: float, eps: float) -> list[torch.Tensor]:
    """LibMTL's ``ExcessMTL.backward`` rule (re-derived, not copied): w = 1; A_i += g_i²;
    E_i = Σ g_i² / sqrt(A_i + ε); the first call stores E as the baseline, later calls set
    w ← w exp(η E / E⁰), w ← n w / Σ w."""
    n = grads[0].shape[0]
    w, acc, base, out = torch.ones(n, dtype=F64), torch.zeros_like(grads[0]), None, []
    for g in grads:
        acc = acc + g * g
        e = (g * g / (acc + eps).sqrt()).sum(1)
        if base is None:
            base = e
        else:
            w = w * torch.exp(eta * e / base)
            w = n * w / w.sum()
        out.append(w)
    return out


def test_matches_libmtls_rule_over_random_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(3, 7, dtype=F64, generator=gen) * torch.tensor([[1.0], [10.0], [0.1]])
             for _ in range(6)]
    strategy = ExcessMTL()  # η = 0.01, ε = 1e-7
    for g, expected in zip(grads, libmtl_weights(grads, 0.01, 1e-7), strict=True):
        d, w, _ = step(strategy, g)
        assert_close(w, expected, rtol=1e-13, atol=0)
        assert_close(d, expected @ g, rtol=1e-13, atol=1e-15)
        assert w.sum().item() == pytest.approx(3.0, rel=1e-14)


def test_weights_ignore_a_tasks_gradient_scale() -> None:
    """E_i scales with the gradient (g² / sqrt(Σ g²)), so E_i / E⁰_i does not: multiplying task 1's
    gradients by 1e4 at every step leaves w unchanged (ε negligible), the update's part of task 1
    scales (no scale-invariance claim)."""
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(3, 5, dtype=F64, generator=gen) for _ in range(5)]
    scale = torch.tensor([[1.0], [1e4], [1.0]], dtype=F64)
    plain, scaled = ExcessMTL(robust_step_size=0.5, eps=1e-30), ExcessMTL(robust_step_size=0.5,
                                                                           eps=1e-30)
    for g in grads:
        _, w, _ = step(plain, g)
        _, w_scaled, _ = step(scaled, g * scale)
        assert_close(w_scaled, w, rtol=1e-12, atol=0)
    assert not plain.scale_invariant and plain.shift_invariant


def test_state_dict_mid_run_continues_identically() -> None:
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(3, 6, dtype=F64, generator=gen) for _ in range(8)]
    strategy = ExcessMTL(robust_step_size=0.3)
    for g in grads[:4]:
        step(strategy, g)
    state = copy.deepcopy(strategy.state_dict())
    assert set(state) == {"step", "accumulators", "log_weights", "baseline"} and state["step"] == 4
    rest = [step(strategy, g)[:2] for g in grads[4:]]
    resumed = ExcessMTL(robust_step_size=0.3)
    resumed.load_state_dict(state)
    for (d, w), g in zip(rest, grads[4:], strict=True):
        d2, w2, _ = step(resumed, g)
        assert torch.equal(d, d2) and torch.equal(w, w2)


def test_a_skipped_step_leaves_no_trace() -> None:
    """The loop calls ``after_step`` only for applied steps: a non-finite step computes weights
    (nan) but changes neither the accumulators nor the weights nor the step count."""
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(2, 4, dtype=F64, generator=gen) for _ in range(4)]
    clean, skipping = ExcessMTL(robust_step_size=0.5), ExcessMTL(robust_step_size=0.5)
    bad = grads[0].clone()
    bad[1, 2] = float("nan")
    for i, g in enumerate(grads):
        if i == 2:
            _, w, _ = step(skipping, bad, applied=False)
            assert not torch.isfinite(w).all()
        assert_close(step(skipping, g)[1], step(clean, g)[1], rtol=0, atol=0)
    assert skipping.step == clean.step == 4


def test_zero_gradient_at_the_first_step_defers_that_tasks_baseline() -> None:
    """LibMTL would divide by a zero baseline; here task 1's baseline is its first E > 0."""
    strategy = ExcessMTL(robust_step_size=1.0, eps=7.0)
    step(strategy, torch.tensor([[3.0, 0, 0], [0, 0, 0]], dtype=F64))
    assert_close(strategy.baseline, torch.tensor([2.25, 0.0], dtype=F64), rtol=1e-15, atol=0)
    _, w, _ = step(strategy, torch.tensor([[0, 3.0, 0], [0, 0, 3.0]], dtype=F64))
    # r = (1, 0): task 1's E = 9/4 becomes its baseline
    e1 = math.exp(1.0)
    assert_close(w, torch.tensor([2 * e1, 2.0], dtype=F64) / (e1 + 1), rtol=1e-14, atol=0)
    assert_close(strategy.baseline, torch.tensor([2.25, 2.25], dtype=F64), rtol=1e-15, atol=0)


def test_unweighted_heads_and_float32() -> None:
    strategy = ExcessMTL(heads="unweighted")
    a = torch.randn(2, 4, generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        c = strategy.combine(torch.ones(2), per_task(a))
        strategy.after_step(torch.ones(2))
        assert c.head_weights is None
        assert c.weights.dtype == torch.float32 and all(u.dtype == torch.float32
                                                       for u in c.update)


def test_bad_hyperparameters_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"`robust_step_size` must be > 0\. "
                                          r"Found `robust_step_size = 0`"):
        ExcessMTL(robust_step_size=0)
    with pytest.raises(ConfigError, match=r"`eps` must be > 0\. Found `eps = -1`"):
        ExcessMTL(eps=-1)
    with pytest.raises(ConfigError, match=r"`heads` must be one of weighted, unweighted"):
        ExcessMTL(heads="both")


ARGS = ["strategy=excess_mtl", "strategy.robust_step_size=0.5", "trainer.max_steps=10",
        "trainer.eval_every=5", "trainer.checkpoint_every=5", "trainer.batch_size=32",
        "data.n_train=256", "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]


@pytest.mark.slow
def test_trains_end_to_end_and_resumes_exactly(tmp_path) -> None:
    """Through the real loop: finite metrics, every step applied; the accumulators, weights and
    baseline are checkpointed: killed after step 5 and resumed, the run ends identically."""
    returned = run(compose_config(ARGS), tmp_path / "e2e", "excess_mtl")
    written = json.loads((tmp_path / "e2e" / "metrics.json").read_text())
    assert written["steps"] == 10 and written["skipped_steps"] == 0
    assert returned["tasks"] == written["tasks"]
    full, resumed = killed_and_resumed(ARGS, "excess_mtl", tmp_path, at_step=5)
    assert resumed == full
