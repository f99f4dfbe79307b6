"""mtlbench.gradients against naive per-task autograd (one backward per task), MLP and LeNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mtlbench.gradients import (
    Decision,
    GradientEngine,
    SeparableWeigh,
    gramian,
    linear_gramian,
    linear_method,
    scale_heads,
    shared_by_running_sum,
    split_forward,
    splits_at_last_shared,
    squared_norms,
    stats_from_gramian,
    task_vjps,
    weighted_backward,
)
from mtlbench.models.heads import make_head
from mtlbench.models.mlp import MLPBackbone
from mtlbench.models.multitask import MultiTaskModel
from mtlbench.stats import cosines
from mtlbench.tasks import TaskSpec

F64 = torch.float64
TASKS = [TaskSpec("c", "classification", 5), TaskSpec("r", "regression", 3, loss_scale=7.0),
         TaskSpec("s", "regression", 1, loss_shift=2.0)]


def make(kind: str, head_hidden: int = 0) -> tuple[MultiTaskModel, torch.Tensor, dict]:
    torch.manual_seed(0)
    if kind.startswith("mlp"):  # mlp_wide: batch 10 < width 64, so last_shared takes the kernel
        backbone: nn.Module = MLPBackbone(input_shape=(6,), width=64 if kind == "mlp_wide" else 8,
                                          depth=3)
        x = torch.randn(10, 6, dtype=F64)
    else:
        from mtlbench.models.lenet import LeNetBackbone
        backbone = LeNetBackbone(input_shape=(1, 16, 16), conv1_channels=3, conv2_channels=4,
                                 kernel_size=3, width=6)
        x = torch.randn(10, 1, 16, 16, dtype=F64)
    heads = {t.name: make_head(t, backbone.out_dim, head_hidden) for t in TASKS}
    model = MultiTaskModel(backbone, heads).to(F64)
    y = {"c": torch.randint(0, 5, (10,)), "r": torch.randn(10, 3, dtype=F64),
         "s": torch.randn(10, 1, dtype=F64)}
    return model, x, y


def losses_of(model, outputs, y):
    return torch.stack([t.loss(outputs[t.name], y[t.name]) for t in TASKS])


def naive(model, x, y, params, wrt_z: bool = False) -> list[torch.Tensor]:
    """Per-task flattened gradients by a separate forward + backward per task."""
    rows = []
    for i in range(len(TASKS)):
        z, outputs = model(x)
        loss = losses_of(model, outputs, y)[i]
        grads = torch.autograd.grad(loss, [z] if wrt_z else params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                               for p, g in zip([z] if wrt_z else params, grads, strict=True)]))
    return rows


BACKBONES = ["mlp", "mlp_wide", "lenet"]


def naive_update(model, x, y, weights) -> dict[str, torch.Tensor]:
    """∇ Σ_i w_i L_i on every parameter, by plain autograd."""
    z, outputs = model(x)
    total = (weights * losses_of(model, outputs, y)).sum()
    named = dict(model.named_parameters())
    return dict(zip(named, torch.autograd.grad(total, list(named.values())), strict=True))


def run_weighted(model, x, y, source: str, weights: torch.Tensor, split_at_last: bool = True,
                 engine: GradientEngine | None = None):
    """weighted_backward with fixed ``weights`` (with an ``engine``, the linear layers recorded
    for ``shared``); returns what the weighing callback saw."""
    names = [t.name for t in TASKS]
    params = {"shared": model.shared_parameters, "last_shared": model.last_shared_parameters,
              "representation": list}[source]()
    fwd = split_forward(model.backbone, model.heads, x, names,
                        at_last_shared=source == "last_shared" and split_at_last,
                        capture_linear=source == "shared" and engine is not None)
    seen = []

    def weigh(grads):
        seen.append(grads)
        return Decision(weights, weights)

    model.zero_grad(set_to_none=True)
    got, grads = weighted_backward(
        losses_of(model, fwd.outputs, y), fwd, params,
        [list(model.heads[n].parameters()) for n in names], model.shared_parameters(), weigh,
        covers_shared=source == "shared", engine=engine or GradientEngine())
    assert got is weights and seen == [grads]
    return grads, params


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("source,split_at_last", [("shared", False), ("last_shared", True),
                                                  ("last_shared", False),
                                                  ("representation", False)])
def test_weighted_backward_matches_naive_autograd(kind: str, source: str,
                                                  split_at_last: bool) -> None:
    """The statistics the strategy sees are those of separate per-task backward passes, and the
    parameters end with ∇ Σ w_i L_i (heads and backbone), for every source and code path."""
    model, x, y = make(kind, head_hidden=4)
    weights = torch.tensor([0.5, 2.0, -3.0], dtype=F64)
    grads, params = run_weighted(model, x, y, source, weights, split_at_last)
    rows = torch.stack(naive(model, x, y, params, wrt_z=source == "representation"))
    assert_close(grads.stats.gramian, rows @ rows.T, rtol=1e-10, atol=1e-12)
    assert_close(grads.stats.norms, rows.norm(dim=1), rtol=1e-10, atol=1e-12)
    if source == "representation":
        assert_close(grads.at_branch.reshape(len(TASKS), -1), rows, rtol=1e-10, atol=1e-12)
    if grads.per_param:
        flat = torch.cat([g.reshape(len(TASKS), -1) for g in grads.per_param], dim=1)
        assert_close(flat, rows, rtol=1e-10, atol=1e-12)
        assert [g.shape[1:] for g in grads.per_param] == [p.shape for p in params]
    expected = naive_update(model, x, y, weights)
    for name, p in model.named_parameters():
        assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("method", ["direct", "kernel"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_linear_gramian_both_methods_match_explicit_gradients(method: str, bias: bool,
                                                              dtype: torch.dtype) -> None:
    """G_ij = <D_iᵀA, D_jᵀA> + <D_iᵀ1, D_jᵀ1> = <D_i, (AAᵀ + 11ᵀ) D_j>, leading dims flattened
    (float32 products on the CPU, as in gramian())."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 5, 7, generator=gen, dtype=F64)  # [..., in]: 10 rows
    d = torch.randn(4, 2, 5, 3, generator=gen, dtype=F64)  # [n, ..., out]
    flat_a, flat_d = a.reshape(10, 7), d.reshape(4, 10, 3)
    rows = [torch.cat([(di.T @ flat_a).reshape(-1)] + ([di.sum(0)] if bias else []))
            for di in flat_d]
    explicit = torch.stack(rows)
    gram, per_param = linear_gramian(a.to(dtype), d.to(dtype), bias, method)
    assert gram.dtype == dtype
    tol = 1e-12 if dtype == F64 else 1e-5
    assert_close(gram.double(), explicit @ explicit.T, rtol=tol, atol=tol)
    assert len(per_param) == (0 if method == "kernel" else 1 + bias)
    if per_param:
        assert_close(torch.cat([g.reshape(4, -1) for g in per_param], 1).double(), explicit,
                     rtol=tol, atol=tol)


