"""RLW: weights on the simplex, softmax of a standard normal draw, reproducible from the seed."""

from __future__ import annotations

import pytest
import torch
from conftest import killed_and_resumed

from mtlbench.errors import ConfigError
from mtlbench.strategies.rlw import RLW


def test_normal_weights_are_the_softmax_of_the_seeded_draw() -> None:
    losses = torch.tensor([3.0, 0.2, 50.0], dtype=torch.float64)
    torch.manual_seed(5)
    w = RLW().weights(losses)
    torch.manual_seed(5)
    expected = torch.softmax(torch.randn(3, dtype=torch.float64), dim=0)
    assert torch.equal(w, expected)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-15) and (w > 0).all()


def test_dirichlet_weights_are_normalized_exponentials() -> None:
    torch.manual_seed(1)
    w = RLW(distribution="dirichlet").weights(torch.ones(4, dtype=torch.float64))
    torch.manual_seed(1)
    e = torch.empty(4, dtype=torch.float64).exponential_()
    assert torch.allclose(w, e / e.sum(), rtol=0, atol=1e-15)


def test_weights_ignore_the_losses_and_change_every_step() -> None:
    strategy = RLW()
    torch.manual_seed(0)
    a = strategy.weights(torch.tensor([1.0, 2.0]))
    torch.manual_seed(0)
    b = strategy.weights(torch.tensor([1e8, 1e-8]))
    c = strategy.weights(torch.tensor([1.0, 2.0]))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mean_weight_is_one_over_n() -> None:
    torch.manual_seed(0)
    strategy = RLW()
    mean = torch.stack([strategy.weights(torch.ones(4)) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, torch.full((4,), 0.25), atol=0.01)


def test_objective_gradient_is_the_last_draw() -> None:
    strategy = RLW()
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    w = strategy.weights(losses.detach())
    (grad,) = torch.autograd.grad(strategy.objective(losses), losses)
    assert torch.equal(grad, w)


def test_bad_distribution_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"`distribution` must be one of normal, dirichlet\. "
                                          r"Found `distribution = beta`"):
        RLW(distribution="beta")


def test_resume_draws_the_same_weights(tmp_path) -> None:
    """The draw comes from torch's RNG, which checkpoints save: killed at step 4 and resumed, the
    run ends where an uninterrupted one does."""
    args = ["strategy=rlw", "trainer.max_steps=8", "trainer.eval_every=4",
            "trainer.checkpoint_every=4", "trainer.batch_size=32", "data.n_train=256",
            "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]
    full, resumed = killed_and_resumed(args, "rlw", tmp_path, at_step=4)
    assert resumed == full
