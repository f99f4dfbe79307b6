"""Shared adapter for the Gramian-side peer methods (MGDA, UPGrad, DualProj, PCGrad, IMTL-G,
CAGrad, Aligned-MTL, FairGrad): a torchjd ``Weighting`` applied to the loop's Gramian.

The loop hands a gradient-side strategy ``GradientStats`` with the Gramian G_ij = g_i · g_j [n, n]
(float64) of the per-task gradients g_i over ``params`` (``shared``, ``last_shared``, or
``representation``: the ∂L_i/∂z at the representation, which gives the methods' "-UB" upper-bound
variants as in MGDA-UB). Every method below is a function w = f(G) [n]; the loop applies
Σ_i w_i g_i to the shared parameters and w_i ∇L_i to head i. The losses are never read, so every
method is shift invariant (``shift_invariant = True``).

``normalize`` (default false): unit-normalize the task gradients before weighting. With
D = diag(||g_i||) the method sees the cosine matrix

    C = D⁻¹ G D⁻¹   (C_ij = cos(g_i, g_j); a zero gradient stays zero: its row is 0)

and returns w' = f(C) for the unit gradients u_i = g_i / ||g_i||; the weights applied to the
*original* gradients are w_i = w'_i / ||g_i||, so the shared update is Σ_i w'_i g_i / ||g_i|| and
head i receives w'_i ∇L_i / ||g_i|| (as ``gradnorm_ideal`` scales it). A task whose gradient
is exactly 0 keeps w_i = w'_i (as if its norm were 1; it adds nothing to the shared update).
Scaling one task's loss by λ > 0 leaves C, hence w' and the whole update, unchanged: with
``normalize`` every method is scale invariant (``scale_invariant = True``). Without it the claim
is per method.

Numerics: the n × n Gramian is copied to the CPU once per step (torchjd's solvers — quadprog,
cvxpy, scipy — run on numpy; the rest is n × n work) and weighed in float64; the weights come back
in the losses' dtype and device (``base.finite_weights``). Before calling the weighting, G is
divided by its trace s = Σ_i ||g_i||² and the weights multiplied by s^``degree`` (the weighting's
homogeneity degree, w(sG) = s^degree · w(G): 0 for all but FairGrad). That is exact in exact
arithmetic and makes torchjd's absolute thresholds relative to the gradients' size: without it
UPGrad and DualProj silently return the mean weights and CAGrad all-zero weights once
tr(G) < 1e-4 (their ``norm_eps``), which small gradients late in training reach. Methods whose
weights transform as w(DGD) ∝ D⁻¹ w(G) (IMTL-G, FairGrad with α = 1) are always computed from C
(``via_cosines``), which is exact too and far better conditioned when the norms span many orders
of magnitude.

``heads``: ``weighted`` (head i receives w_i ∇L_i) or ``unweighted`` (its own ∇L_i, as LibMTL
and torchjd's ``mtl_backward`` train the task-specific parameters); each method's YAML picks its
authors' convention. Scale invariance of the whole update needs ``weighted`` heads.

``cr_mogm`` (α in [0, 1), default 0: off): the CR-MOGM wrapper of Zhou et al. (NeurIPS 2022, "On
the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond",
https://arxiv.org/abs/2210.01346), a moving average of the method's weights,
λ_t = α λ_{t−1} + (1 − α) λ̂_t (λ_0 = λ̂_1), which they prove makes stochastic MOGM methods converge;
λ is the method's weight vector on the gradients it sees (g_i; the unit u_i with ``normalize``),
kept in checkpoints.

``loss_weighting``: a loss-side strategy stacked under the method (``base.GradientWeighting``).

``deterministic``: false for methods that draw random numbers (PCGrad's projection order); those
opt out of exact equivariance checks (two calls on the same Gramian may differ).

A solver that torchjd cannot import (optional dependencies) is reported when the strategy is built,
as one line: ``strategy=<name> needs <package>: pip install 'mtlbench[solvers]'``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor

from mtlbench.errors import ConfigError
from mtlbench.strategies.base import (
    GRADIENT_SOURCES,
    GradientStats,
    GradientWeighting,
    Strategy,
    check_bool,
    check_choice,
    check_heads,
    check_real,
    finite_weights,
    stacked,
)

F64 = torch.float64
INSTALL = "pip install 'mtlbench[solvers]'"


def cosine_matrix(gramian: Tensor) -> tuple[Tensor, Tensor]:
    """``(C, inv)``: C = D⁻¹ G D⁻¹ [n, n] with unit diagonal (0 for a zero gradient) and
    inv_i = 1 / ||g_i|| [n] (0 for a zero gradient), from a float64 Gramian [n, n]."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    nonzero = norms > 0
    inv = torch.where(nonzero, norms.reciprocal(), torch.zeros_like(norms))
    cos = (inv[:, None] * gramian * inv[None, :]).clamp_(-1.0, 1.0)
    cos.diagonal().copy_(nonzero.to(cos.dtype))
    return cos, inv


