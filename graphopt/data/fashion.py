"""Fashion-MNIST: 70,000 real labelled 28x28 grayscale images of clothing in 10 classes, read offline.

The data comes from Debian's ``dataset-fashion-mnist`` package (MIT licence; ``apt-get install
dataset-fashion-mnist`` puts the original IDX files in ``/usr/share/datasets/fashion-mnist``), or from the
folder ``$GRAPHOPT_FASHION_MNIST`` names. Nothing is downloaded. The split:

- the 10,000 test images are only ever used for the reported test accuracy;
- 5,000 of the 60,000 training images (stratified, seed 0) are held out as validation data for decisions
  (early-exit thresholds, epoch selection, search), so those decisions never see test images;
- pixels are scaled to [0, 1], then standardised with the training mean and std.

IDX (LeCun's format): a 4-byte magic ``0x00 0x00 <type> <rank>``, ``rank`` big-endian uint32 sizes, then
the values row-major. :func:`read_idx` reads it (gzip or not) and refuses anything malformed by name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from graphopt.data.digits import DigitsSplit, batches
from graphopt.errors import ConfigError, InvalidInputError, first_line

DEFAULT_FOLDER = Path("/usr/share/datasets/fashion-mnist")
INSTALL = (
    "apt-get install dataset-fashion-mnist  (or set GRAPHOPT_FASHION_MNIST to a folder of the IDX files)"
)
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")  # fmt: skip
#: IDX type codes and the numpy types they hold (big-endian where it matters).
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
#: What to do about a damaged or foreign file where the data set should be.
REPLACE = "reinstall the package (apt-get install --reinstall dataset-fashion-mnist) or replace the file"
VALIDATION = 5000
IMAGE_SIZE = (28, 28)
#: The most an IDX file may declare (Fashion-MNIST's largest, the training images, is 47 MB): a header over
#: it is corrupt, and refusing it keeps a damaged header from allocating memory it names.
MAX_IDX_BYTES = 2**30


def read_idx(path: str | Path) -> np.ndarray:
    """The array in an IDX file (``.gz`` or plain), in native byte order; :class:`InvalidInputError` naming
    the file and what is wrong with it.

    The header is read first and the values after it with a cap of what the header declares (plus one byte,
    to tell a file that goes on): a ``.gz`` that inflates to gigabytes (a gzip bomb) is never inflated past
    that, and a header declaring more than :data:`MAX_IDX_BYTES` is refused before anything is read.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as stream:
            return _read_idx_stream(stream, path)
    except (OSError, EOFError, zlib.error) as exc:  # gzip reports a damaged or cut stream as any of these
        raise InvalidInputError(
            f"{path} cannot be read ({first_line(exc)}): the file is damaged or not what its name says: "
            f"{REPLACE}"
        ) from exc


