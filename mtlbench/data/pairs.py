"""MultiMNIST-style pair datasets: two 28×28 items overlaid on one image, one task per item.

Two constructions (``data.construction``):

``sener_koltun`` (default) — Sener & Koltun, "Multi-Task Learning as Multi-Objective
Optimization", NeurIPS 2018 (https://arxiv.org/abs/1810.04650, and their released loader): for
each source item pick a random partner (seeded, never itself); on a 36×36 canvas put the item at
the top-left [0:28, 0:28] and the partner at the bottom-right [6:34, 6:34], combining overlapping
pixels by max; resize the canvas to 28×28 by nearest neighbour (pixel-centre aligned, as the PIL
``NEAREST`` filter behind ``scipy.misc.imresize`` in their loader; ``data.resize=area`` averages
instead, and ``data.image_size=36`` keeps the canvas). Every item of a split's pool is the
top-left item of exactly one pair (60,000 MNIST training items: 60,000 pairs before the
validation hold-out).

``lin2019`` — the data of Lin et al., "Pareto Multi-Task Learning", NeurIPS 2019
(https://arxiv.org/abs/1912.12854), released only as the pickles ``multi_mnist.pickle``,
``multi_fashion.pickle`` and ``multi_fashion_and_mnist.pickle`` (Google Drive link in
github.com/Xi-L/ParetoMTL, ``multiMNIST/data/README.md``) that EPO (Mahapatra & Rajan 2020),
Pareto HyperNetworks (Navon et al. 2021) and COSMOS (Ruchte & Grabocka 2021) reuse. No generation
code was released (Xi-L/ParetoMTL#4, asking how the pickles were made, is open without a reply).

*Known* (paper §6.1 and every loader of the pickles): the images are 36×36 canvases fed to the
network without resizing (``reshape(120000, 1, 36, 36)``); 120,000 training and 20,000 test pairs,
i.e. two per MNIST / Fashion-MNIST training and test item; task 1 is the top-left item, task 2 the
bottom-right one; "we randomly pick two images with different digits ... putting one digit on the
top-left corner and the other one on the bottom-right corner. Each digit can be moved up to 4
pixels on each direction" (the shift wording is Sabour et al.'s MultiMNIST, NeurIPS 2017, which
the paper cites for the dataset); Multi-Fashion and Multi-(Fashion+MNIST) are built "with the
same approach". The pickles hold no validation split: COSMOS holds out a random 10% of the
training *pairs* (``train_test_split(..., random_state=42)``), ParetoMTL and EPO none.

*Assumed* here (the pickles' generator is unknown): every item of a split's pool is the top-left
item of exactly two pairs (:data:`LIN2019_PAIRS_PER_ITEM`), each with its own seeded partner;
when both sides are the same kind of item the partner is uniform over the pool's items of
another class ("different digits"; across MNIST and Fashion-MNIST the partner is uniform over the
whole pool, the two label sets being unrelated); the top-left item's corner is at (r, c) and the
bottom-right item's at (8 − r', 8 − c'), with r, c, r', c' independent and uniform in 0..4 — the
canvas corners [0:28, 0:28] and [8:36, 8:36] each moved inward by up to 4 pixels per axis, so the
two items never swap corners (Continuous Pareto MTL's generator, Ma et al. 2020, uses the same
0..4 and 4..8 ranges along the diagonal only); overlapping pixels combine by max as in Sener &
Koltun's loader (Sabour et al.'s generator and Ma et al.'s add and clip instead). The canvas is
kept: ``lin2019`` requires ``data.image_size=36``.

- ``data=multimnist``: MNIST digits on both sides.
- ``data=multifashion``: Fashion-MNIST items on both sides.
- ``data=multifashion_mnist``: a Fashion-MNIST item top-left and an MNIST digit bottom-right.

Tasks: ``left`` and ``right`` classify the two items (K = 10 each); ``sum`` regresses
left label + right label as a float (d = 1; the "different units" case of eq. (1): cross-entropies
of order 1 next to a squared error of order 10-100). ``data.regression=false`` drops ``sum``: the
published two-task setting.

Splits: train pairs come from the source's train split and test pairs from its test split. The
validation pairs are built from source train items held out *before* pairing, so no image is
shared between train, validation and test pairs: by default a seeded random ``data.val_fraction``
of them; with ``data.val_last=N`` the last N in file order (Kurin et al., "In Defense of the
Unitary Scalarization for Deep Multi-Task Learning", NeurIPS 2022, App. C.1.1: MNIST items
50,000-59,999 validate, the first 50,000 train; ``val_fraction`` is then unused). Partners are
drawn within the same pool. ``data.n_train`` / ``n_val`` / ``n_test`` cap the number of pairs (a
seeded subset of the pool's items; partners are still drawn from the whole pool).

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
#: ``data.construction``: how pairs are drawn and placed (see the module docstring).
CONSTRUCTIONS: tuple[str, ...] = ("sener_koltun", "lin2019")
DEFAULT_CONSTRUCTION = "sener_koltun"
#: lin2019: pairs per item of a pool (120,000 training pairs from 60,000 items).
LIN2019_PAIRS_PER_ITEM = 2
#: lin2019: how far each item moves from its canvas corner, per axis (0..4 pixels inward).
LIN2019_MAX_SHIFT = 4
#: lin2019: the bottom-right corner position of a 28×28 item on the 36×36 canvas.
LIN2019_FAR_CORNER = CANVAS_SIZE - ITEM_SIZE
#: The tasks a pair dataset can define, with the kind each must have.
PAIR_TASKS: dict[str, str] = {"left": "classification", "right": "classification",
                              "sum": "regression"}
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Bump when the construction changes, so old cache files are not reused.
CACHE_FORMAT = 1
#: Version of the capped splits' pairs (``data.n_train`` / ``n_val`` / ``n_test``), in the cache
#: key of capped datasets only: 2 since a cap on one split changes no other split (it re-paired
#: the later splits). Not in the generator's seed, so uncapped data (and their cache) are as
#: before.
CAPPED_PLANS = 2


@dataclass
class PairsDataConfig(DataConfig):
    """Schema of the pair datasets (``data=multimnist``, ``multifashion``, ``multifashion_mnist``).

    ``left_items`` / ``right_items``: ``mnist`` or ``fashion``. ``source``: ``torchvision``,
    ``idx`` or ``mnist5k`` (see :mod:`mtlbench.data.sources`); ``root``: torchvision's root (null:
    ``<cache dir>/datasets``); ``mnist_dir`` / ``fashion_dir``: IDX folders for ``source=idx``.
    ``cache_dir``: null means ``$MTLBENCH_CACHE``, else ``~/.cache/mtlbench``. ``construction``:
    ``sener_koltun`` or ``lin2019``; ``val_last``: null (a random ``val_fraction`` of the train
    items validates) or N (the last N train items in file order validate).
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
    val_last: Optional[int] = None  # noqa: UP045
    construction: str = DEFAULT_CONSTRUCTION
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
    """Which source items form each pair of one split: indices into that split's source arrays.

    ``left_offset`` / ``right_offset``: int [N, 2], the (row, column) of each item's top-left pixel
    on the 36×36 canvas (``lin2019``); ``None``: the fixed Sener & Koltun positions (0, 0) and
    (6, 6).
    """

    left: np.ndarray
    right: np.ndarray
    left_offset: np.ndarray | None = None
    right_offset: np.ndarray | None = None

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
    return resize_canvas(canvas, image_size=image_size, resize=resize)


