"""A shared backbone with one head per task."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from mtlbench.errors import ConfigError
from mtlbench.instantiate import instantiate_group
from mtlbench.models.checks import check_int, check_optional_int
from mtlbench.models.heads import make_head
from mtlbench.tasks import TaskSpec


class MultiTaskModel(nn.Module):
    """``forward(x)`` returns the shared representation z [B, D] and each task's output
    head_t(z)."""

    def __init__(self, backbone: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self._param_lists: dict[str, list[nn.Parameter]] = {}

    def _trainable(self, key: str, module: nn.Module) -> list[nn.Parameter]:
        """``module``'s parameters that require gradients. The list is cached: walking the module
        tree costs ~10 µs a call, several times a step. ``.to()``/``_apply`` clear the cache;
        replacing a submodule after construction is not tracked (mtlbench never does)."""
        if key not in self._param_lists:
            self._param_lists[key] = list(module.parameters())
        return [p for p in self._param_lists[key] if p.requires_grad]

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # .to() may swap params
        self._param_lists.clear()
        return super()._apply(fn, recurse)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self._trainable("all", self)

    def shared_parameters(self) -> list[nn.Parameter]:
        return self._trainable("shared", self.backbone)

    def last_shared_parameters(self) -> list[nn.Parameter]:
        return self._trainable("last_shared", self.backbone.last_shared)

    def head_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        """One task's head parameters, or all heads' (``task=None``)."""
        if task is None:
            return self._trainable("heads", self.heads)
        return self._trainable(f"head/{task}", self.heads[task])

    def heads_forward(self, z: Tensor) -> dict[str, Tensor]:
        return {name: head(z) for name, head in self.heads.items()}

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.backbone(x)
        return z, self.heads_forward(z)


def build_model(cfg: DictConfig | dict[str, Any], input_shape: tuple[int, ...],
                tasks: list[TaskSpec]) -> MultiTaskModel:
    """Instantiate the ``model`` group's backbone and attach a head per task.

    The head keys are read here, not by the backbone: ``head_layers`` (linear layers per head,
    >= 1) and ``head_hidden`` (their hidden width; null: the backbone's ``out_dim``), see
    :func:`mtlbench.models.heads.make_head`. A backbone with a ``dropout`` key (LeNet) gets it in
    its heads too, after each hidden ReLU. A node without ``head_layers`` (configs built in code
    before it existed) gets 2 layers if ``head_hidden`` is > 0, else 1.
    """
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    head_layers = node.pop("head_layers", None)
    head_hidden = node.pop("head_hidden", None)
    if head_layers is not None:
        check_int("model.head_layers", head_layers, minimum=1)
        check_optional_int("model.head_hidden", head_hidden, minimum=1)
        if head_layers == 1 and head_hidden is not None:
            raise ConfigError(
                "Parameter `model.head_hidden` is the width of hidden layers, which heads of "
                "`model.head_layers = 1` do not have: set model.head_layers >= 2 or "
                f"model.head_hidden=null. Found `model.head_hidden = {head_hidden}`.")
    dropout = node.get("dropout", 0.0)
    backbone = instantiate_group("model", node, input_shape=tuple(input_shape))
    heads = {t.name: make_head(t, backbone.out_dim, head_hidden, layers=head_layers,
                               dropout=dropout) for t in tasks}
    return MultiTaskModel(backbone, heads)
