"""Python client for the service (httpx, sync and async) and a small CLI.

python -m service.client sample --n 16 --out grid.png [--model finc-mnist --seed 0 --temperature 0.7]
python -m service.client logprob image.png [more.png ...] [--dequantization-samples 16 | --ood --ood-fpr 0.01]
python -m service.client encode image.png [more.png ...] --out latents.npz
python -m service.client decode latents.npz --out grid.png
python -m service.client interpolate (--start IMAGE | --start-seed N) (--end IMAGE | --end-seed N) \
    [--steps 8 --method spherical|linear --temperature 0.7] --out strip.png
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np

__all__ = ["AsyncFlowClient", "FlowClient", "FlowServiceError"]

DEFAULT_URL = "http://127.0.0.1:8000"


class FlowServiceError(RuntimeError):
    """An error answer from the service, with its status, code and request id."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None):
        super().__init__(f"{status} {code}: {message} (request {request_id})")
        self.status, self.code, self.message, self.request_id = status, code, message, request_id


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        err = response.json()["error"]
        raise FlowServiceError(response.status_code, err["code"], err["message"], err.get("request_id"))
    except (ValueError, KeyError, TypeError):
        raise FlowServiceError(response.status_code, "http_error", response.text[:200], None) from None


def _sample_body(n: int, model: str | None, temperature: float, seed: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"num_samples": n, "temperature": temperature, "format": "npy"}
    if model:
        body["model"] = model
    if seed is not None:
        body["seed"] = seed
    return body