def render_placed_pairs(left: np.ndarray, right: np.ndarray, left_offset: np.ndarray,
                        right_offset: np.ndarray) -> np.ndarray:
    """Overlay ``left`` and ``right`` [N, 28, 28] uint8 items at per-pair canvas positions.

    ``left_offset`` / ``right_offset``: int [N, 2], the (row, column) of each item's top-left
    pixel, in 0..8. Returns the uint8 [N, 36, 36] canvases, overlapping pixels combined by max.
    Vectorised per distinct position (at most 81 per side).
    """
    if left.shape != right.shape or left.shape[1:] != (ITEM_SIZE, ITEM_SIZE):
        raise ValueError(f"Expected two [N, 28, 28] arrays; got {left.shape} and {right.shape}.")
    n = left.shape[0]
    canvas = np.zeros((n, CANVAS_SIZE, CANVAS_SIZE), dtype=np.uint8)
    for items, offsets in ((left, left_offset), (right, right_offset)):
        offsets = np.asarray(offsets)
        if offsets.shape != (n, 2) or offsets.min(initial=0) < 0 \
                or offsets.max(initial=0) > CANVAS_SIZE - ITEM_SIZE:
            raise ValueError(f"Expected [{n}, 2] offsets in 0..{CANVAS_SIZE - ITEM_SIZE}; got "
                             f"shape {offsets.shape}, values {offsets.min(initial=0)}.."
                             f"{offsets.max(initial=0)}.")
        keys = offsets[:, 0] * CANVAS_SIZE + offsets[:, 1]
        for key in np.unique(keys):
            rows = np.flatnonzero(keys == key)
            r, c = divmod(int(key), CANVAS_SIZE)
            window = (rows, slice(r, r + ITEM_SIZE), slice(c, c + ITEM_SIZE))
            canvas[window] = np.maximum(canvas[window], items[rows])
    return canvas


