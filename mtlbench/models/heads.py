"""Task heads: K logits for classification, d outputs for regression. They know nothing of
strategies.

A head is ``layers`` linear layers with a ReLU between consecutive ones (and, with ``dropout``,
a dropout after each of those ReLUs):

* ``layers=1``: ``Linear(in_dim → out_dim)`` (the default of ``model=mlp`` and
  ``model=resnet18``);
* ``layers=2``: ``Linear(in_dim → hidden) → ReLU [→ Dropout] → Linear(hidden → out_dim)``: the
  MultiLeNet decoder of Sener & Koltun (NeurIPS 2018, arXiv:1810.04650; hidden 50, and dropout 0.5
  in Kurin et al., NeurIPS 2022, "In Defense of the Unitary Scalarization for Deep Multi-Task
  Learning", App. C.1.1) and the heads of two linear layers with a ReLU of Recon (Shi et al.,
  ICLR 2023, App. B.1; its released MultiMNIST code shares the first one instead:
  ``model=resnet18``'s ``fc`` 512 → 100 and ReLU, then a per-task ``Linear(100 → 10)``);
* ``layers=L``: L − 1 hidden layers of width ``hidden``.
"""

from __future__ import annotations

from torch import nn

from mtlbench.models.checks import check_dropout, check_int, check_optional_int
from mtlbench.tasks import TaskSpec


def make_head(task: TaskSpec, in_dim: int, hidden: int | None = 0, *, layers: int | None = None,
              dropout: float = 0.0) -> nn.Module:
    """The head of ``task`` on a representation of ``in_dim`` units.

    Args:
        task: its ``out_dim`` is the head's output width.
        in_dim: the representation width (the backbone's ``out_dim``).
        hidden: width of the hidden layers (``layers >= 2``); None or 0: ``in_dim``.
        layers: number of linear layers (>= 1). None (the call of older code): 2 if ``hidden``
            else 1, so ``make_head(task, d)`` is ``Linear(d, out)`` and ``make_head(task, d, h)``
            is ``Linear(d, h) → ReLU → Linear(h, out)``.
        dropout: probability of ``nn.Dropout`` after each hidden ReLU (0: no dropout module, the
            same modules, initialization and outputs as without the argument).

    Returns ``nn.Linear`` for one layer, else an ``nn.Sequential``. Raises a one-line
    :class:`~mtlbench.errors.ConfigError` for a bad ``layers``, ``hidden`` or ``dropout``.
    """
    if layers is None:
        layers = 2 if hidden else 1
    check_int("head_layers", layers, minimum=1)
    check_optional_int("head_hidden", hidden, minimum=0)
    p = check_dropout("dropout", dropout)
    if layers == 1:
        return nn.Linear(in_dim, task.out_dim)
    width = hidden or in_dim
    modules: list[nn.Module] = []
    fan_in = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(fan_in, width), nn.ReLU()]
        if p > 0:
            modules.append(nn.Dropout(p))
        fan_in = width
    modules.append(nn.Linear(fan_in, task.out_dim))
    return nn.Sequential(*modules)
