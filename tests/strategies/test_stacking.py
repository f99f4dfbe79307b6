"""A loss-side strategy stacked under a Gramian weighting (``loss_weighting``): the composed
weights by hand, the claims of the stack, its config errors, and a training run whose stacked
learned parameters train, are checkpointed and resume exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config, killed_and_resumed
from hydra.utils import instantiate
from torch.testing import assert_close

from mtlbench import checkpoint
from mtlbench.errors import ConfigError
from mtlbench.stats import GradientStats
from mtlbench.strategies.base import parts
from mtlbench.strategies.gradnorm_ideal import GradNormIdeal
from mtlbench.strategies.mgda import MGDA
from mtlbench.strategies.static import Static

F64 = torch.float64
A = torch.tensor([[3.0, 1.0, 0.0], [-1.0, 2.0, 0.5]], dtype=F64)  # task gradients g_1, g_2
LOSSES = torch.tensor([0.7, 2.0], dtype=F64)


def stats(a: torch.Tensor) -> GradientStats:
    gram = a @ a.T
    return GradientStats(gram.diagonal().sqrt(), gram)


def static(*weights: float) -> Static:
    strategy = Static(weights={f"t{i}": w for i, w in enumerate(weights)})
    from mtlbench.strategies.base import SetupContext
    from mtlbench.tasks import TaskSpec
    strategy.setup(SetupContext(tasks=[TaskSpec(f"t{i}", "regression", 1)
                                       for i in range(len(weights))]))
    return strategy


def test_mgda_sees_the_gradients_of_the_weighted_losses() -> None:
    """With a = (2, 0.5): MGDA's 2-task min-norm point of {a_1 g_1, a_2 g_2},
    γ = (G'_22 − G'_12) / (G'_11 + G'_22 − 2 G'_12), and weights γ a_1, (1 − γ) a_2 on g_i."""
    a = torch.tensor([2.0, 0.5], dtype=F64)
    g = a[:, None] * A @ (a[:, None] * A).T
    gamma = (g[1, 1] - g[0, 1]) / (g[0, 0] + g[1, 1] - 2 * g[0, 1])
    stack = MGDA(loss_weighting=static(2.0, 0.5))
    w, heads = stack.decide(LOSSES, stats(A))
    assert_close(w, torch.stack([gamma * a[0], (1 - gamma) * a[1]]), rtol=1e-6, atol=0)
    assert_close(heads, w)  # MGDA's heads are weighted: w_i a_i
    unweighted = MGDA(heads="unweighted", loss_weighting=static(2.0, 0.5))
    assert_close(unweighted.decide(LOSSES, stats(A))[1], a)  # heads: ∇(a_i L_i)


def test_a_scale_under_gradient_normalization_changes_nothing() -> None:
    """gradnorm_ideal normalizes a_i g_i: w'_i = 1/(a_i ||g_i||), so w'_i a_i = 1/||g_i||."""
    plain, _ = GradNormIdeal().decide(LOSSES, stats(A))
    stacked, _ = GradNormIdeal(loss_weighting=static(5.0, 0.01)).decide(LOSSES, stats(A))
    assert_close(stacked, plain, rtol=1e-12, atol=0)
    assert_close(plain, 1.0 / A.norm(dim=1), rtol=1e-12, atol=0)


def test_the_stack_claims_what_both_parts_claim() -> None:
    compose = lambda *a: instantiate(compose_config(list(a)).strategy, _convert_="all")  # noqa: E731
    assert compose("strategy=fairgrad").scale_invariant  # α = 1
    assert not compose("strategy=fairgrad", "+strategy@strategy.loss_weighting=equal"
                       ).scale_invariant  # equal is not scale invariant
    assert compose("strategy=fairgrad", "+strategy@strategy.loss_weighting=realtime"
                   ).scale_invariant
    assert not compose("strategy=mgda", "+strategy@strategy.loss_weighting=rlw").deterministic
    imtl = compose("strategy=imtl")
    assert [type(p).__name__ for p in parts(imtl)] == ["IMTLG", "IMTLL"]


@pytest.mark.parametrize("value, message", [
    ("uw", "Parameter `strategy.loss_weighting` takes a strategy config, not a name: write "
           "`+strategy@strategy.loss_weighting=uw`"),
])
def test_a_name_instead_of_a_config_says_how(value: str, message: str) -> None:
    from mtlbench.instantiate import instantiate_group
    cfg = compose_config(["strategy=mgda", f"+strategy.loss_weighting={value}"])
    with pytest.raises(ConfigError) as info:
        instantiate_group("strategy", cfg.strategy, _convert_="all")
    assert message in str(info.value)


def test_a_gradient_side_strategy_cannot_be_stacked() -> None:
    with pytest.raises(ConfigError, match="must be a loss-side strategy"):
        MGDA(loss_weighting=MGDA())


ARGS = ["strategy=imtl", "strategy.loss_weighting.lr=0.05", "trainer.max_steps=8",
        "trainer.checkpoint_every=4", "trainer.eval_every=4", "data.n_train=128",
        "data.n_val=32", "data.n_test=32", "model.width=16"]


def test_trains_checkpoints_and_resumes_exactly(tmp_path) -> None:
    full, resumed = killed_and_resumed(ARGS, "imtl", tmp_path, at_step=4)
    assert resumed == full
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "part")[-1][1])
    (learned,) = state["loss_weighting"].values()  # IMTL-L's s, checkpointed beside the strategy
    assert (learned != 0).all()  # it trained away from its init 0