def resize_canvas(canvas: np.ndarray, *, image_size: int = ITEM_SIZE,
                  resize: str = "nearest") -> np.ndarray:
    """Resize uint8 [N, 36, 36] canvases to [N, image_size, image_size] (36: unchanged)."""
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


def draw_partners_of_other_class(left_labels: np.ndarray, pool_labels: np.ndarray, *,
                                  rng: np.random.Generator) -> np.ndarray:
    """Partner positions in a pool, uniform over the pool's items whose label differs.

    ``left_labels`` [n]: the label of each pair's top-left item; ``pool_labels`` [P]: the labels of
    the pool the partners come from. Vectorised: the pool is sorted by label, a uniform draw over
    the items of the other classes skips the block of the left item's class.
    """
    order = np.argsort(pool_labels, kind="stable")
    counts = np.bincount(pool_labels, minlength=NUM_CLASSES)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    eligible = len(pool_labels) - counts[left_labels]
    if len(left_labels) and eligible.min() < 1:
        raise DataError(f"A pool of {len(pool_labels)} item(s) holds only class "
                        f"{int(left_labels[eligible.argmin()])}: no partner of another class.")
    draw = rng.integers(0, np.maximum(eligible, 1))
    own_start, own_count = starts[left_labels], counts[left_labels]
    return order[np.where(draw < own_start, draw, draw + own_count)]


def split_pools(n_train_items: int, n_test_items: int, val_fraction: float,
                rng: np.random.Generator, val_last: int | None = None) -> dict[str, np.ndarray]:
    """Seeded pools of source indices per split: val and train partition the source train split.

    ``val_last`` None: a random ``val_fraction`` of the train items validates; N: the last N
    train items (file order) validate and the others train. Each pool is in a seeded random
    order, so capping a split to its first n items is a random subset.
    """
    if val_last is not None:
        if not 1 <= val_last < n_train_items:
            raise ConfigError(f"`data.val_last` must be in 1..{n_train_items - 1} (the source has "
                              f"{n_train_items} training items). Found `data.val_last = "
                              f"{val_last}`.")
        n_keep = n_train_items - int(val_last)
        return {"train": rng.permutation(n_keep), "val": n_keep + rng.permutation(int(val_last)),
                "test": rng.permutation(n_test_items)}
    n_val_items = int(round(val_fraction * n_train_items))
    perm = rng.permutation(n_train_items)
    return {"train": perm[n_val_items:], "val": perm[:n_val_items],
            "test": rng.permutation(n_test_items)}


def _holdout(val_fraction: float, val_last: int | None) -> str:
    """How the validation items were chosen, for error messages."""
    if val_last is None:
        return f"data.val_fraction = {val_fraction}"
    return f"data.val_last = {val_last}"


def _pair_count(split: str, cap: int | None, pool_left: int, pool_right: int, *,
                per_item: int, val_fraction: float, val_last: int | None) -> int:
    """The number of pairs of ``split``: ``cap``, or ``per_item`` per item of the left pool."""
    most = per_item * pool_left
    n_pairs = most if cap is None else int(cap)
    if n_pairs > most:
        what = (f"the {split} pool's items" if per_item == 1 else
                f"{per_item} per item of the {split} pool's {pool_left}")
        raise ConfigError(
            f"`data.n_{split}` must be at most {most} ({what}, with "
            f"{_holdout(val_fraction, val_last)}). Found `data.n_{split} = {cap}`."
        )
    if n_pairs < 1 or pool_right < 1:
        holdout = _holdout(val_fraction, val_last)
        raise ConfigError(
            f"The {split} split would be empty: raise data.n_{split} or set data.val_fraction "
            f"in (0, 1) so that every split keeps items. Found `{holdout}`."
        )
    return n_pairs