def _decode_sample(payload: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    images = np.load(io.BytesIO(base64.b64decode(payload.pop("npy"))), allow_pickle=False)
    return images, payload


def _npy_b64(array: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def _from_npy_b64(text: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def _image_b64(item: bytes | str | Path) -> str:
    """An image file (path) or encoded image (PNG/JPEG/.npy bytes) as the base64 string the API takes."""
    data = Path(item).read_bytes() if isinstance(item, (str, Path)) else item
    return base64.b64encode(data).decode()


def _endpoint(end: dict[str, Any]) -> dict[str, Any]:
    """`{"image": path | bytes}` or `{"seed": n, "temperature"?: t}` → the JSON /interpolate takes."""
    if "image" in end and not isinstance(end["image"], list):
        return {**end, "image": _image_b64(end["image"])}
    return end


def _encode_body(images: list[bytes | str | Path], model: str | None, dequantization: str) -> dict:
    body: dict[str, Any] = {"images": [_image_b64(i) for i in images], "dequantization": dequantization}
    return {**body, "model": model} if model else body


def _decode_body(latents: list[np.ndarray], model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"latents": [_npy_b64(z.astype(np.float32)) for z in latents], "format": "npy"}
    return {**body, "model": model} if model else body


def _interpolate_body(
    start: dict[str, Any], end: dict[str, Any], steps: int, method: str, model: str | None
) -> dict[str, Any]:
    body = {
        "start": _endpoint(start),
        "end": _endpoint(end),
        "steps": steps,
        "method": method,
        "format": "npy",
    }
    return {**body, "model": model} if model else body


def _decode_latents(payload: dict[str, Any]) -> tuple[list[np.ndarray], dict[str, Any]]:
    latents = [_from_npy_b64(z) for z in payload.pop("latents")]
    return latents, payload


def _files(images: list[bytes | str | Path]) -> list[tuple[str, tuple[str, bytes]]]:
    files = []
    for i, item in enumerate(images):
        if isinstance(item, (str, Path)):
            path = Path(item)
            files.append(("files", (path.name, path.read_bytes())))
        else:
            files.append(("files", (f"image{i}.png", item)))
    return files


def _form(
    model: str | None, dequantization_samples: int, ood: bool = False, ood_fpr: float | None = None
) -> dict[str, str]:
    form = {"model": model} if model else {}
    if dequantization_samples != 1:
        form["dequantization_samples"] = str(dequantization_samples)
    if ood:
        form["ood"] = "true"
    if ood_fpr is not None:
        form["ood_fpr"] = f"{ood_fpr:g}"
    return form


class FlowClient:
    """Synchronous client. `sample()` returns `uint8 (N, C, H, W)` images and the response metadata."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> FlowClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def sample(
        self, n: int = 16, model: str | None = None, temperature: float = 1.0, seed: int | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        response = self._http.post("/sample", json=_sample_body(n, model, temperature, seed))
        _raise_for_error(response)
        return _decode_sample(response.json())

    def logprob(
        self,
        images: list[bytes | str | Path],
        model: str | None = None,
        dequantization_samples: int = 1,
        ood: bool = False,
        ood_fpr: float | None = None,
    ) -> dict[str, Any]:
        """Score image files (paths) or encoded images (PNG/JPEG/.npy bytes); K > 1 dequantisation samples
        give the importance-weighted bound; `ood` adds out-of-distribution scores at `ood_fpr`."""
        response = self._http.post(
            "/logprob", files=_files(images), data=_form(model, dequantization_samples, ood, ood_fpr)
        )
        _raise_for_error(response)
        return response.json()

    def encode(
        self, images: list[bytes | str | Path], model: str | None = None, dequantization: str = "midpoint"
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Images → (float32 latents `(N, C, H, W)` per level, metadata with `log_det` and `log_prob`)."""
        response = self._http.post("/encode", json=_encode_body(images, model, dequantization))
        _raise_for_error(response)
        return _decode_latents(response.json())

    def decode(self, latents: list[np.ndarray], model: str | None = None) -> np.ndarray:
        """Latents (one `(N, C, H, W)` array per level) → `uint8 (N, C, H, W)` images."""
        response = self._http.post("/decode", json=_decode_body(latents, model))
        _raise_for_error(response)
        return _from_npy_b64(response.json()["npy"])

    def interpolate(
        self,
        start: dict[str, Any],
        end: dict[str, Any],
        steps: int = 8,
        method: str = "spherical",
        model: str | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Ends are `{"image": path | bytes}` or `{"seed": n, "temperature": t}`; returns `steps` images
        and the metadata (`t`, timings)."""
        response = self._http.post("/interpolate", json=_interpolate_body(start, end, steps, method, model))
        _raise_for_error(response)
        return _decode_sample(response.json())

    def models(self) -> dict[str, Any]:
        response = self._http.get("/models")
        _raise_for_error(response)
        return response.json()


class AsyncFlowClient:
    """Asynchronous twin of `FlowClient`."""

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 60.0):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> AsyncFlowClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def sample(
        self, n: int = 16, model: str | None = None, temperature: float = 1.0, seed: int | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        response = await self._http.post("/sample", json=_sample_body(n, model, temperature, seed))
        _raise_for_error(response)
        return _decode_sample(response.json())

    async def logprob(
        self,
        images: list[bytes | str | Path],
        model: str | None = None,
        dequantization_samples: int = 1,
        ood: bool = False,
        ood_fpr: float | None = None,
    ) -> dict[str, Any]:
        response = await self._http.post(
            "/logprob", files=_files(images), data=_form(model, dequantization_samples, ood, ood_fpr)
        )
        _raise_for_error(response)
        return response.json()

    async def encode(
        self, images: list[bytes | str | Path], model: str | None = None, dequantization: str = "midpoint"
    ) -> tuple[list[np.ndarray], dict[str, Any]]:
        response = await self._http.post("/encode", json=_encode_body(images, model, dequantization))
        _raise_for_error(response)
        return _decode_latents(response.json())

    async def decode(self, latents: list[np.ndarray], model: str | None = None) -> np.ndarray:
        response = await self._http.post("/decode", json=_decode_body(latents, model))
        _raise_for_error(response)
        return _from_npy_b64(response.json()["npy"])

    async def interpolate(
        self,
        start: dict[str, Any],
        end: dict[str, Any],
        steps: int = 8,
        method: str = "spherical",
        model: str | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        body = _interpolate_body(start, end, steps, method, model)
        response = await self._http.post("/interpolate", json=body)
        _raise_for_error(response)
        return _decode_sample(response.json())

    async def models(self) -> dict[str, Any]:
        response = await self._http.get("/models")
        _raise_for_error(response)
        return response.json()


def _cli_endpoint(image: str | None, seed: int | None, temperature: float, which: str) -> dict[str, Any]:
    if (image is None) == (seed is None):
        raise SystemExit(f"error: give exactly one of --{which} IMAGE or --{which}-seed N")
    return {"image": image} if image is not None else {"seed": seed, "temperature": temperature}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--api-key", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="generate images and save a grid PNG")
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--out", default="samples.png")
    lp = sub.add_parser("logprob", help="score image files")
    lp.add_argument("images", nargs="+")
    lp.add_argument(
        "--dequantization-samples", type=int, default=1, help="K of the importance-weighted bound"
    )
    lp.add_argument("--ood", action="store_true", help="add out-of-distribution scores (docs/math.md §8)")
    lp.add_argument("--ood-fpr", type=float, default=None, help="their false-positive rate (default 0.05)")
    enc = sub.add_parser("encode", help="image files → latents in an .npz (level0, level1, ..., log_det)")
    enc.add_argument("images", nargs="+")
    enc.add_argument("--dequantization", choices=["midpoint", "hashed"], default="midpoint")
    enc.add_argument("--out", default="latents.npz")
    dec = sub.add_parser("decode", help="latents (.npz from encode) → a grid PNG")
    dec.add_argument("latents")
    dec.add_argument("--out", default="decoded.png")
    it = sub.add_parser(
        "interpolate", help="a path in latent space between two images or seeds → a strip PNG"
    )
    for which in ("start", "end"):
        it.add_argument(f"--{which}", default=None, help="image file")
        it.add_argument(f"--{which}-seed", type=int, default=None, help="or a seed (as /sample draws it)")
    it.add_argument("--steps", type=int, default=8)
    it.add_argument("--method", choices=["spherical", "linear"], default="spherical")
    it.add_argument("--temperature", type=float, default=1.0, help="of the seeds' latents")
    it.add_argument("--out", default="interpolation.png")
    for p in (s, lp, enc, dec, it):
        p.add_argument("--model", default=None)
    return parser


def _run(client: FlowClient, args: argparse.Namespace) -> dict[str, Any]:
    """One CLI command; returns what to print as JSON."""
    import torch

    from model.images import save_grid

    if args.command == "sample":
        images, meta = client.sample(args.n, args.model, args.temperature, args.seed)
        save_grid(torch.from_numpy(images), args.out)
        return {**meta, "out": args.out}
    if args.command == "logprob":
        return client.logprob(args.images, args.model, args.dequantization_samples, args.ood, args.ood_fpr)
    if args.command == "encode":
        latents, meta = client.encode(args.images, args.model, args.dequantization)
        np.savez(
            args.out, **{f"level{i}": z for i, z in enumerate(latents)}, log_det=np.array(meta["log_det"])
        )
        return {**meta, "out": args.out}
    if args.command == "decode":
        try:
            with np.load(args.latents, allow_pickle=False) as archive:
                levels = sorted((k for k in archive.files if k.startswith("level")), key=lambda k: int(k[5:]))
                latents = [archive[k] for k in levels]
        except (OSError, ValueError) as exc:
            raise FlowServiceError(
                0, "bad_input", f"{args.latents} is not an .npz from encode ({exc})", None
            ) from exc
        images = client.decode(latents, args.model)
        save_grid(torch.from_numpy(images), args.out)
        return {"num_images": len(images), "out": args.out}
    start = _cli_endpoint(args.start, args.start_seed, args.temperature, "start")
    end = _cli_endpoint(args.end, args.end_seed, args.temperature, "end")
    images, meta = client.interpolate(start, end, args.steps, args.method, args.model)
    save_grid(torch.from_numpy(images), args.out, nrow=len(images))
    return {**meta, "out": args.out}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with FlowClient(args.url, args.api_key) as client:
            print(json.dumps(_run(client, args), indent=2))
    except FlowServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
