"""FAMO: fast adaptive multitask optimization — task logits ξ learned so that every task's log loss
falls at the same rate, from the losses alone, O(1) per step (Liu, Liu, Stone & Liu, NeurIPS 2023,
https://arxiv.org/abs/2306.03792), in the form LibMTL trains it.

With z = softmax(ξ), D_i = L_i − m_i + ε (m_i the task's minimum loss, 0 here; ε = 1e-8) and
c = Σ_j z_j / D_j (held constant), the network minimizes

    L = Σ_i z_i log D_i / c,    w_i = ∂L/∂L_i = z_i / (c · D_i)   (Σ_i w_i D_i = 1),

and after each applied step ξ takes one step of its own Adam (``lr`` 0.025, weight decay
``gamma`` 1e-3, LibMTL's defaults and the paper's NYUv2 / CelebA / QM9 ones) along ∂z/∂ξᵀ δ, with
δ_i = log D_i(θ_t) − log D_i(θ_{t+1}) on the *same batch* before and after the network's step:
tasks whose log loss fell less than the others' gain weight. As the authors' code
(Cranial-XIX/FAMO) and LibMTL's trainer do, the loop evaluates the batch again after the step, with
no gradient (``losses_after_step``: one more forward pass a step) and hands both losses to
:meth:`after_step_losses`; a skipped step moves nothing. ξ and its optimizer state are the
strategy's checkpointed state.

No invariance claims (z adapts to the losses' decrease; at a fixed ξ, w_i D_i = z_i / c is
scale-invariant but not shift-invariant).

Parameters:
    lr: learning rate of ξ (> 0). gamma: weight decay of ξ (≥ 0). eps: ε (> 0).
Returns weights [n], in the losses' dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtlbench.strategies.base import GradientStats, SetupContext, Strategy, check_positive

#: How this FAMO learns its logits, in its checkpointed state (an older state is refused).
UPDATE = "same_batch"


class FAMO(Strategy):
    """Logits learned from each step's loss decrease on its own batch (see module doc)."""

    losses_after_step = True

    def __init__(self, *, lr: float = 0.025, gamma: float = 1e-3, eps: float = 1e-8) -> None:
        self.logit_lr = check_positive("lr", lr)
        self.gamma = check_positive("gamma", gamma, allow_zero=True)
        self.eps = check_positive("eps", eps)
        self.logits: Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, ctx: SetupContext) -> None:
        self._init(len(ctx.tasks))

    def _init(self, n: int) -> None:
        self.logits = torch.zeros(n, dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.logits], lr=self.logit_lr,
                                          weight_decay=self.gamma)

    def log_d(self, losses: Tensor) -> Tensor:
        return (losses.detach().double().cpu() + self.eps).log()

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        """w_i = z_i / (c D_i) at the current ξ."""
        assert self.logits is not None, "call setup() first"
        log_d = self.log_d(losses)
        z = torch.softmax(self.logits.detach(), dim=0)
        inv_d = torch.exp(-log_d)
        w = z * inv_d / (z * inv_d).sum()
        return w.to(dtype=losses.dtype, device=losses.device)

    def after_step_losses(self, before: Tensor, after: Tensor) -> None:
        """One Adam step of ξ along ∂z/∂ξᵀ δ, δ = log D(before) − log D(after) [n]."""
        assert self.logits is not None and self.optimizer is not None, "call setup() first"
        delta = self.log_d(before) - self.log_d(after)
        with torch.enable_grad():
            z = torch.softmax(self.logits, dim=0)
            (grad,) = torch.autograd.grad(z, self.logits, grad_outputs=delta)
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = grad
        self.optimizer.step()

    def objective(self, losses: Tensor) -> Tensor:
        """Σ_i z_i log D_i / c at the current ξ (no ξ update)."""
        assert self.logits is not None, "call setup() first"
        z = torch.softmax(self.logits.detach(), dim=0).to(losses)
        d = losses + self.eps
        c = (z / d.detach()).sum()
        return (z * d.log()).sum() / c

    def state_dict(self) -> dict[str, Any]:
        assert self.logits is not None and self.optimizer is not None, "call setup() first"
        return {"logits": self.logits.detach().clone(), "optimizer": self.optimizer.state_dict(),
                "update": UPDATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("update") != UPDATE:
            raise ValueError("this FAMO state learned its logits from consecutive batches (before "
                             "FAMO was fixed to the same batch before and after each step)")
        self._init(state["logits"].numel())
        assert self.logits is not None and self.optimizer is not None
        with torch.no_grad():
            self.logits.copy_(state["logits"])
        self.optimizer.load_state_dict(state["optimizer"])