def test_linear_method_counts_multiply_adds() -> None:
    """kernel (B²(in + n·out) + B·in·out) wins only when the batch is small against the layer."""
    assert linear_method(torch.zeros(128, 512), 4, 512) == "kernel"  # MLP 512: 42M+34M < 134M
    assert linear_method(torch.zeros(128, 128), 2, 128) == "direct"  # MLP 128: 8.4M > 4.2M
    assert linear_method(torch.zeros(256, 320), 2, 50) == "direct"  # LeNet fc
    assert linear_method(torch.zeros(10, 64), 3, 64) == "kernel"  # "mlp_wide" above
    assert linear_method(torch.zeros(10, 8), 3, 8) == "direct"  # "mlp" above


def test_split_forward_equals_model_forward() -> None:
    model, x, _ = make("mlp")
    names = [t.name for t in TASKS]
    z0, out0 = model(x)
    for at_last in (False, True):
        fwd = split_forward(model.backbone, model.heads, x, names, at_last_shared=at_last)
        assert len(fwd.aliases) == len(TASKS)
        assert (fwd.layer_input is not None) == at_last
        for name in out0:
            assert_close(fwd.outputs[name], out0[name], rtol=0, atol=0)


def test_gramian_and_cosines_by_hand() -> None:
    a = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=F64)
    per_param = [a[:, :1], a[:, 1:]]
    assert_close(gramian(per_param), a @ a.T)
    cos = cosines(a @ a.T)
    assert_close(cos[0, 2], torch.tensor(3.0 / (3.0 * 2 ** 0.5), dtype=F64))
    assert_close(cos[0, 1], torch.tensor(0.0, dtype=F64))
    assert torch.isfinite(cosines(torch.zeros(2, 2))).all()  # zero gradients: no NaN


