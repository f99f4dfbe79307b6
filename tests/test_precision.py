"""``trainer.precision``: bf16 autocast on the CPU for every strategy kind and gradient source;
float16 with a gradient scaler whose factor no strategy ever sees; overflowed steps skipped (not a
divergence) while the scale comes down; bad values in one line."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_config
from torch.testing import assert_close

from mtlbench import train
from mtlbench.errors import ConfigError
from mtlbench.models.heads import make_head
from mtlbench.models.mlp import MLPBackbone
from mtlbench.models.multitask import MultiTaskModel
from mtlbench.precision import Precision, build_precision
from mtlbench.stats import GradientStats
from mtlbench.strategies.base import GradientWeighting
from mtlbench.strategies.equal import Equal
from mtlbench.tasks import TaskSpec

TINY = ["trainer.max_steps=4", "trainer.eval_every=2", "trainer.batch_size=32",
        "data.n_train=256", "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]
TASKS = [TaskSpec("c", "classification", 4), TaskSpec("r", "regression", 2)]


@pytest.mark.parametrize("strategy", ["equal", "uw", "gradnorm_ideal", "db_mtl", "upgrad",
                                      "gradnorm_ideal strategy.params=last_shared",
                                      "gradnorm_ideal strategy.params=representation"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_every_kind_and_source_trains_in_mixed_precision(strategy: str, precision: str,
                                                         tmp_path) -> None:
    name, *rest = strategy.split()
    cfg = compose_config([f"strategy={name}", *rest, *TINY, f"trainer.precision={precision}"])
    metrics = train.run(cfg, tmp_path / "run", name)
    assert metrics["config"]["trainer.precision"] == precision
    assert all(math.isfinite(v) for task in metrics["tasks"].values()
               for k, v in task.items() if k != "kind")
    assert ("overflow_steps" in metrics) == (precision == "16-mixed")


def setup_model(seed: int = 0) -> tuple[MultiTaskModel, torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    backbone = MLPBackbone(input_shape=(6,), width=16, depth=2)
    model = MultiTaskModel(backbone, {t.name: make_head(t, backbone.out_dim) for t in TASKS})
    x = torch.randn(32, 6)
    return model, x, {"c": torch.randint(0, 4, (32,)), "r": torch.randn(32, 2)}


class Recorder(GradientWeighting):
    """Equal weights; remembers the statistics it was given."""

    def __init__(self, params: str = "shared") -> None:
        self.gradient_source, self.seen = params, []

    def weights(self, losses: torch.Tensor, grads: GradientStats | None = None) -> torch.Tensor:
        assert grads is not None
        self.seen.append(grads)
        return torch.ones_like(losses)


@pytest.mark.parametrize("params,linear", [("shared", "direct"), ("shared", "kernel"),
                                           ("last_shared", "auto"), ("representation", "auto")])
@pytest.mark.parametrize("mode", ["16-mixed", "bf16-mixed"])
def test_the_scale_factor_never_reaches_a_strategy(params: str, linear: str, mode: str) -> None:
    """16-mixed at S = 2^16: the Gramian the strategy sees is the float32 one to float16
    rounding, not S² times it; the applied gradients are unscaled too. bf16-mixed: the same to
    bfloat16 rounding. Both for per-task weight gradients and the B×B kernel of every linear
    layer (``trainer.linear_gramian``), whose products are taken in float32."""
    grads, stats = {}, {}
    engine = train.GradientEngine("loop", linear)
    for precision in ("32", mode):
        model, x, y = setup_model()
        recorder = Recorder(params)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        result = train.train_step(model, TASKS, x, y, recorder, opt, build_precision(
            precision, torch.device("cpu")), engine)
        assert result.finite and result.applied
        assert bool(result.kernel_layers) == (linear == "kernel")
        stats[precision] = recorder.seen[0].gramian.double()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
    if mode == "16-mixed":
        assert_close(stats[mode], stats["32"], rtol=2e-2, atol=1e-6)
        assert_close(grads[mode], grads["32"], rtol=2e-2, atol=2e-3)
    else:  # bfloat16 keeps 8 bits: entries of small gradients differ, their whole does not
        assert_close(stats[mode], stats["32"], rtol=3e-2, atol=1e-6)
        assert float((grads[mode] - grads["32"]).norm() / grads["32"].norm()) < 5e-2


def test_an_overflowing_scale_skips_the_step_and_comes_down() -> None:
    """S = 2^40 overflows float16 in the backward: the step is not applied (parameters
    unchanged), it is no divergence (finite), and S halves each time until steps apply."""
    model, x, y = setup_model()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)
    precision = Precision("16-mixed", "cpu", scaler)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    result = train.train_step(model, TASKS, x, y, Equal(), opt, precision)
    assert result.finite and not result.applied
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == 2.0 ** 39
    for _ in range(40):
        result = train.train_step(model, TASKS, x, y, Equal(), opt, precision)
        if result.applied:
            break
    assert result.applied and scaler.get_scale() <= 2.0 ** 24
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_bad_precision() -> None:
    with pytest.raises(ConfigError, match=r"`trainer\.precision` must be one of 32, bf16-mixed, "
                                          r"16-mixed\. Found `trainer\.precision = 8`\."):
        build_precision("8", torch.device("cpu"))


def test_float16_resume_is_exact(tmp_path, monkeypatch) -> None:
    """The scaler's state is checkpointed: starting at S = 2^22 (two classification tasks), the
    first five steps overflow and halve S; a run killed at step 4 resumes with the halved S (a
    fresh scaler would overflow again and skip steps the uninterrupted run applied), so both end
    with the same metrics."""
    from conftest import killed_and_resumed

    def high_start(mode: str, device: torch.device) -> Precision:
        return Precision(mode, device.type, torch.amp.GradScaler(device.type,
                                                                 init_scale=2.0 ** 22))

    monkeypatch.setattr(train, "build_precision", high_start)
    args = [*TINY, "trainer.max_steps=12", "trainer.checkpoint_every=4", "trainer.eval_every=4",
            "trainer.precision=16-mixed", "strategy=gradnorm_ideal", "~data.tasks.reg_x100",
            "~data.tasks.reg_x1"]
    full, resumed = killed_and_resumed(args, "gradnorm_ideal", tmp_path, at_step=4)
    assert resumed == full
    from mtlbench import checkpoint
    state = checkpoint.load(checkpoint.list_checkpoints(tmp_path / "part")[-1][1])  # step 12
    assert state["scaler"]["scale"] == 2.0 ** 17 and state["counters"]["overflow_steps"] == 5


@pytest.mark.parametrize("linear", ["direct", "kernel"])
def test_bf16_running_sum_matches_float32(linear: str) -> None:
    """bf16-mixed with a separable weighting (gradnorm_ideal: h_i g_i added up task by task,
    kernel layers' bfloat16 output gradients summed in float32): the step is finite, applied, and
    its update is the float32 one to bfloat16 rounding; 16-mixed takes the Gramian path."""
    from mtlbench.strategies.gradnorm_ideal import GradNormIdeal

    grads = {}
    engine = train.GradientEngine("loop", linear)
    for precision in ("32", "bf16-mixed", "16-mixed"):
        model, x, y = setup_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        result = train.train_step(model, TASKS, x, y, GradNormIdeal(), opt, build_precision(
            precision, torch.device("cpu")), engine)
        assert result.finite and result.applied
        assert result.running_sum == (precision != "16-mixed")
        assert bool(result.kernel_layers) == (linear == "kernel")
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    for mode in ("bf16-mixed", "16-mixed"):
        assert float((grads[mode] - grads["32"]).norm() / grads["32"].norm()) < 5e-2, mode
