"""Fashion-MNIST's IDX reader and split, on tiny IDX files the test writes (and on the real package files
when they are installed)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from graphopt.errors import ConfigError, InvalidInputError
from graphopt.fashion import FILES, fashion_folder, load_fashion_mnist, read_idx


def _idx(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[array.dtype.type]
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
