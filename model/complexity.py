"""Input complexity `L(x)`: the length in bits of an image under a generic lossless compressor.

Serrà et al. (ICLR 2020) correct a likelihood for how simple an image is with `S(x) = −log₂ p(x) − L(x)`
(docs/math.md §8). The compressor is WebP lossless (libwebp through Pillow): measured against PNG at
maximum compression and lossless JPEG 2000 on the shipped models, it separates MNIST from Fashion-MNIST
best in both directions at PNG's cost (~0.1 ms per 28×28 image); JPEG 2000's wavelets fail on sparse
digits (AUROC 0.36 for the Fashion-MNIST model), PNG is second (0.976–0.995 against WebP's 0.987–0.997).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, features

__all__ = ["COMPRESSOR", "codec_version", "compressed_bits"]

# Name and Pillow save options of the compressor: part of every `ood_stats.json`, so a file records
# what its complexity scores were measured with.
COMPRESSOR: dict[str, object] = {
    "name": "webp-lossless",
    "options": {"format": "WEBP", "lossless": True, "quality": 100, "method": 4},
}


def codec_version() -> str:
    """The library versions behind `L(x)` (other versions may code a few bytes differently)."""
    import PIL

    return f"libwebp {features.version('webp')}, Pillow {PIL.__version__}"


def _bits(image: np.ndarray, options: dict[str, object]) -> int:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, **options)
    return 8 * buffer.tell()


def compressed_bits(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """`L(x)` in bits (float64, shape `(N,)`) of `uint8` images `(N, C, H, W)`, C in (1, 3, 4): whole
    files, headers included (a constant per image size, which no comparison at one size sees)."""
    array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected uint8 images (N, C, H, W), C in (1, 3, 4): {array.dtype} {array.shape}")
    options = dict(COMPRESSOR["options"])  # type: ignore[call-overload]
    planes = array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1)
    return np.array([_bits(np.ascontiguousarray(p), options) for p in planes], dtype=np.float64)
