"""The strategy protocol: three kinds, one class each; the loop dispatches once, by kind.

* :class:`Strategy` (loss side): weights w_i = ∂L/∂L_i from the task losses alone (and learned
  parameters); the loop back-propagates Σ w_i L_i (or :meth:`Strategy.objective` when the strategy
  has learned parameters).
* :class:`GradientWeighting` (Gramian side): weights from :class:`GradientStats` (norms, Gramian) of
  the per-task gradients over a declared ``gradient_source`` (``shared``, ``last_shared``,
  ``representation``); the loop computes them in the one backward and applies Σ_i w_i g_i. A
  loss-side strategy can be stacked under it (``loss_weighting``). One whose weights factor as
  w_i = c · h_i, h_i from task i's own loss and gradient norm (``separable``), lets the loop add
  up h_i g_i task by task without the Gramian.
* :class:`Combiner`: updates that are not Σ_i w_i g_i for one w (DB-MTL's moving average of gradient
  vectors, GradDrop's sign masks); it receives the per-task gradients of all shared parameters
  with their statistics (:class:`PerTaskGradients`) and returns the shared update.

Every kind has a ``heads`` policy the loop reads (``weighted``: head i receives w_i ∇L_i;
``unweighted``: its own ∇L_i, as LibMTL and torchjd's ``mtl_backward`` train task-specific
parameters; loss-side strategies are always ``weighted``), and the logged ``train/weight/<task>``
is always the coefficient of the shared update. Strategies are pure torch: they never call
``backward()`` and never touch the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtlbench.checks import (  # noqa: F401 - re-exported: strategies import them from here
    check_bool,
    check_choice,
    check_int,
    check_positive,
    check_real,
)
from mtlbench.errors import ConfigError
from mtlbench.stats import (  # noqa: F401 - re-exported: strategies import them from here
    FLOAT32_CHUNK,
    FLOAT32_SAFE_SQUARED_NORMS,
    GradientStats,
    PerTaskGradients,
    float32_is_safe,
    wide,
)
from mtlbench.tasks import TaskSpec

#: A loss that is not a positive normal number of its dtype (exactly 0, negative, or subnormal) is
#: replaced by this value before any division or logarithm (:func:`floored`), so that task gets a
#: large finite weight instead of inf/NaN. Positive normal losses are never changed, however small
#: or large (1e-30 stays 1e-30), so the scale invariance of eq. (2)-(7) holds exactly for them.
#: The value is float32's ε = 2⁻²³ ≈ 1.19e-7: a float32 cross-entropy of one example is exactly 0
#: once log(1 + δ) rounds to 0 (δ = Σ_k e^(-margin_k) < ε / 2), while its gradient, of order δ,
#: is not, and the smallest nonzero value it takes is of order ε; so a zero loss weighs as much as
#: that (w = 1/ε ≈ 8.4e6) and contributes ∇L/ε = O(1), the limit of ∇log L. (It was 1e-12: an
#: update 10⁴-10⁵ times too large on the step a task's loss first rounded to 0.) A batch mean
#: keeps float32's resolution per example: B - 1 examples at 0 and one just above ε/2 give a
#: positive loss of order ε/B, which is used as it is (w ≈ B/ε), so there the weight can still
#: jump by ~B between steps; that is float32 arithmetic, not the floor.
LOSS_FLOOR = torch.finfo(torch.float32).eps

GRADIENT_SOURCES = ("shared", "last_shared", "representation")
HEADS = ("weighted", "unweighted")


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
    """Loss side: :meth:`weights` from the losses; :meth:`objective` where it has learned
    parameters. Base of the other two kinds, which share its claims, hooks and state."""

    #: The kind the loop dispatches on: ``loss``, ``gramian`` or ``combiner``.
    kind: str = "loss"
    #: Claims checked by ``tests/strategies/test_properties.py`` for every ``conf/strategy/*.yaml``.
    #: ``scale_invariant``: multiplying one task's loss by λ > 0 (``data.tasks.<t>.loss_scale``)
    #: leaves the whole update's direction (heads and shared) unchanged, i.e. w_k(λ) · λ = c · w_k
    #: and w_i(λ) = c · w_i. ``shift_invariant``: adding a constant to one task's loss
    #: (``loss_shift``; gradients unchanged) leaves it unchanged, i.e. w(shifted) = c · w.
    #: Default: no claim. A subclass sets the class attribute, or the instance attribute in
    #: ``__init__`` when the claim depends on a hyperparameter (generalized mean: γ = 0 / γ = 1).
    scale_invariant: bool = False
    shift_invariant: bool = False
    #: False for strategies that draw random numbers (PCGrad's projection order, RLW): they opt out
    #: of the exact permutation check (they draw from torch's global RNG, which the loop seeds and
    #: saves in checkpoints, so a resumed run stays exact).
    deterministic: bool = True
    #: False for methods whose weights may be negative by design (IMTL-G, Aligned-MTL).
    nonnegative_weights: bool = True
    #: ``weighted`` or ``unweighted`` (see the module docstring); loss-side strategies: weighted.
    heads: str = "weighted"

    #: Learning rate of :meth:`parameters` (None: the network optimizer's).
    lr: float | None = None
    #: Whether the loop evaluates the step's batch again after each applied step (no gradient)
    #: and reports both losses to :meth:`after_step_losses` (FAMO's loss decrease).
    losses_after_step: bool = False

    def setup(self, ctx: SetupContext) -> None:
        """Read statistics once before training (default: nothing)."""

    def after_step(self, losses: Tensor) -> None:
        """Called by the loop after every applied optimizer step with that step's task losses
        [n] (detached); skipped steps are not reported. Default: nothing."""

    def after_step_losses(self, before: Tensor, after: Tensor) -> None:
        """With :attr:`losses_after_step`: called after every applied step with the step's task
        losses [n] and those of the same batch under the updated parameters [n] (detached; after
        :meth:`after_step`). Default: nothing."""

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


class GradientWeighting(Strategy):
    """Gramian side: weights w [n] from the per-task gradients' statistics over
    ``gradient_source``; the loop applies Σ_i w_i g_i to the shared parameters.

    Subclasses implement :meth:`weights` (``grads`` is then always given) and may override
    :meth:`head_weights`. ``loss_weighting`` (a loss-side strategy, or None) is stacked under the
    method: with a = loss_weighting.weights(L) the method sees the gradients of a_i L_i (Gramian
    A G A, A = diag(a)) and losses a_i L_i, and the weights on the original losses are w_i a_i;
    heads receive w_i a_i ∇L_i (``weighted``) or a_i ∇L_i (``unweighted``); the loop also trains,
    checkpoints and calls the hooks of the stacked strategy. See :meth:`decide`.
    """

    kind = "gramian"
    gradient_source: str = "shared"
    loss_weighting: Strategy | None = None
    #: Whether w_i = c · h_i, with h_i = :meth:`own_factors` of task i's loss and gradient norm
    #: alone and c = :meth:`common_factor` of all of them, and :meth:`weights` =
    #: :meth:`separated_weights` (checked for every such strategy by the property suite). For
    #: ``shared`` the loop may then add up h_i g_i task by task (one task's gradient held at a
    #: time; the Gramian only on the steps that log gradient statistics, with the same update).
    separable: bool = False

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        """w [n] from ``grads`` (norms [n], Gramian [n, n]); ``losses`` [n] detached."""
        raise NotImplementedError

    def own_factors(self, losses: Tensor, norms: Tensor) -> Tensor:
        """h [k], elementwise from losses [k] and norms ||g_i|| [k] (``separable`` only)."""
        raise NotImplementedError

    def common_factor(self, losses: Tensor, norms: Tensor) -> Tensor | None:
        """c (0-dim) from all losses [n] and norms [n], or None for c = 1 (``separable`` only)."""
        raise NotImplementedError

    def separated_weights(self, losses: Tensor, own: Tensor, common: Tensor | None) -> Tensor:
        """w = c · h [n] in the losses' dtype, clamped to its largest finite value."""
        return finite_weights(own if common is None else own * common, losses)

    def head_weights(self, losses: Tensor, weights: Tensor) -> Tensor | None:
        """Factor of head i's gradient ∇L_i [n], or None to leave the heads' gradients as they
        are: ``weights`` for ``weighted`` heads, None for ``unweighted``."""
        return weights if self.heads == "weighted" else None

    def decide(self, losses: Tensor, grads: GradientStats) -> tuple[Tensor, Tensor | None]:
        """``(shared weights [n], head weights [n] or None)`` for this step, with the stacked
        loss weighting if any (see the class docstring)."""
        if self.loss_weighting is None:
            w = self.weights(losses, grads)
            return w, self.head_weights(losses, w)
        a = self.loss_weighting.weights(losses).detach()
        a_wide = a.to(grads.gramian.dtype).to(grads.gramian.device)
        scaled = GradientStats(norms=grads.norms * a_wide.abs(),
                               gramian=a_wide[:, None] * grads.gramian * a_wide[None, :])
        w = self.weights(losses * a, scaled).to(a.dtype)
        head = self.head_weights(losses * a, w)
        return w * a, (a if head is None else head * a)

    def parts(self) -> list[Strategy]:
        """This strategy and the stacked loss weighting, if any (the loop sets up, trains,
        checkpoints and calls the hooks of each)."""
        return [self] if self.loss_weighting is None else [self, self.loss_weighting]