def test_hooks_are_removed_when_the_strategy_fails() -> None:
    """The hooks close over the graph; left behind, they would keep every step's graph alive."""
    model, x, y = make("mlp")
    names = [t.name for t in TASKS]
    fwd = split_forward(model.backbone, model.heads, x, names)

    def weigh(grads):
        raise ValueError("strategy failed")

    with pytest.raises(ValueError, match="strategy failed"):
        weighted_backward(losses_of(model, fwd.outputs, y), fwd, [],
                          [list(model.heads[n].parameters()) for n in names],
                          model.shared_parameters(), weigh)
    for tensor in [fwd.at, *fwd.aliases]:
        assert not tensor._backward_hooks


def test_model_parameter_lists_follow_freezing_and_conversion() -> None:
    """The cached per-group parameter lists never go stale: requires_grad is read on each call and
    ``.to()`` (which may swap parameter objects) clears the cache."""
    model, _, _ = make("mlp")
    assert model.trainable_parameters() == list(model.parameters())
    assert model.head_parameters("r") == list(model.heads["r"].parameters())
    assert model.last_shared_parameters() == list(model.backbone.last_shared.parameters())
    model.backbone.last_shared.bias.requires_grad_(False)
    assert model.last_shared_parameters() == [model.backbone.last_shared.weight]
    assert len(model.shared_parameters()) == len(list(model.backbone.parameters())) - 1
    model.to(torch.float32)
    assert not model._param_lists
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())


def test_split_at_last_shared_only_for_linear_layers_with_trunk_and_tail() -> None:
    class NoTrunk(nn.Module):
        last_shared = nn.Linear(3, 3)

    class ConvLast(nn.Module):
        last_shared = nn.Conv2d(1, 1, 1)

        def trunk(self, x):
            return x

        def tail(self, u):
            return u

    assert splits_at_last_shared(make("mlp")[0].backbone)
    assert splits_at_last_shared(make("lenet")[0].backbone)
    assert not splits_at_last_shared(NoTrunk())
    assert not splits_at_last_shared(ConvLast())
    frozen = make("mlp")[0].backbone
    frozen.last_shared.weight.requires_grad_(False)  # bias alone: the batched VJP handles it
    assert not splits_at_last_shared(frozen)


@pytest.mark.parametrize("method", ["direct", "kernel"])
def test_gramian_is_float64_for_float32_gradients_of_any_scale(method: str) -> None:
    """Per-task float32 gradients ~1e-24, ~1 and ~1e20: their squared norms (~1e-48, ~1e40) under-
    and overflow float32 (old code: norms 0 and inf, weights 1/eps and 0); the Gramian is then
    accumulated in float64 and matches a float64 reference."""
    gen = torch.Generator().manual_seed(5)
    scales = torch.tensor([1e-24, 1.0, 1e20], dtype=F64)
    rows = torch.randn(3, 300, generator=gen, dtype=F64) * scales[:, None]
    got = gramian([rows[:, :100].float(), rows[:, 100:].float().reshape(3, 20, 10)])
    want = rows.float().double() @ rows.float().double().T
    assert got.dtype == F64
    assert_close(got, want, rtol=1e-6, atol=0)
    norms = stats_from_gramian(got).norms
    assert_close(norms, rows.norm(dim=1), rtol=1e-6, atol=0)
    # the linear-layer paths: D_i = ∂L_i/∂u at the same scales, A of order 1
    a = torch.randn(10, 7, generator=gen, dtype=F64)
    d = torch.randn(3, 10, 4, generator=gen, dtype=F64) * scales[:, None, None]
    explicit = torch.stack([torch.cat([(di.T @ a).reshape(-1), di.sum(0)]) for di in d])
    gram, _ = linear_gramian(a.float(), d.float(), True, method)
    assert gram.dtype == F64 and torch.isfinite(gram).all()
    assert_close(gram.diagonal().sqrt(), explicit.norm(dim=1), rtol=1e-5, atol=0)
    assert_close(cosines(gram), cosines(explicit @ explicit.T), rtol=0, atol=1e-5)


