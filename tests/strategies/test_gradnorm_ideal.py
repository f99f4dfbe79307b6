"""gradnorm_ideal (eq. 10-11) with its options, against hand computations in float64."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FAST, run_cli
from torch.testing import assert_close

from mtlbench.errors import ConfigError
from mtlbench.models.heads import make_head
from mtlbench.models.mlp import MLPBackbone
from mtlbench.models.multitask import MultiTaskModel
from mtlbench.strategies.base import GradientStats
from mtlbench.strategies.gradnorm_ideal import GradNormIdeal
from mtlbench.tasks import TaskSpec
from mtlbench.train import train_step

F64 = torch.float64
TASKS = [TaskSpec("c", "classification", 4), TaskSpec("r", "regression", 2, loss_scale=50.0),
         TaskSpec("s", "regression", 1, loss_shift=3.0)]
SOURCES = ["shared", "last_shared", "representation"]


def setup_model(seed: int = 0) -> tuple[MultiTaskModel, torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    backbone = MLPBackbone(input_shape=(5,), width=7, depth=2)
    heads = {t.name: make_head(t, backbone.out_dim) for t in TASKS}
    model = MultiTaskModel(backbone, heads).to(F64)
    x = torch.randn(12, 5, dtype=F64)
    y = {"c": torch.randint(0, 4, (12,)), "r": torch.randn(12, 2, dtype=F64),
         "s": torch.randn(12, 1, dtype=F64)}
    return model, x, y


def separate_gradients(model, x, y, source):
    """Per task, by its own backward: (loss, ∇ over all parameters, ||∇ over source||)."""
    out = []
    for task in TASKS:
        model.zero_grad(set_to_none=True)
        z, outputs = model(x)
        loss = task.loss(outputs[task.name], y[task.name])
        if source == "representation":
            (gz,) = torch.autograd.grad(loss, z, retain_graph=True)
            norm = gz.norm()
        loss.backward()
        grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                 for n, p in model.named_parameters()}
        if source != "representation":
            src = (model.shared_parameters() if source == "shared"
                   else model.last_shared_parameters())
            ids = {id(p) for p in src}
            norm = torch.cat([p.grad.reshape(-1) for p in model.parameters()
                              if id(p) in ids]).norm()
        out.append((loss.detach(), grads, norm))
    model.zero_grad(set_to_none=True)
    return out


def step_grads(model, x, y, strategy) -> dict[str, torch.Tensor]:
    """The .grad of every parameter after one train_step (SGD, so .grad is the update / -lr)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the parameters for comparisons
    result = train_step(model, TASKS, x, y, strategy, opt)
    assert result.finite
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def expected(parts, coeffs) -> dict[str, torch.Tensor]:
    return {n: sum(c * g[n] for c, (_, g, _) in zip(coeffs, parts, strict=True))
            for n in parts[0][1]}


@pytest.mark.parametrize("source", SOURCES)
def test_update_is_sum_of_normalized_gradients(source: str) -> None:
    model, x, y = setup_model()
    parts = separate_gradients(model, x, y, source)
    got = step_grads(model, x, y, GradNormIdeal(params=source))
    want = expected(parts, [1.0 / norm for _, _, norm in parts])
    for name in want:  # shared parameters and every head: ∇L_i / ||g_i||
        assert_close(got[name], want[name], rtol=1e-10, atol=1e-12)
    if source == "shared":  # the shared part has unit-norm task components
        shared = {n for n, _ in model.backbone.named_parameters()}
        for _, g, norm in parts:
            total = torch.cat([(g[n] / norm).reshape(-1) for n in g
                               if n.removeprefix("backbone.") in shared])
            assert_close(total.norm(), torch.tensor(1.0, dtype=F64))


