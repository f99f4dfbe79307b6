"""MultiMNIST-style pair datasets: two 28×28 items overlaid on one image, one task per item.

The construction of Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS
2018 (https://arxiv.org/abs/1810.04650, and their released loader): for each source item pick a
random partner (seeded, never itself); on a 36×36 canvas put the item at the top-left [0:28, 0:28]
and the partner at the bottom-right [6:34, 6:34], combining overlapping pixels by max; resize the
canvas to 28×28 by nearest neighbour (pixel-centre aligned, as the PIL ``NEAREST`` filter behind
``scipy.misc.imresize`` in their loader; ``data.resize=area`` averages instead, and
``data.image_size=36`` keeps the canvas).

- ``data=multimnist``: MNIST digits on both sides.
- ``data=multifashion``: Fashion-MNIST items on both sides.
- ``data=multifashion_mnist``: a Fashion-MNIST item top-left and an MNIST digit bottom-right.

Tasks: ``left`` and ``right`` classify the two items (K = 10 each); ``sum`` regresses
left label + right label as a float (d = 1; the "different units" case of eq. (1): cross-entropies
of order 1 next to a squared error of order 10-100). ``data.regression=false`` drops ``sum``: the
published two-task setting.

Splits: train pairs come from the source's train split and test pairs from its test split. The
validation pairs are built from a seeded ``data.val_fraction`` of the source's train items held
out *before* pairing, so no image is shared between train, validation and test pairs. Every
item of a split's pool is the top-left item of exactly one pair; ``data.n_train`` / ``n_val`` /
``n_test`` cap the number of pairs (a seeded subset of the pool's items; partners are still drawn
from the whole pool).

Inputs are standardized by the training pairs' pixel mean and std (``data.normalize=false``:
pixels in [0, 1]). Generation is vectorised (index arithmetic on whole arrays) and cached on
disk, see :func:`load_or_build_pairs`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlbench.data.base import DataConfig, MultiTaskData, Split, task_spec
from mtlbench.data.sources import ITEM_KINDS, ImageSplit, resolve_source
from mtlbench.errors import ConfigError, DataError
from mtlbench.files import atomic_write_bytes
from mtlbench.tasks import TaskSpec

log = logging.getLogger("mtlbench")

ITEM_SIZE = 28
CANVAS_SIZE = 36
RIGHT_OFFSET = 6
NUM_CLASSES = 10
RESIZE_MODES: tuple[str, ...] = ("nearest", "area")
#: The tasks a pair dataset can define, with the kind each must have.
PAIR_TASKS: dict[str, str] = {"left": "classification", "right": "classification",
                              "sum": "regression"}
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Bump when the construction changes, so old cache files are not reused.
CACHE_FORMAT = 1


@dataclass
class PairsDataConfig(DataConfig):
    """Schema of the pair datasets (``data=multimnist``, ``multifashion``, ``multifashion_mnist``).

    ``left_items`` / ``right_items``: ``mnist`` or ``fashion``. ``source``: ``torchvision``,
    ``idx`` or ``mnist5k`` (see :mod:`mtlbench.data.sources`); ``root``: torchvision's root (null:
    ``<cache dir>/datasets``); ``mnist_dir`` / ``fashion_dir``: IDX folders for ``source=idx``.
    ``cache_dir``: null means ``$MTLBENCH_CACHE``, else ``~/.cache/mtlbench``.
    """

    _target_: str = "mtlbench.data.pairs.build"
    left_items: str = "mnist"
    right_items: str = "mnist"
    source: str = "torchvision"
    root: Optional[str] = None  # noqa: UP045
    mnist_dir: Optional[str] = None  # noqa: UP045
    fashion_dir: Optional[str] = None  # noqa: UP045
    download: bool = False
    image_size: int = ITEM_SIZE
    resize: str = "nearest"
    regression: bool = True
    normalize: bool = True
    val_fraction: float = 0.1
    n_train: Optional[int] = None  # noqa: UP045
    n_val: Optional[int] = None  # noqa: UP045
    n_test: Optional[int] = None  # noqa: UP045
    cache: bool = True
    cache_dir: Optional[str] = None  # noqa: UP045


@dataclass
class MultiMNISTConfig(PairsDataConfig):
    """``data=multimnist``: MNIST digits on both sides."""


@dataclass
class MultiFashionConfig(PairsDataConfig):
    """``data=multifashion``: Fashion-MNIST items on both sides (Debian IDX files by default)."""

    left_items: str = "fashion"
    right_items: str = "fashion"
    source: str = "idx"


@dataclass
class MultiFashionMNISTConfig(PairsDataConfig):
    """``data=multifashion_mnist``: a Fashion-MNIST item top-left, an MNIST digit bottom-right."""

    left_items: str = "fashion"
    right_items: str = "mnist"


# ----------------------------------------------------------------------------- construction
@dataclass(frozen=True)
class PairIndex:
    """Which source items form each pair of one split: indices into that split's source arrays."""

    left: np.ndarray
    right: np.ndarray

    def __len__(self) -> int:
        return int(self.left.shape[0])


