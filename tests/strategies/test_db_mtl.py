"""db_mtl (Lin et al. 2023), a combiner: the moving average of ∇ log L_i and the max-norm
rescaling by hand, its relation to gradnorm_ideal, its heads, float32 range, and an exact resume."""

from __future__ import annotations

import io

import pytest
import torch
from test_gradnorm_ideal import TASKS, separate_gradients, setup_model, step_grads
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.stats import GradientStats, PerTaskGradients
from mtlbench.strategies.db_mtl import DBMTL
from mtlbench.strategies.gradnorm_ideal import GradNormIdeal

F64 = torch.float64


def per_task(g: list[torch.Tensor]) -> PerTaskGradients:
    """The combiner's input from per-parameter gradients [n, *p.shape]."""
    flat = torch.cat([x.double().reshape(x.shape[0], -1) for x in g], 1)
    gram = flat @ flat.T
    return PerTaskGradients(g, GradientStats(gram.diagonal().sqrt(), gram))


def test_moving_average_by_hand_and_exact_resume() -> None:
    """Two steps against ĝ ← β_t ĝ + (1-β_t) ∇log L, d = max||ĝ|| Σ ĝ_i/||ĝ_i||; logged weights
    are the coefficients of ĝ_i; the state survives a weights-only round trip."""
    beta, sigma = 0.8, 0.5
    strategy = DBMTL(ema_beta=beta, ema_sigma=sigma)
    assert strategy.kind == "combiner"
    gen = torch.Generator().manual_seed(1)
    buf = torch.zeros(3, 11, dtype=F64)
    for t in (1, 2):
        g = [torch.randn(3, 4, 2, generator=gen, dtype=F64),
             torch.randn(3, 3, generator=gen, dtype=F64)]
        losses = torch.rand(3, generator=gen, dtype=F64) + 0.1
        out = strategy.combine(losses, per_task(g))
        h = torch.cat([gi.reshape(3, -1) for gi in g], 1) / losses[:, None]
        bt = beta / t ** sigma
        buf = bt * buf + (1 - bt) * h
        norms = buf.norm(dim=1)
        want = norms.max() * (buf / norms[:, None]).sum(0)
        assert_close(torch.cat([u.reshape(-1) for u in out.update]), want, rtol=1e-12,
                     atol=1e-12)
        assert_close(out.weights, norms.max() / norms)  # coefficient of ĝ_i in d
        assert_close(out.head_weights, 1.0 / losses)  # DB-MTL: heads get ∇ log L_i unweighted
    blob = io.BytesIO()  # checkpoints load with weights_only=True
    torch.save(strategy.state_dict(), blob)
    blob.seek(0)
    restored = DBMTL(ema_beta=beta, ema_sigma=sigma)
    restored.load_state_dict(torch.load(blob, weights_only=True))
    assert restored.step == 2
    assert_close(torch.cat([b.reshape(3, -1) for b in restored.buffer], 1), buf)


def test_first_step_is_gradnorm_ideal_with_log_losses_and_max() -> None:
    """ĝ = (1-β) h on step 1, so the shared update is (1-β) × gradnorm_ideal's (log, max), and
    weighted heads get the same as gradnorm_ideal's heads."""
    model, x, y = setup_model()
    a = step_grads(model, x, y, GradNormIdeal(rescale="max", log_losses=True))
    b = step_grads(model, x, y, DBMTL(ema_beta=0.5, heads="weighted"))
    for name in a:
        assert_close(b[name], (0.5 if name.startswith("backbone.") else 1.0) * a[name],
                     rtol=1e-10, atol=1e-12)


def test_unweighted_heads_end_to_end_step() -> None:
    model, x, y = setup_model()
    grads = step_grads(model, x, y, DBMTL())
    parts = separate_gradients(model, x, y, "shared")
    for i, task in enumerate(TASKS):  # heads: ∇ log L_i
        for n in grads:
            if n.startswith(f"heads.{task.name}."):
                assert_close(grads[n], parts[i][1][n] / parts[i][0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-24, 1e20])
def test_moving_average_norms_do_not_over_or_underflow_in_float32(scale: float) -> None:
    """float32 gradients ~1e20 (squares 1e40 overflow float32) or ~1e-24 (squares 1e-48
    underflow): the norms of the averages are taken in float64, so the update is the exact one."""
    gen = torch.Generator().manual_seed(2)
    g = [torch.randn(3, 40, generator=gen, dtype=F64) * scale,
         torch.randn(3, 5, 2, generator=gen, dtype=F64) * scale]
    out = DBMTL(ema_beta=0.5).combine(torch.ones(3), per_task([x.float() for x in g]))
    flat = torch.cat([x.float().double().reshape(3, -1) for x in g], 1) * 0.5  # ĝ after 1 step
    norms = flat.norm(dim=1)
    want = norms.max() * (flat / norms[:, None]).sum(0)
    got = torch.cat([u.double().reshape(-1) for u in out.update])
    assert_close(got / scale, want / scale, rtol=1e-5, atol=1e-6)
    assert_close(out.weights.double(), norms.max() / norms, rtol=1e-5, atol=0)


def test_moving_average_norms_of_long_float32_rows_keep_float32_accuracy() -> None:
    """A ResNet-18 conv layer's 2.4M entries per task: one float32 norm per row was 3.7e-5 off;
    in pieces of FLOAT32_CHUNK entries the norms (hence the weights) stay within 1e-6 of float64."""
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(2, 512, 512, 3, 3, generator=gen) * 1e-3 + 1e-3
    g[1] *= 2.0
    strategy = DBMTL(ema_beta=0.0)
    strategy.combine(torch.ones(2), per_task([g]))
    exact = g.double().reshape(2, -1).norm(dim=1) ** 2
    assert ((strategy.squared_norms() / exact - 1).abs() < 1e-6).all()


@pytest.mark.parametrize("bad, message", [
    ({"ema_beta": 1.0}, "Parameter `ema_beta` must be in [0, 1). Found `ema_beta = 1.0`."),
    ({"ema_sigma": -1.0}, "Parameter `ema_sigma` must be >= 0. Found `ema_sigma = -1.0`."),
    ({"heads": "normalized"},
     "Parameter `heads` must be one of weighted, unweighted. Found `heads = normalized`."),
    ({"eps": 0.0}, "Parameter `eps` must be > 0. Found `eps = 0.0`."),
])
def test_bad_hyperparameters(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        DBMTL(**bad)
    assert message in str(info.value)
