"""The Lin et al. 2019 pair construction (``data.construction=lin2019``) and the last-N validation
split (``data.val_last``), next to the default Sener & Koltun construction they must not change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config

from mtlbench.data import build_data, pairs
from mtlbench.data.pairs import (
    LIN2019_PAIRS_PER_ITEM,
    PairIndex,
    _digest,
    load_or_build_pairs,
    make_pairs,
    plan_lin2019_pairs,
    plan_pairs,
)
from mtlbench.data.sources import DEBIAN_FASHION_DIR, ImageSplit, write_idx
from mtlbench.errors import ConfigError, DataError

needs_fashion = pytest.mark.skipif(not DEBIAN_FASHION_DIR.is_dir(),
                                   reason="Debian dataset-fashion-mnist not installed")
TASKS = {"left": {"kind": "classification"}, "right": {"kind": "classification"},
         "sum": {"kind": "regression"}}
SPLITS = ("train", "val", "test")


def deterministic_idx_folder(folder: Path, n_train: int, n_test: int, salt: int) -> Path:
    """The four IDX files with arithmetic (RNG-free, hence version-stable) pixels and labels.

    Pixel [0, 0] of item i is ``i % 256``, so a rendered pair tells which items it shows; labels
    are ``(3 i + salt) % 10``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        flat = np.arange(n * 784, dtype=np.int64)
        images = ((flat * 37 + (flat // 784) * 13 + salt * 101) % 256).astype(np.uint8)
        images = images.reshape(n, 28, 28)
        images[:, 0, 0] = np.arange(n) % 256
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", (np.arange(n) * 3 + salt) % 10)
    return folder


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, str]:
    """An MNIST-like folder (60 train, 20 test items) and a Fashion-like one (40, 15)."""
    return {"mnist_dir": str(deterministic_idx_folder(tmp_path / "m", 60, 20, salt=0)),
            "fashion_dir": str(deterministic_idx_folder(tmp_path / "f", 40, 15, salt=1))}


def labels_of(n_train: int, n_test: int, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n_train) % n_classes, np.arange(n_test) % n_classes


def reference_placed_canvas(left: np.ndarray, right: np.ndarray, left_at: np.ndarray,
                            right_at: np.ndarray) -> np.ndarray:
    """One pair, pixel by pixel: each item at its (row, col), max where they overlap."""
    canvas = np.zeros((36, 36), dtype=np.uint8)
    for item, (r0, c0) in ((left, left_at), (right, right_at)):
        for r in range(28):
            for c in range(28):
                canvas[r0 + r, c0 + c] = max(canvas[r0 + r, c0 + c], item[r, c])
    return canvas


# ----------------------------------------------------------------------------- default unchanged
#: Cache file names and array digests of the default construction on the folders above, computed
#: by the code before ``data.construction`` / ``data.val_last`` existed: the default must keep
#: both (same cache files, byte-identical pairs).
BEFORE = {
    ("mnist", "mnist", False): ("mnist-mnist-fe056ae8eaa66612cc9b.pt",
                                "cda458077be1cf6afc558b2b2ff7833d"),
    # capped: its own key since CAPPED_PLANS 2 (a cap on one split changes no other split)
    ("mnist", "mnist", True): ("mnist-mnist-1a1597346d2af00b45d3.pt", None),
    ("fashion", "mnist", False): ("fashion-mnist-2dc6f39c4ed1ed7c41b2.pt",
                                  "3a4b3988041be70c8cbcc19cffa1e968"),
}
CAPS = {"train": 20, "val": 3, "test": 7}


@pytest.mark.parametrize("left,right,capped", list(BEFORE))
def test_default_construction_keeps_its_cache_key_and_pairs(tmp_path: Path, folders, left: str,
                                                            right: str, capped: bool) -> None:
    options = {"left_items": left, "right_items": right, "seed": 5, "source": "idx",
               "caps": CAPS if capped else {}, "cache_dir": tmp_path / "cache", **folders}
    implicit, path = load_or_build_pairs(**options)
    explicit, again = load_or_build_pairs(**options, construction="sener_koltun", val_last=None)
    assert path is not None and path.name == BEFORE[(left, right, capped)][0]
    assert again == path
    assert _digest(implicit) == _digest(explicit)
    if not capped:
        assert _digest(implicit) == BEFORE[(left, right, capped)][1]


@pytest.mark.parametrize("construction", ["sener_koltun", "lin2019"])
@pytest.mark.parametrize("capped", ["train", "val"])
def test_a_cap_on_one_split_leaves_the_later_splits_pairs_as_they_are(
        construction: str, capped: str) -> None:
    """Capping data.n_train (or n_val) once re-paired the validation and test sets: a
    training-size sweep was scored on other test pairs. Now each later split is the uncapped
    one, and the capped split is a prefix of its uncapped pairs."""
    labels = (np.arange(600) % 10, np.arange(200) % 10)
    if construction == "lin2019":
        def plan(caps: dict) -> dict:
            return plan_lin2019_pairs(labels, None, seed=3, val_fraction=0.1, caps=caps)
    else:
        def plan(caps: dict) -> dict:
            return plan_pairs((600, 200), None, seed=3, val_fraction=0.1, caps=caps)
    whole, cut = plan({}), plan({capped: 40})
    for split in SPLITS[SPLITS.index(capped) + 1:]:
        for a, b in zip(vars(whole[split]).values(), vars(cut[split]).values(), strict=True):
            assert a is None and b is None or np.array_equal(a, b), split
    for a, b in zip(vars(whole[capped]).values(), vars(cut[capped]).values(), strict=True):
        assert a is None and b is None or np.array_equal(a[:40], b), capped


def test_cache_keys_differ_between_constructions_and_splits(tmp_path: Path, folders) -> None:
    base = {"left_items": "mnist", "right_items": "mnist", "source": "idx", "image_size": 36,
            "cache_dir": tmp_path / "cache", **folders}
    names = {
        load_or_build_pairs(**base, seed=0)[1].name,
        load_or_build_pairs(**base, seed=0, construction="lin2019")[1].name,
        load_or_build_pairs(**base, seed=1, construction="lin2019")[1].name,
        load_or_build_pairs(**base, seed=0, val_last=10)[1].name,
        load_or_build_pairs(**base, seed=0, construction="lin2019", val_last=10)[1].name,
    }
    assert len(names) == 5
    # with val_last the random fraction is unused: it does not split the cache
    a = load_or_build_pairs(**base, seed=0, val_last=10, val_fraction=0.3)[1].name
    assert a in names


# ----------------------------------------------------------------------------- lin2019: counts
def test_every_item_is_the_top_left_item_of_two_pairs() -> None:
    plan = plan_lin2019_pairs(labels_of(50, 20), None, seed=0, val_fraction=0.2, caps={})
    assert LIN2019_PAIRS_PER_ITEM == 2
    assert [len(plan[s]) for s in SPLITS] == [80, 20, 40]
    for split, pool_size in zip(SPLITS, (40, 10, 20), strict=True):
        index = plan[split]
        pool = np.unique(index.left)
        assert len(pool) == pool_size
        assert (np.bincount(index.left)[pool] == 2).all()
        # pair i and pair i + P show the same item, with their own partner and position
        np.testing.assert_array_equal(index.left[:pool_size], index.left[pool_size:])
        assert not np.array_equal(index.right[:pool_size], index.right[pool_size:])
    # train and val share no item, test items come from the test split
    assert not (set(plan["train"].left) | set(plan["train"].right)) & set(plan["val"].left)
    assert plan["test"].left.max() < 20 and plan["test"].right.max() < 20


def test_caps_take_a_subset_and_are_bounded_by_two_per_item() -> None:
    labels = labels_of(50, 20)
    capped = plan_lin2019_pairs(labels, None, seed=0, val_fraction=0.2,
                                caps={"train": 30, "val": 20, "test": 40})
    assert [len(capped[s]) for s in SPLITS] == [30, 20, 40]
    assert len(np.unique(capped["train"].left)) == 30  # a cap <= P: each item once
    with pytest.raises(ConfigError, match=r"`data.n_val` must be at most 20 \(2 per item") as exc:
        plan_lin2019_pairs(labels, None, seed=0, val_fraction=0.2, caps={"val": 21})
    assert "\n" not in str(exc.value)


def test_partner_has_another_class_for_one_kind_and_any_class_across_kinds() -> None:
    labels = labels_of(400, 100)
    plan = plan_lin2019_pairs(labels, None, seed=3, val_fraction=0.1, caps={})
    for split in SPLITS:
        side = labels[1] if split == "test" else labels[0]
        index = plan[split]
        assert (side[index.left] != side[index.right]).all()
    # partners spread over the pool's items of the other classes
    assert len(np.unique(plan["train"].right)) > 0.6 * 360
    # MNIST digits next to Fashion items: the label sets are unrelated, any partner goes
    mixed = plan_lin2019_pairs(labels, labels_of(300, 80), seed=3, val_fraction=0.1, caps={})
    train = mixed["train"]
    assert train.right.max() < 300
    assert (labels[0][train.left] == labels[0][train.right]).any()


def test_a_pool_of_one_class_cannot_pair_items_of_different_classes() -> None:
    one_class = (np.zeros(30, dtype=np.int64), np.zeros(10, dtype=np.int64))
    with pytest.raises(DataError, match="no partner of another class"):
        plan_lin2019_pairs(one_class, None, seed=0, val_fraction=0.1, caps={})


# ----------------------------------------------------------------------------- lin2019: placement
def test_positions_are_the_corners_moved_inward_by_up_to_four_pixels() -> None:
    plan = plan_lin2019_pairs(labels_of(2000, 10), None, seed=1, val_fraction=0.1, caps={})
    index = plan["train"]
    assert index.left_offset is not None and index.right_offset is not None
    assert index.left_offset.shape == index.right_offset.shape == (3600, 2)
    # top-left item: rows and columns 0..4; bottom-right item: 4..8 (from [8:36, 8:36])
    assert index.left_offset.min() == 0 and index.left_offset.max() == 4
    assert index.right_offset.min() == 4 and index.right_offset.max() == 8
    # all 25 positions of each side occur: rows and columns move independently (not a diagonal)
    for offsets in (index.left_offset, index.right_offset):
        assert len({tuple(o) for o in offsets.tolist()}) == 25
    # the two items never swap corners
    assert (index.left_offset <= index.right_offset).all()


def test_rendered_pairs_put_each_item_at_its_position() -> None:
    rng = np.random.default_rng(0)
    images = (rng.random((30, 28, 28)) ** 3 * 255).astype(np.uint8)  # mostly dark, some ink
    source = ImageSplit(images, np.arange(30) % 10)
    plan = plan_lin2019_pairs((source.labels, source.labels[:10]), None, seed=2,
                              val_fraction=0.1, caps={})
    index = plan["train"]
    rendered = make_pairs(source, source, index, image_size=36)
    assert rendered["images"].shape == (54, 36, 36) and rendered["images"].dtype == np.uint8
    np.testing.assert_array_equal(rendered["left"], source.labels[index.left])
    np.testing.assert_array_equal(rendered["right"], source.labels[index.right])
    for i in range(len(index)):
        expected = reference_placed_canvas(images[index.left[i]], images[index.right[i]],
                                           index.left_offset[i], index.right_offset[i])
        np.testing.assert_array_equal(rendered["images"][i], expected)


def test_plan_is_a_function_of_the_seed() -> None:
    def flat(plan: dict[str, PairIndex]) -> np.ndarray:
        return np.concatenate([np.concatenate([p.left, p.right, p.left_offset.ravel(),
                                               p.right_offset.ravel()]) for p in plan.values()])

    labels = labels_of(300, 50)
    a = plan_lin2019_pairs(labels, None, seed=7, val_fraction=0.1, caps={"train": 100})
    b = plan_lin2019_pairs(labels, None, seed=7, val_fraction=0.1, caps={"train": 100})
    c = plan_lin2019_pairs(labels, None, seed=8, val_fraction=0.1, caps={"train": 100})
    np.testing.assert_array_equal(flat(a), flat(b))
    assert not np.array_equal(flat(a), flat(c))


def test_built_lin2019_data_is_36x36_and_deterministic(tmp_path: Path, folders) -> None:
    common = {"seed": 4, "tasks": TASKS, "left_items": "fashion", "right_items": "mnist",
              "source": "idx", "construction": "lin2019", "image_size": 36, "normalize": False,
              "cache": False, **folders}
    first = pairs.build(**common)
    second = pairs.build(**common)
    # 40 fashion train items, 10% validate: 36 → 72 train pairs, 4 → 8, 15 test items → 30
    assert [len(first.train), len(first.val), len(first.test)] == [72, 8, 30]
    assert first.input_shape == (1, 36, 36)
    for split in SPLITS:
        torch.testing.assert_close(getattr(first, split).inputs, getattr(second, split).inputs,
                                   rtol=0, atol=0)
    other = pairs.build(**{**common, "seed": 5})
    assert not torch.equal(first.train.inputs, other.train.inputs)


# ----------------------------------------------------------------------------- val_last
def test_val_last_takes_exactly_the_last_training_items() -> None:
    plan = plan_pairs((100, 20), (50, 10), seed=0, val_fraction=0.1, caps={}, val_last=30)
    assert set(plan["val"].left) == set(range(70, 100))
    assert set(plan["train"].left) == set(range(70))
    assert set(plan["val"].right) <= set(range(20, 50))  # the last 30 of the right source
    assert set(plan["train"].right) <= set(range(20))
    lin = plan_lin2019_pairs(labels_of(100, 20), None, seed=0, val_fraction=0.1, caps={},
                             val_last=30)
    assert set(lin["val"].left) == set(range(70, 100)) and len(lin["val"]) == 60
    assert set(lin["val"].right) <= set(range(70, 100))
    assert set(lin["train"].left) | set(lin["train"].right) <= set(range(70))
    # still a random order inside the pool, so a cap is a random subset of the last items
    capped = plan_pairs((100, 20), None, seed=0, val_fraction=0.1, caps={"val": 5}, val_last=30)
    assert set(capped["val"].left) <= set(range(70, 100))
    assert list(capped["val"].left) != list(range(70, 75))


def test_val_last_end_to_end_shows_the_last_items(folders) -> None:
    data = pairs.build(seed=0, tasks=TASKS, source="idx", image_size=36, normalize=False,
                       cache=False, val_last=12, **folders)
    assert [len(data.train), len(data.val), len(data.test)] == [48, 12, 20]
    # canvas pixel [0, 0] is the top-left item's pixel [0, 0]: its index in the source
    shown = {split: set(torch.round(getattr(data, split).inputs[:, 0, 0, 0] * 255).long().tolist())
             for split in ("train", "val")}
    assert shown["val"] == set(range(48, 60)) and shown["train"] == set(range(48))


def test_config_defaults_are_today_s_construction_and_split() -> None:
    for dataset in ("multimnist", "multifashion", "multifashion_mnist"):
        cfg = compose_config([f"data={dataset}"])
        assert cfg.data.construction == "sener_koltun" and cfg.data.val_last is None
        assert cfg.data.val_fraction == 0.1 and cfg.data.image_size == 28


@needs_fashion
def test_config_group_builds_lin2019_with_the_last_items_validating(tmp_path: Path) -> None:
    cfg = compose_config(["data=multifashion", "data.construction=lin2019", "data.image_size=36",
                          "data.val_last=10000", "data.n_train=64", "data.n_val=16",
                          "data.n_test=16", f"data.cache_dir={tmp_path}"])
    data = build_data(cfg.data, seed=0)
    assert data.input_shape == (1, 36, 36)
    assert [len(data.train), len(data.val), len(data.test)] == [64, 16, 16]


# ----------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("option,message", [
    ({"construction": "lin2020"},
     "`data.construction` must be one of sener_koltun, lin2019. Found `data.construction = "
     "lin2020`."),
    ({"construction": "lin2019"}, "`data.construction=lin2019` keeps the 36x36 canvas: set "
                                  "data.image_size=36. Found `data.image_size = 28`."),
    ({"val_last": 0}, "`data.val_last` must be null or an integer >= 1"),
    ({"val_last": -5}, "`data.val_last` must be null or an integer >= 1"),
    ({"val_last": 2.5}, "`data.val_last` must be null or an integer >= 1"),
])
def test_bad_values_are_one_line_config_errors(option: dict, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        pairs.build(seed=0, tasks=TASKS, source="torchvision", root="/nonexistent", **option)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("construction", ["sener_koltun", "lin2019"])
def test_val_last_beyond_the_source_is_a_config_error(folders, construction: str) -> None:
    with pytest.raises(ConfigError) as exc:
        pairs.build(seed=0, tasks=TASKS, source="idx", image_size=36, cache=False,
                    construction=construction, val_last=60, **folders)
    assert str(exc.value) == ("`data.val_last` must be in 1..59 (the source has 60 training "
                              "items). Found `data.val_last = 60`.")
