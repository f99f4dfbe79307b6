"""Shared MLP backbone."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from mtlbench.errors import ConfigError


@dataclass
class MLPConfig:
    """Schema of ``model=mlp``: ``depth`` Linear+ReLU layers of ``width`` units; heads of
    ``head_layers`` linear layers, hidden ones ``head_hidden`` wide (null: ``width``)."""

    _target_: str = "mtlbench.models.mlp.MLPBackbone"
    width: int = 128
    depth: int = 2
    head_layers: int = 1
    head_hidden: Optional[int] = None


class MLPBackbone(nn.Module):
    """x [B, *input_shape] → flatten → (Linear → ReLU) × depth → representation [B, width]."""

    def __init__(self, *, input_shape: tuple[int, ...], width: int = 128, depth: int = 2) -> None:
        super().__init__()
        for key, value in (("width", width), ("depth", depth)):
            if value < 1:
                raise ConfigError(
                    f"`model.{key}` must be an integer >= 1. Found `model.{key} = {value}`."
                )
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    @property
    def last_shared(self) -> nn.Module:
        """The last shared layer (GradNorm's W)."""
        return self.net[-2]

    def trunk(self, x: Tensor) -> Tensor:
        """Everything before :attr:`last_shared`: its input."""
        # (iterating: slicing or indexing a Sequential costs microseconds per call, every step)
        for layer in itertools.islice(self.net, len(self.net) - 2):
            x = layer(x)
        return x

    def tail(self, u: Tensor) -> Tensor:
        """Everything after :attr:`last_shared` (its ReLU): its output u → z."""
        return torch.relu(u)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