def default_cache_dir() -> Path:
    """``$MTLBENCH_CACHE`` if set, else ``~/.cache/mtlbench``."""
    return Path(os.environ.get("MTLBENCH_CACHE") or "~/.cache/mtlbench").expanduser()


def draw_partners(n_pairs: int, pool_size: int, *, same_pool: bool,
                  rng: np.random.Generator) -> np.ndarray:
    """Partner positions (in a pool of ``pool_size``) of the first ``n_pairs`` left-pool items.

    With ``same_pool`` (left and right items from one pool) item i never pairs with itself: its
    partner is uniform over the other ``pool_size - 1`` items.
    """
    if same_pool:
        if pool_size < 2:
            raise DataError(f"A pool of {pool_size} item(s) cannot form pairs of distinct items.")
        return (np.arange(n_pairs) + rng.integers(1, pool_size, size=n_pairs)) % pool_size
    return rng.integers(0, pool_size, size=n_pairs)


def render_pairs(left: np.ndarray, right: np.ndarray, *, image_size: int = ITEM_SIZE,
                 resize: str = "nearest") -> np.ndarray:
    """Overlay ``left`` [N, 28, 28] (top-left) and ``right`` [N, 28, 28] (bottom-right) uint8 items.

    Returns uint8 [N, image_size, image_size]: the 36×36 canvas with ``left`` at [0:28, 0:28] and
    ``right`` at [6:34, 6:34] (pixel-wise max where they overlap), resized to ``image_size``.
    """
    if left.shape != right.shape or left.shape[1:] != (ITEM_SIZE, ITEM_SIZE):
        raise ValueError(f"Expected two [N, 28, 28] arrays; got {left.shape} and {right.shape}.")
    n = left.shape[0]
    canvas = np.zeros((n, CANVAS_SIZE, CANVAS_SIZE), dtype=np.uint8)
    canvas[:, :ITEM_SIZE, :ITEM_SIZE] = left
    lo, hi = RIGHT_OFFSET, RIGHT_OFFSET + ITEM_SIZE
    np.maximum(canvas[:, lo:hi, lo:hi], right, out=canvas[:, lo:hi, lo:hi])
    if image_size == CANVAS_SIZE:
        return canvas
    if resize == "nearest":
        # output pixel i samples the canvas pixel whose centre is nearest: floor((i + 0.5) * 36 / S)
        src = ((np.arange(image_size) + 0.5) * CANVAS_SIZE / image_size).astype(np.intp)
        return canvas[:, src[:, None], src[None, :]]
    if resize == "area":
        resized = F.interpolate(torch.from_numpy(canvas)[:, None].float(),
                                size=(image_size, image_size), mode="area")
        return resized[:, 0].round().clamp_(0, 255).to(torch.uint8).numpy()
    raise ConfigError(f"`data.resize` must be one of {', '.join(RESIZE_MODES)}. "
                      f"Found `data.resize = {resize}`.")