def plan_pairs(
    left_counts: tuple[int, int],
    right_counts: tuple[int, int] | None,
    *,
    seed: int,
    val_fraction: float,
    caps: Mapping[str, int | None],
    val_last: int | None = None,
) -> dict[str, PairIndex]:
    """Which (left, right) source items form every pair of every split (``sener_koltun``); a pure
    function of the seed.

    ``left_counts`` / ``right_counts``: (train, test) item counts of the two sources; ``None`` for
    ``right_counts`` means both sides draw from the same source (and the same pools). ``caps``:
    the maximum number of pairs per split (``None``: one pair per item of the left pool).
    ``val_last``: see :func:`split_pools`.
    """
    rng = np.random.default_rng([CACHE_FORMAT, int(seed) % 2**63, 0x9A125])
    left_pools = split_pools(*left_counts, val_fraction, rng, val_last)
    same_pool = right_counts is None
    right_pools = (left_pools if same_pool
                   else split_pools(*right_counts, val_fraction, rng, val_last))
    plan = {}
    for split in SPLITS:
        pool_l, pool_r = left_pools[split], right_pools[split]
        n_pairs = _pair_count(split, caps.get(split), len(pool_l), len(pool_r), per_item=1,
                              val_fraction=val_fraction, val_last=val_last)
        # the uncapped split's draws, then its first n_pairs: a cap on one split changes no
        # other split (the generator's state after it is the uncapped run's)
        every = _pair_count(split, None, len(pool_l), len(pool_r), per_item=1,
                            val_fraction=val_fraction, val_last=val_last)
        partners = draw_partners(every, len(pool_r), same_pool=same_pool, rng=rng)[:n_pairs]
        plan[split] = PairIndex(pool_l[:n_pairs], pool_r[partners])
    return plan


def plan_lin2019_pairs(
    left_labels: tuple[np.ndarray, np.ndarray],
    right_labels: tuple[np.ndarray, np.ndarray] | None,
    *,
    seed: int,
    val_fraction: float,
    caps: Mapping[str, int | None],
    val_last: int | None = None,
) -> dict[str, PairIndex]:
    """The ``lin2019`` pairs of every split, with the canvas position of each item; a pure function
    of the seed.

    ``left_labels`` / ``right_labels``: the (train, test) labels of the two sources; ``None`` for
    ``right_labels`` means both sides draw from the same source (and the same pools), and then the
    partner always has another class. Each item of a pool is the top-left item of
    :data:`LIN2019_PAIRS_PER_ITEM` pairs: pair i and pair i + P (P = pool size) share it, with
    independent partners and positions. ``caps``: the maximum number of pairs per split (``None``:
    all of them; a cap ≤ P gives a seeded subset of the items, each once).
    """
    rng = np.random.default_rng([CACHE_FORMAT, int(seed) % 2**63, 0x9A125, 2019])
    left_pools = split_pools(len(left_labels[0]), len(left_labels[1]), val_fraction, rng,
                             val_last)
    same_pool = right_labels is None
    right_side = left_labels if right_labels is None else right_labels
    right_pools = (left_pools if same_pool else
                   split_pools(len(right_side[0]), len(right_side[1]), val_fraction, rng,
                               val_last))
    plan = {}
    for split in SPLITS:
        side = 1 if split == "test" else 0
        pool_l, pool_r = left_pools[split], right_pools[split]
        n_pairs = _pair_count(split, caps.get(split), len(pool_l), len(pool_r),
                              per_item=LIN2019_PAIRS_PER_ITEM, val_fraction=val_fraction,
                              val_last=val_last)
        # the uncapped split's draws, then its first n_pairs (as in plan_pairs)
        every = _pair_count(split, None, len(pool_l), len(pool_r),
                            per_item=LIN2019_PAIRS_PER_ITEM, val_fraction=val_fraction,
                            val_last=val_last)
        positions = np.tile(np.arange(len(pool_l)), LIN2019_PAIRS_PER_ITEM)[:every]
        left = pool_l[positions]
        if same_pool:
            partners = draw_partners_of_other_class(left_labels[side][left],
                                                    right_side[side][pool_r], rng=rng)
        else:
            partners = rng.integers(0, len(pool_r), size=every)
        left_offset = rng.integers(0, LIN2019_MAX_SHIFT + 1, size=(every, 2))
        right_offset = LIN2019_FAR_CORNER - rng.integers(0, LIN2019_MAX_SHIFT + 1,
                                                         size=(every, 2))
        plan[split] = PairIndex(left[:n_pairs], pool_r[partners[:n_pairs]],
                                left_offset[:n_pairs], right_offset[:n_pairs])
    return plan