def test_gramian_keeps_float32_only_where_it_is_exact() -> None:
    """CPU float32 gradients of moderate size: the float32 products are kept (fast path); one row
    ~1e-12 (squared norm ~1e-21 < 1e-20) or ~1e19 (~1e41) sends the whole Gramian to float64;
    float64 gradients stay float64."""
    gen = torch.Generator().manual_seed(6)
    rows = torch.randn(3, 500, generator=gen, dtype=F64)
    parts = [rows[:, :200], rows[:, 200:]]
    got = gramian([g.float() for g in parts])
    assert got.dtype == torch.float32
    assert_close(got.double(), rows.float().double() @ rows.float().double().T, rtol=1e-5,
                 atol=1e-4)
    assert gramian(parts).dtype == F64
    for scale in (1e-12, 1e19):
        scaled = rows * torch.tensor([1.0, scale, 1.0], dtype=F64)[:, None]
        got = gramian([scaled[:, :200].float(), scaled[:, 200:].float()])
        want = scaled.float().double() @ scaled.float().double().T
        assert got.dtype == F64
        assert_close(got, want, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- the engine
@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("traversal", ["loop", "batched"])
@pytest.mark.parametrize("linear", ["direct", "kernel", "auto"])
def test_every_engine_gives_the_naive_gramian_and_update(kind: str, traversal: str,
                                                         linear: str) -> None:
    """Loop or batched VJPs, per-task weight gradients or the B×B kernel for each nn.Linear: the
    strategy sees the Gramian of separate per-task backward passes, and every parameter ends
    with ∇ Σ_i w_i L_i (kernel layers: (Σ_i w_i D_i)ᵀA and Σ_rows Σ_i w_i D_i)."""
    weights = torch.tensor([0.5, 2.0, -3.0], dtype=F64)
    model, x, y = make(kind, head_hidden=4)
    grads, _ = run_weighted(model, x, y, "shared", weights,
                            engine=GradientEngine(traversal, linear))
    rows = torch.stack(naive(model, x, y, model.shared_parameters()))
    assert_close(grads.stats.gramian, rows @ rows.T, rtol=1e-10, atol=1e-12)
    expected = naive_update(model, x, y, weights)
    for name, p in model.named_parameters():
        assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)
    linears = [name for name, m in model.backbone.named_modules() if isinstance(m, nn.Linear)]
    chosen = {"direct": [], "kernel": linears,
              # by linear_method's count: batch 10 against widths 64 (mlp_wide's hidden layers);
              # its first layer (6 inputs) and the narrow ones take per-task gradients
              "auto": ["net.3", "net.5"] if kind == "mlp_wide" else []}[linear]
    assert grads.kernel_layers == chosen
    assert (grads.per_param == []) == bool(chosen)  # all per-task gradients, or none


def test_kernel_skips_a_layer_changed_in_place_or_called_twice() -> None:
    """The kernel needs the layer's input and output as they were in its one call: a Linear whose
    output was modified in place (an in-place ReLU) or that ran twice takes per-task gradients,
    and the result stays exact."""
    torch.manual_seed(0)

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.once, self.twice, self.inplace = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8)
            self.out_dim = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.once(x))
            h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
            return torch.relu_(self.inplace(h))

    backbone = Backbone()
    heads = {t.name: make_head(t, 8, 0) for t in TASKS}
    model = MultiTaskModel(backbone, heads).to(F64)
    x = torch.randn(10, 6, dtype=F64)
    _, y = None, make("mlp")[2]
    names, params = [t.name for t in TASKS], model.shared_parameters()
    fwd = split_forward(model.backbone, model.heads, x, names, capture_linear=True)
    assert [c.name for c in fwd.linear_calls] == ["once", "inplace"]  # "twice" ran twice
    weights = torch.tensor([1.0, -0.5, 2.0], dtype=F64)
    _, grads = weighted_backward(
        losses_of(model, fwd.outputs, y), fwd, params,
        [list(model.heads[n].parameters()) for n in names], params,
        lambda g: Decision(weights, None), covers_shared=True,
        engine=GradientEngine("loop", "kernel"))
    assert grads.kernel_layers == ["once"]  # "inplace"'s output was overwritten by relu_
    rows = torch.stack(naive(model, x, y, params))
    assert_close(grads.stats.gramian, rows @ rows.T, rtol=1e-10, atol=1e-12)
    expected = naive_update(model, x, y, weights)
    for name, p in model.backbone.named_parameters():
        assert_close(p.grad, expected[f"backbone.{name}"], rtol=1e-10, atol=1e-12, msg=name)


