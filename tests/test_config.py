"""Every option of every config group composes against its schema and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FAST, REPO, compose_config
from omegaconf import OmegaConf

from mtlbench.config import validate
from mtlbench.data import build_data
from mtlbench.instantiate import instantiate_group
from mtlbench.models.multitask import build_model
from mtlbench.strategies.base import Strategy

CONF = REPO / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_config_has_the_documented_keys() -> None:
    cfg = compose_config()
    assert cfg.seed == 0
    assert cfg.trainer.max_steps > 0 and cfg.trainer.eval_every > 0
    assert cfg.trainer.device == "auto"
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    assert cfg.strategy._target_.endswith("Equal")
    for task in cfg.data.tasks.values():
        assert task.kind in ("classification", "regression")
        assert task.loss_scale == 1.0 and task.loss_shift == 0.0
    validate(cfg)


@pytest.mark.parametrize("name", options("strategy"))
def test_every_strategy_option_instantiates(name: str) -> None:
    cfg = compose_config([f"strategy={name}"])
    strategy = instantiate_group("strategy", cfg.strategy, _convert_="all")
    assert isinstance(strategy, Strategy)


@pytest.mark.parametrize("name", options("optimizer"))
def test_every_optimizer_option_instantiates(name: str) -> None:
    import torch

    cfg = compose_config([f"optimizer={name}"])
    validate(cfg)
    opt = instantiate_group("optimizer", cfg.optimizer, params=[torch.nn.Parameter(torch.zeros(1))])
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize("name", options("optimizer"))
@pytest.mark.parametrize("implementation", ["foreach", "fused"])
def test_optimizer_implementations_take_the_default_loops_steps(name: str,
                                                                 implementation: str) -> None:
    """``optimizer.foreach`` / ``optimizer.fused`` reach torch (the run records which one) and
    take the same steps as torch's default for-loop, to float rounding (three steps of a
    two-tensor problem, with momentum / Adam state)."""
    import torch

    from mtlbench.train import optimizer_implementation

    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(3)]
    grads = [[torch.randn(5, 3), torch.randn(3)] for _ in range(3)]
    finals = {}
    for impl in ("default", implementation):
        cfg = compose_config([f"optimizer={name}", "optimizer.momentum=0.9"] if name == "sgd"
                             else [f"optimizer={name}"])
        if impl != "default":
            cfg.optimizer[impl] = True
        validate(cfg)
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = instantiate_group("optimizer", cfg.optimizer, params=params)
        assert optimizer_implementation(opt) == impl
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        finals[impl] = torch.cat([p.detach().reshape(-1) for p in params])
    assert not torch.equal(finals["default"], torch.cat([t.reshape(-1) for t in start]))
    cfg.optimizer[implementation] = False
    opt = instantiate_group("optimizer", cfg.optimizer, params=[torch.nn.Parameter(start[1])])
    assert optimizer_implementation(opt) == ("for_loop" if implementation == "foreach"
                                             else "default")
    torch.testing.assert_close(finals[implementation], finals["default"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["synthetic", "gradnorm_toy"])
def test_offline_data_options_build_with_a_model(name: str) -> None:
    small = ["data.n_train=64", "data.n_val=16", "data.n_test=16"]
    cfg = compose_config([f"data={name}", *small])
    data = build_data(cfg.data, seed=0)
    assert [t.name for t in data.tasks] == list(cfg.data.tasks)
    for model_name in options("model"):
        if model_name != "mlp" and len(data.input_shape) == 1:
            continue  # convolutional backbones need images
        model = build_model(compose_config([f"model={model_name}"]).model, data.input_shape,
                            data.tasks)
        _, outputs = model(data.train.inputs[:4])
        for task in data.tasks:
            assert outputs[task.name].shape == (4, task.out_dim)


@pytest.mark.parametrize("name", options("data") + options("model"))
def test_every_yaml_composes_against_its_schema(name: str) -> None:
    group = "data" if (CONF / "data" / f"{name}.yaml").exists() else "model"
    cfg = compose_config([f"{group}={name}"])
    node = cfg[group]
    assert OmegaConf.get_type(node) is not dict, f"{group}={name} is not typed by a schema"


@pytest.mark.parametrize("override,key", [
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("seed=1.5", "seed"),
    ("data.n_train=many", "data.n_train"),
    ("model.width=wide", "model.width"),
    ("optimizer.fused=maybe", "optimizer.fused"),
])
def test_schema_rejects_wrong_types(override: str, key: str) -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as info:
        compose_config([override])
    assert key in str(info.value.__cause__)


def test_schema_rejects_unknown_keys() -> None:
    from hydra.errors import ConfigCompositionException

    for override in ("foo=1", "trainer.foo=1", "data.foo=1", "data.tasks.cls_k2.foo=1"):
        with pytest.raises(ConfigCompositionException):
            compose_config([override])


def test_fast_overrides_compose() -> None:
    cfg = compose_config(FAST)
    assert cfg.trainer.max_steps == 6 and Path(CONF).is_dir()
