"""Latents in and out of the API: base64 `.npy` or nested arrays, one `(N, C, H, W)` array per level,
validated against the model's latent shapes; and the image payloads shared by /decode and /interpolate."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import torch

from model.images import encode_png, image_grid

from .errors import ServiceError

__all__ = [
    "InvalidLatents",
    "images_payload",
    "latents_payload",
    "latents_to_tensors",
    "npy_base64",
    "npy_bytes",
]

NPY_MAGIC = b"\x93NUMPY"


class InvalidLatents(ServiceError):
    status, code = 422, "invalid_latents"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_base64(array: np.ndarray) -> str:
    return base64.b64encode(npy_bytes(array)).decode()


def _decode_level(item: str | list, label: str) -> np.ndarray:
    if isinstance(item, str):
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidLatents(f"{label}: not valid base64 ({exc})") from exc
        if not data.startswith(NPY_MAGIC):
            raise InvalidLatents(f"{label}: not a .npy array (send base64 .npy or a nested array)")
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InvalidLatents(f"{label}: not a readable .npy array ({exc})") from exc
    else:
        try:
            array = np.asarray(item, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise InvalidLatents(f"{label}: not a rectangular array of numbers") from exc
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise InvalidLatents(f"{label}: latents must be real numbers, got dtype {array.dtype}")
    return array


def latents_to_tensors(items: list, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """One float32 `(N, C, H, W)` tensor per level (a single `(C, H, W)` array counts as N = 1);
    the first problem (number of levels, a level's shape, differing N, NaN/inf) raises `InvalidLatents`."""
    if len(items) != len(shapes):
        raise InvalidLatents(
            f"expected {len(shapes)} levels of latents (one array per level, finest first, shapes "
            f"{', '.join(str(tuple(s)) for s in shapes)}), got {len(items)}"
        )
    tensors: list[torch.Tensor] = []
    for level, (item, shape) in enumerate(zip(items, shapes, strict=True)):
        label = f"latents[{level}]"
        array = _decode_level(item, label)
        if array.ndim == len(shape):
            array = array[None]
        if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != tuple(shape):
            raise InvalidLatents(
                f"{label}: expected shape (N, {', '.join(map(str, shape))}), got {tuple(array.shape)}"
            )
        if array.shape[0] == 0:
            raise InvalidLatents(f"{label}: holds no images")
        if tensors and array.shape[0] != tensors[0].shape[0]:
            raise InvalidLatents(
                f"{label} holds {array.shape[0]} images but latents[0] holds {tensors[0].shape[0]}"
            )
        if not np.isfinite(array).all():
            raise InvalidLatents(f"{label}: contains NaN or infinite values")
        tensors.append(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    return tensors


def latents_payload(latents: list[torch.Tensor], fmt: str) -> list[str | list]:
    """Per level: base64 float32 `.npy` (`npy`) or nested lists (`array`)."""
    if fmt == "npy":
        return [npy_base64(z.numpy()) for z in latents]
    return [z.tolist() for z in latents]


def images_payload(images: torch.Tensor, fmt: str) -> dict[str, object]:
    """The `images` / `grid` / `npy` fields of an image response, as /sample formats them."""
    if fmt == "png":
        return {"images": [base64.b64encode(encode_png(im)).decode() for im in images]}
    if fmt == "grid_png":
        return {"grid": base64.b64encode(encode_png(image_grid(images))).decode()}
    return {"npy": npy_base64(images.numpy())}
