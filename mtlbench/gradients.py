"""Per-task gradient statistics, computed by the loop when a strategy declares it needs them.

The model is z = backbone(x), y_t = head_t(z). The loop runs the heads on per-task *aliases* z_t
of z (``z.view_as(z)``, no copy, see :func:`split_forward`). Because L_t depends on z only through
z_t, and head t's parameters only through L_t, one ordinary backward of Σ_t L_t through the (small)
heads yields every ∂L_t/∂z *and* every head's own gradient ∇_{head_t} L_t at once, without ``vmap``.
Then, per ``gradient_source``:

* ``representation``: statistics of ∂L_i/∂z themselves (the MGDA-UB trick; approximate, near free).
* ``last_shared``: one batched vector-Jacobian product (``is_grads_batched``) from z to the last
  shared layer's parameters only.
* ``shared``: one batched vector-Jacobian product from z to every backbone parameter (n backward
  passes' worth of arithmetic in one call, no Python loop over tasks).

The update of Σ w_i L_i is then assembled without repeating work (:func:`apply_weighted`): head t
gets w_t ∇_{head_t} L_t, parameters with per-task gradients get Σ_i w_i g_i, and only the remaining
backbone parameters (none for ``shared``) get one backward from z with ∂/∂z = Σ_i w_i ∂L_i/∂z.

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
        head_grads: for each task, the gradients of L_i on its own head's parameters (unweighted).
        covers_shared: True when ``params`` are all the shared parameters
            (``gradient_source=shared``), i.e. the update Σ w_i g_i can be formed from
            ``per_param`` without another backward.
    """

    z: Tensor
    representation: Tensor
    params: list[nn.Parameter]
    per_param: list[Tensor]
    stats: GradientStats
    head_grads: list[list[Tensor]]
    covers_shared: bool = False


def split_forward(backbone: nn.Module, heads: Mapping[str, nn.Module], x: Tensor,
                  names: list[str]) -> tuple[Tensor, list[Tensor], dict[str, Tensor]]:
    """Forward pass with one alias of z per task: returns ``z``, the aliases ``[z_t]`` (in the
    order of ``names``) and ``{name: head_name(z_name)}``. Numerically identical to ``model(x)``."""
    z = backbone(x)
    aliases = [z.view_as(z) for _ in names]
    return z, aliases, {name: heads[name](zt) for name, zt in zip(names, aliases, strict=True)}


def _or_zeros(grads: tuple[Tensor | None, ...], like: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(t) if g is None else g for t, g in zip(like, grads, strict=True)]


def head_backward(losses: Tensor, aliases: list[Tensor],
                  heads: list[list[nn.Parameter]]) -> tuple[Tensor, list[list[Tensor]]]:
    """One ordinary backward of Σ_i L_i through the heads only. Returns ∂L_i/∂z for every task,
    shape [n, *z.shape] (L_i depends on z only through its alias z_i), and for every task the
    gradients of L_i on its own head's parameters ``heads[i]``."""
    flat = [p for params in heads for p in params]
    grads = _or_zeros(torch.autograd.grad(losses.sum(), [*aliases, *flat], retain_graph=True,
                                          allow_unused=True), [*aliases, *flat])
    head_grads, at = [], len(aliases)
    for params in heads:
        head_grads.append(grads[at:at + len(params)])
        at += len(params)
    return torch.stack(grads[:len(aliases)]), head_grads


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
                   covers_shared: bool = False,
                   heads: list[list[nn.Parameter]] | None = None) -> TaskGradients:
    """Per-task gradients over ``params`` (an empty list means: over the representation z).

    Args:
        losses: task losses [n] (attached to the graph).
        z: the representation [B, D]; ``aliases``: its per-task aliases from :func:`split_forward`.
        params: parameters to take per-task gradients over; [] for the representation.
        covers_shared: whether ``params`` are all of the shared parameters (see
            :class:`TaskGradients`).
        heads: each task's head parameters (in task order), whose own gradients are kept.
    """
    grad_z, head_grads = head_backward(losses, aliases, heads or [[] for _ in aliases])
    if not params:
        return TaskGradients(z, grad_z, [], [], stats_from_gramian(gramian([grad_z])),
                             head_grads)
    per_param = parameter_gradients(z, grad_z, params)
    return TaskGradients(z, grad_z, params, per_param, stats_from_gramian(gramian(per_param)),
                         head_grads, covers_shared)


def apply_weighted(grads: TaskGradients, weights: Tensor, heads: list[list[nn.Parameter]],
                   shared: list[nn.Parameter], shared_update: list[Tensor] | None = None) -> None:
    """Set ``.grad`` to the gradient of Σ_i w_i L_i from the per-task gradients, without repeating
    work: head i gets w_i ∇_{head_i} L_i; ``grads.params`` get Σ_i w_i g_i (or ``shared_update``);
    the other ``shared`` parameters get one backward from z with ∂/∂z = Σ_i w_i ∂L_i/∂z (the
    weight-gradient products of ``grads.params`` are skipped there: autograd computes only what
    the requested inputs need)."""
    for w, params, task_grads in zip(weights.tolist(), heads, grads.head_grads, strict=True):
        for p, g in zip(params, task_grads, strict=True):
            p.grad = g.mul_(w)  # g is this step's own fresh gradient tensor
    if shared_update is None:
        shared_update = combine(weights, grads.per_param)
    for p, g in zip(grads.params, shared_update, strict=True):
        p.grad = g
    done = {id(p) for p in grads.params}
    rest = [p for p in shared if id(p) not in done]
    if rest:
        grad_z = torch.tensordot(weights.to(grads.representation.dtype), grads.representation,
                                 dims=1)
        for p, g in zip(rest, _or_zeros(torch.autograd.grad(grads.z, rest, grad_outputs=grad_z,
                                                            allow_unused=True), rest), strict=True):
            p.grad = g


def combine(weights: Tensor, per_param: list[Tensor]) -> list[Tensor]:
    """Σ_i w_i g_i for each parameter, from per-task gradients [n, *p.shape]; weights [n]."""
    return [torch.tensordot(weights.to(g.dtype), g, dims=1) for g in per_param]


def cosines(gram: Tensor, eps: float = 1e-30) -> Tensor:
    """Pairwise cosine similarities G_ij / (||g_i|| ||g_j||) from a Gramian [n, n]."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    return gram / (norms[:, None] * norms[None, :]).clamp_min(eps)
