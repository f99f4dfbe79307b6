"""The MultiLeNet shared encoder of Sener & Koltun (NeurIPS 2018, https://arxiv.org/abs/1810.04650).

Shared: conv(C→10, k5) → maxpool 2 → ReLU → conv(10→20, k5) → maxpool 2 → ReLU → flatten →
fc(F→50) → ReLU, where F = 20·h·w follows from the input size (320 for 28×28, 720 for 36×36). The
heads fc(50→50) → ReLU → fc(50→K) (or → d for regression) come from ``model.head_layers: 2`` and
``model.head_hidden: 50`` via :func:`mtlbench.models.heads.make_head`.

Dropout (``model.dropout``, default 0: none, the paper's text): Kurin et al. (NeurIPS 2022, "In
Defense of the Unitary Scalarization for Deep Multi-Task Learning", App. C.1.1) train this network
with dropout 0.5 in the encoder and the decoders, as Sener & Koltun's released code does. With
``dropout = p > 0`` the encoder gets a channel dropout (``nn.Dropout2d(p)``) after conv2, before its
maxpool, and each head an ``nn.Dropout(p)`` after its hidden ReLU — the places of the released code
(``MultiLeNetR`` / ``MultiLeNetO``). Two differences from that code: PyTorch's dropout is *inverted*
(kept units are scaled by 1/(1 − p) in training, identity in eval), where the released code
multiplies by an unscaled 0/1 mask in training and by nothing in eval; and ``nn.Dropout2d`` draws a
channel mask per example, where the released encoder draws one per batch. Nothing follows the
last shared layer (fc → ReLU), so the ``last_shared`` split of the gradient engine stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor, nn

from mtlbench.errors import ConfigError
from mtlbench.models.checks import check_dropout


@dataclass
class LeNetConfig:
    """Schema of ``model=lenet``: conv widths, kernel size, shared fc width, dropout, heads."""

    _target_: str = "mtlbench.models.lenet.LeNetBackbone"
    conv1_channels: int = 10
    conv2_channels: int = 20
    kernel_size: int = 5
    width: int = 50
    dropout: float = 0.0
    head_layers: int = 2
    head_hidden: Optional[int] = 50


def conv_output_size(size: int, kernel_size: int) -> int:
    """Side length after the two (valid conv k → maxpool 2) stages."""
    for _ in range(2):
        size = (size - kernel_size + 1) // 2
    return size


class LeNetBackbone(nn.Module):
    """x [B, C, H, W] → 2 × (conv → maxpool → ReLU) → flatten → fc → ReLU → z [B, width]; with
    ``dropout > 0`` a ``Dropout2d`` after the second conv."""

    def __init__(self, *, input_shape: tuple[int, ...], conv1_channels: int = 10,
                 conv2_channels: int = 20, kernel_size: int = 5, width: int = 50,
                 dropout: float = 0.0) -> None:
        super().__init__()
        for key, value in (("conv1_channels", conv1_channels), ("conv2_channels", conv2_channels),
                           ("kernel_size", kernel_size), ("width", width)):
            if value < 1:
                raise ConfigError(f"`model.{key}` must be an integer >= 1. "
                                  f"Found `model.{key} = {value}`.")
        self.dropout = check_dropout("dropout", dropout)
        if len(input_shape) != 3:
            raise ConfigError(f"`model=lenet` needs image inputs [C, H, W]; this dataset's inputs "
                              f"have shape {tuple(input_shape)}. Use model=mlp.")
        channels, height, width_in = (int(s) for s in input_shape)
        out_h, out_w = (conv_output_size(s, kernel_size) for s in (height, width_in))
        if out_h < 1 or out_w < 1:
            raise ConfigError(f"`model=lenet` with model.kernel_size={kernel_size} needs images of "
                              f"at least {3 * kernel_size + 1} pixels "
                              f"a side. Found {height}×{width_in}.")
        # conv2 keeps index 3 either way (dropout has no parameters): the state-dict keys do not
        # depend on the dropout; at 0 the modules are exactly those of the dropout-free network
        conv2_drop: list[nn.Module] = [nn.Dropout2d(self.dropout)] if self.dropout > 0 else []
        self.features = nn.Sequential(
            nn.Conv2d(channels, conv1_channels, kernel_size), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(conv1_channels, conv2_channels, kernel_size), *conv2_drop,
            nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
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
