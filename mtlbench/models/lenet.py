"""The MultiLeNet shared encoder of Sener & Koltun (NeurIPS 2018, https://arxiv.org/abs/1810.04650).

Shared: conv(C→10, k5) → maxpool 2 → ReLU → conv(10→20, k5) → maxpool 2 → ReLU → flatten →
fc(F→50) → ReLU, where F = 20·h·w follows from the input size (320 for 28×28, 720 for 36×36). The
heads fc(50→50) → ReLU → fc(50→K) (or → d for regression) come from ``model.head_hidden: 50`` via
:func:`mtlbench.models.heads.make_head`. Their released code also applies dropout (a channel mask
after conv2 and a unit mask in the heads); this backbone leaves it out, as the paper's text does.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from mtlbench.errors import ConfigError


@dataclass
class LeNetConfig:
    """Schema of ``model=lenet``: conv widths, kernel size, shared fc width, heads' hidden width."""

    _target_: str = "mtlbench.models.lenet.LeNetBackbone"
    conv1_channels: int = 10
    conv2_channels: int = 20
    kernel_size: int = 5
    width: int = 50
    head_hidden: int = 50


def conv_output_size(size: int, kernel_size: int) -> int:
    """Side length after the two (valid conv k → maxpool 2) stages."""
    for _ in range(2):
        size = (size - kernel_size + 1) // 2
    return size


class LeNetBackbone(nn.Module):
    """x [B, C, H, W] → 2 × (conv → maxpool → ReLU) → flatten → fc → ReLU → z [B, width]."""

    def __init__(self, *, input_shape: tuple[int, ...], conv1_channels: int = 10,
                 conv2_channels: int = 20, kernel_size: int = 5, width: int = 50) -> None:
        super().__init__()
        for key, value in (("conv1_channels", conv1_channels), ("conv2_channels", conv2_channels),
                           ("kernel_size", kernel_size), ("width", width)):
            if value < 1:
                raise ConfigError(f"`model.{key}` must be an integer >= 1. "
                                  f"Found `model.{key} = {value}`.")
        if len(input_shape) != 3:
            raise ConfigError(f"`model=lenet` needs image inputs [C, H, W]; this dataset's inputs "
                              f"have shape {tuple(input_shape)}. Use model=mlp.")
        channels, height, width_in = (int(s) for s in input_shape)
        out_h, out_w = (conv_output_size(s, kernel_size) for s in (height, width_in))
        if out_h < 1 or out_w < 1:
            raise ConfigError(f"`model=lenet` with model.kernel_size={kernel_size} needs images of "
                              f"at least {3 * kernel_size + 1} pixels "
                              f"a side. Found {height}×{width_in}.")
        self.features = nn.Sequential(
            nn.Conv2d(channels, conv1_channels, kernel_size), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(conv1_channels, conv2_channels, kernel_size), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(),
        )
        self.flat_dim = conv2_channels * out_h * out_w
        self.fc = nn.Linear(self.flat_dim, width)
        self.out_dim = width

    @property
    def last_shared(self) -> nn.Module:
        """The last shared layer (GradNorm's W): the fully connected layer."""
        return self.fc

    def trunk(self, x: Tensor) -> Tensor:
        """Everything before :attr:`last_shared`: its input, the flattened conv features."""
        return self.features(x)

    def tail(self, u: Tensor) -> Tensor:
        """Everything after :attr:`last_shared`: its output u → z = ReLU(u)."""
        return u.relu()

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.fc(self.trunk(x)))
