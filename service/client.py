"""Python client for the service (httpx, sync and async) and a small CLI.

python -m service.client sample --n 16 --out grid.png [--model finc-mnist --seed 0 --temperature 0.7]
python -m service.client logprob image.png [more.png ...]
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


def _files(images: list[bytes | str | Path]) -> list[tuple[str, tuple[str, bytes]]]:
    files = []
    for i, item in enumerate(images):
        if isinstance(item, (str, Path)):
            path = Path(item)
            files.append(("files", (path.name, path.read_bytes())))
        else:
            files.append(("files", (f"image{i}.png", item)))
    return files


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

    def logprob(self, images: list[bytes | str | Path], model: str | None = None) -> dict[str, Any]:
        """Score image files (paths) or encoded images (PNG/JPEG/.npy bytes)."""
        response = self._http.post("/logprob", files=_files(images), data={"model": model} if model else None)
        _raise_for_error(response)
        return response.json()

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

    async def logprob(self, images: list[bytes | str | Path], model: str | None = None) -> dict[str, Any]:
        response = await self._http.post(
            "/logprob", files=_files(images), data={"model": model} if model else None
        )
        _raise_for_error(response)
        return response.json()

    async def models(self) -> dict[str, Any]:
        response = await self._http.get("/models")
        _raise_for_error(response)
        return response.json()


def main(argv: list[str] | None = None) -> int:
    import torch

    from model.images import save_grid

    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--api-key", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="generate images and save a grid PNG")
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--model", default=None)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--out", default="samples.png")
    lp = sub.add_parser("logprob", help="score image files")
    lp.add_argument("images", nargs="+")
    lp.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    try:
        with FlowClient(args.url, args.api_key) as client:
            if args.command == "sample":
                images, meta = client.sample(args.n, args.model, args.temperature, args.seed)
                save_grid(torch.from_numpy(images), args.out)
                print(json.dumps({**meta, "out": args.out}, indent=2))
            else:
                print(json.dumps(client.logprob(args.images, args.model), indent=2))
    except FlowServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