def split_pools(n_train_items: int, n_test_items: int, val_fraction: float,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded pools of source indices per split: val and train partition the source train split.

    Each pool is in a seeded random order, so capping a split to its first n items is a random
    subset.
    """
    n_val_items = int(round(val_fraction * n_train_items))
    perm = rng.permutation(n_train_items)
    return {"train": perm[n_val_items:], "val": perm[:n_val_items],
            "test": rng.permutation(n_test_items)}


def plan_pairs(
    left_counts: tuple[int, int],
    right_counts: tuple[int, int] | None,
    *,
    seed: int,
    val_fraction: float,
    caps: Mapping[str, int | None],
) -> dict[str, PairIndex]:
    """Which (left, right) source items form every pair of every split; a pure function of the seed.

    ``left_counts`` / ``right_counts``: (train, test) item counts of the two sources; ``None`` for
    ``right_counts`` means both sides draw from the same source (and the same pools). ``caps``:
    the maximum number of pairs per split (``None``: one pair per item of the left pool).
    """
    rng = np.random.default_rng([CACHE_FORMAT, int(seed) % 2**63, 0x9A125])
    left_pools = split_pools(*left_counts, val_fraction, rng)
    same_pool = right_counts is None
    right_pools = left_pools if same_pool else split_pools(*right_counts, val_fraction, rng)
    plan = {}
    for split in SPLITS:
        pool_l, pool_r = left_pools[split], right_pools[split]
        cap = caps.get(split)
        n_pairs = len(pool_l) if cap is None else int(cap)
        if n_pairs > len(pool_l):
            raise ConfigError(
                f"`data.n_{split}` must be at most {len(pool_l)} (the {split} pool's items, with "
                f"data.val_fraction = {val_fraction}). Found `data.n_{split} = {cap}`."
            )
        if n_pairs < 1 or len(pool_r) < 1:
            raise ConfigError(
                f"The {split} split would be empty: raise data.n_{split} or set data.val_fraction "
                f"in (0, 1) so that every split keeps items. Found `data.val_fraction = "
                f"{val_fraction}`."
            )
        partners = draw_partners(n_pairs, len(pool_r), same_pool=same_pool, rng=rng)
        plan[split] = PairIndex(pool_l[:n_pairs], pool_r[partners])
    return plan


def make_pairs(left: ImageSplit, right: ImageSplit, index: PairIndex, *,
               image_size: int = ITEM_SIZE, resize: str = "nearest") -> dict[str, np.ndarray]:
    """Render one split: ``images`` uint8 [N, S, S], ``left`` and ``right`` labels int64 [N]."""
    images = render_pairs(left.images[index.left], right.images[index.right],
                          image_size=image_size, resize=resize)
    return {"images": images, "left": left.labels[index.left], "right": right.labels[index.right]}


# ----------------------------------------------------------------------------- cache
def _digest(arrays: Mapping[str, Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        t = arrays[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _read_cache(path: Path, key: str) -> dict[str, Tensor] | None:
    """The arrays stored at ``path`` if the file is complete and belongs to ``key``, else None."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        arrays = payload["arrays"]
        if payload["key"] != key or payload["digest"] != _digest(arrays):
            raise ValueError("checksum mismatch")
        for split in SPLITS:
            n = arrays[f"{split}_images"].shape[0]
            if arrays[f"{split}_left"].shape != (n,) or arrays[f"{split}_right"].shape != (n,):
                raise ValueError("inconsistent sizes")
    except Exception as exc:  # noqa: BLE001 (any failure to load means: rebuild)
        log.warning("Pair cache %s is unreadable or corrupt (%s); rebuilding it.", path,
                    " ".join(str(exc).split())[:200] or type(exc).__name__)
        return None
    return arrays


def _write_cache(path: Path, key: str, arrays: dict[str, Tensor]) -> None:
    buffer = io.BytesIO()
    torch.save({"key": key, "digest": _digest(arrays), "arrays": arrays}, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        log.warning("Could not write the pair cache %s (%s); continuing without it.", path,
                    exc.strerror or exc)


def load_or_build_pairs(
    *,
    left_items: str,
    right_items: str,
    seed: int,
    source: str = "torchvision",
    root: str | None = None,
    mnist_dir: str | None = None,
    fashion_dir: str | None = None,
    download: bool = False,
    image_size: int = ITEM_SIZE,
    resize: str = "nearest",
    val_fraction: float = 0.1,
    caps: Mapping[str, int | None] | None = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, Tensor], Path | None]:
    """The rendered pairs of every split as uint8 / int64 tensors, from the cache when possible.

    Returned keys: ``<split>_images`` [N, S, S] uint8, ``<split>_left`` and ``<split>_right`` [N]
    int64, for split in train, val, test; and the cache file (None when caching is off).

    The cache file ``<cache_dir>/pairs/<left>-<right>-<key>.pt`` is keyed by a hash of the source
    files' bytes, the seed and every option that changes the pairs; it is written atomically (temp
    file + rename) and holds a checksum of its arrays, so a truncated or corrupt file is detected
    (failed load, wrong key or checksum) and rebuilt.
    """
    caps = dict(caps or {})
    cache_base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    root_dir = Path(root).expanduser() if root else cache_base / "datasets"
    kinds = [left_items] if left_items == right_items else [left_items, right_items]
    sources = {kind: resolve_source(kind, source=source, root=root_dir, mnist_dir=mnist_dir,
                                    fashion_dir=fashion_dir, download=download) for kind in kinds}
    key_parts = {
        "format": CACHE_FORMAT, "left": left_items, "right": right_items, "seed": int(seed),
        "image_size": int(image_size), "resize": resize, "val_fraction": float(val_fraction),
        "caps": {s: caps.get(s) for s in SPLITS},
        "sources": {kind: src.fingerprint() for kind, src in sources.items()},
    }
    key = hashlib.blake2b(json.dumps(key_parts, sort_keys=True).encode(),
                          digest_size=10).hexdigest()
    path = cache_base / "pairs" / f"{left_items}-{right_items}-{key}.pt" if cache else None
    if path is not None:
        arrays = _read_cache(path, key)
        if arrays is not None:
            log.info("Loaded %s/%s pairs from the cache %s", left_items, right_items, path)
            return arrays, path

    started = time.perf_counter()
    loaded = {kind: src.load() for kind, src in sources.items()}
    (left_train, left_test), (right_train, right_test) = loaded[left_items], loaded[right_items]
    plan = plan_pairs((len(left_train), len(left_test)),
                      None if left_items == right_items else (len(right_train), len(right_test)),
                      seed=seed, val_fraction=val_fraction, caps=caps)
    arrays: dict[str, Tensor] = {}
    for split in SPLITS:
        lsrc, rsrc = (left_test, right_test) if split == "test" else (left_train, right_train)
        rendered = make_pairs(lsrc, rsrc, plan[split], image_size=image_size, resize=resize)
        for name, array in rendered.items():
            arrays[f"{split}_{name}"] = torch.from_numpy(np.ascontiguousarray(array))
    log.info("Built %s/%s pairs (%s) in %.2fs: %s", left_items, right_items,
             ", ".join(src.origin for src in sources.values()), time.perf_counter() - started,
             ", ".join(f"{s} {len(plan[s])}" for s in SPLITS))
    if path is not None:
        _write_cache(path, key, arrays)
    return arrays, path


# ----------------------------------------------------------------------------- the builder
def pair_task_specs(tasks: Mapping[str, Any], regression: bool) -> list[TaskSpec]:
    """Task specs in config order; checks names and kinds; drops regression tasks if not wanted."""
    if not tasks:
        raise ConfigError("`data.tasks` must define at least one of left, right, sum.")
    specs = []
    for name, cfg in tasks.items():
        if name not in PAIR_TASKS:
            raise ConfigError(f"`data.tasks` of a pair dataset accepts {', '.join(PAIR_TASKS)}. "
                              f"Found `data.tasks.{name}`.")
        if cfg["kind"] != PAIR_TASKS[name]:
            raise ConfigError(f"`data.tasks.{name}.kind` must be {PAIR_TASKS[name]}. "
                              f"Found `data.tasks.{name}.kind = {cfg['kind']}`.")
        if cfg["kind"] == "regression" and not regression:
            continue
        specs.append(task_spec(name, cfg, NUM_CLASSES if name in ("left", "right") else 1))
    if not specs:
        raise ConfigError("`data.regression=false` leaves no task: keep left or right in "
                          "data.tasks.")
    return specs


def _check_options(left_items: str, right_items: str, image_size: int, resize: str,
                   val_fraction: float, caps: Mapping[str, int | None]) -> None:
    for key, value in (("left_items", left_items), ("right_items", right_items)):
        if value not in ITEM_KINDS:
            raise ConfigError(f"`data.{key}` must be one of {', '.join(ITEM_KINDS)}. "
                              f"Found `data.{key} = {value}`.")
    if not 16 <= image_size <= CANVAS_SIZE:
        raise ConfigError(f"`data.image_size` must be an integer in 16..{CANVAS_SIZE} (28: the "
                          f"published resize, 36: the canvas). Found `data.image_size = "
                          f"{image_size}`.")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"`data.resize` must be one of {', '.join(RESIZE_MODES)}. "
                          f"Found `data.resize = {resize}`.")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"`data.val_fraction` must be in (0, 1). "
                          f"Found `data.val_fraction = {val_fraction}`.")
    for split, cap in caps.items():
        if cap is not None and cap < 1:
            raise ConfigError(f"`data.n_{split}` must be null or an integer >= 1. "
                              f"Found `data.n_{split} = {cap}`.")