def _read_idx_stream(stream: BinaryIO, path: Path) -> np.ndarray:
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES or magic[3] == 0:
        raise InvalidInputError(f"{path} is not an IDX file (magic bytes {magic.hex() or 'missing'})")
    rank = magic[3]
    dims = stream.read(4 * rank)
    if len(dims) < 4 * rank:
        raise InvalidInputError(
            f"{path}: the IDX header is cut short ({4 + len(dims)} bytes, rank {rank} needs {4 + 4 * rank})"
        )
    shape = struct.unpack(f">{rank}I", dims)
    dtype = np.dtype(_IDX_TYPES[magic[2]])
    size = math.prod(shape) * dtype.itemsize  # Python integers: a product of huge dims cannot wrap around
    header = 4 + 4 * rank
    if size > MAX_IDX_BYTES:
        raise InvalidInputError(
            f"{path}: the IDX header declares shape {shape} of {dtype}, {size:,} bytes, over the "
            f"{MAX_IDX_BYTES:,} graphopt reads: the header is corrupt; {REPLACE}"
        )
    values = stream.read(size + 1)  # one byte past the declared size tells a longer file, inflating no more
    if len(values) != size:
        found = "more" if len(values) > size else f"{header + len(values)}"
        raise InvalidInputError(
            f"{path}: shape {shape} of {dtype} needs {header + size} bytes, the file has {found}: {REPLACE}"
        )
    return np.frombuffer(values, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class FashionSplit:
    train_x: Tensor  # [55000, 1, 28, 28], standardised
    train_y: Tensor
    validation_x: Tensor  # [5000, 1, 28, 28]
    validation_y: Tensor
    test_x: Tensor  # [10000, 1, 28, 28]
    test_y: Tensor


def fashion_folder() -> Path:
    folder = Path(os.environ.get("GRAPHOPT_FASHION_MNIST", DEFAULT_FOLDER))
    missing = [name for name in FILES.values() if not _file(folder, name)]
    if missing:
        raise ConfigError(f"Fashion-MNIST is not in {folder} (missing {', '.join(missing)}): {INSTALL}")
    return folder


def load_fashion_mnist(folder: Path | None = None, validation: int = VALIDATION) -> FashionSplit:
    """The standardised split of the module docstring."""
    folder = folder or fashion_folder()
    paths = {key: _file(folder, name) or folder / name for key, name in FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for part in ("train", "test"):
        _check_images(arrays[f"{part}_x"], paths[f"{part}_x"])
        _check_labels(arrays[f"{part}_y"], paths[f"{part}_y"])
        if len(arrays[f"{part}_x"]) != len(arrays[f"{part}_y"]):
            raise InvalidInputError(
                f"{paths[f'{part}_x']} has {len(arrays[f'{part}_x'])} images but {paths[f'{part}_y']} has "
                f"{len(arrays[f'{part}_y'])} labels: the two files must come from the same release: {REPLACE}"
            )
    train_x = torch.tensor(arrays["train_x"], dtype=torch.float32).unsqueeze(1) / 255.0
    test_x = torch.tensor(arrays["test_x"], dtype=torch.float32).unsqueeze(1) / 255.0
    train_y = torch.tensor(arrays["train_y"].astype(np.int64))
    test_y = torch.tensor(arrays["test_y"].astype(np.int64))
    held = _stratified(train_y, min(validation, len(train_y) // 10))  # a tenth at most (small test files)
    keep = torch.ones(len(train_y), dtype=torch.bool)
    keep[held] = False
    mean, std = train_x[keep].mean(), train_x[keep].std()

    def norm(x: Tensor) -> Tensor:
        return (x - mean) / std

    return FashionSplit(norm(train_x[keep]), train_y[keep], norm(train_x[held]), train_y[held],
                        norm(test_x), test_y)  # fmt: skip


def _check_images(images: np.ndarray, path: Path) -> None:
    """Unsigned bytes, N x 28 x 28, N >= 1: what the standardisation (pixels / 255) and the models assume."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SIZE:
        raise InvalidInputError(
            f"{path} holds {images.dtype} values of shape {images.shape}; Fashion-MNIST images are unsigned "
            f"bytes (IDX type 0x08) of shape N x 28 x 28: it is not a Fashion-MNIST image file: {REPLACE}"
        )
    if len(images) == 0:
        raise InvalidInputError(f"{path} holds no images: it is cut short or empty: {REPLACE}")


def _check_labels(labels: np.ndarray, path: Path) -> None:
    """Integers 0-9, one per image: a label outside them would train a class that does not exist (or fail
    deep inside the loss with an index error)."""
    if labels.dtype.kind not in "ui" or labels.ndim != 1:
        raise InvalidInputError(
            f"{path} holds {labels.dtype} values of shape {labels.shape}; Fashion-MNIST labels are a list of "
            f"integers 0-{len(CLASSES) - 1} (IDX type 0x08): it is not a Fashion-MNIST label file: {REPLACE}"
        )
    outside = np.flatnonzero((labels < 0) | (labels >= len(CLASSES)))
    if len(outside):
        first = int(outside[0])
        raise InvalidInputError(
            f"{path} has {len(outside)} labels outside 0-{len(CLASSES) - 1} (the first, at index {first}, is "
            f"{int(labels[first])}): Fashion-MNIST has {len(CLASSES)} classes: {REPLACE}"
        )


def _stratified(labels: Tensor, size: int) -> Tensor:
    """``size`` indices, the same share of every class, chosen with seed 0."""
    generator = torch.Generator().manual_seed(0)
    classes = labels.unique()
    per_class = size // len(classes)
    picked = []
    for c in classes:
        members = (labels == c).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(picked).sort().values


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


class FashionCNN(nn.Module):
    """The plain CNN for 28x28: three conv3x3-BN-ReLU stages (16, 32, 64 channels) with 2x2 max-pooling
    after the first two, global average pooling, Linear(64->10): 24,058 parameters, 1.92 M MACs. Pooling
    early keeps an epoch over 55,000 images at seconds on two cores."""

    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *stage(1, width), nn.MaxPool2d(2), *stage(width, 2 * width), nn.MaxPool2d(2),
            *stage(2 * width, 4 * width),
        )  # fmt: skip
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def as_digits_split(split: FashionSplit) -> DigitsSplit:
    """Training and test images in the form the shared trainer and benchmark take."""
    return DigitsSplit(split.train_x, split.train_y, split.test_x, split.test_y)


def validation_batches(split: FashionSplit, batch_size: int = 256) -> list[tuple[Tensor, Tensor]]:
    return batches(split.validation_x, split.validation_y, batch_size)
