"""GradNorm (Chen et al., ICML 2018, https://arxiv.org/abs/1711.02257): learned task weights.

The network is trained on L(t) = Σ_i w_i(t) L_i(t). The weights w_i (initialised to 1) are learned
by their own loss, which pulls each weighted gradient norm toward the mean times a training-rate
term:

    G_i(t) = ||∇_W w_i L_i|| = w_i ||∇_W L_i||,   Ḡ(t) = mean_i G_i(t)
    L̃_i(t) = L_i(t) / L_i(0),   r_i(t) = L̃_i(t) / mean_j L̃_j(t)   (inverse training rate)
    L_grad = Σ_i | G_i − sg(Ḡ · r_i^α) |

differentiated only w.r.t. w with the target Ḡ · r_i^α held constant (paper, §3.2), so
∂L_grad/∂w_i = sign(G_i − target_i) · ||∇_W L_i||. Per step (paper's Algorithm 1): the model update
uses w(t) (what :meth:`GradNorm.weights` returns); then w takes one optimizer step on L_grad and is
renormalised to Σ_i w_i = n. The digest (https://kexue.fm/archives/8870, "GradNorm") places it as a
mix of eq. (2) (the L_i(0) normalization) and eq. (11) (gradient norms).

Choices (documented deviations or readings):

* the weights' optimizer is Adam (``weight_optimizer=adam``, default; ``sgd`` available) with its
  own learning rate ``weight_lr`` (default 0.025) — the paper trains w with the network's optimizer;
  mtlbench's default network optimizer is Adam, so the default matches it without coupling the two
  learning rates. Adam's first step moves each w_i by ≈ weight_lr · sign(∂L_grad/∂w_i).
* before renormalising, w is clamped to at least ``WEIGHT_FLOOR`` (1e-6 · n) so that a weight never
  reaches 0 or turns negative (the paper does not say what happens then).
* L_i(0): this run's first-step losses (``initial=first_step``), or the theoretical value at zero
  outputs (``initial=derived``: log K, E||y||²/d, via ``TaskSpec.derived_init_loss``). Losses of
  exactly 0 are replaced by ``LOSS_FLOOR`` = 2⁻²³ (``base.floored``; positive ones never are).

Parameters:
    alpha: α ≥ 0, the restoring-force strength (paper: 1.5 on NYUv2, 0.12 on its toy problem).
    weight_lr: learning rate of the weights' optimizer, > 0.
    weight_optimizer: ``adam`` or ``sgd``.
    params: where the gradient norms are taken: ``last_shared`` (default, the paper's W),
        ``shared`` or ``representation``. Sets ``gradient_source``.
    initial: ``first_step`` or ``derived``.

State (checkpointed): w [n] (float64), the weights' optimizer state, L(0) [n], tensors/numbers only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import (
    GRADIENT_SOURCES,
    GradientStats,
    GradientWeighting,
    SetupContext,
    check_choice,
    check_real,
    floored,
    reference_losses,
)

#: Per task, the weights are clamped to at least this times n before renormalising to Σ w = n.
WEIGHT_FLOOR = 1e-6


class GradNorm(GradientWeighting):
    """Learned weights that balance the tasks' weighted gradient norms at the last shared layer."""

    def __init__(self, *, alpha: float = 1.5, weight_lr: float = 0.025,
                 weight_optimizer: str = "adam", params: str = "last_shared",
                 initial: str = "first_step") -> None:
        self.alpha = check_real("alpha", alpha)
        if self.alpha < 0:
            raise ConfigError(f"Parameter `alpha` must be >= 0. Found `alpha = {alpha}`.")
        self.weight_lr = check_real("weight_lr", weight_lr)
        if self.weight_lr <= 0:
            raise ConfigError(
                f"Parameter `weight_lr` must be > 0. Found `weight_lr = {weight_lr}`."
            )
        self.weight_optimizer = check_choice("weight_optimizer", weight_optimizer, ("adam", "sgd"))
        self.gradient_source = check_choice("params", params, GRADIENT_SOURCES)
        self.initial = check_choice("initial", initial, ("first_step", "derived"))
        self.w: Tensor | None = None
        self.initial_losses: Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, ctx: SetupContext) -> None:
        if self.initial == "derived":
            values = [t.derived_init_loss(ctx.train_targets[t.name]) for t in ctx.tasks]
            self.initial_losses = reference_losses(values, ctx.tasks, "derived initial loss")

    def _init_weights(self, n: int, device: torch.device) -> None:
        self.w = torch.ones(n, dtype=torch.float64, device=device)
        if self.weight_optimizer == "adam":
            self.optimizer = torch.optim.Adam([self.w], lr=self.weight_lr)
        else:
            self.optimizer = torch.optim.SGD([self.w], lr=self.weight_lr)

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        """Return w(t) [n] for this step's model update, then update w to w(t+1).

        ``losses``: L_i(t) [n]; ``grads.norms``: ||∇_W L_i|| [n].
        """
        assert grads is not None, "gradnorm needs gradient statistics"
        n = losses.numel()
        if self.w is None:
            self._init_weights(n, losses.device)
        assert self.w is not None and self.optimizer is not None
        current = self.w.detach().clone()
        loss = floored(losses.detach()).double()
        if self.initial_losses is None:
            self.initial_losses = loss.clone()
        self.update(loss, grads.norms.detach().double().to(self.w.device))
        return current.to(device=losses.device, dtype=losses.dtype)

    @torch.no_grad()
    def update(self, losses: Tensor, norms: Tensor) -> None:
        """One optimizer step of w on L_grad (target held constant), then clamp and renormalise."""
        assert self.w is not None and self.optimizer is not None
        assert self.initial_losses is not None
        n = self.w.numel()
        ratio = losses / floored(self.initial_losses.to(losses.device))
        r = ratio / ratio.mean()
        g = self.w * norms
        target = g.mean() * r.pow(self.alpha)
        self.w.grad = torch.sign(g - target) * norms
        self.optimizer.step()
        self.w.grad = None
        self.w.clamp_(min=WEIGHT_FLOOR * n)
        self.w.mul_(n / self.w.sum())

    def state_dict(self) -> dict[str, Any]:
        return {
            "w": self.w,
            "initial_losses": self.initial_losses,
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial_losses = state.get("initial_losses")
        w = state.get("w")
        if w is None:  # (before the first step)
            self.w = self.optimizer = None
            return
        self._init_weights(w.numel(), w.device)
        assert self.w is not None and self.optimizer is not None
        with torch.no_grad():
            self.w.copy_(w)
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def __repr__(self) -> str:
        w = None if self.w is None else [round(v, 4) for v in self.w.tolist()]
        return f"GradNorm(alpha={self.alpha}, weight_lr={self.weight_lr}, w={w})"

