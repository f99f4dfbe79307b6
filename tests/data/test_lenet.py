"""The MultiLeNet backbone (Sener & Koltun, arXiv:1810.04650) and its heads."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from torch import nn

from mtlbench.errors import ConfigError
from mtlbench.models.lenet import LeNetBackbone, conv_output_size
from mtlbench.models.multitask import build_model
from mtlbench.tasks import TaskSpec

TASKS = [TaskSpec("left", "classification", 10), TaskSpec("right", "classification", 10),
         TaskSpec("sum", "regression", 1)]


@pytest.mark.parametrize("size,flat", [(28, 320), (36, 720)])
def test_flatten_size_follows_the_image_size(size: int, flat: int) -> None:
    backbone = LeNetBackbone(input_shape=(1, size, size))
    assert backbone.flat_dim == flat
    assert backbone.fc.in_features == flat and backbone.fc.out_features == 50
    z = backbone(torch.rand(3, 1, size, size))
    assert z.shape == (3, 50) and (z >= 0).all()  # ReLU after the fc


def test_layers_are_the_published_ones() -> None:
    backbone = LeNetBackbone(input_shape=(1, 28, 28))
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 10, (5, 5)), (10, 20, (5, 5))]
    kinds = [type(m).__name__ for m in backbone.features]
    assert kinds == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU", "Flatten"]
    # conv1 260 + conv2 5,020 + fc 16,050 parameters
    assert sum(p.numel() for p in backbone.parameters()) == 260 + 5020 + 16050
    assert backbone.last_shared is backbone.fc


@pytest.mark.parametrize("size", [28, 36])
def test_model_from_config_has_two_layer_heads(size: int) -> None:
    cfg = compose_config(["model=lenet"])
    model = build_model(cfg.model, (1, size, size), TASKS)
    z, outputs = model(torch.rand(5, 1, size, size))
    assert z.shape == (5, 50)
    assert outputs["left"].shape == (5, 10) and outputs["right"].shape == (5, 10)
    assert outputs["sum"].shape == (5, 1)
    head = model.heads["left"]
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(50, 50), (50, 10)]
    assert model.last_shared_parameters() == list(model.backbone.fc.parameters())


def test_gradients_reach_the_first_convolution() -> None:
    model = build_model(compose_config(["model=lenet"]).model, (1, 28, 28), TASKS)
    _, outputs = model(torch.rand(4, 1, 28, 28))
    outputs["left"].sum().backward()
    conv1 = model.backbone.features[0]
    assert conv1.weight.grad is not None and conv1.weight.grad.abs().sum() > 0


def test_more_input_channels_are_accepted() -> None:
    backbone = LeNetBackbone(input_shape=(3, 32, 32))
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 50)


def test_conv_output_size() -> None:
    assert conv_output_size(28, 5) == 4 and conv_output_size(36, 5) == 6
    assert conv_output_size(16, 5) == 1 and conv_output_size(15, 5) == 0


def test_vector_inputs_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"needs image inputs \[C, H, W\].*\(32,\)"):
        LeNetBackbone(input_shape=(32,))


def test_too_small_images_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 16 pixels a side. Found 15×15"):
        LeNetBackbone(input_shape=(1, 15, 15))


def test_bad_width_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="`model.width` must be an integer >= 1"):
        LeNetBackbone(input_shape=(1, 28, 28), width=0)
