"""Shared fixtures: composing configs in-process and running the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from mtlbench.config import register_configs

REPO = Path(__file__).resolve().parents[1]

#: Overrides that make any run take a second or two on 2 CPU cores.
FAST = ["trainer.max_steps=6", "trainer.eval_every=3", "trainer.batch_size=32",
        "data.n_train=256", "data.n_val=64", "data.n_test=64", "trainer.device=cpu"]


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The root config composed exactly as `mtlbench train <overrides>` would (without hydra.*)."""
    register_configs()
    with initialize_config_module(config_module="mtlbench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mtlbench.cli <args>`` in ``cwd``; returns the completed process (text)."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "mtlbench.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def cfg_factory():
    return compose_config


def killed_and_resumed(args: Sequence[str], name: str, tmp_path: Path,
                       at_step: int) -> tuple[dict, dict]:
    """Test metrics of an uninterrupted run of ``args`` and of one that dies right after writing
    its checkpoint of ``at_step`` (as a kill would) and is then re-run in the same dir."""
    from mtlbench import train

    full = train.run(compose_config(args), tmp_path / "full", name)["tasks"]
    killed_at(args, name, tmp_path / "part", at_step)
    return full, train.run(compose_config(args), tmp_path / "part", name)["tasks"]


def killed_at(args: Sequence[str], name: str, run_dir: Path, at_step: int) -> None:
    """Run ``args`` in ``run_dir`` until it has written its checkpoint of ``at_step``, then die
    (as a kill would: no metrics.json)."""
    from mtlbench import checkpoint, train

    save = train.Loop.save

    def save_then_die(self: train.Loop, step: int, skipped: int) -> Path:
        path = save(self, step, skipped)
        if step == at_step:
            raise KeyboardInterrupt("killed")
        return path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.Loop, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train.run(compose_config(args), run_dir, name)
    assert checkpoint.list_checkpoints(run_dir)[-1][0] == at_step
    assert not (run_dir / "metrics.json").exists()


def job_dirs(sweep: Path) -> list[Path]:
    """A sweep dir's job dirs, sorted (not its hidden ledger, :mod:`mtlbench.ledger`)."""
    return sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