def test_task_vjps_loop_and_batched_agree_and_fill_unreached_targets_with_zeros() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4, 3, dtype=F64, generator=gen, requires_grad=True)
    unused = torch.zeros(2, dtype=F64, requires_grad=True)
    x = torch.randn(5, 4, dtype=F64, generator=gen)
    z = torch.tanh(x @ w)
    grad_z = torch.randn(3, 5, 3, dtype=F64, generator=gen)
    loop = task_vjps(z, grad_z, [w, unused], "loop")
    batched = task_vjps(z, grad_z, [w, unused], "batched")
    by_task = torch.stack([torch.autograd.grad(z, w, g, retain_graph=True)[0] for g in grad_z])
    assert_close(loop[0], by_task, rtol=1e-12, atol=0)
    assert_close(batched[0], by_task, rtol=1e-12, atol=0)
    assert loop[1].shape == batched[1].shape == (3, 2) and not loop[1].any()


def test_auto_traversal_is_loop_on_the_cpu_and_batched_elsewhere() -> None:
    assert GradientEngine().resolved(torch.device("cpu")) == GradientEngine("loop", "auto")
    assert GradientEngine().resolved(torch.device("cuda")).traversal == "batched"
    assert GradientEngine("batched", "kernel").resolved(torch.device("cpu")).traversal == "batched"


def test_a_combiner_gets_every_gradient_even_with_linear_gramian_kernel() -> None:
    """train_step captures the linear layers only for Gramian weightings: a combiner (DB-MTL)
    receives the per-task gradients of every shared parameter."""
    from mtlbench.strategies.db_mtl import DBMTL
    from mtlbench.train import train_step

    model, x, y = make("mlp_wide")
    seen = []
    strategy = DBMTL()
    combine = strategy.combine
    strategy.combine = lambda losses, grads: seen.append(grads) or combine(losses, grads)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    result = train_step(model, TASKS, x, y, strategy, opt,
                        engine=GradientEngine("loop", "kernel"))
    assert result.kernel_layers == []
    assert [g.shape[1:] for g in seen[0].per_param] == [p.shape for p in
                                                         model.shared_parameters()]