def build(
    *,
    seed: int,
    tasks: Any,
    left_items: str = "mnist",
    right_items: str = "mnist",
    source: str = "torchvision",
    root: str | None = None,
    mnist_dir: str | None = None,
    fashion_dir: str | None = None,
    download: bool = False,
    image_size: int = ITEM_SIZE,
    resize: str = "nearest",
    regression: bool = True,
    normalize: bool = True,
    val_fraction: float = 0.1,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
) -> MultiTaskData:
    """Build a pair dataset (see the module docstring) deterministically from ``seed``.

    Inputs are float32 [N, 1, S, S]: pixels scaled to [0, 1], then, with ``normalize``, standardized
    by the mean and standard deviation of the training pairs' pixels (≈ 0.146 and 0.324 for
    MultiMNIST; the published loader used MNIST's 0.1307 and 0.3081), which SGD needs to train
    LeNet at the published learning rate. ``left`` / ``right`` targets are int64 [N]; ``sum`` is
    float32 [N, 1] = left label + right label.
    """
    caps = {"train": n_train, "val": n_val, "test": n_test}
    _check_options(left_items, right_items, image_size, resize, val_fraction, caps)
    specs = pair_task_specs(tasks, regression)
    arrays, _ = load_or_build_pairs(
        left_items=left_items, right_items=right_items, seed=seed, source=source, root=root,
        mnist_dir=mnist_dir, fashion_dir=fashion_dir, download=download, image_size=image_size,
        resize=resize, val_fraction=val_fraction, caps=caps, cache=cache, cache_dir=cache_dir)
    inputs = {name: arrays[f"{name}_images"][:, None].float().div_(255.0) for name in SPLITS}
    if normalize:
        mean, std = float(inputs["train"].mean()), float(inputs["train"].std())
        for x in inputs.values():
            x.sub_(mean).div_(max(std, 1e-6))

    def split(name: str) -> Split:
        left, right = arrays[f"{name}_left"].long(), arrays[f"{name}_right"].long()
        columns = {"left": left, "right": right, "sum": (left + right).float()[:, None]}
        return Split(inputs[name], {t.name: columns[t.name] for t in specs})

    return MultiTaskData(specs, split("train"), split("val"), split("test"))