@dataclass
class Combined:
    """A combiner's decision for one step.

    Attributes:
        update: the shared update, one tensor of shape p.shape per shared parameter (model order),
            written to p.grad before the optimizer step.
        weights: [n], what the method reports as its per-task coefficients (logged as
            ``train/weight/<task>``).
        head_weights: [n] factors of the heads' gradients ∇L_i, or None to leave them as they are.
    """

    update: list[Tensor]
    weights: Tensor
    head_weights: Tensor | None


class Combiner(Strategy):
    """Combiner: the shared update from the per-task gradients of all shared parameters
    (``gradient_source`` is always ``shared``). Subclasses implement :meth:`combine`."""

    kind = "combiner"
    gradient_source = "shared"

    def combine(self, losses: Tensor, grads: PerTaskGradients) -> Combined:
        """This step's update from ``losses`` [n] (detached) and ``grads`` (per parameter
        [n, *p.shape], their norms and Gramian; read-only)."""
        raise NotImplementedError

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        raise TypeError(f"{type(self).__name__} is a combiner: call combine()")


def check_heads(value: Any) -> str:
    """Validate a ``heads`` policy (``weighted`` or ``unweighted``)."""
    return check_choice("heads", value, HEADS)


def stacked(loss_weighting: Strategy | None, method: GradientWeighting) -> Strategy | None:
    """Validate ``loss_weighting`` (a loss-side strategy or None) for ``method``, and combine the
    claims: the stack claims an invariance or determinism only where both parts do."""
    if loss_weighting is None:
        return None
    if isinstance(loss_weighting, str):
        raise ConfigError(
            "Parameter `loss_weighting` takes a strategy config, not a name: write "
            f"`+strategy@strategy.loss_weighting={loss_weighting}` (a loss-side strategy, e.g. uw, "
            f"imtl_l, dwa, rlw). Found `loss_weighting = {loss_weighting}`."
        )
    if getattr(loss_weighting, "kind", None) != "loss":
        kind = getattr(loss_weighting, "kind", "not a strategy")
        raise ConfigError(
            "Parameter `loss_weighting` must be a loss-side strategy (e.g. uw, imtl_l, dwa, rlw). "
            f"Found `loss_weighting = {type(loss_weighting).__name__}` ({kind})."
        )
    for claim in ("scale_invariant", "shift_invariant", "deterministic", "nonnegative_weights"):
        setattr(method, claim, getattr(method, claim) and getattr(loss_weighting, claim))
    return loss_weighting


def parts(strategy: Strategy) -> list[Strategy]:
    """The strategies the loop sets up, trains, checkpoints and calls hooks on: the strategy and,
    for a Gramian weighting, its stacked loss weighting."""
    return strategy.parts() if isinstance(strategy, GradientWeighting) else [strategy]


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