def test_float32_gramian_of_a_long_gradient_keeps_float32_accuracy() -> None:
    """Squared norms add only positive terms, so one float32 product over millions of entries
    builds up rounding with the length (1e-3 relative over a ResNet-18's 11M parameters); taken
    over chunks of FLOAT32_GRAMIAN_CHUNK columns, the float32 Gramian stays within 1e-5 of the
    float64 one."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(2, 1, 8_000_000, generator=gen)
    exact = g.double().reshape(2, -1) @ g.double().reshape(2, -1).T
    got = gramian([g])
    assert got.dtype == torch.float32
    assert_close(got.double(), exact, rtol=1e-5, atol=1e-5 * float(exact[0, 0]))


# ----------------------------------------------------------------------------- the running sum
def fixed_separable(seen: list) -> SeparableWeigh:
    """h_i = (i + 0.5) / ||g_i||, c = 2.5: weights 2.5 (i + 0.5) / ||g_i||; head weights = w."""
    def finish(norms, own):
        seen.append(norms)
        w = 2.5 * own
        return torch.tensor(2.5, dtype=F64), Decision(w, w)
    return SeparableWeigh(
        lambda tasks, norms: (torch.arange(tasks.start, tasks.stop, dtype=F64) + 0.5) / norms,
        finish)


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("linear", ["direct", "kernel", "auto"])
@pytest.mark.parametrize("statistics", [False, True])
@pytest.mark.parametrize("block", [1, 2, 3])
def test_running_sum_gives_the_naive_norms_and_update(kind: str, linear: str, statistics: bool,
                                                      block: int, monkeypatch) -> None:
    """Block by block (1, 2 or all 3 tasks), h_i g_i added to a running sum (kernel layers:
    h_i D_i) and the sum times c: every parameter ends with ∇ Σ_i w_i L_i, the norms handed to the
    weighting are those of separate per-task backward passes, and with ``statistics`` the Gramian
    is theirs too."""
    import mtlbench.gradients as gradients
    model, x, y = make(kind, head_hidden=4)
    if block < 3:  # (these models are small enough for one block)
        monkeypatch.setattr(gradients, "tasks_per_block", lambda targets, n: block)
    names = [t.name for t in TASKS]
    fwd = split_forward(model.backbone, model.heads, x, names, capture_linear=True)
    heads = [list(model.heads[n].parameters()) for n in names]
    seen: list = []
    summed = shared_by_running_sum(
        list(losses_of(model, fwd.outputs, y)), fwd, model.shared_parameters(), heads,
        fixed_separable(seen), linear, statistics=statistics)
    decision, kernel, stats = summed.decision, summed.kernel_layers, summed.stats
    scale_heads(heads, decision.head_weights)
    rows = torch.stack(naive(model, x, y, model.shared_parameters()))
    assert_close(seen[0], rows.norm(dim=1), rtol=1e-10, atol=1e-12)
    weights = 2.5 * torch.arange(len(TASKS), dtype=F64).add(0.5) / rows.norm(dim=1)
    assert_close(decision.weights, weights, rtol=1e-10, atol=0)
    expected = naive_update(model, x, y, weights)
    for name, p in model.named_parameters():
        assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)
    linears = [name for name, m in model.backbone.named_modules() if isinstance(m, nn.Linear)]
    assert kernel == {"direct": [], "kernel": linears,
                      "auto": ["net.3", "net.5"] if kind == "mlp_wide" else []}[linear]
    if statistics:
        assert_close(stats.gramian, rows @ rows.T, rtol=1e-10, atol=1e-12)
        assert torch.equal(stats.norms, seen[0])  # the norms the weights came from
    else:
        assert stats is None
    in_kernel = {id(p) for name, m in model.backbone.named_modules() if name in kernel
                 for p in m.parameters()}  # finite norms, moderate factors: proven finite
    assert [id(p) for p in summed.finite] == [id(p) for p in model.shared_parameters()
                                              if id(p) not in in_kernel]


GRADNORM_VARIANTS = [{}, {"rescale": "mean"}, {"rescale": "max", "log_losses": True},
                     {"heads": "unweighted"}, {"heads": "unweighted", "log_losses": True}]


@pytest.mark.parametrize("overrides", GRADNORM_VARIANTS, ids=str)
@pytest.mark.parametrize("kind", ["mlp_wide", "lenet"])
def test_gradnorm_ideal_running_sum_equals_its_gramian_path(overrides: dict, kind: str) -> None:
    """gradnorm_ideal[shared] takes the running sum on the CPU loop (train.runs_separably); its
    step equals the Gramian path's (batched VJPs, weights from the Gramian): weights, heads and
    every parameter's update. Logging the statistics on a step changes no number of it."""
    from mtlbench.strategies.gradnorm_ideal import GradNormIdeal
    from mtlbench.train import runs_separably, train_step

    results = {}
    for label, engine, log in [("gramian", GradientEngine("batched", "auto"), False),
                               ("running", GradientEngine("loop", "auto"), False),
                               ("running+stats", GradientEngine("loop", "auto"), True)]:
        model, x, y = make(kind, head_hidden=4)
        strategy = GradNormIdeal(**overrides)
        assert runs_separably(strategy, engine, x.device, model.shared_parameters(),
                              scaled=False) == (label != "gramian")
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        result = train_step(model, TASKS, x, y, strategy, opt, engine=engine,
                            log_gradients=log)
        results[label] = (result, {n: p.grad for n, p in model.named_parameters()})
    (gram, gram_grads), (run, run_grads), (logged, logged_grads) = results.values()
    assert_close(run.weights, gram.weights, rtol=1e-12, atol=0)
    for name, g in gram_grads.items():
        assert_close(run_grads[name], g, rtol=1e-10, atol=1e-12, msg=name)
        assert torch.equal(logged_grads[name], run_grads[name]), name
    assert torch.equal(logged.weights, run.weights)
    assert run.grads is None and logged.grads is not None
    assert_close(logged.grads.gramian, gram.grads.gramian, rtol=1e-10, atol=1e-12)


