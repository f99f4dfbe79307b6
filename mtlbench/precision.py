"""``trainer.precision``: full float32, or mixed precision by autocast (``bf16-mixed``,
``16-mixed``), with a gradient scaler for float16.

The parameters, their gradients and the optimizer stay float32; inside :meth:`Precision.autocast`
matrix products and convolutions run in bfloat16 / float16. The task losses are taken in float32
(``train.task_losses`` after autocast), and the per-task statistics (norms, Gramians) are
accumulated in float32 or float64 whatever the activations' dtype (``mtlbench.gradients``).

float16 (``16-mixed``) multiplies the loss by the scaler's factor S before the backward so that
small gradients do not flush to zero in float16, as ``torch.amp.GradScaler`` does. Per-task
gradients are then S ∇L_i: the loop hands a strategy the *unscaled* statistics (Gramian / S²,
norms / S) and a combiner its gradients / S (``train.strategy_weigh``), so no strategy ever sees S;
the parameters' gradients are unscaled (``GradScaler.unscale_``) before the finiteness check and
the optimizer step. A step whose gradients overflow while the losses are finite is the scaler's
business, not a divergence: it is skipped, the scale is lowered, and the loop counts it as an
``overflow`` step (``train/overflow_steps``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mtlbench.errors import ConfigError

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass
class Precision:
    """The autocast setting of a run and, for ``16-mixed``, its gradient scaler."""

    mode: str = "32"
    device_type: str = "cpu"
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Autocast to the mode's dtype on the run's device (a no-op context for ``32``)."""
        if self.mode == "32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=DTYPES[self.mode])

    def scale(self) -> float:
        """The loss-scale factor S (1 without a scaler); one host read."""
        return 1.0 if self.scaler is None else float(self.scaler.get_scale())


def build_precision(mode: str, device: torch.device) -> Precision:
    """A :class:`Precision` for ``trainer.precision = mode`` on ``device``."""
    mode = str(mode)
    if mode not in PRECISIONS:
        raise ConfigError(f"`trainer.precision` must be one of {', '.join(PRECISIONS)}. "
                          f"Found `trainer.precision = {mode}`.")
    if mode == "16-mixed" and device.type == "mps":
        raise ConfigError("`trainer.precision = 16-mixed` needs a CUDA or CPU device (no "
                          "gradient scaler on MPS); use bf16-mixed or 32.")
    scaler = torch.amp.GradScaler(device.type) if mode == "16-mixed" else None
    return Precision(mode, device.type, scaler)
