"""GradDrop (Chen et al. 2020): same-sign coordinates give the plain sum, the mask against a
coordinate-by-coordinate implementation and torchjd's aggregator from the same seed, the purity as
a keep probability, the reported coefficients, reproducibility, and training end to end."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_config, killed_and_resumed
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import GradientStats, PerTaskGradients
from mtlbench.strategies.graddrop import GradDrop
from mtlbench.train import run

F64 = torch.float64


def per_task(a: torch.Tensor, split: int = 2) -> PerTaskGradients:
    """The Jacobian a [n, P] as two fake shared parameters: columns :split (a vector) and split:
    (reshaped to [n, 1, P - split])."""
    gram = a @ a.T
    return PerTaskGradients([a[:, :split].clone(), a[:, split:].reshape(a.shape[0], 1, -1).clone()],
                            GradientStats(gram.diagonal().sqrt(), gram))


def flat_update(strategy: GradDrop, a: torch.Tensor, losses: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    losses = torch.ones(a.shape[0], dtype=a.dtype) if losses is None else losses
    combined = strategy.combine(losses, per_task(a))
    assert combined.head_weights is None
    assert [u.shape for u in combined.update] == [(2,), (1, a.shape[1] - 2)]
    return torch.cat([u.reshape(-1) for u in combined.update]), combined.weights


def by_hand(a: torch.Tensor, u: torch.Tensor, leak: float) -> torch.Tensor:
    """Algorithm 1 (lines 10-15), one coordinate and one task at a time."""
    n, p = a.shape
    out = torch.zeros(p, dtype=a.dtype)
    for j in range(p):
        column = [float(a[i, j]) for i in range(n)]
        total = sum(abs(x) for x in column)
        purity = 0.5 * (1 + sum(column) / total) if total else float("nan")
        uj = float(u[j])
        for x in column:
            keep = (purity > uj and x > 0) or (purity < uj and x < 0)
            out[j] += (leak + (1 - leak) * keep) * x
    return out


def test_same_sign_coordinates_give_the_plain_sum_whatever_the_seed() -> None:
    # per coordinate all components ≥ 0 (purity 1: kept) or all ≤ 0 (purity 0: kept)
    a = torch.tensor([[1.0, -2.0, 0.0, 3.0, -0.5], [2.0, -1.0, 4.0, 0.0, -0.1],
                      [0.5, 0.0, 1.0, 1.0, -3.0]], dtype=F64)
    for seed in range(10):
        torch.manual_seed(seed)
        d, w = flat_update(GradDrop(), a)
        assert_close(d, a.sum(0), rtol=0, atol=0)
        assert torch.equal(w, torch.ones(3, dtype=F64))  # nothing dropped


def test_mask_matches_a_direct_implementation_and_torchjd() -> None:
    from torchjd.aggregation import GradDrop as TorchJDGradDrop

    a = torch.randn(4, 9, dtype=F64, generator=torch.Generator().manual_seed(0))
    a[:, 3] = 0.0  # a coordinate with no gradient at all: purity 0/0, contributes 0
    for leak in (0.0, 0.3):
        torch.manual_seed(7)
        u = torch.rand(9, dtype=F64)  # the strategy's one draw
        torch.manual_seed(7)
        d, _ = flat_update(GradDrop(leak=leak), a)
        assert_close(d, by_hand(a, u, leak), rtol=1e-14, atol=1e-15)
        assert d[3] == 0.0
        torch.manual_seed(7)
        expected = TorchJDGradDrop(leak=torch.full((4,), leak, dtype=F64))(a)
        assert_close(d, expected, rtol=1e-14, atol=1e-15)


def test_purity_is_the_probability_of_keeping_the_positive_sign() -> None:
    """One coordinate, g = (3, −1): P = ½(1 + 2/4) = 0.75; the update is 3 w.p. 0.75, else −1."""
    a = torch.tensor([[3.0, 1.0, 1.0], [-1.0, 1.0, 1.0]], dtype=F64)
    torch.manual_seed(0)
    strategy = GradDrop()
    values = torch.stack([flat_update(strategy, a)[0][0] for _ in range(4000)])
    assert set(values.tolist()) == {3.0, -1.0}
    assert abs(float((values == 3.0).double().mean()) - 0.75) < 0.03


def test_weights_are_the_surviving_fraction_of_each_squared_gradient() -> None:
    a = torch.tensor([[2.0, -1.0, 3.0], [-1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)
    torch.manual_seed(3)
    u = torch.rand(3, dtype=F64)
    purity = 0.5 * (1 + a.sum(0) / a.abs().sum(0))
    keep = ((purity > u) & (a > 0)) | ((purity < u) & (a < 0))
    for leak in (0.0, 0.25):
        torch.manual_seed(3)
        d, w = flat_update(GradDrop(leak=leak), a)
        masked = (leak + (1 - leak) * keep) * a
        assert_close(d, masked.sum(0), rtol=1e-15, atol=0)
        # c_i = <d_i, g_i> / ||g_i||²; a zero gradient loses nothing: 1
        c = [float(masked[i] @ a[i] / (a[i] @ a[i])) for i in range(2)] + [1.0]
        assert_close(w, torch.tensor(c, dtype=F64), rtol=1e-15, atol=0)
        assert (w >= leak).all() and (w <= 1).all()


def test_full_leak_is_the_plain_sum() -> None:
    a = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    d, w = flat_update(GradDrop(leak=1.0), a)
    assert_close(d, a.sum(0), rtol=1e-15, atol=1e-15)
    assert torch.equal(w, torch.ones(3, dtype=F64))


def test_reproducible_from_the_seed_and_random_across_seeds() -> None:
    a = torch.randn(3, 50, dtype=F64, generator=torch.Generator().manual_seed(2))
    strategy, seen = GradDrop(), set()
    for seed in range(5):
        torch.manual_seed(seed)
        d, w = flat_update(strategy, a)
        torch.manual_seed(seed)
        again, w_again = flat_update(strategy, a)
        assert torch.equal(d, again) and torch.equal(w, w_again)
        seen.add(tuple(d.tolist()))
    assert len(seen) == 5
    assert not strategy.deterministic and strategy.shift_invariant
    assert not strategy.scale_invariant and strategy.heads == "unweighted"


def test_float32_gradients_give_float32_weights_and_updates() -> None:
    a = torch.randn(2, 5, generator=torch.Generator().manual_seed(4)) * 1e-20  # squares underflow
    torch.manual_seed(0)
    combined = GradDrop().combine(torch.ones(2), per_task(a))
    assert combined.weights.dtype == torch.float32
    assert all(u.dtype == torch.float32 for u in combined.update)
    assert torch.isfinite(combined.weights).all() and (combined.weights > 0).all()


@pytest.mark.parametrize("leak", [-0.1, 1.5, "x"])
def test_bad_leak_is_one_line(leak) -> None:
    with pytest.raises(ConfigError, match=r"Parameter `leak` must be"):
        GradDrop(leak=leak)


ARGS = ["strategy=graddrop", "trainer.max_steps=8", "trainer.eval_every=4",
        "trainer.checkpoint_every=4", "trainer.batch_size=32", "data.n_train=256",
        "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]


@pytest.mark.slow
def test_trains_end_to_end_and_resumes_exactly(tmp_path) -> None:
    """Through the real loop: finite metrics, every step applied; the masks come from torch's
    RNG, which checkpoints save, so a run killed after step 4 and resumed ends identically."""
    returned = run(compose_config([*ARGS, "strategy.leak=0.1"]), tmp_path / "e2e", "graddrop")
    written = json.loads((tmp_path / "e2e" / "metrics.json").read_text())
    assert written["steps"] == 8 and written["skipped_steps"] == 0
    assert returned["tasks"] == written["tasks"]
    full, resumed = killed_and_resumed(ARGS, "graddrop", tmp_path, at_step=4)
    assert resumed == full