def test_runs_separably_only_where_the_running_sum_is_exact() -> None:
    """Not for a loss scale (16-mixed), a stacked loss weighting, another gradient source, the
    batched traversal or a non-separable method."""
    from mtlbench.strategies.gradnorm_ideal import GradNormIdeal
    from mtlbench.strategies.mgda import MGDA
    from mtlbench.strategies.uw import UncertaintyWeighting
    from mtlbench.train import runs_separably

    model, _, _ = make("mlp")
    params, cpu, loop = model.shared_parameters(), torch.device("cpu"), GradientEngine("loop")
    assert runs_separably(GradNormIdeal(), loop, cpu, params, scaled=False)
    assert not runs_separably(GradNormIdeal(), loop, cpu, params, scaled=True)
    assert not runs_separably(GradNormIdeal(loss_weighting=UncertaintyWeighting()), loop, cpu,
                              params, scaled=False)
    assert not runs_separably(GradNormIdeal(params="last_shared"), loop, cpu, params, False)
    assert not runs_separably(GradNormIdeal(), GradientEngine("batched"), cpu, params, False)
    assert not runs_separably(GradNormIdeal(), GradientEngine(), torch.device("cuda"), params,
                              False)
    assert not runs_separably(MGDA(), loop, cpu, params, scaled=False)


def test_squared_norm_keeps_float32_accuracy_and_falls_back_to_float64() -> None:
    """float32 over 8M entries within 1e-6 of float64 (torch's own float32 norm is 1e-4 off
    there); entries whose squares float32 cannot hold (1e25, 1e-25) are summed in float64."""
    gen = torch.Generator().manual_seed(0)
    g = [torch.randn(8_000_000, generator=gen) * 1e-3 + 1e-3, torch.randn(300, 7, generator=gen)]
    exact = sum(float(t.double().square().sum()) for t in g)
    got = squared_norms([g])[0]
    assert got.dtype == torch.float32
    assert abs(float(got) / exact - 1) < 1e-6
    for scale in (1e25, 1e-25):
        t = [torch.randn(1000, generator=gen) * scale]
        got = squared_norms([t])[0]
        assert got.dtype == F64
        assert_close(got, t[0].double().square().sum(), rtol=1e-12, atol=0)


def test_tasks_per_block_fit_the_byte_budget() -> None:
    """As many tasks as fit in RUNNING_SUM_BLOCK_BYTES (4 MiB), at least one, at most n."""
    from mtlbench.gradients import RUNNING_SUM_BLOCK_BYTES, tasks_per_block
    assert RUNNING_SUM_BLOCK_BYTES == 4 << 20
    mlp128 = [torch.empty(128, 32), torch.empty(128), torch.empty(128, 128), torch.empty(128)]
    assert [tasks_per_block(mlp128, n) for n in (1, 2, 10, 60)] == [1, 2, 10, 50]  # 83 KB a task
    mlp784 = [torch.empty(256, 784), torch.empty(256), torch.empty(256, 256), torch.empty(256)]
    assert [tasks_per_block(mlp784, n) for n in (2, 4, 10)] == [2, 3, 3]  # 1,067 KB a task
    assert tasks_per_block([torch.empty(1024, 1024)], 10) == 1  # 4 MiB + nothing: 1
    assert tasks_per_block([torch.empty(1024, 1024, dtype=F64)], 10) == 1  # 8 MiB: still 1
    assert tasks_per_block([torch.empty(256, 1024, dtype=F64)], 10) == 2


