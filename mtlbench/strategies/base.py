"""The strategy protocol: given the task losses (and, when declared, task-gradient statistics),
return the effective weight w_i = ∂L/∂L_i of every task. The training loop then applies the update
of Σ w_i L_i.

Strategies are pure torch: they never call ``backward()`` and never touch the model. A strategy that
needs gradient statistics sets ``needs_gradients = True`` and ``gradient_source`` (``shared``,
``last_shared`` or ``representation``); the loop computes :class:`GradientStats` once and passes it
in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.stats import (  # noqa: F401 - re-exported: strategies import them from here
    FLOAT32_SAFE_SQUARED_NORMS,
    GradientStats,
    float32_is_safe,
    wide,
)
from mtlbench.tasks import TaskSpec

#: A loss that is not a positive normal number of its dtype (exactly 0, negative, or subnormal) is
#: replaced by this value before any division or logarithm (:func:`floored`), so that task gets a
#: large finite weight instead of inf/NaN. Positive normal losses are never changed, however small
#: or large (1e-30 stays 1e-30), so the scale invariance of eq. (2)-(7) holds exactly for them.
LOSS_FLOOR = 1e-12

GRADIENT_SOURCES = ("shared", "last_shared", "representation")


@dataclass
class SetupContext:
    """What a strategy may read once before training.

    Attributes:
        tasks: the task specs, in the order of the loss vector.
        train_targets: training-split targets per task (for eq. 2 derived and eq. 3).
        measure_losses: ``measure_losses(k)`` → mean transformed loss per task [n] of the current
            (untrained) model over ``k`` training batches, without gradients (eq. 2 measured).
    """

    tasks: list[TaskSpec]
    train_targets: dict[str, Tensor] = field(default_factory=dict)
    measure_losses: Callable[[int], Tensor] | None = None


class Strategy:
    """Base class. Subclasses implement :meth:`weights`; loss-side ones also :meth:`objective`."""

    needs_gradients: bool = False
    gradient_source: str = "shared"
    #: Claims checked by ``tests/strategies/test_properties.py`` for every ``conf/strategy/*.yaml``.
    #: ``scale_invariant``: multiplying one task's loss by λ > 0 (``data.tasks.<t>.loss_scale``)
    #: leaves the whole update's direction (heads and shared) unchanged, i.e. w_k(λ) · λ = c · w_k
    #: and w_i(λ) = c · w_i. ``shift_invariant``: adding a constant to one task's loss
    #: (``loss_shift``; gradients unchanged) leaves it unchanged, i.e. w(shifted) = c · w.
    #: Default: no claim. A subclass sets the class attribute, or the instance attribute in
    #: ``__init__`` when the claim depends on a hyperparameter (generalized mean: γ = 0 / γ = 1).
    scale_invariant: bool = False
    shift_invariant: bool = False
    #: False for strategies that draw random numbers (PCGrad's projection order): they opt out of
    #: the exact permutation check (they draw from torch's global RNG, saved in checkpoints).
    deterministic: bool = True
    #: False for methods whose weights may be negative by design (IMTL-G, Aligned-MTL).
    nonnegative_weights: bool = True
    #: Gradient-side strategies: True (head i receives w_i ∇L_i, the gradient of Σ w_i L_i, with
    #: the weights that :meth:`weights` / :meth:`combine_gradients` return) or False (head i keeps
    #: its own ∇L_i, as LibMTL and torchjd's ``mtl_backward`` train task-specific parameters); the
    #: loop reads it. Loss-side strategies always scale the heads.
    scale_heads: bool = True

    #: Optional extension for gradient-side strategies whose shared update is not Σ_i w_i g_i (e.g.
    #: DB-MTL's moving average of gradient *vectors*, which no per-step weights can express). When
    #: true (only allowed with ``gradient_source = "shared"``), the loop calls
    #: :meth:`combine_gradients` instead of :meth:`weights`. Loss-side strategies never set it.
    combines_gradients: bool = False

    #: Learning rate of :meth:`parameters` (None: the network optimizer's).
    lr: float | None = None

    def setup(self, ctx: SetupContext) -> None:
        """Read statistics once before training (default: nothing)."""

    def after_step(self, losses: Tensor) -> None:
        """Called by the loop after every applied optimizer step with that step's task losses
        [n] (detached); skipped steps are not reported. Default: nothing."""

    def end_of_epoch(self, epoch: int) -> None:
        """Called by the loop when training epoch ``epoch`` (0-based; an epoch is
        ``len(train) // batch_size`` steps) is done. Default: nothing."""

    def parameters(self) -> list[Tensor]:
        """Learnable strategy parameters (e.g. UW's log-variances), created in :meth:`setup` on the
        targets' device. The loop puts them in the network's optimizer as their own parameter group
        (learning rate :attr:`lr` if set, no weight decay), back-propagates :meth:`objective`
        (which must depend on them) instead of Σ w_i L_i, and checkpoints them through
        :meth:`state_dict` (which must return them, and :meth:`load_state_dict` copy into them in
        place). :meth:`weights` still gives ∂L/∂L_i, which is logged. Default: none."""
        return []

    def combine_gradients(self, losses: Tensor,
                          per_task: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The shared update from the per-task gradients themselves (see ``combines_gradients``).

        Args:
            losses: this step's task losses [n] (detached).
            per_task: for each shared parameter p (model order), ∇_p L_i stacked, [n, *p.shape]
                (read-only: the loop also logs their statistics).
        Returns:
            ``(weights, update)``: ``weights`` [n] for the heads (head i receives w_i ∇L_i; they
            are also the logged weights) and ``update``, one tensor of shape p.shape per shared
            parameter, written to p.grad before the optimizer step.
        """
        raise NotImplementedError

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        """Effective weights w_i = ∂L/∂L_i, shape [n], for ``losses`` [n] (detached)."""
        raise NotImplementedError

    def objective(self, losses: Tensor) -> Tensor:
        """The strategy's scalar objective L as written in the post (differentiable in
        ``losses``)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (learned weights, statistics); tensors only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""


class LearnedPerTask(Strategy):
    """Base of loss-side strategies with one learned scalar per task (UW's log-variances, IMTL-L's
    log-scales): created in :meth:`setup` (float32, the targets' device, ``init`` everywhere),
    exposed through :meth:`parameters` and carried in checkpoints under :attr:`state_key`.
    Subclasses implement :meth:`weights` and :meth:`objective` with :meth:`learned`."""

    #: The parameter's name in the strategy's state dict.
    state_key = "learned"

    def __init__(self, *, init: float, lr: float | None) -> None:
        self.init = check_real("init", init)
        self.lr = None if lr is None else check_positive("lr", lr)
        self._learned: Tensor | None = None

    def setup(self, ctx: SetupContext) -> None:
        device = next(iter(ctx.train_targets.values())).device if ctx.train_targets else None
        self._learned = torch.full((len(ctx.tasks),), self.init, dtype=torch.float32,
                                   device=device, requires_grad=True)

    def learned(self) -> Tensor:
        """The learned per-task parameter [n] (attached: objectives differentiate it)."""
        assert self._learned is not None, "call setup() first"
        return self._learned

    def parameters(self) -> list[Tensor]:
        return [self.learned()]

    def state_dict(self) -> dict[str, Any]:
        return {self.state_key: self.learned().detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.learned().copy_(state[self.state_key])


def floored(losses: Tensor) -> Tensor:
    """``losses`` with every entry that is not a positive normal number of the dtype (0, negative,
    subnormal: below finfo.tiny, 1.2e-38 in float32) replaced by :data:`LOSS_FLOOR`; every other
    loss is returned unchanged, so 1/L_i is finite in the dtype and exact wherever it was defined.
    The replaced entries get no gradient (as with a clamp)."""
    return torch.where(losses >= torch.finfo(losses.dtype).tiny, losses, LOSS_FLOOR)


def finite_weights(weights: Tensor, like: Tensor) -> Tensor:
    """``weights`` (computed in float64, see :func:`wide`) cast to ``like``'s dtype, clamped to
    its largest finite value so that an extreme weight (e.g. of a task whose loss is 0) cannot
    become inf."""
    return weights.clamp(max=torch.finfo(like.dtype).max).to(like.dtype)


def check_real(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """Validate a real hyperparameter; returns it as float or raises a one-line
    :class:`ConfigError`."""
    accepted = "a real number or ±inf" if allow_inf else "a finite real number"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"Parameter `{name}` must be {accepted}. Found `{name} = {value}`."
        ) from None
    if math.isnan(number) or (math.isinf(number) and not allow_inf) or isinstance(value, bool):
        raise ConfigError(f"Parameter `{name}` must be {accepted}. Found `{name} = {value}`.")
    return number


def check_bool(name: str, value: Any) -> bool:
    """Validate a boolean hyperparameter."""
    if not isinstance(value, bool):
        raise ConfigError(f"Parameter `{name}` must be true or false. Found `{name} = {value}`.")
    return value


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """Validate an integer hyperparameter ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"Parameter `{name}` must be an integer >= {minimum}. Found `{name} = {value}`."
        )
    return value


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Validate a finite real hyperparameter > 0 (≥ 0 with ``allow_zero``)."""
    number = check_real(name, value)
    if number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"Parameter `{name}` must be {bound}. Found `{name} = {value}`.")
    return number


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Validate a string hyperparameter against ``choices``."""
    if value not in choices:
        raise ConfigError(
            f"Parameter `{name}` must be one of {', '.join(choices)}. Found `{name} = {value}`."
        )
    return str(value)


def reference_losses(values: list[float], tasks: list[TaskSpec], what: str) -> Tensor:
    """Per-task reference losses (eq. 2-3 denominators) as float64; each must be finite and > 0."""
    for task, value in zip(tasks, values, strict=True):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(
                f"The {what} of task `{task.name}` is {value:g}, "
                "but it must be > 0 to divide by it "
                f"(check `data.tasks.{task.name}.loss_shift`)."
            )
    return as_loss_vector(values)


def as_loss_vector(values: list[float], like: Tensor | None = None) -> Tensor:
    """A float64 tensor of per-task statistics, on ``like``'s device if given."""
    device = like.device if like is not None else None
    return torch.tensor(values, dtype=torch.float64, device=device)


class ReferenceNormalized(Strategy):
    """Shared form of eq. (2) and (3): L = Σ_i L_i / R_i with fixed references R_i set in
    ``setup``."""

    reference: Tensor | None = None

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        assert self.reference is not None, "call setup() first"
        return finite_weights(1.0 / self.reference.to(losses.device), losses)

    def objective(self, losses: Tensor) -> Tensor:
        return (self.weights(losses) * losses).sum()

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = state["reference"]