def make_pairs(left: ImageSplit, right: ImageSplit, index: PairIndex, *,
               image_size: int = ITEM_SIZE, resize: str = "nearest") -> dict[str, np.ndarray]:
    """Render one split: ``images`` uint8 [N, S, S], ``left`` and ``right`` labels int64 [N].

    Items go to ``index``'s per-pair positions when it has them (``lin2019``), else to the fixed
    Sener & Koltun positions.
    """
    if index.left_offset is not None and index.right_offset is not None:
        canvas = render_placed_pairs(left.images[index.left], right.images[index.right],
                                     index.left_offset, index.right_offset)
        images = resize_canvas(canvas, image_size=image_size, resize=resize)
    else:
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
    construction: str = DEFAULT_CONSTRUCTION,
    val_last: int | None = None,
) -> tuple[dict[str, Tensor], Path | None]:
    """The rendered pairs of every split as uint8 / int64 tensors, from the cache when possible.

    Returned keys: ``<split>_images`` [N, S, S] uint8, ``<split>_left`` and ``<split>_right`` [N]
    int64, for split in train, val, test; and the cache file (None when caching is off).

    The cache file ``<cache_dir>/pairs/<left>-<right>-<key>.pt`` is keyed by a hash of the source
    files' bytes, the seed and every option that changes the pairs; it is written atomically (temp
    file + rename) and holds a checksum of its arrays, so a truncated or corrupt file is detected
    (failed load, wrong key or checksum) and rebuilt. ``construction`` and ``val_last`` enter the
    key only when they differ from their defaults, so the default's key (and cache files) are those
    of the code before these options existed.
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
    if construction != DEFAULT_CONSTRUCTION:
        key_parts["construction"] = construction
    if val_last is not None:
        key_parts["val_fraction"] = None  # unused: the last val_last items validate
        key_parts["val_last"] = int(val_last)
    if any(caps.get(s) is not None for s in SPLITS):  # capped plans changed in CAPPED_PLANS 2
        key_parts["capped_plans"] = CAPPED_PLANS
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
    same = left_items == right_items
    if construction == "lin2019":
        plan = plan_lin2019_pairs((left_train.labels, left_test.labels),
                                  None if same else (right_train.labels, right_test.labels),
                                  seed=seed, val_fraction=val_fraction, caps=caps,
                                  val_last=val_last)
    else:
        plan = plan_pairs((len(left_train), len(left_test)),
                          None if same else (len(right_train), len(right_test)),
                          seed=seed, val_fraction=val_fraction, caps=caps, val_last=val_last)
    arrays: dict[str, Tensor] = {}
    for split in SPLITS:
        lsrc, rsrc = (left_test, right_test) if split == "test" else (left_train, right_train)
        rendered = make_pairs(lsrc, rsrc, plan[split], image_size=image_size, resize=resize)
        for name, array in rendered.items():
            arrays[f"{split}_{name}"] = torch.from_numpy(np.ascontiguousarray(array))
    name = f"{left_items}/{right_items}"
    if construction != DEFAULT_CONSTRUCTION:
        name += f" {construction}"
    log.info("Built %s pairs (%s) in %.2fs: %s", name,
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
                   val_fraction: float, caps: Mapping[str, int | None],
                   construction: str = DEFAULT_CONSTRUCTION,
                   val_last: int | None = None) -> None:
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
    if construction not in CONSTRUCTIONS:
        raise ConfigError(f"`data.construction` must be one of {', '.join(CONSTRUCTIONS)}. "
                          f"Found `data.construction = {construction}`.")
    if construction == "lin2019" and image_size != CANVAS_SIZE:
        raise ConfigError(f"`data.construction=lin2019` keeps the {CANVAS_SIZE}x{CANVAS_SIZE} "
                          f"canvas: set data.image_size={CANVAS_SIZE}. Found `data.image_size = "
                          f"{image_size}`.")
    if val_last is not None and (isinstance(val_last, bool) or int(val_last) != val_last
                                 or val_last < 1):
        raise ConfigError(f"`data.val_last` must be null or an integer >= 1 (the number of last "
                          f"training items that validate). Found `data.val_last = {val_last}`.")


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
    val_last: int | None = None,
    construction: str = DEFAULT_CONSTRUCTION,
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
    float32 [N, 1] = left label + right label. ``construction`` (``sener_koltun`` or ``lin2019``)
    and ``val_last`` (null, or the number of last training items that validate): see the module
    docstring.
    """
    caps = {"train": n_train, "val": n_val, "test": n_test}
    _check_options(left_items, right_items, image_size, resize, val_fraction, caps, construction,
                   val_last)
    specs = pair_task_specs(tasks, regression)
    arrays, _ = load_or_build_pairs(
        left_items=left_items, right_items=right_items, seed=seed, source=source, root=root,
        mnist_dir=mnist_dir, fashion_dir=fashion_dir, download=download, image_size=image_size,
        resize=resize, val_fraction=val_fraction, caps=caps, cache=cache, cache_dir=cache_dir,
        construction=construction, val_last=val_last)
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