def test_squared_norms_of_a_block_are_each_tasks_own() -> None:
    """Three tasks at once (a long tensor of 300k entries: dot products over pieces; short ones:
    one fused norm over all tasks): each within 1e-6 of its float64 value, and equal to the task
    taken alone. One task whose squares float32 cannot hold sends the whole block to float64."""
    gen = torch.Generator().manual_seed(0)
    tasks = [[torch.randn(300_000, generator=gen) * s, torch.randn(30, 7, generator=gen) * s,
              torch.randn(5, generator=gen)] for s in (1e-3, 1.0, 2e2)]
    exact = torch.tensor([sum(float(t.double().square().sum()) for t in ts) for ts in tasks],
                         dtype=F64)
    got = squared_norms(tasks)
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert_close(got.double(), exact, rtol=1e-6, atol=0)
    for j, ts in enumerate(tasks):
        assert_close(squared_norms([ts])[0], got[j], rtol=1e-6, atol=0)
    tasks[1][2] = tasks[1][2] * 1e25
    got = squared_norms(tasks)
    assert got.dtype == F64
    exact[1] = sum(float(t.double().square().sum()) for t in tasks[1])
    assert_close(got, exact, rtol=1e-12, atol=0)


@pytest.mark.parametrize("strategy_name", ["gradnorm_ideal", "mgda", "gradnorm_ideal_last"])
@pytest.mark.parametrize("traversal", ["loop", "batched"])
@pytest.mark.parametrize("log_gradients", [False, True])
def test_no_gradient_or_statistic_keeps_a_graph(strategy_name: str, traversal: str,
                                                log_gradients: bool) -> None:
    """The kernel path's products from the layers' inputs build no autograd graph: no ``.grad``
    requires grad (it would keep the step's graph alive until the next step) and neither do the
    weights or the statistics (kernel layers on ``mlp_wide``; ``last_shared`` split at its
    input)."""
    from mtlbench.strategies.gradnorm_ideal import GradNormIdeal
    from mtlbench.strategies.mgda import MGDA
    from mtlbench.train import train_step

    model, x, y = make("mlp_wide")
    strategy = {"gradnorm_ideal": GradNormIdeal(), "mgda": MGDA(),
                "gradnorm_ideal_last": GradNormIdeal(params="last_shared")}[strategy_name]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    result = train_step(model, TASKS, x, y, strategy, opt,
                        engine=GradientEngine(traversal, "kernel"), log_gradients=log_gradients)
    assert result.kernel_layers
    assert not any(p.grad.requires_grad for p in model.parameters())
    assert not result.weights.requires_grad
    if result.grads is not None:
        assert not result.grads.gramian.requires_grad and not result.grads.norms.requires_grad


class TwoBiasHead(nn.Module):
    """A head whose two biases get one gradient tensor from ``autograd.grad`` (x + (a + b))."""

    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, k)
        self.a = nn.Parameter(torch.zeros(k))
        self.b = nn.Parameter(torch.zeros(k))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z) + (self.a + self.b)


@pytest.mark.parametrize("path", ["running", "loop"])
def test_heads_with_one_shared_gradient_tensor_are_weighted_once(path: str) -> None:
    """``autograd.grad`` hands a and b of ``x + (a + b)`` the same tensor; each ``.grad`` must still
    be w_i ∇L_i after the heads are weighted (the aliasing tensor would be scaled twice)."""
    model, x, y = make("mlp")
    model.heads["r"] = TwoBiasHead(model.backbone.out_dim, 3).to(F64)
    names = [t.name for t in TASKS]
    heads = [list(model.heads[n].parameters()) for n in names]
    weights = torch.tensor([0.5, 2.0, -3.0], dtype=F64)
    if path == "running":
        fwd = split_forward(model.backbone, model.heads, x, names, capture_linear=True)
        summed = shared_by_running_sum(
            list(losses_of(model, fwd.outputs, y)), fwd, model.shared_parameters(), heads,
            SeparableWeigh(lambda tasks, norms: weights[tasks],
                           lambda norms, own: (None, Decision(own, own))), "direct")
        scale_heads(heads, summed.decision.head_weights)
    else:
        run_weighted(model, x, y, "shared", weights, engine=GradientEngine("loop", "direct"))
    expected = naive_update(model, x, y, weights)
    for name, p in model.named_parameters():
        assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)
    head = model.heads["r"]
    assert head.a.grad.data_ptr() != head.b.grad.data_ptr()
