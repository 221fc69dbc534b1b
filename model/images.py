"""Converting between `uint8` image tensors `(C, H, W)` and PNG bytes / sample grids (via Pillow)."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

__all__ = ["encode_png", "image_grid", "save_grid"]


def _to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    array = image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[0] not in (1, 3, 4):
        raise ValueError(f"expected a uint8 (C, H, W) image, C in (1, 3, 4); got {array.dtype} {array.shape}")
    if array.shape[0] == 1:
        return Image.fromarray(np.ascontiguousarray(array[0]))  # 2-D uint8: mode L
    return Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)))  # RGB or RGBA


def encode_png(image: torch.Tensor | np.ndarray) -> bytes:
    """PNG bytes of one `uint8` image `(C, H, W)`."""
    buf = io.BytesIO()
    _to_pil(image).save(buf, format="PNG")
    return buf.getvalue()


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """Tile `uint8` images `(N, C, H, W)` into one `(C, H', W')` image, `nrow` per row (default √N)."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = torch.zeros(c, rows * (h + padding) + padding, nrow * (w + padding) + padding, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = images[i].cpu()
    return grid


def save_grid(images: torch.Tensor, path, nrow: int | None = None) -> None:
    """Write a sample grid PNG."""
    with open(path, "wb") as f:
        f.write(encode_png(image_grid(images, nrow)))
