"""Per-task gradient statistics, computed by the loop when a strategy declares it needs them.

The model is z = backbone(x), y_t = head_t(z). Every source starts from the per-task gradients of the
representation, ∂L_i/∂z (one batched backward through the heads only, which is cheap), then:

* ``representation``: statistics of ∂L_i/∂z themselves (the MGDA-UB trick; near free).
* ``last_shared``: one batched vector-Jacobian product from z to the last shared layer's parameters.
* ``shared``: one batched vector-Jacobian product from z to every backbone parameter (n backward
  passes' worth of arithmetic, in one call, with no Python loop over tasks or parameters).

Per-task gradients on the shared parameters are kept, so the loop can form the update Σ_i w_i g_i
from them instead of running another backward through the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtlbench.strategies.base import GradientStats


@dataclass
class TaskGradients:
    """Per-task gradients of one step.

    Attributes:
        z: the shared representation the gradients were taken at.
        representation: ∂L_i/∂z, shape [n, *z.shape].
        params: the parameters of the chosen source (empty for ``representation``).
        per_param: for each of ``params``, the stacked per-task gradients [n, *p.shape].
        stats: norms and Gramian of the per-task gradients over the chosen source.
    """

    z: Tensor
    representation: Tensor
    params: list[nn.Parameter]
    per_param: list[Tensor]
    stats: GradientStats


def representation_gradients(losses: Tensor, z: Tensor) -> Tensor:
    """∂L_i/∂z for every task i, shape [n, *z.shape], by one batched backward through the heads."""
    n = losses.numel()
    eye = torch.eye(n, dtype=losses.dtype, device=losses.device)
    (grad_z,) = torch.autograd.grad(losses, z, grad_outputs=eye, is_grads_batched=True,
                                    retain_graph=True)
    return grad_z


def parameter_gradients(z: Tensor, grad_z: Tensor, params: list[nn.Parameter]) -> list[Tensor]:
    """Per-task gradients on ``params`` [n, *p.shape] from ∂L_i/∂z by one batched VJP through z."""
    grads = torch.autograd.grad(z, params, grad_outputs=grad_z, is_grads_batched=True,
                                retain_graph=True, allow_unused=True)
    return [torch.zeros((grad_z.shape[0], *p.shape), dtype=p.dtype, device=p.device) if g is None
            else g for p, g in zip(params, grads, strict=True)]


def gramian(per_param: list[Tensor]) -> Tensor:
    """G_ij = g_i · g_j summed over parameters, without concatenating them. Shape [n, n]."""
    total = None
    for g in per_param:
        flat = g.reshape(g.shape[0], -1)
        part = flat @ flat.T
        total = part if total is None else total + part
    assert total is not None, "no gradients"
    return total


def stats_from_gramian(gram: Tensor) -> GradientStats:
    return GradientStats(norms=gram.diagonal().clamp_min(0).sqrt(), gramian=gram)


def task_gradients(losses: Tensor, z: Tensor, params: list[nn.Parameter]) -> TaskGradients:
    """Per-task gradients over ``params`` (an empty list means: over the representation z)."""
    grad_z = representation_gradients(losses, z)
    if not params:
        return TaskGradients(z, grad_z, [], [], stats_from_gramian(gramian([grad_z])))
    per_param = parameter_gradients(z, grad_z, params)
    return TaskGradients(z, grad_z, params, per_param, stats_from_gramian(gramian(per_param)))


def cosines(gram: Tensor, eps: float = 1e-30) -> Tensor:
    """Pairwise cosine similarities G_ij / (||g_i|| ||g_j||) from a Gramian [n, n]."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    return gram / (norms[:, None] * norms[None, :]).clamp_min(eps)
