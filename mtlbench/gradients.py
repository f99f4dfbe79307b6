"""Per-task gradient statistics, computed by the loop when a strategy declares it needs them.

The model is z = backbone(x), y_t = head_t(z). The loop runs the heads on per-task *aliases* z_t
of z (``z.view_as(z)``, no copy, see :func:`split_forward`). Because L_t depends on z only through
z_t, one ordinary backward of Σ_t L_t to (z_1, …, z_n) yields every ∂L_t/∂z at once, through the
(small) heads only and without ``vmap``. Then, per ``gradient_source``:

* ``representation``: statistics of ∂L_i/∂z themselves (the MGDA-UB trick; approximate, near free).
  The loop then applies the update by one ordinary backward of Σ w_i L_i.
* ``last_shared``: one batched vector-Jacobian product (``is_grads_batched``) from z to the last
  shared layer's parameters only; the update again by one backward of Σ w_i L_i.
* ``shared``: one batched vector-Jacobian product from z to every backbone parameter (n backward
  passes' worth of arithmetic in one call, no Python loop over tasks). The per-task gradients are
  kept, so the loop forms the update Σ_i w_i g_i from them (one ``tensordot`` per parameter)
  instead of running another backward through the backbone.

Gramians are accumulated parameter by parameter (no concatenation into an [n, P] matrix).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtlbench.strategies.base import GradientStats


@dataclass
class TaskGradients:
    """Per-task gradients of one step.

    Attributes:
        z: the shared representation the gradients were taken at, [B, D].
        representation: ∂L_i/∂z, shape [n, B, D].
        params: the parameters of the chosen source (empty for ``representation``).
        per_param: for each of ``params``, the stacked per-task gradients [n, *p.shape].
        stats: norms and Gramian of the per-task gradients over the chosen source.
        covers_shared: True when ``params`` are all the shared parameters
            (``gradient_source=shared``), i.e. the update Σ w_i g_i can be formed from
            ``per_param`` without another backward.
    """

    z: Tensor
    representation: Tensor
    params: list[nn.Parameter]
    per_param: list[Tensor]
    stats: GradientStats
    covers_shared: bool = False


def split_forward(backbone: nn.Module, heads: Mapping[str, nn.Module], x: Tensor,
                  names: list[str]) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
    """Forward pass with one alias of z per task: returns ``z``, the aliases ``[z_t]`` (in the
    order of ``names``) and ``{name: head_name(z_name)}``. Numerically identical to ``model(x)``."""
    z = backbone(x)
    aliases = [z.view_as(z) for _ in names]
    return z, aliases, {name: heads[name](zt) for name, zt in zip(names, aliases, strict=True)}


def representation_gradients(losses: Tensor, aliases: list[Tensor]) -> Tensor:
    """∂L_i/∂z for every task i, shape [n, *z.shape]: one ordinary backward of Σ_i L_i through the
    heads to the per-task aliases z_i of z (L_i depends on z only through z_i)."""
    grads = torch.autograd.grad(losses.sum(), aliases, retain_graph=True, allow_unused=True)
    return torch.stack([torch.zeros_like(a) if g is None else g
                        for a, g in zip(aliases, grads, strict=True)])


def parameter_gradients(z: Tensor, grad_z: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    """Per-task gradients on ``params`` [n, *p.shape] from ∂L_i/∂z [n, *z.shape] by one batched VJP
    through z (``is_grads_batched``: vmap over the backward; no Python loop over tasks)."""
    grads = torch.autograd.grad(z, params, grad_outputs=grad_z, is_grads_batched=True,
                                retain_graph=True, allow_unused=True)
    return [torch.zeros((grad_z.shape[0], *p.shape), dtype=p.dtype, device=p.device) if g is None
            else g for p, g in zip(params, grads, strict=True)]


def gramian(per_param: list[Tensor]) -> Tensor:
    """G_ij = g_i · g_j summed over parameters, without concatenating them. Shape [n, n]."""
    total = None
    for g in per_param:
        flat = g.reshape(g.shape[0], -1)
        total = flat @ flat.T if total is None else torch.addmm(total, flat, flat.T)
    assert total is not None, "no gradients"
    return total


def stats_from_gramian(gram: Tensor) -> GradientStats:
    """Norms ||g_i|| = sqrt(G_ii) (clamped at 0 against round-off) and the Gramian itself."""
    return GradientStats(norms=gram.diagonal().clamp_min(0).sqrt(), gramian=gram)


def task_gradients(losses: Tensor, z: Tensor, aliases: list[Tensor], params: list[nn.Parameter],
                   covers_shared: bool = False) -> TaskGradients:
    """Per-task gradients over ``params`` (an empty list means: over the representation z).

    Args:
        losses: task losses [n] (attached to the graph).
        z: the representation [B, D]; ``aliases``: its per-task aliases from :func:`split_forward`.
        params: parameters to take per-task gradients over; [] for the representation.
        covers_shared: whether ``params`` are all of the shared parameters (see
            :class:`TaskGradients`).
    """
    grad_z = representation_gradients(losses, aliases)
    if not params:
        return TaskGradients(z, grad_z, [], [], stats_from_gramian(gramian([grad_z])))
    per_param = parameter_gradients(z, grad_z, params)
    return TaskGradients(z, grad_z, params, per_param, stats_from_gramian(gramian(per_param)),
                         covers_shared)


def combine(weights: Tensor, per_param: list[Tensor]) -> list[Tensor]:
    """Σ_i w_i g_i for each parameter, from per-task gradients [n, *p.shape]; weights [n]."""
    return [torch.tensordot(weights.to(g.dtype), g, dims=1) for g in per_param]


def cosines(gram: Tensor, eps: float = 1e-30) -> Tensor:
    """Pairwise cosine similarities G_ij / (||g_i|| ||g_j||) from a Gramian [n, n]."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    return gram / (norms[:, None] * norms[None, :]).clamp_min(eps)
