"""Input complexity `L(x)`: the length in bits of an image under a generic lossless compressor.

Serrà et al. (ICLR 2020) correct a likelihood for how simple an image is with `S(x) = −log₂ p(x) − L(x)`
(docs/math.md §8). `COMPRESSOR` is the one the service uses: WebP lossless (libwebp through Pillow).
`benchmarks/ood_compressors.py` measured it against the other lossless coders Pillow offers, PNG at maximum
compression and JPEG 2000: it separates MNIST from Fashion-MNIST best in both directions at PNG's cost
(~0.1 ms per 28×28 image), where JPEG 2000's wavelets fail on sparse digits.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, features

__all__ = ["CODECS", "COMPRESSOR", "codec_version", "compressed_bits"]

# Pillow save options of the candidate lossless coders, by name.
CODECS: dict[str, dict[str, object]] = {
    "webp-lossless": {"format": "WEBP", "lossless": True, "quality": 100, "method": 4},
    "png": {"format": "PNG", "compress_level": 9},
    "jpeg2000-lossless": {"format": "JPEG2000", "irreversible": False, "no_jp2": True},
}
COMPRESSOR = "webp-lossless"
_LIBRARY = {"webp-lossless": "webp", "png": "zlib", "jpeg2000-lossless": "jpg_2000"}


def codec_version(codec: str = COMPRESSOR) -> str:
    """The library versions behind `L(x)` for `codec` (other versions may code a few bytes differently)."""
    import PIL

    library = _LIBRARY[codec]
    return f"{library} {features.version(library)}, Pillow {PIL.__version__}"


def _bits(image: np.ndarray, options: dict[str, object]) -> int:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, **options)  # type: ignore[arg-type]
    return 8 * buffer.tell()


def compressed_bits(images: torch.Tensor | np.ndarray, codec: str = COMPRESSOR) -> np.ndarray:
    """`L(x)` in bits (float64, shape `(N,)`) of `uint8` images `(N, C, H, W)`, C in (1, 3, 4): whole
    files, headers included (a constant per image size, which no comparison at one size sees)."""
    array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected uint8 images (N, C, H, W), C in (1, 3, 4): {array.dtype} {array.shape}")
    options = CODECS[codec]
    planes = array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1)
    return np.array([_bits(np.ascontiguousarray(p), options) for p in planes], dtype=np.float64)
