"""torchvision's ResNet-18 as a shared backbone for small one-channel images (``model=resnet18``).

The network is ``torchvision.models.resnet18(weights=None)`` itself (random init, no download; its
blocks and forward are torchvision's, not re-written), with three modules replaced:

* ``conv1``: the ImageNet stem, a 7×7 stride-2 convolution on 3 channels, becomes a 3×3 stride-1
  padding-1 convolution on the data's C channels (``model.stem=small``, the default), the usual
  adaptation of ResNets to 28–36 pixel images; ``model.stem=imagenet`` keeps the 7×7 stride-2
  padding-3 shape on C channels. Either way it is re-initialized like torchvision's convolutions
  (Kaiming normal, fan-out, ReLU gain).
* ``maxpool``: removed (``nn.Identity``) with ``stem=small``; kept (3×3 stride 2) with ``imagenet``.
* ``fc``: ``Linear(512 → model.out_dim)`` (default 100, the representation width of Recon's
  MultiMNIST ResNet-18: Shi et al., "Recon: Reducing Conflicting Gradients from the Root for
  Multi-Task Learning", ICLR 2023, App. B.1), followed by a ReLU when ``model.out_relu`` (Recon's
  released code applies one before its per-task ``Linear(100 → 10)`` heads). ``out_dim: null``:
  ``nn.Identity``, the 512 pooled features are the representation.

Recon's released ``MnistResNet_recon`` keeps the ImageNet stem and max-pool (with one input
channel): ``model=resnet18 model.stem=imagenet`` is that network; the default ``small`` stem keeps
the full resolution (36×36 → 36, 18, 9, 5 through layer1–4 instead of 9, 9, 5, 3, 2).

Sizes (1 input channel, 2 tasks of 10 classes, linear heads): backbone 11,218,980 parameters with
``stem=small, out_dim=100`` (11,167,680 with ``out_dim: null``); torchvision's 3-channel
1000-class ResNet-18 has 11,689,512.

Gradient sources: with ``out_dim`` set, :attr:`last_shared` is the final ``Linear`` (GradNorm's W)
with :meth:`trunk` (conv body → avgpool → flatten) and :meth:`tail` (ReLU or identity) around it,
so ``params=last_shared`` gets its per-task gradients from the layer's input and output gradients.
With ``out_dim: null`` it is the last ``BasicBlock`` of ``layer4`` (per-task gradients by a batched
VJP). BatchNorm runs in training mode in training (batch statistics; running statistics in
evaluation); the gradient engine calls the backbone once per step, so running statistics are
updated once a step whatever the strategy.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from torch import Tensor, nn

from mtlbench.errors import ConfigError
from mtlbench.models.checks import check_choice, check_optional_int

if TYPE_CHECKING:
    from torchvision.models import ResNet

#: ``model.stem`` options: ``small`` (3×3 stride 1, no max-pool) or ``imagenet`` (7×7 stride 2
#: and the 3×3 stride-2 max-pool, torchvision's shapes).
STEMS = ("small", "imagenet")

#: Width of ResNet-18's pooled features (``layer4``'s channels).
FEATURES = 512


@dataclass
class ResNet18Config:
    """Schema of ``model=resnet18``: stem, representation width and ReLU, heads."""

    _target_: str = "mtlbench.models.resnet.ResNet18Backbone"
    stem: str = "small"
    out_dim: Optional[int] = 100
    out_relu: bool = True
    head_layers: int = 1
    head_hidden: Optional[int] = None


class ResNet18Backbone(nn.Module):
    """x [B, C, H, W] → torchvision's ResNet-18 (adapted stem, new ``fc``) → z [B, out_dim].

    ``self.net`` is the ``torchvision.models.ResNet``; ``forward`` is its forward (then the ReLU
    of ``out_relu``)."""

    def __init__(self, *, input_shape: tuple[int, ...], stem: str = "small",
                 out_dim: int | None = 100, out_relu: bool = True) -> None:
        super().__init__()
        check_choice("stem", stem, STEMS)
        check_optional_int("out_dim", out_dim, minimum=1)
        if not isinstance(out_relu, bool):
            raise ConfigError(
                f"Parameter `out_relu` must be true or false. Found `out_relu = {out_relu}`.")
        if len(input_shape) != 3:
            raise ConfigError(f"`model=resnet18` needs image inputs [C, H, W]; this dataset's "
                              f"inputs have shape {tuple(input_shape)}. Use model=mlp.")
        from torchvision.models import resnet18  # ~1 s to import: only when the model is built

        net: ResNet = resnet18(weights=None)
        channels = int(input_shape[0])
        if stem == "small":
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()  # type: ignore[assignment]
        else:
            net.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        fc: nn.Module = nn.Linear(FEATURES, out_dim) if out_dim is not None else nn.Identity()
        net.fc = fc  # type: ignore[assignment]
        self.net = net
        self.stem = stem
        self.out_relu = out_relu and out_dim is not None  # pooled features are >= 0 already
        self.out_dim = out_dim if out_dim is not None else FEATURES

    @property
    def last_shared(self) -> nn.Module:
        """The last shared layer (GradNorm's W): ``fc``, or the last block of ``layer4`` when
        ``out_dim`` is null (``fc`` is then an identity)."""
        if isinstance(self.net.fc, nn.Linear):
            return self.net.fc
        return self.net.layer4[-1]

    def _stem_and_layers(self) -> list[nn.Module]:
        net = self.net
        return [net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3]

    def trunk(self, x: Tensor) -> Tensor:
        """Everything before :attr:`last_shared`: its input (torchvision's ``_forward_impl`` up to
        the flatten, or up to ``layer4``'s last block)."""
        for module in self._stem_and_layers():
            x = module(x)
        blocks = self.net.layer4
        if isinstance(self.net.fc, nn.Linear):
            return self.net.avgpool(blocks(x)).flatten(1)
        for block in itertools.islice(blocks, len(blocks) - 1):
            x = block(x)
        return x

    def tail(self, u: Tensor) -> Tensor:
        """Everything after :attr:`last_shared`: the ReLU of ``out_relu`` (or nothing), or the
        average pool and flatten when ``out_dim`` is null."""
        if isinstance(self.net.fc, nn.Linear):
            return u.relu() if self.out_relu else u
        return self.net.avgpool(u).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        z = self.net(x)
        return z.relu() if self.out_relu else z
