"""A shared backbone with one head per task."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mtlbench.instantiate import instantiate_group
from mtlbench.models.heads import make_head
from mtlbench.tasks import TaskSpec


class MultiTaskModel(nn.Module):
    """``forward(x)`` returns the shared representation z [B, D] and each task's output
    head_t(z)."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.last_shared.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.heads.parameters() if p.requires_grad]

    def heads_forward(self, z: Tensor) -> dict[str, Tensor]:
        return {name: head(z) for name, head in self.heads.items()}

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.backbone(x)
        return z, self.heads_forward(z)


def build_model(cfg: DictConfig | dict[str, Any], input_shape: tuple[int, ...],
                tasks: list[TaskSpec]) -> MultiTaskModel:
    """Instantiate the ``model`` group's backbone and attach a head per task."""
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    head_hidden = int(node.pop("head_hidden", 0))
    backbone = instantiate_group("model", node, input_shape=tuple(input_shape))
    heads = {t.name: make_head(t, backbone.out_dim, head_hidden) for t in tasks}
    return MultiTaskModel(backbone, heads)
