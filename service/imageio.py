"""Turning uploaded images (PNG/JPEG/.npy bytes, base64 strings, nested arrays) into validated tensors."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InvalidImage

__all__ = ["decode_image", "images_to_tensor"]

NPY_MAGIC = b"\x93NUMPY"


def _from_bytes(data: bytes, channels: int, label: str) -> np.ndarray:
    if data.startswith(NPY_MAGIC):
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InvalidImage(f"{label}: not a readable .npy array ({exc})") from exc
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            if mode in ("1", "P"):
                im = im.convert("L" if channels == 1 else "RGB")
            elif mode == "LA" and channels == 1:
                im = im.convert("L")
            elif mode == "RGBA" and channels == 3:
                im = im.convert("RGB")
            if im.mode not in ("L", "RGB", "RGBA"):
                raise InvalidImage(f"{label}: unsupported image mode {mode} (use 8-bit grayscale or RGB)")
            array = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"{label}: not a readable PNG/JPEG image ({exc})") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _from_base64(text: str, channels: int, label: str) -> np.ndarray:
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"{label}: not valid base64 ({exc})") from exc
    return _from_bytes(data, channels, label)


def _from_nested(values: list, label: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise InvalidImage(f"{label}: not a rectangular array of numbers") from exc


def decode_image(item: bytes | str | list, shape: tuple[int, int, int], label: str) -> np.ndarray:
    """One image as `uint8 (C, H, W)`, checked against the model's shape and the pixel range [0, 255]."""
    c, h, w = shape
    if isinstance(item, bytes):
        array = _from_bytes(item, c, label)
    elif isinstance(item, str):
        array = _from_base64(item, c, label)
    else:
        array = _from_nested(item, label)
    if array.ndim == 2 and c == 1:
        array = array[None]
    elif array.ndim == 3 and array.shape[0] != c and array.shape[-1] == c and array.shape[:2] == (h, w):
        array = array.transpose(2, 0, 1)  # channels-last
    if array.shape != (c, h, w):
        if array.ndim == 3 and array.shape[1:] == (h, w):
            raise InvalidImage(f"{label}: expected {c} channel(s), got {array.shape[0]}")
        raise InvalidImage(f"{label}: expected shape {(c, h, w)} (C, H, W), got {tuple(array.shape)}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InvalidImage(f"{label}: pixels must be numbers, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise InvalidImage(f"{label}: contains NaN or infinite values")
    if array.min() < 0 or array.max() > 255:
        raise InvalidImage(f"{label}: pixel values must lie in [0, 255], got [{array.min()}, {array.max()}]")
    if not np.array_equal(array, np.round(array)):
        raise InvalidImage(f"{label}: pixel values must be integers (8-bit levels 0..255)")
    return array.astype(np.uint8)


def images_to_tensor(items: list, shape: tuple[int, int, int], labels: list[str]) -> torch.Tensor:
    """Decode and stack; the first offending image raises `InvalidImage` naming it."""
    arrays = [decode_image(item, shape, label) for item, label in zip(items, labels, strict=True)]
    return torch.from_numpy(np.stack(arrays))
