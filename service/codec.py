"""Every payload the API reads or writes: images (PNG/JPEG/`.npy` bytes, base64 strings, nested arrays) and
latents (base64 `.npy` or nested arrays) in, validated against the model's shapes; PNG, PNG grids, `.npy`
and nested arrays out. A bad payload raises `InvalidImage` / `InvalidLatents` naming the offending item."""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from model.images import encode_png, image_grid

from .errors import InvalidImage, InvalidLatents, ServiceError

__all__ = [
    "decode_image",
    "images_payload",
    "images_to_tensor",
    "latents_payload",
    "latents_to_tensors",
    "npy_base64",
    "npy_bytes",
]

NPY_MAGIC = b"\x93NUMPY"
IMAGE_FORMATS = ("PNG", "JPEG")
# .npy dtypes an image or a latent array may have: booleans, integers and reals (no objects, strings,
# records or complex numbers, whose headers can declare gigabytes in a few bytes).
_NPY_KINDS = frozenset("biuf")
FLOAT32_MAX = float(np.finfo(np.float32).max)
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


# -- shared decoding ----------------------------------------------------------------------------------
def _base64(text: str, label: str, error: type[ServiceError], data_url: bool = False) -> bytes:
    if data_url and text.startswith("data:") and "," in text:  # images may come as browsers' data URLs
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error(f"{label}: not valid base64 ({exc})") from exc


def _npy(data: bytes, label: str, error: type[ServiceError], max_elements: int) -> np.ndarray:
    """A `.npy` array read after its header is checked: an allowed dtype, at most `max_elements`
    elements, and the bytes it declares actually present; nothing is allocated before that."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        if version not in read_header:
            raise ValueError(f".npy format version {version} is not supported")
        shape, fortran, dtype = read_header[version](stream, max_header_size=10_000)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise error(f"{label}: not a readable .npy array ({exc})") from exc
    if dtype.hasobject or dtype.kind not in _NPY_KINDS or dtype.subdtype is not None:
        raise error(f"{label}: .npy dtype {dtype} is not allowed (use integers or reals)")
    count = math.prod(shape)
    if count > max_elements:
        raise error(f"{label}: .npy array declares {count} elements, more than the {max_elements} expected")
    present = len(data) - stream.tell()
    if present < count * dtype.itemsize:
        raise error(f"{label}: .npy array declares {count * dtype.itemsize} bytes of data, has {present}")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran else "C")


def _nested(values: list, label: str, error: type[ServiceError]) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise error(f"{label}: not a rectangular array of numbers") from exc


# -- images in ----------------------------------------------------------------------------------------
def _image_from_bytes(data: bytes, shape: tuple[int, int, int], label: str) -> np.ndarray:
    """PNG, JPEG or `.npy` bytes as an array; the size a file declares is checked before anything is
    decoded, so that a small file declaring a huge image costs nothing."""
    channels, h, w = shape
    if data.startswith(NPY_MAGIC):
        return _npy(data, label, InvalidImage, max_elements=channels * h * w)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"{label}: the image declares far more pixels than {w}×{h} ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"{label}: not a readable PNG/JPEG image ({exc})") from exc
    if im.size != (w, h):
        im.close()
        declared = f"{im.size[0]}×{im.size[1]}"
        raise InvalidImage(f"{label}: expected shape {shape} (C, H, W), the file declares {declared} pixels")
    try:
        with im:
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


def decode_image(item: bytes | str | list, shape: tuple[int, int, int], label: str) -> np.ndarray:
    """One image as `uint8 (C, H, W)`, checked against the model's shape and the pixel range [0, 255]."""
    c, h, w = shape
    if isinstance(item, bytes):
        array = _image_from_bytes(item, shape, label)
    elif isinstance(item, str):
        array = _image_from_bytes(_base64(item, label, InvalidImage, data_url=True), shape, label)
    else:
        array = _nested(item, label, InvalidImage)
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


# -- latents in ---------------------------------------------------------------------------------------
def _latent_level(item: str | list, label: str, max_elements: int) -> np.ndarray:
    if isinstance(item, str):
        data = _base64(item, label, InvalidLatents)
        if not data.startswith(NPY_MAGIC):
            raise InvalidLatents(f"{label}: not a .npy array (send base64 .npy or a nested array)")
        array = _npy(data, label, InvalidLatents, max_elements)
    else:
        array = _nested(item, label, InvalidLatents)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
    ):
        raise InvalidLatents(f"{label}: latents must be real numbers, got dtype {array.dtype}")
    return array


def latents_to_tensors(
    items: list, shapes: list[tuple[int, ...]], max_images: int = 65536
) -> list[torch.Tensor]:
    """One float32 `(N, C, H, W)` tensor per level (a single `(C, H, W)` array counts as N = 1);
    the first problem (number of levels, a level's shape, differing N, NaN/inf, values beyond float32's
    range, more than `max_images` images) raises `InvalidLatents`."""
    if len(items) != len(shapes):
        raise InvalidLatents(
            f"expected {len(shapes)} levels of latents (one array per level, finest first, shapes "
            f"{', '.join(str(tuple(s)) for s in shapes)}), got {len(items)}"
        )
    tensors: list[torch.Tensor] = []
    for level, (item, shape) in enumerate(zip(items, shapes, strict=True)):
        label = f"latents[{level}]"
        array = _latent_level(item, label, max_elements=max_images * math.prod(shape))
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
        if array.size and np.abs(array.astype(np.float64, copy=False)).max() > FLOAT32_MAX:
            raise InvalidLatents(f"{label}: values beyond float32's range (±{FLOAT32_MAX:.3g})")
        tensors.append(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    return tensors


# -- out ----------------------------------------------------------------------------------------------
def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_base64(array: np.ndarray) -> str:
    return base64.b64encode(npy_bytes(array)).decode()


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