class GramianWeighting(GradientWeighting):
    """Base class: w = f(G) by a torchjd weighting (see the module docstring).

    Subclasses set ``name`` and ``solver`` (the package named when torchjd cannot import its
    solver), set their hyperparameters, call ``super().__init__(params=..., normalize=...)`` and
    implement :meth:`build`; they may override :meth:`solve` (w from a float64 CPU Gramian).
    """

    shift_invariant = True  # the losses are never read
    #: Homogeneity degree p of the weighting: w(s G) = s^p w(G) for s > 0.
    degree: float = 0.0
    #: Compute from the cosine matrix C even without ``normalize`` (for methods whose direction is
    #: invariant to per-task gradient scales; exact, better conditioned).
    via_cosines: bool = False
    #: The strategy's config name and the package its torchjd solver needs ("" if none).
    name: str = ""
    solver: str = ""

    def __init__(self, *, params: str = "shared", normalize: bool = False,
                 heads: str = "weighted", cr_mogm: float = 0.0,
                 loss_weighting: Strategy | None = None) -> None:
        self.gradient_source = check_choice("params", params, GRADIENT_SOURCES)
        self.normalize = check_bool("normalize", normalize)
        self.heads = check_heads(heads)
        self.cr_mogm = check_real("cr_mogm", cr_mogm)
        if not 0.0 <= self.cr_mogm < 1.0:
            raise ConfigError(
                f"Parameter `cr_mogm` must be in [0, 1). Found `cr_mogm = {cr_mogm}`."
            )
        self.previous: Tensor | None = None  # CR-MOGM's λ_{t-1}
        if self.normalize:  # the whole update keeps its direction only if the heads scale too
            self.scale_invariant = self.heads == "weighted"
        self.loss_weighting = stacked(loss_weighting, self)
        if self.solver:  # imported now: torchjd checks only that it is installed, and a broken
            try:  # install would fail at the first step's solve, with a traceback
                importlib.import_module(self.solver)
            except Exception as error:  # noqa: BLE001 - any import failure: one line
                raise ConfigError(f"strategy={self.name} needs {self.solver}, which does not "
                                  f"import ({type(error).__name__}: {error}): {INSTALL}") from None
        try:
            self.weighting = self.build()
        except ImportError:
            raise ConfigError(
                f"strategy={self.name} needs {self.solver or 'torchjd'}: {INSTALL}"
            ) from None

    def build(self) -> Any:
        """The torchjd weighting (a callable [n, n] float64 → [n]); may raise ImportError."""
        raise NotImplementedError

    def solve(self, gramian: Tensor) -> Tensor:
        """w = f(G) [n] from a float64 CPU Gramian [n, n], through the weighting called on G / tr G
        (weights times tr(G)^degree; a zero Gramian is passed as is)."""
        trace = gramian.diagonal().sum()
        if not (torch.isfinite(trace) and trace > 0):
            return self.weighting(gramian).to(F64)
        w = self.weighting(gramian / trace).to(F64)
        return w if self.degree == 0 else w * trace ** self.degree

    def gramian_weights(self, gramian: Tensor) -> Tensor:
        """Weights on the original gradients [n] (float64) from the float64 CPU Gramian [n, n]:
        f(G), or f(C) / ||g_i|| with ``normalize`` or ``via_cosines``."""
        if not (self.normalize or self.via_cosines):
            return self.solve(gramian)
        cos, inv = cosine_matrix(gramian)
        return self.solve(cos) * torch.where(inv > 0, inv, torch.ones_like(inv))

    def smoothed(self, w: Tensor) -> Tensor:
        """CR-MOGM: α λ_{t−1} + (1 − α) λ̂_t (λ̂_t = ``w`` [n]), remembered; ``w`` if α = 0."""
        if self.cr_mogm == 0.0:
            return w
        if self.previous is not None and self.previous.shape == w.shape:
            w = self.cr_mogm * self.previous.to(w) + (1.0 - self.cr_mogm) * w
        self.previous = w.clone()
        return w

    def state_dict(self) -> dict[str, Any]:
        return {} if self.previous is None else {"cr_mogm_previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = state.get("cr_mogm_previous")

    def weights(self, losses: Tensor, grads: GradientStats | None = None) -> Tensor:
        """w [n] in the losses' dtype and device from ``grads.gramian`` [n, n] (any float dtype
        and device); ``losses`` [n] are not read."""
        assert grads is not None, f"{self.name} needs gradient statistics"
        gramian = grads.gramian.detach().to(device="cpu", dtype=F64)
        if not bool(torch.isfinite(gramian).all()):  # a non-finite gradient: no solver can weigh
            return torch.full_like(losses, float("nan"))  # it; the loop reports the step
        gramian = 0.5 * (gramian + gramian.T)  # exactly symmetric for the solvers
        w = self.gramian_weights(gramian)
        if self.cr_mogm:  # smooth the weights on the gradients the method sees (g_i, or u_i)
            norms = gramian.diagonal().clamp_min(0).sqrt()
            scale = torch.where(norms > 0, norms, torch.ones_like(norms)) if self.normalize \
                else torch.ones_like(norms)
            w = self.smoothed(w * scale) / scale
        return finite_weights(w, losses).to(losses.device)

