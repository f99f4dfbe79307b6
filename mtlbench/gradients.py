"""Per-task gradient statistics, computed by the loop when a strategy declares it needs them.

The forward pass branches per task at one tensor s (:func:`split_forward`): the shared
representation z, or — for ``last_shared`` when the backbone has a ``trunk``/``tail`` around a
``nn.Linear`` last shared layer — that layer's output u. Each task runs on its own *alias* s_t of s
(``s.view_as(s)``, no copy; for u also its own copy of the cheap ``tail``, e.g. a ReLU). Because
L_t depends on s only through s_t, one ordinary backward of Σ_t L_t hands each alias its own
∂L_t/∂s (caught by a hook) and each head its own ∇_{head_t} L_t, without ``vmap``.
:func:`weighted_backward` is that single backward, re-weighted where the gradient reaches s: a hook
on s (which runs once every ∂L_t/∂s is in, before the gradient enters the backbone) computes, per
``gradient_source``,

* ``representation``: statistics of the ∂L_i/∂z themselves (the MGDA-UB trick; near free);
* ``last_shared``: statistics of the layer's per-task gradients from its input A and the
  ∂L_i/∂u (:func:`linear_gramian`: either the n gradients D_iᵀA, or, when cheaper, the B×B kernel
  A Aᵀ without forming them); without ``trunk``/``tail`` a batched VJP from z instead;
* ``shared``: per-task gradients on every backbone parameter, by n vector-Jacobian products from z
  (:class:`GradientEngine`: a loop of ``autograd.grad`` calls, :func:`shared_by_loop`, or one
  batched call; for a separable weighting w_i = c · h_i the loop instead adds up h_i g_i as each
  task's gradient arrives, :func:`shared_by_running_sum`), where for each
  ``nn.Linear`` whose batch is small against its width the products stop at the layer's output
  gradients D_i and its Gramian block comes from the B×B kernel of its input (no per-task weight
  gradient formed; :func:`linear_gramian`), chosen per layer by a multiply-add count,

asks the strategy for its :class:`Decision` (weights w_i, head weights, or a whole shared update),
and sends Σ_i w_i ∂L_i/∂s on into the backbone — so every
backbone parameter receives Σ_i w_i ∇L_i from the same backward (parameters whose per-task gradients
are already at hand get Σ_i w_i g_i directly, and the backward skips their weight-gradient product).
For ``shared`` the backward stops at z (the update Σ_i w_i g_i, or the strategy's own, is formed
from the per-task gradients: no second pass through the backbone). Heads receive ∇L_i during the
backward and are scaled by w_i afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

from mtlbench.stats import (
    FLOAT32_CHUNK,
    GradientStats,
    float32_is_safe,
    in_float32_safe_range,
    wide,
)


@dataclass(frozen=True)
class GradientEngine:
    """How the per-task gradients over the shared parameters are computed
    (``trainer.gradient_engine``, ``trainer.linear_gramian``); every choice is exact, they differ
    in time, memory and float rounding only.

    Attributes:
        traversal: ``loop``: one ``autograd.grad`` of L_i per task (:func:`shared_by_loop` for
            ``params=shared``, or :func:`shared_by_running_sum` for a separable weighting; from z
            for other parameter sets); ``batched``: one call with
            ``is_grads_batched`` (vmap over the backward) from z; ``auto``: ``loop`` on the CPU,
            where it was as fast (within 2 %) or faster on the models measured and held less
            memory on the small ones (``scripts/bench_peers.py``),
            ``batched`` on accelerators (one kernel launch per operation for all n tasks; not
            measured here, no GPU).
        linear: for each ``nn.Linear`` of the backbone (called once per forward, all its
            parameters shared and trained), and for ``last_shared``'s split layer: ``direct``
            (per-task weight gradients D_iᵀA), ``kernel`` (Gramian block ⟨D_i, (AAᵀ + 11ᵀ) D_j⟩
            and update (Σ_i w_i D_i)ᵀA, no per-task weight gradient), or ``auto``: whichever
            :func:`linear_method` counts fewer multiply-adds for. Only for Gramian weightings (a
            combiner receives every gradient).
    """

    traversal: str = "auto"
    linear: str = "auto"

    def resolved(self, device: torch.device) -> GradientEngine:
        """``auto`` traversal made concrete for ``device``."""
        if self.traversal != "auto":
            return self
        return GradientEngine("loop" if device.type == "cpu" else "batched", self.linear)


@dataclass
class LinearCall:
    """One call of an ``nn.Linear`` of the backbone in a forward pass: its input A, output u and
    their versions then (an in-place change afterwards makes the call unusable for the kernel)."""

    name: str
    module: nn.Linear
    input: Tensor
    output: Tensor
    versions: tuple[int, int]

    def unchanged(self) -> bool:
        return (self.input._version, self.output._version) == self.versions


@dataclass
class BranchedForward:
    """A forward pass branched per task at ``at`` (z, or the last shared layer's output u).

    Attributes:
        at: the branching tensor s, shape [B, ...].
        aliases: one alias of ``at`` per task (task order).
        outputs: each task's head output.
        layer_input: the last shared layer's input A when ``at`` is its output, else None.
        linear_calls: with ``capture_linear``, the backbone's ``nn.Linear`` layers called exactly
            once in this forward (candidates of :attr:`GradientEngine.linear`).
    """

    at: Tensor
    aliases: list[Tensor]
    outputs: dict[str, Tensor]
    layer_input: Tensor | None = None
    linear_calls: list[LinearCall] = field(default_factory=list)


@dataclass
class TaskGradients:
    """Per-task gradients of one step, as the weighing callback of :func:`weighted_backward` sees
    them.

    Attributes:
        at_branch: ∂L_i/∂s at the branching tensor s, shape [n, *s.shape] (for
            ``representation`` these are the gradients the statistics describe).
        per_param: for each of the requested parameters, the stacked per-task gradients
            [n, *p.shape] (empty for ``representation``, and for ``last_shared`` when the Gramian
            came from the B×B kernel).
        stats: norms and Gramian of the per-task gradients over the source.
        kernel_layers: the ``nn.Linear`` layers whose Gramian block came from the B×B kernel
            (``per_param`` is then empty).
    """

    at_branch: Tensor
    per_param: list[Tensor]
    stats: GradientStats
    kernel_layers: list[str] = field(default_factory=list)


@dataclass
class Decision:
    """What the strategy decided from one step's per-task gradients.

    Attributes:
        weights: [n], the coefficients of the shared update Σ_i w_i g_i (logged).
        head_weights: [n] factors of the heads' gradients ∇L_i, or None to leave them.
        update: the shared update, one tensor per parameter (only when the parameters cover the
            whole backbone), replacing Σ_i w_i g_i; None for Σ_i w_i g_i.
    """

    weights: Tensor
    head_weights: Tensor | None
    update: list[Tensor] | None = None


#: ``weigh(grads)`` → the strategy's :class:`Decision`.
Weigh = Callable[[TaskGradients], Decision]


@dataclass(frozen=True)
class SeparableWeigh:
    """A weighting of the form w_i = c · h_i, where h_i depends on task i's own gradient norm
    alone and c on all of them (``GradientWeighting.separable``), as :func:`shared_by_running_sum`
    asks for it.

    Attributes:
        own: ``own(tasks, norms)`` → the h_i [k] of the tasks in the slice ``tasks`` from their
            norms ||g_i|| [k], called once their gradients are known (a block of tasks,
            :func:`tasks_per_block`, in task order).
        finish: ``finish(norms [n], h [n])`` → (c, 0-dim, or None for 1; the :class:`Decision`,
            whose weights are c · h), called after the last task.
    """

    own: Callable[[slice, Tensor], Tensor]
    finish: Callable[[Tensor, Tensor], tuple[Tensor | None, Decision]]


def splits_at_last_shared(backbone: nn.Module) -> bool:
    """Whether ``last_shared`` per-task gradients can come from the layer's input and output
    gradients: the backbone has ``trunk``/``tail`` around an ``nn.Linear`` ``last_shared`` whose
    parameters all train (then they are [weight] or [weight, bias])."""
    layer = getattr(backbone, "last_shared", None)
    return (isinstance(layer, nn.Linear) and hasattr(backbone, "trunk")
            and hasattr(backbone, "tail") and all(p.requires_grad for p in layer.parameters()))


def split_forward(backbone: nn.Module, heads: Mapping[str, nn.Module], x: Tensor,
                  names: list[str], at_last_shared: bool = False,
                  capture_linear: bool = False, aliased: bool = True) -> BranchedForward:
    """Forward pass with one alias per task of z = backbone(x) or, with ``at_last_shared``, of
    u = last_shared(trunk(x)) (then z_t = tail(u_t) per task). Numerically identical to
    ``model(x)``. ``capture_linear``: also record the input and output of each ``nn.Linear`` of the
    backbone (forward hooks, removed before returning). ``aliased=False``: every task reads z
    itself (for a caller that needs no per-task ∂L_t/∂z)."""
    if capture_linear and not at_last_shared:
        calls: dict[str, list[LinearCall]] = {}

        def recorder(name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
            def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
                a = inputs[0].detach()  # (shares the version counter) products from A build
                calls.setdefault(name, []).append(  # no graph: the .grad set from them has none
                    LinearCall(name, module, a, output, (a._version, output._version)))
            return record
        handles = [module.register_forward_hook(recorder(name))
                   for name, module in backbone.named_modules() if isinstance(module, nn.Linear)]
        try:
            fwd = split_forward(backbone, heads, x, names, aliased=aliased)
        finally:
            for handle in handles:
                handle.remove()
        fwd.linear_calls = [found[0] for found in calls.values() if len(found) == 1]
        return fwd
    if at_last_shared:
        layer_input = backbone.trunk(x)
        at = backbone.last_shared(layer_input)
        aliases = [at.view_as(at) for _ in names]
        zs = [backbone.tail(alias) for alias in aliases]
    else:
        layer_input, at = None, backbone(x)
        aliases = [at.view_as(at) if aliased else at for _ in names]
        zs = aliases
    outputs = {name: heads[name](z) for name, z in zip(names, zs, strict=True)}
    return BranchedForward(at, aliases, outputs, layer_input)


def task_vjps(z: Tensor, grad_z: Tensor, targets: list[Tensor], traversal: str,
              retain_graph: bool = True) -> list[Tensor]:
    """Per-task gradients on ``targets`` [n, *t.shape] from ∂L_i/∂z [n, *z.shape]: n vector-Jacobian
    products through z, as a Python ``loop`` of ``autograd.grad`` calls (the results stacked) or
    one ``batched`` call (``is_grads_batched``: vmap over the backward). A target z
    does not reach gets zeros. ``retain_graph=False`` frees the graph with the last product."""
    n = grad_z.shape[0]
    if traversal == "batched":
        grads = list(torch.autograd.grad(z, targets, grad_outputs=grad_z, is_grads_batched=True,
                                         retain_graph=retain_graph, allow_unused=True))
    else:
        assert traversal == "loop", traversal
        rows = [list(torch.autograd.grad(z, targets, grad_outputs=grad_z[i], allow_unused=True,
                                         retain_graph=retain_graph or i + 1 < n))
                for i in range(n)]
        grads = []
        for k in range(len(targets)):
            grads.append(None if rows[0][k] is None else torch.stack([row[k] for row in rows]))
            for row in rows:  # each task's copy is freed once stacked
                row[k] = None
    return [torch.zeros((n, *t.shape), dtype=t.dtype, device=t.device) if g is None else g
            for t, g in zip(targets, grads, strict=True)]


def kernel_layers(calls: list[LinearCall], params: list[nn.Parameter], n: int,
                  policy: str) -> list[LinearCall]:
    """The linear layers whose Gramian block and update come from the B×B kernel
    (:attr:`GradientEngine.linear`): layers called once, unchanged in place since, whose
    parameters are all among ``params``; with ``auto``, where :func:`linear_method` says so."""
    if policy == "direct":
        return []
    ids = {id(p) for p in params}
    chosen = []
    for call in calls:
        own = list(call.module.parameters())
        if not (own and all(id(p) in ids for p in own) and call.unchanged()
                and call.output.requires_grad):
            continue
        if policy == "kernel" or linear_method(call.input, n, call.output.shape[-1]) == "kernel":
            chosen.append(call)
    return chosen


def split_by_kernel(calls: list[LinearCall], params: list[nn.Parameter], n: int,
                    policy: str) -> tuple[list[LinearCall], list[nn.Parameter]]:
    """(:func:`kernel_layers`, the other parameters: those that take per-task gradients)."""
    kernel = kernel_layers(calls, params, n, policy)
    in_kernel = {id(p) for call in kernel for p in call.module.parameters()}
    return kernel, [p for p in params if id(p) not in in_kernel]


def linear_update(call: LinearCall, grad_output: Tensor, weights: Tensor) -> list[Tensor]:
    """Σ_i w_i ∇L_i on a linear layer's [weight, (bias)] from its input A and the per-task output
    gradients D_i [n, ..., out]: with D = Σ_i w_i D_i, (Dᵀ A, Dᵀ 1), in the parameters' dtype."""
    return linear_grads(call, weighted_sum(weights, list(grad_output)))


def linear_grads(call: LinearCall, grad_output: Tensor) -> list[Tensor]:
    """A linear layer's [weight, (bias)] gradients (Dᵀ A, Dᵀ 1) from its input A and one output
    gradient D (shaped as its output), in the parameters' dtype."""
    weight = call.module.weight
    a = call.input.reshape(-1, call.input.shape[-1]).to(weight.dtype)
    d = grad_output.reshape(a.shape[0], -1).to(weight.dtype)
    return [d.T @ a] + ([d.sum(0)] if call.module.bias is not None else [])


def linear_gramian(layer_input: Tensor, grad_output: Tensor, bias: bool,
                   method: str) -> tuple[Tensor, list[Tensor]]:
    """Gramian of the per-task gradients of a linear layer u = A Wᵀ + b, from A and ∂L_i/∂u.

    With A [B, in] and D_i = ∂L_i/∂u [B, out] (leading dimensions flattened), task i's gradient is
    (∇_W L_i, ∇_b L_i) = (D_iᵀ A, D_iᵀ 1), so

        G_ij = ⟨D_iᵀA, D_jᵀA⟩ + ⟨D_iᵀ1, D_jᵀ1⟩ = ⟨D_i, K D_j⟩,   K = A Aᵀ (+ 1 1ᵀ with a bias).

    ``direct`` forms the n gradients (n·B·in·out multiply-adds) and returns them; ``kernel`` goes
    through the B×B matrix K (B²·(in + n·out), no gradient formed; pays when B < in, out).
    :func:`linear_method` picks one before the backward (the backward's inputs depend on it).

    Args:
        layer_input: A, shape [..., in]. grad_output: D, shape [n, ..., out].
        bias: whether the layer has a bias.
    Returns:
        ``(gramian [n, n] (float64, or float32 as in :func:`gramian`), per_param)`` with
        per_param = [∇_W [n, out, in], (∇_b [n, out])] (the model's dtype) for ``direct``, [] for
        ``kernel``.
    """
    if method == "kernel":
        return kernel_gramian(input_kernel(layer_input, bias), grad_output), []
    a = _unhalved(layer_input.detach().reshape(-1, layer_input.shape[-1]))
    n, rows, fan_out = grad_output.shape[0], a.shape[0], grad_output.shape[-1]
    d = _unhalved(grad_output.reshape(n, rows, fan_out))
    per_param = [torch.matmul(d.transpose(1, 2), a)] + ([d.sum(1)] if bias else [])
    return gramian(per_param), per_param


HALF = (torch.bfloat16, torch.float16)


def _unhalved(t: Tensor) -> Tensor:
    """``t`` in float32 if it is bfloat16 or float16 (autocast): products are taken in float32,
    the parameters' dtype, never accumulated in half precision."""
    return t.float() if t.dtype in HALF else t


def input_kernel(layer_input: Tensor, bias: bool) -> Tensor:
    """K = A Aᵀ (+ 1 1ᵀ with a bias) [B, B] of a linear layer's input A [..., in] (leading
    dimensions flattened into B rows), in float32 for half-precision inputs."""
    a = _unhalved(layer_input.detach().reshape(-1, layer_input.shape[-1]))
    kernel = a @ a.T
    if bias:
        kernel += 1
    return kernel


def kernel_gramian(kernel: Tensor, grad_output: Tensor) -> Tensor:
    """G_ij = ⟨D_i, K D_j⟩ [n, n] from K (:func:`input_kernel`) and the output gradients D
    [n, ..., out]. K D_j stays in the model's dtype (its size does not depend on the loss scale
    squared); the final products ∝ λ_i λ_j are taken as in :func:`gramian`: float64, or float32 on
    the CPU where that is safe."""
    n = grad_output.shape[0]
    d = _unhalved(grad_output.reshape(n, kernel.shape[0], -1)).to(kernel.dtype)
    flat, kd = d.reshape(n, -1), torch.matmul(kernel, d).reshape(n, -1)
    total = _float32_products(flat, rights=(kd,))
    if total is not None:
        return total
    flat = flat.to(wide(d))
    return flat @ kd.to(flat.dtype).T


def linear_method(layer_input: Tensor, n: int, fan_out: int) -> str:
    """``direct`` or ``kernel`` for :func:`linear_gramian`, whichever needs fewer multiply-adds:
    n·B·in·out against B²·(in + n·out) plus the weight-gradient product the backward then still
    computes (B·in·out)."""
    fan_in = layer_input.shape[-1]
    rows = layer_input.numel() // max(fan_in, 1)
    return "kernel" if kernel_pays(rows, fan_in, fan_out, n) else "direct"


def kernel_pays(rows: int, fan_in: int, fan_out: int, n: int) -> bool:
    """B²·(in + n·out) + B·in·out < n·B·in·out (see :func:`linear_method`); once false, false for
    every larger B."""
    return rows * rows * (fan_in + n * fan_out) + rows * fan_in * fan_out \
        < n * rows * fan_in * fan_out


_LINEARS: WeakKeyDictionary[nn.Module, list[nn.Linear]] = WeakKeyDictionary()


def may_take_kernel(backbone: nn.Module, batch: int, n: int, policy: str) -> bool:
    """Whether some ``nn.Linear`` of the backbone can take the kernel path under ``policy``
    (``auto``: :func:`kernel_pays` with B = the batch size, the fewest rows a layer sees), so
    that :func:`split_forward` records the layers' inputs (``capture_linear``) only then."""
    if policy == "direct":
        return False
    if backbone not in _LINEARS:
        _LINEARS[backbone] = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
    layers = _LINEARS[backbone]
    if policy == "kernel":
        return bool(layers)
    return any(kernel_pays(batch, m.in_features, m.out_features, n) for m in layers)


def gramian(per_param: list[Tensor]) -> Tensor:
    """G_ij = g_i · g_j summed over parameters. Shape [n, n]: float64, or float32 where that is
    exact to float32 precision.

    Squared norms overflow float32 once they pass 3.4e38 (entries ~1e18 over a few hundred
    parameters) and underflow below 1.2e-38 (entries ~1e-20), which silently turned a task's weight
    1/||g_i|| into 0 or its floor; so products and sums are taken in float64 (:func:`_gramian64`),
    except that on the CPU float32 gradients are first multiplied in float32 (faster: float64
    products cost ~2% of a step there) and that result is kept when its diagonal lies within
    ``FLOAT32_SAFE_SQUARED_NORMS`` (``stats.float32_is_safe``; no device sync on the
    CPU). The float32 products are taken over at most ``FLOAT32_GRAMIAN_CHUNK`` columns each: one
    product over all 11M parameters of a ResNet-18 accumulated its squared norms with a relative
    error of 1e-3 (they only add positive terms, so float32 rounding builds up with the length);
    in chunks it is ~1e-7."""
    assert per_param, "no gradients"
    n = per_param[0].shape[0]
    flats = [g.reshape(n, -1) for g in per_param]
    total = _float32_products(*flats)
    return total if total is not None else _gramian64(flats)


#: Columns per float32 product in :func:`gramian` (``stats.FLOAT32_CHUNK``).
FLOAT32_GRAMIAN_CHUNK = FLOAT32_CHUNK


def _float32_products(*flats: Tensor, rights: tuple[Tensor, ...] = ()) -> Tensor | None:
    """Σ_k L_k R_kᵀ over float32 CPU matrices [n, p_k] (R_k = L_k unless ``rights`` are given),
    each product over at most :data:`FLOAT32_GRAMIAN_CHUNK` columns; None when the inputs are not
    float32 on the CPU or the result's diagonal is not :func:`float32_is_safe`."""
    if flats[0].dtype != torch.float32 or flats[0].device.type != "cpu":
        return None
    pairs = zip(flats, rights or flats, strict=True)
    chunks = [(left[:, lo:lo + FLOAT32_GRAMIAN_CHUNK], right[:, lo:lo + FLOAT32_GRAMIAN_CHUNK])
              for left, right in pairs for lo in range(0, left.shape[1], FLOAT32_GRAMIAN_CHUNK)]
    total = chunks[0][0] @ chunks[0][1].T
    for left, right in chunks[1:]:
        total = torch.addmm(total, left, right.T)
    return total if float32_is_safe(total.diagonal()) else None


def _gramian64(flats: list[Tensor]) -> Tensor:
    """G = F Fᵀ in float64 (``strategies.base.wide``: float32 on MPS) from per-task rows [n, p_k]
    (converted as ``cat`` copies them into one float64 [n, P] buffer: about as fast as casting
    each)."""
    n, dtype = flats[0].shape[0], wide(flats[0])
    if len(flats) == 1:
        flat = flats[0].to(dtype)
    else:
        flat = torch.empty((n, sum(f.shape[1] for f in flats)), dtype=dtype,
                           device=flats[0].device)
        torch.cat(flats, dim=1, out=flat)
    return flat @ flat.T


def stats_from_gramian(gram: Tensor) -> GradientStats:
    """Norms ||g_i|| = sqrt(G_ii) (clamped at 0 against round-off) and the Gramian itself, in the
    Gramian's dtype (see :func:`gramian`)."""
    return GradientStats(norms=gram.diagonal().clamp_min(0).sqrt(), gramian=gram)


def weighted_backward(losses: Tensor | list[Tensor], fwd: BranchedForward,
                      params: list[nn.Parameter],
                      heads: list[list[nn.Parameter]], shared: list[nn.Parameter], weigh: Weigh,
                      covers_shared: bool = False,
                      engine: GradientEngine = GradientEngine()) -> tuple[Tensor, TaskGradients]:
    """One backward of Σ_i w_i L_i with w chosen from this step's per-task gradients (module doc).

    Args:
        losses: the task losses (attached to the graph): a list of the n scalars, or their stack
            [n] (then each task's backward of the loop path also runs every other head's with
            zeros, through the stack's backward); ``fwd``: from :func:`split_forward`.
        params: parameters to take per-task gradients over; [] for the representation z. With
            ``fwd.layer_input``, the parameters of the linear layer whose output is ``fwd.at``.
        heads: each task's head parameters, in task order; ``shared``: the backbone's.
        weigh: the strategy's decision, called once inside the backward (see :data:`Weigh`).
        covers_shared: ``params`` are all the backbone parameters: their update is formed from
            the per-task gradients and the backward stops at z.
        engine: how the per-task gradients over ``params`` are computed (the kernel path for
            linear layers needs ``fwd.linear_calls`` and ``covers_shared``).
    Returns:
        the shared weights [n] and the per-task gradients they were chosen from. Afterwards the
        backbone's ``.grad`` holds Σ_i w_i ∇L_i (or the strategy's update) and head i's holds
        h_i ∇L_i (the decision's head weights; ∇L_i if None).
    """
    at, aliases, layer_input = fwd.at, fwd.aliases, fwd.layer_input
    engine = engine.resolved(at.device)
    if covers_shared and engine.traversal == "loop" and len({p.dtype for p in params}) == 1:
        decision, grads = shared_by_loop(losses, fwd, params, heads, weigh, engine.linear)
        scale_heads(heads, decision.head_weights)
        return decision.weights, grads
    method = "vjp"
    if layer_input is not None:  # the last shared layer, split at its output
        method = (linear_method(layer_input, len(aliases), at.shape[-1])
                  if engine.linear == "auto" else engine.linear)
    alias_grads: list[Tensor | None] = [None] * len(aliases)
    found: list[tuple[Decision, TaskGradients]] = []
    visited: list[bool] = []  # z's hook runs again inside the VJPs of task_vjps

    def keep(i: int) -> Callable[[Tensor], None]:
        return lambda g: alias_grads.__setitem__(i, g)

    def reweigh(_sum: Tensor | None = None) -> Tensor | None:
        """Per-task statistics and weights; returns Σ_i w_i ∂L_i/∂s (None: leave the sum)."""
        if visited:
            return None
        visited.append(True)
        parts = [torch.zeros_like(at) if g is None else g for g in alias_grads]
        grad_at = torch.stack(parts)
        kernel: list[LinearCall] = []
        direct, outputs_grads = params, []
        if layer_input is not None:
            gram, per_param = linear_gramian(layer_input, grad_at, len(params) > 1, method)
        elif params:
            if covers_shared:
                kernel, direct = split_by_kernel(fwd.linear_calls, params, len(parts),
                                                 engine.linear)
            found_grads = task_vjps(at, grad_at, direct + [call.output for call in kernel],
                                    engine.traversal, retain_graph=not covers_shared)
            per_param, outputs_grads = found_grads[:len(direct)], found_grads[len(direct):]
            gram = with_kernel_blocks(gramian(per_param) if per_param else None, kernel,
                                      outputs_grads)
        else:
            per_param, gram = [], gramian([grad_at])
        grads = TaskGradients(grad_at, [] if kernel else per_param, stats_from_gramian(gram),
                              ["last_shared"] if method == "kernel"
                              else [call.name for call in kernel])
        decision = weigh(grads)
        weights, update = decision.weights, decision.update
        assert update is None or covers_shared, "a shared update needs all backbone parameters"
        assert update is None or not kernel, "a shared update needs every per-task gradient"
        found.append((decision, grads))
        if per_param:  # these parameters' update is at hand: Σ_i w_i g_i (or the strategy's)
            for p, g in zip(direct, update or combine(weights, per_param), strict=True):
                p.grad = g
        set_kernel_updates(kernel, outputs_grads, weights)
        if covers_shared:
            return None
        return weighted_sum(weights, parts)

    head_params = [p for task in heads for p in task]
    handles = [alias.register_hook(keep(i)) for i, alias in enumerate(aliases)]
    try:  # the hooks close over the graph: remove them even on error, or it is never freed
        if covers_shared:  # stop at z; the backbone's update comes from the per-task gradients
            torch.autograd.backward(total_loss(losses), inputs=[*head_params, *aliases])
            reweigh()
        else:
            handles.append(at.register_hook(reweigh))
            # parameters whose update reweigh() sets are left out: the backward then skips
            # their weight-gradient products
            # (``at`` is listed too, so that its hook runs even if nothing else is left)
            done = {id(p) for p in params} if params and method != "kernel" else set()
            inputs = [*head_params, *(p for p in shared if id(p) not in done), at]
            total_loss(losses).backward(inputs=inputs if done else None)
    finally:
        for handle in handles:
            handle.remove()
    decision, grads = found[0]
    scale_heads(heads, decision.head_weights)
    return decision.weights, grads


def scale_heads(heads: list[list[nn.Parameter]], head_weights: Tensor | None) -> None:
    """Head i's ``.grad`` (∇L_i) times h_i (nothing for None): one fused in-place multiply."""
    if head_weights is None:
        return
    grads, factors = [], []
    for task, h in zip(heads, head_weights.tolist(), strict=True):
        for p in task:
            if p.grad is not None:
                grads.append(p.grad)
                factors.append(h)
    if grads:
        torch._foreach_mul_(grads, factors)


def total_loss(losses: Tensor | list[Tensor]) -> Tensor:
    """Σ_i L_i of a stack or a list of scalars."""
    return losses.sum() if isinstance(losses, Tensor) else torch.stack(losses).sum()


def shared_by_loop(losses: Tensor | list[Tensor], fwd: BranchedForward,
                   params: list[nn.Parameter],
                   heads: list[list[nn.Parameter]], weigh: Weigh,
                   linear: str) -> tuple[Decision, TaskGradients]:
    """``params=shared`` by a loop over tasks: one ``autograd.grad`` of L_i per task, through its
    head and the backbone at once (no separate backward of the heads), each task's backbone
    gradients copied into row i of one [n, P] buffer (so that the Gramian is one matrix product per
    :data:`FLOAT32_GRAMIAN_CHUNK` columns,
    Σ_i w_i g_i one vector-matrix product, and the parameters' ``.grad`` are views of it), the
    kernel layers' output gradients D_i kept instead of their weight gradients."""
    n = len(heads)
    kernel, direct = split_by_kernel(fwd.linear_calls, params, n, linear)
    sizes = [p.numel() for p in direct]
    flat = torch.empty((n, sum(sizes)), dtype=params[0].dtype, device=fwd.at.device)
    at_branch, outputs_found = [], [[] for _ in kernel]
    for i in range(n):
        rest = task_gradients(losses[i], heads[i], [fwd.aliases[i], *direct,
                                                    *(call.output for call in kernel)],
                              retain_graph=i + 1 < n)
        at_branch.append(rest[0])
        if direct:
            torch.cat([g.reshape(-1) for g in rest[1:1 + len(direct)]], out=flat[i])
        for found_d, d in zip(outputs_found, rest[1 + len(direct):], strict=True):
            found_d.append(d)
    outputs_grads = [torch.stack(d) for d in outputs_found]
    per_param = [part.view(n, *p.shape) for part, p in
                 zip(flat.split(sizes, dim=1), direct, strict=True)]
    gram = with_kernel_blocks(gramian([flat]) if direct else None, kernel, outputs_grads)
    grads = TaskGradients(torch.stack(at_branch), [] if kernel else per_param,
                          stats_from_gramian(gram), [call.name for call in kernel])
    decision = weigh(grads)
    assert decision.update is None or not kernel, "a shared update needs every per-task gradient"
    if decision.update is not None:
        updates = decision.update
    else:  # Σ_i w_i g_i of all direct parameters in one product; their .grad are views of it
        total = decision.weights.to(flat.dtype) @ flat
        updates = [part.view(p.shape) for part, p in
                   zip(total.split(sizes), direct, strict=True)]
    for p, g in zip(direct, updates, strict=True):
        p.grad = g
    set_kernel_updates(kernel, outputs_grads, decision.weights)
    return decision, grads


@dataclass
class RunningSum:
    """What :func:`shared_by_running_sum` did.

    Attributes:
        decision: the weighting's :class:`Decision` (weights c · h).
        kernel_layers: names of the layers whose update came from output gradients.
        stats: the statistics (with ``statistics``; else None).
        finite: the parameters whose ``.grad`` is proven finite in every entry without reading it
            (:func:`bounded_update`); empty when the proof does not go through.
        tasks_per_block: how many tasks' gradients were held at once (:func:`tasks_per_block`).
    """

    decision: Decision
    kernel_layers: list[str]
    stats: GradientStats | None
    finite: list[nn.Parameter]
    tasks_per_block: int


def shared_by_running_sum(losses: list[Tensor], fwd: BranchedForward,
                          params: list[nn.Parameter], heads: list[list[nn.Parameter]],
                          weigh: SeparableWeigh, linear: str, statistics: bool = False,
                          ) -> RunningSum:
    """``params=shared`` for a separable weighting (w_i = c · h_i, :class:`SeparableWeigh`): one
    ``autograd.grad`` of L_i per task, as :func:`shared_by_loop`, but the tasks go in blocks
    (:func:`tasks_per_block`: as many as fit in :data:`RUNNING_SUM_BLOCK_BYTES`, at least one) and
    each task's gradient is scaled by h_i and added to a running sum Σ_j h_j g_j as soon as its
    block's norms are known, so one block's gradients are held at a time (not n) and no Gramian
    is formed; the sum times c is the update. Kernel layers (:func:`kernel_layers`) add
    ⟨D_i, K D_i⟩ to the squared norm and h_i D_i to a running sum of output gradients. Squared
    norms are taken as in :func:`gramian` (:func:`squared_norms`).

    ``statistics``: also keep each task's gradient (a row of an [n, P] buffer, and the kernel
    layers' D_i) for the Gramian, which the result's statistics then hold (with the norms the
    weights came from). The update is computed the same way either way, so logging the
    statistics on some steps changes no number of the run.

    The direct parameters' update needs no finiteness pass of its own where the norms bound it
    (:func:`bounded_update`): they are then listed in ``RunningSum.finite``.
    """
    n = len(heads)
    kernel, direct = split_by_kernel(fwd.linear_calls, params, n, linear)
    kernels = [input_kernel(call.input, call.module.bias is not None) for call in kernel]
    targets, nd = [*direct, *(call.output for call in kernel)], len(direct)
    rows = (torch.empty((n, sum(p.numel() for p in direct)), dtype=params[0].dtype,
                        device=fwd.at.device) if statistics and direct else None)
    kept: list[list[Tensor]] = []  # with ``statistics``: each task's output gradients D_i
    total: list[Tensor] = []  # Σ_j h_j g_j over the direct parameters, then over D of each layer
    norms, own = [], []  # per block
    used: list[float] = []  # the h_i as multiplied (values of the gradients' dtype)
    size = tasks_per_block(targets, n)
    for start in range(0, n, size):
        block = range(start, min(start + size, n))
        found = [task_gradients(losses[i], heads[i], targets, retain_graph=i + 1 < n)
                 for i in block]
        if statistics:  # the block's rows and output gradients, for the Gramian
            for i, rest in zip(block, found, strict=True):
                if rows is not None:
                    torch.cat([g.reshape(-1) for g in rest[:nd]], out=rows[i])
                kept.append(rest[nd:])
        norms.append(block_squared_norms([rest[:nd] for rest in found], kernels,
                                         [rest[nd:] for rest in found]).sqrt())
        own.append(weigh.own(slice(block.start, block.stop), norms[-1]))
        hs = own[-1].to(found[0][0].dtype).tolist()  # as multiplied (read on the host)
        used.extend(hs)
        for rest, h in zip(found, hs, strict=True):
            if total:  # one fused pass: total += h · g
                torch._foreach_add_(total, rest, alpha=h)
            else:  # a new tensor each (autograd's results may alias one another)
                total = list(torch._foreach_mul(rest, h))
        del found  # the block's gradients
    all_norms = joined(norms)  # float32, or float64 where a block's squares needed it
    common, decision = weigh.finish(all_norms, joined(own))
    if common is not None:
        common = common.to(total[0].dtype)
        torch._foreach_mul_(total, common)
    for p, g in zip(direct, total, strict=False):
        p.grad = g
    for call, d in zip(kernel, total[nd:], strict=True):
        for p, g in zip(call.module.parameters(), linear_grads(call, d), strict=True):
            p.grad = g
    stats = None
    if statistics:
        outputs_grads = [torch.stack(ds) for ds in zip(*kept, strict=True)] if kernel else []
        gram = with_kernel_blocks(None if rows is None else gramian([rows]), kernel,
                                  outputs_grads)
        stats = GradientStats(norms=all_norms.to(gram.dtype), gramian=gram)
    finite = direct if direct and bounded_update(
        all_norms.tolist(), used, None if common is None else common.item(),
        total[0].dtype) else []
    return RunningSum(decision, [call.name for call in kernel], stats, finite, size)


def joined(blocks: list[Tensor]) -> Tensor:
    """The blocks' values in one tensor (the one block itself, uncopied, when there is one)."""
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def bounded_update(norms: list[float], factors: list[float], common: float | None,
                   dtype: torch.dtype) -> bool:
    """Whether c · Σ_i h_i g_i, added up in ``dtype``, is finite in every entry: true when every
    ||g_i|| is finite (then so is every entry of g_i) and |c| Σ_i |h_i| ||g_i|| < max / 4 for
    the dtype's largest finite value ``max`` (each entry of every partial sum is at most that,
    times (1 + 2⁻²³)^(n+1) for rounding). ``norms`` ||g_i||, ``factors`` h_i and ``common`` c (None
    for 1) as multiplied, read on the host (CPU: no sync)."""
    bound = sum(abs(h) * g for h, g in zip(factors, norms, strict=True))
    if common is not None:
        bound *= abs(common)
    return bound < torch.finfo(dtype).max / 4  # False for NaN and inf


def task_gradients(loss: Tensor, heads: list[nn.Parameter], targets: list[Tensor],
                   retain_graph: bool) -> list[Tensor]:
    """One task's ``autograd.grad``: its heads' gradients added to their ``.grad``, and the
    gradients on ``targets`` returned (zeros where the loss does not reach a target; float32 for
    half-precision ones)."""
    found = torch.autograd.grad(loss, [*heads, *targets], retain_graph=retain_graph,
                                allow_unused=True)
    add_to_heads(heads, found)
    rest = list(found[len(heads):])
    if any(g is None or g.dtype in HALF for g in rest):
        rest = [_unhalved(torch.zeros_like(t) if g is None else g)
                for g, t in zip(rest, targets, strict=True)]
    return rest


#: Bytes of per-task gradients :func:`shared_by_running_sum` holds at once (besides the running
#: sum): tasks are taken in blocks of as many as fit, at least one, and each block's norms and
#: factors come from one fused call each (~50-70 µs of fixed work a block): 2-3 % off a ~1 ms MLP
#: 32-128-128 step at n = 2 / 4 / 10, and 2-3 % off MLP 784-256-256 (1,042 KiB a task) at
#: n = 2 / 4 / 10 with 4 MiB instead of 1 (three tasks a block instead of one or two; peak step
#: memory 3.35 / 3.86 / 5.52 MiB against the hand loop's 3.86 / 3.89 / 4.01; ``bench_peers.py``'s
#: harness, paired rounds). Models with more than 4 MiB of shared gradients (ResNet-18: 45 MB) go
#: task by task.
RUNNING_SUM_BLOCK_BYTES = 4 << 20


def tasks_per_block(targets: list[Tensor], n: int) -> int:
    """How many tasks' gradients on ``targets`` fit in :data:`RUNNING_SUM_BLOCK_BYTES` (1 to n)."""
    per_task = sum(t.numel() * t.element_size() for t in targets)
    return max(1, min(n, RUNNING_SUM_BLOCK_BYTES // max(per_task, 1)))


def block_squared_norms(direct: list[list[Tensor]], kernels: list[Tensor],
                        outputs_grads: list[list[Tensor]]) -> Tensor:
    """||g_i||² [k] of k tasks: :func:`squared_norms` of their direct gradients plus ⟨D, K D⟩ for
    each kernel layer (its input kernel K, the task's output gradient D)."""
    total = squared_norms(direct) if direct[0] else None
    for j, k in enumerate(kernels):
        blocks = torch.stack([kernel_gramian(k, grads[j].unsqueeze(0))[0, 0]
                              for grads in outputs_grads]).clamp_min(0)  # (round-off)
        total = blocks if total is None else total + blocks
    assert total is not None, "no gradients"
    return total


def add_to_heads(heads: list[Tensor], found: tuple[Tensor | None, ...]) -> None:
    """Each head parameter's ``.grad`` plus its gradient in ``found`` (which starts with them).

    ``autograd.grad`` may return one tensor object for two inputs (e.g. for ``x + (a + b)`` the
    gradient of a + b passes on to a and b unchanged); a repeated one is copied, so that no two
    ``.grad`` alias and an in-place change of one (:func:`scale_heads`, a loss scale's unscale)
    happens once."""
    given: set[int] = set()
    for p, g in zip(heads, found, strict=False):
        if g is not None:
            if p.grad is not None:
                p.grad = p.grad + g
            else:
                p.grad = g.clone() if id(g) in given else g
            given.add(id(g))


def squared_norms(per_task: list[list[Tensor]]) -> Tensor:
    """Σ_k ||t_k||² [m] of each of m tasks' gradients (lists of like tensors), with
    :func:`gramian`'s guarantees: on the CPU in float32 (tensors of at most
    :data:`FLOAT32_GRAMIAN_CHUNK` entries by one fused norm over all tasks, longer ones by BLAS dot
    products over pieces of at most :data:`FLOAT32_NORM_CHUNK`; the pieces' values read at once
    and added up per task in float64 on the host), kept where every task's sum lies in
    ``stats.FLOAT32_SAFE_SQUARED_NORMS``; else in float64 (:func:`wide`)."""
    first, m = per_task[0][0], len(per_task)
    if first.dtype == torch.float32 and first.device.type == "cpu":
        short = [t for tensors in per_task for t in tensors if t.numel() <= FLOAT32_GRAMIAN_CHUNK]
        long = [[piece for t in tensors if t.numel() > FLOAT32_GRAMIAN_CHUNK
                 for piece in t.reshape(-1).split(FLOAT32_NORM_CHUNK)] for tensors in per_task]
        values = torch.stack([*(torch._foreach_norm(short) if short else ()),
                              *(torch.dot(piece, piece) for pieces in long for piece in pieces)],
                             ).tolist()
        # values: the short tensors' norms (task-major), then the long ones' pieces' dots
        per, sums, at = len(short) // m, [], len(short)
        for i, pieces in enumerate(long):
            total = sum(v * v for v in values[i * per:(i + 1) * per])
            sums.append(total + sum(values[at:at + len(pieces)]))
            at += len(pieces)
        if in_float32_safe_range(sums):
            return torch.tensor(sums, dtype=torch.float32)
    flat = [t for tensors in per_task for t in tensors]
    return torch.stack(torch._foreach_norm(flat, dtype=wide(first))).view(m, -1).square().sum(1)


#: Entries per float32 dot product in :func:`squared_norms`. On gradient-like data (mean 1e-3, sd
#: 1e-3) BLAS's float32 dot measured 4.8e-7 off at 266,752 entries and 4.3e-6 at 2.4M; torch's
#: float32 norm 2.4e-7 at 65,536 entries, 1.7e-6 at 266,752 and 3.7e-5 at 2.4M.
FLOAT32_NORM_CHUNK = 1 << 18


def with_kernel_blocks(gram: Tensor | None, kernel: list[LinearCall],
                       outputs_grads: list[Tensor]) -> Tensor:
    """The Gramian over all the parameters: ``gram`` (the per-task gradients' own; None if there
    are none) plus each kernel layer's block from its input and output gradients [n, ..., out]
    (float32 and float64 blocks add up in float64)."""
    for call, d in zip(kernel, outputs_grads, strict=True):
        block = linear_gramian(call.input, d, call.module.bias is not None, "kernel")[0]
        gram = block if gram is None else gram + block
    assert gram is not None, "no gradients"
    return gram


def set_kernel_updates(kernel: list[LinearCall], outputs_grads: list[Tensor],
                       weights: Tensor) -> None:
    """Each kernel layer's ``.grad``: (Σ_i w_i D_i)ᵀ A and Σ_rows Σ_i w_i D_i
    (:func:`linear_update`)."""
    for call, d in zip(kernel, outputs_grads, strict=True):
        for p, g in zip(call.module.parameters(), linear_update(call, d, weights), strict=True):
            p.grad = g


def weighted_sum(weights: Tensor, tensors: list[Tensor]) -> Tensor:
    """Σ_i w_i t_i for same-shape tensors: one fused multiply-add per term, no stacking, no host
    sync (cheaper than a product with the stacked tensors when they are small)."""
    w = weights.to(tensors[0].dtype)
    total = tensors[0] * w[0]
    for i in range(1, len(tensors)):
        total.addcmul_(tensors[i], w[i])
    return total


def combine(weights: Tensor, per_param: list[Tensor]) -> list[Tensor]:
    """Σ_i w_i g_i for each parameter, from per-task gradients [n, *p.shape]; weights [n]."""
    return [(weights.to(g.dtype) @ g.reshape(g.shape[0], -1)).view(g.shape[1:]) for g in per_param]
