"""Fashion-MNIST's IDX reader and split, on tiny IDX files the test writes (and on the real package files
when they are installed)."""

from __future__ import annotations

import gzip
import struct
import tracemalloc

import numpy as np
import pytest
import torch

from graphopt.data.fashion import FILES, fashion_folder, load_fashion_mnist, read_idx
from graphopt.errors import ConfigError, InvalidInputError

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def _idx(array: np.ndarray) -> bytes:
    code = _CODES[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compressed", [True, False])
def test_idx_files_read_back_exactly(tmp_path, compressed):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = _idx(array)
    path = tmp_path / ("a.idx.gz" if compressed else "a.idx")
    path.write_bytes(gzip.compress(data) if compressed else data)
    np.testing.assert_array_equal(read_idx(path), array)
    wide = np.array([1, -2, 70000], dtype=np.int32)
    (tmp_path / "b.idx").write_bytes(_idx(wide))
    np.testing.assert_array_equal(read_idx(tmp_path / "b.idx"), wide)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\x01\x02\x08\x01", "not an IDX file"), (bytes([0, 0, 8, 3, 0, 0]), "cut short"),
     (bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"abc", "needs 13 bytes")],
)  # fmt: skip
def test_malformed_idx_files_are_refused_by_name(tmp_path, content, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        read_idx(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        # 2**16 ** 4 wraps to 0 in int64: the old reader took a header-only file for an empty array
        (
            "wrapping-dims.idx",
            bytes([0, 0, 8, 4]) + struct.pack(">4I", *[2**16] * 4),
            "header declares shape",
        ),
        (
            "huge-dims.idx",
            bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**31, 2**31, 28),
            "the header is corrupt",
        ),
        ("cut.idx.gz", gzip.compress(_idx(np.zeros(1000, np.uint8)))[:-12], "cannot be read .*ended before"),
        ("plain.idx.gz", _idx(np.zeros(10, np.uint8)), "cannot be read .*Not a gzipped file"),
        ("noise.idx.gz", b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 40, "cannot be read"),
    ],
    ids=["wrapping-dims", "huge-dims", "truncated-gz", "not-gzip", "corrupt-deflate"],
)
def test_corrupt_headers_and_gzip_streams_are_refused_by_name(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message) as caught:
        read_idx(path)
    assert str(path) in str(caught.value) and "reinstall" in str(caught.value)


def test_a_gzip_bomb_is_inflated_no_further_than_its_header_says(tmp_path):
    """A header of 10 labels followed by 64 MB of zeros (gzip members concatenate; 64 KB on disk)."""
    path = tmp_path / "bomb-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx(np.zeros(10, np.uint8))) + gzip.compress(bytes(2**20)) * 64)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInputError, match="needs 18 bytes, the file has more"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # the old reader inflated all 64 MB before it compared sizes


def test_big_endian_values_come_back_in_native_order(tmp_path):
    (tmp_path / "f.idx").write_bytes(_idx(np.array([1.5, -2.0, 3.25], dtype=np.float32)))  # stored >f4
    array = read_idx(tmp_path / "f.idx")
    assert array.dtype.isnative and array.tolist() == [1.5, -2.0, 3.25]


def _labels(count: int = 20) -> np.ndarray:
    return np.arange(count, dtype=np.uint8) % 10


def _images(count: int = 20) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)


def _with(array: np.ndarray, index: int, value: int) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (_images(0), _labels(0), "train-images-idx3-ubyte holds no images"),
        (_images().astype(np.float32), _labels(), "holds float32 values .*unsigned bytes"),
        (_images()[:, :5, :5].copy(), _labels(), r"shape \(20, 5, 5\).*N x 28 x 28"),
        (_images(), _labels().astype(np.float64), "train-labels-idx1-ubyte holds float64 values"),
        (_images(), _with(_labels(), 3, 200), r"1 labels outside 0-9 \(the first, at index 3, is 200\)"),
        (_images(), _with(_labels().astype(np.int8), 0, -1), r"outside 0-9 \(the first, at index 0, is -1\)"),
        (_images(), _labels(15), "has 20 images but .*train-labels-idx1-ubyte has 15 labels"),
    ],
    ids=["zero-images", "float-images", "not-28x28", "float-labels", "label-200", "label-minus-1", "counts"],
)
def test_files_that_are_not_fashion_mnist_are_refused_by_name(tmp_path, images, labels, message):
    for key, name in FILES.items():
        (tmp_path / name).write_bytes(_idx(labels if key.endswith("_y") else images))
    with pytest.raises(InvalidInputError, match=message):
        load_fashion_mnist(tmp_path)


def test_a_split_from_tiny_files_holds_out_stratified_validation(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 20)
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    for key, name in FILES.items():
        array = labels if key.endswith("_y") else images
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(_idx(array)))
    monkeypatch.setenv("GRAPHOPT_FASHION_MNIST", str(tmp_path))
    split = load_fashion_mnist(validation=20)
    assert split.train_x.shape == (180, 1, 28, 28) and split.validation_x.shape == (20, 1, 28, 28)
    assert split.validation_y.bincount().tolist() == [2] * 10  # every class alike
    assert abs(float(split.train_x.mean())) < 1e-5 and split.test_x.shape == (200, 1, 28, 28)


def test_without_the_files_the_install_command_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_FASHION_MNIST", str(tmp_path))
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist"):
        fashion_folder()


def test_the_installed_package_has_the_real_split():
    try:
        folder = fashion_folder()
    except ConfigError:
        pytest.skip("dataset-fashion-mnist is not installed")
    assert read_idx(folder / f"{FILES['test_y']}.gz").shape == (10000,)
    assert read_idx(folder / f"{FILES['train_x']}.gz").shape == (60000, 28, 28)


def test_the_fashion_bench_model_trains_on_the_split_and_keeps_test_apart(tmp_path, monkeypatch):
    from graphopt.benchmark.models import load_bench_model

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10, dtype=np.uint8), 20)
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    images[np.arange(len(labels)), labels, :] = 255  # a learnable cue: the class's row is bright
    for key, name in FILES.items():
        (tmp_path / name).write_bytes(_idx(labels if key.endswith("_y") else images))
    monkeypatch.setenv("GRAPHOPT_FASHION_MNIST", str(tmp_path))
    bench = load_bench_model("fashion_cnn", quiet=True)
    assert sum(len(y) for _, y in bench.validation) == 20 and sum(len(y) for _, y in bench.eval) == 200
    assert "Fashion-MNIST" in bench.data and bench.example_inputs[0].shape == (1, 1, 28, 28)
    with torch.no_grad():
        right = sum(int((bench.model(x).argmax(1) == y).sum()) for x, y in bench.eval)
    assert right / 200 > 0.25  # ten short epochs learn some of the cue (chance: 0.1)
