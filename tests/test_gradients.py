"""mtlbench.gradients against naive per-task autograd (one backward per task), MLP and LeNet."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mtlbench.gradients import cosines, gramian, split_forward, task_gradients
from mtlbench.models.heads import make_head
from mtlbench.models.mlp import MLPBackbone
from mtlbench.models.multitask import MultiTaskModel
from mtlbench.tasks import TaskSpec

F64 = torch.float64
TASKS = [TaskSpec("c", "classification", 5), TaskSpec("r", "regression", 3, loss_scale=7.0),
         TaskSpec("s", "regression", 1, loss_shift=2.0)]


def make(kind: str, head_hidden: int = 0) -> tuple[MultiTaskModel, torch.Tensor, dict]:
    torch.manual_seed(0)
    if kind == "mlp":
        backbone: nn.Module = MLPBackbone(input_shape=(6,), width=8, depth=3)
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


BACKBONES = ["mlp", "lenet"]


@pytest.mark.parametrize("kind", BACKBONES)
@pytest.mark.parametrize("source", ["shared", "last_shared", "representation"])
def test_task_gradients_match_naive_autograd(kind: str, source: str) -> None:
    model, x, y = make(kind, head_hidden=4)
    params = {"shared": model.shared_parameters, "last_shared": model.last_shared_parameters,
              "representation": list}[source]()
    rows = torch.stack(naive(model, x, y, params, wrt_z=source == "representation"))
    z, aliases, outputs = split_forward(model.backbone, model.heads, x, [t.name for t in TASKS])
    tg = task_gradients(losses_of(model, outputs, y), z, aliases, params,
                        covers_shared=source == "shared")
    assert_close(tg.stats.gramian, rows @ rows.T, rtol=1e-10, atol=1e-12)
    assert_close(tg.stats.norms, rows.norm(dim=1), rtol=1e-10, atol=1e-12)
    if source == "representation":
        assert_close(tg.representation.reshape(len(TASKS), -1), rows, rtol=1e-10, atol=1e-12)
    else:
        flat = torch.cat([g.reshape(len(TASKS), -1) for g in tg.per_param], dim=1)
        assert_close(flat, rows, rtol=1e-10, atol=1e-12)
        assert [g.shape[1:] for g in tg.per_param] == [p.shape for p in params]
    assert tg.covers_shared == (source == "shared")


def test_split_forward_equals_model_forward() -> None:
    model, x, _ = make("mlp")
    z, aliases, outputs = split_forward(model.backbone, model.heads, x, [t.name for t in TASKS])
    z0, out0 = model(x)
    assert_close(z, z0, rtol=0, atol=0)
    assert len(aliases) == len(TASKS)
    for name in out0:
        assert_close(outputs[name], out0[name], rtol=0, atol=0)


def test_gramian_and_cosines_by_hand() -> None:
    a = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=F64)
    per_param = [a[:, :1], a[:, 1:]]
    assert_close(gramian(per_param), a @ a.T)
    cos = cosines(a @ a.T)
    assert_close(cos[0, 2], torch.tensor(3.0 / (3.0 * 2 ** 0.5), dtype=F64))
    assert_close(cos[0, 1], torch.tensor(0.0, dtype=F64))
    assert torch.isfinite(cosines(torch.zeros(2, 2))).all()  # zero gradients: no NaN