@pytest.mark.parametrize("rescale", ["mean", "max"])
@pytest.mark.parametrize("source", SOURCES)
def test_rescale(rescale: str, source: str) -> None:
    model, x, y = setup_model()
    parts = separate_gradients(model, x, y, source)
    norms = torch.stack([n for _, _, n in parts])
    s = norms.mean() if rescale == "mean" else norms.max()
    got = step_grads(model, x, y, GradNormIdeal(params=source, rescale=rescale))
    want = expected(parts, [s / n for n in norms])
    for name in want:
        assert_close(got[name], want[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rescale", ["none", "max"])
def test_log_losses_has_the_same_direction(rescale: str) -> None:
    """∇ log L_i = ∇L_i / L_i: the normalized sum is the same; only s uses ||∇L_j|| / L_j."""
    model, x, y = setup_model()
    parts = separate_gradients(model, x, y, "shared")
    plain = step_grads(model, x, y, GradNormIdeal(rescale=rescale))
    logged = step_grads(model, x, y, GradNormIdeal(rescale=rescale, log_losses=True))
    norms = torch.stack([n for _, _, n in parts])
    losses = torch.stack([loss for loss, _, _ in parts])
    factor = 1.0 if rescale == "none" else (norms / losses).max() / norms.max()
    for name in plain:
        assert_close(logged[name], factor * plain[name], rtol=1e-10, atol=1e-12)


def test_zero_gradient_task_stays_finite() -> None:
    model, x, y = setup_model()
    with torch.no_grad():  # task "s": zero head weights → ∂L_s/∂z = 0 → ||g_s|| = 0
        model.heads["s"].weight.zero_()
    for source in SOURCES:
        for rescale in ("none", "mean", "max"):
            for log_losses in (False, True):
                strategy = GradNormIdeal(params=source, rescale=rescale, log_losses=log_losses)
                grads = step_grads(model, x, y, strategy)
                assert all(torch.isfinite(g).all() for g in grads.values())
    stats = type("S", (), {"norms": torch.zeros(3, dtype=F64)})()
    w = GradNormIdeal(rescale="mean").weights(torch.zeros(3, dtype=F64), stats)
    assert_close(w, torch.ones(3, dtype=F64))  # all zero: the plain sum, finite


def test_unweighted_heads_without_a_moving_average_need_no_combiner() -> None:
    """heads=unweighted is a Gramian weighting (the loop reads the heads policy): shared part as
    eq. (11), heads ∇ log L_i (log_losses) or ∇L_i, logged weights = the shared coefficients."""
    model, x, y = setup_model()
    parts = separate_gradients(model, x, y, "shared")
    weighted = step_grads(model, x, y, GradNormIdeal(rescale="max", log_losses=True))
    for log_losses in (True, False):
        strategy = GradNormIdeal(rescale="max", log_losses=log_losses, heads="unweighted")
        assert strategy.kind == "gramian"
        grads = step_grads(model, x, y, strategy)
        for name in grads:
            if name.startswith("backbone.") and log_losses:
                assert_close(grads[name], weighted[name], rtol=1e-10, atol=1e-12)
        for i, task in enumerate(TASKS):
            divisor = parts[i][0] if log_losses else 1.0
            for name in grads:
                if name.startswith(f"heads.{task.name}."):
                    assert_close(grads[name], parts[i][1][name] / divisor, rtol=1e-10,
                                 atol=1e-12)


@pytest.mark.parametrize("bad, message", [
    ({"params": "all"}, "Parameter `params` must be one of shared, last_shared, representation. "
                        "Found `params = all`."),
    ({"rescale": "sum"},
     "Parameter `rescale` must be one of none, mean, max. Found `rescale = sum`."),
    ({"heads": "normalized"},
     "Parameter `heads` must be one of weighted, unweighted. Found `heads = normalized`."),
    ({"eps": 0.0}, "Parameter `eps` must be > 0. Found `eps = 0.0`."),
    ({"log_losses": "yes"},
     "Parameter `log_losses` must be true or false. Found `log_losses = yes`."),
])
def test_bad_hyperparameters(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        GradNormIdeal(**bad)
    assert message in str(info.value)


CLI = [["strategy=gradnorm_ideal"],
       ["strategy=gradnorm_ideal", "strategy.params=last_shared"],
       ["strategy=gradnorm_ideal", "strategy.params=representation", "strategy.rescale=mean"],
       ["strategy=gradnorm_ideal", "strategy.rescale=max", "strategy.log_losses=true"],
       ["strategy=db_mtl", "model.depth=1"]]


@pytest.mark.parametrize("args", [pytest.param(a, marks=pytest.mark.slow) if i else a
                                  for i, a in enumerate(CLI)])
def test_cli_end_to_end(args: list[str], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(["train", *args, *FAST, "trainer.log_every=1", "trainer.grad_log_every=2",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run_dir / "metrics.json").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/grad_norm/cls_k2" in tags and "train/grad_cos/cls_k2__reg_x100" in tags
    assert "train/weight/reg_x100" in tags


def stats_of(norms: list[float], dtype: torch.dtype = F64) -> GradientStats:
    n = torch.tensor(norms, dtype=dtype)
    return GradientStats(norms=n, gramian=torch.diag(n * n))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_positive_norms_are_never_floored(dtype) -> None:
    """w_i = 1/||g_i|| for every nonzero norm (1e-30 … 1e30: the old code floored norms below
    eps = 1e-8); a norm of exactly 0 counts as eps (weight s / eps, as before)."""
    losses = torch.ones(4, dtype=dtype)
    w = GradNormIdeal().weights(losses, stats_of([0.0, 1e-30, 1.0, 1e30]))
    assert w.dtype == dtype and torch.isfinite(w).all()
    assert w.double().tolist() == pytest.approx([1e8, 1e30, 1.0, 1e-30], rel=1e-6)
    # s = max ||g_j|| = 1e30: weights beyond float32 are clamped to its largest finite value
    w = GradNormIdeal(eps=1e-3, rescale="max").weights(losses, stats_of([0.0, 1e-30, 1.0, 1e30]))
    big = torch.finfo(dtype).max
    assert w.double().tolist() == pytest.approx([1e33, min(1e60, big), 1e30, 1.0], rel=1e-6)
    for rescale, expected in (("none", 1e8), ("mean", 1.0), ("max", 1.0)):  # every norm 0
        for log_losses in (False, True):
            w = GradNormIdeal(rescale=rescale, log_losses=log_losses).weights(
                torch.full((3,), 0.5, dtype=dtype), stats_of([0.0, 0.0, 0.0], dtype))
            c = 0.5 if log_losses else 1.0  # w_i = s / eps / c_i
            assert w.double().tolist() == pytest.approx([expected / c] * 3, rel=1e-6)


def test_log_losses_weights_at_extreme_losses() -> None:
    """w_i = s / ||g_i|| with s from ||g_j|| / L_j: losses 1e-24 … 1e20 are used as they are."""
    losses = torch.tensor([1e-24, 3.0, 1e20], dtype=F64)
    norms = [2e-24, 1.5, 4e20]
    w = GradNormIdeal(log_losses=True, rescale="max").weights(losses, stats_of(norms))
    s = max(n / loss for n, loss in zip(norms, losses.tolist(), strict=True))  # = 4
    assert w.tolist() == pytest.approx([s / n for n in norms], rel=1e-14)


@pytest.mark.slow  # two real runs (~6 s); test_gradients checks the same per step
def test_logging_gradient_statistics_changes_no_number(tmp_path: Path) -> None:
    """gradnorm_ideal[shared] adds up its weighted gradients task by task and forms the Gramian
    only on the steps that log it, with the same update: two real runs, one logging every step's
    statistics and one none, end with identical metrics."""
    import json

    written = []
    for every in ("1", "1000"):
        run_dir = tmp_path / every
        result = run_cli(["train", "strategy=gradnorm_ideal", *FAST, "trainer.log_every=1",
                          f"trainer.grad_log_every={every}", f"hydra.run.dir={run_dir}"],
                         cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        written.append(json.loads((run_dir / "metrics.json").read_text()))
    logged, silent = written
    assert logged["gradient_engine"]["running_sum"] is True
    assert logged["gradient_engine"]["tasks_per_block"] == 4  # the synthetic MLP: 81 KiB a task
    assert logged["tasks"] == silent["tasks"] and logged["val"] == silent["val"]


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 1.2e38])
@pytest.mark.parametrize("rescale", ["none", "max"])
def test_running_sum_never_applies_a_non_finite_update(bad: float, rescale: str) -> None:
    """float32, the running sum (train.runs_separably): every entry of one shared bias's per-task
    gradients set to inf, NaN or 1.2e38 by a hook. 1.2e38 is finite, and so are the norms
    (||g_i|| ≈ 3.2e38), but with ``max`` (s ≈ 3.2e38) the bias's update, s Σ_i g_i / ||g_i||,
    overflows. Applied (SGD, lr 1: p - ∇) exactly when every ``.grad`` is finite, else no
    parameter moves: the norms prove the shared update finite (``gradients.bounded_update``) only
    where it is."""
    from mtlbench.gradients import GradientEngine
    from mtlbench.train import runs_separably
    model, x, y = setup_model()
    model, x = model.float(), x.float()
    y = {k: (v.float() if v.is_floating_point() else v) for k, v in y.items()}
    strategy = GradNormIdeal(rescale=rescale)
    shared = model.shared_parameters()
    assert runs_separably(strategy, GradientEngine(), x.device, shared, scaled=False)
    shared[1].register_hook(lambda g: torch.full_like(g, bad))
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, TASKS, x, y, strategy, torch.optim.SGD(model.parameters(), lr=1.0))
    finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert result.finite == finite == (bad == 1.2e38 and rescale == "none")
    for b, p in zip(before, model.parameters(), strict=True):
        assert torch.equal(p.detach(), b - p.grad if finite else b)
