"""Hostile traffic against a real server: does the event loop stay responsive, and are light requests
served beside heavy ones? One run measures a server; `--server-root` measures another checkout (before
and after a change, with the same client).

    python benchmarks/hostile.py [--server-root DIR] [--seconds 20] [--tag after]

Two parts, each with the server to itself:

1. **Worst bodies**: one client sends, back to back, the bodies that once held the event loop (a 12 KB PNG
   declaring 10000×10000 pixels, a 109 KB PNG declaring 30000×30000, a JPEG header declaring 65000×65000,
   .npy headers declaring 10¹⁵ elements or a 100 MB dtype, a 16 MB /decode body holding one flat list of
   floats, a /sample body with a million keys, and the largest JSON body the server takes: 256 images'
   latents as nested arrays), while another asks `/health/live` every 20 ms: its p50,
   p99 and max latency, and the statuses the bodies got. Target: p99 ≤ 50 ms, no 5xx.
2. **Heavy beside light**: two clients send 128-image `/logprob` requests at K = 64 back to back while a
   third sends 1-image K = 1 requests every 100 ms: the light requests' p50, p99 and statuses.
3. **Slow clients**: a connection that sends nothing, a partial head, a body shorter than its
   Content-Length, an unfinished chunked body, all at once: when the server closes each (its header and
   body timeouts), up to `--slow-cap-s`.

Writes benchmarks/results/hostile_<tag>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import shlex
import struct
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, print_table, write_results
from benchmarks.load import start_server
from model.data import load_mnist

__all__ = ["jpeg_declaring", "npy_declaring", "png_declaring"]


def png_declaring(width: int, height: int, data_bytes: int = 4096) -> bytes:
    """A small PNG whose header declares a huge 1-bit image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\0" * data_bytes))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A JPEG whose frame header declares `width` × `height` pixels (and holds no data)."""
    frame = b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"  # three components
    return b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + frame + b"\xff\xd9"


def npy_declaring(descr: str, shape: str) -> bytes:
    """A `.npy` header declaring an array of `descr` and `shape`, with no data after it."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _multipart(name: str, payload: bytes) -> tuple[bytes, str]:
    boundary = "hostileboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def worst_bodies() -> list[tuple[str, str, bytes, str]]:
    """(label, path, body, content type) of each body that once held the event loop or gave a 500."""
    bodies = [
        ("png 10000x10000", *_multipart("a.png", png_declaring(10000, 10000, 12_000))),
        ("png 30000x30000", *_multipart("b.png", png_declaring(30000, 30000, 109_000))),
        ("jpeg 65000x65000", *_multipart("c.jpg", jpeg_declaring(65000, 65000))),
        ("npy (10**15,)", *_multipart("d.npy", npy_declaring("<f8", "(1000000000000000,)"))),
        ("npy V100000000", *_multipart("e.npy", npy_declaring("|V100000000", "(1,)"))),
    ]
    out = [(label, "/logprob", body, kind) for label, body, kind in bodies]
    flat = b'{"latents": [[' + b",".join([b"0.5"] * 4_000_000) + b"], [0.5]]}"  # ~16 MB
    out.append(("decode 4M-float flat list", "/decode", flat, "application/json"))
    keys = b"{" + b",".join(b'"k%d": 1' % i for i in range(1_000_000)) + b"}"  # ~10 MB
    out.append(("sample 1M keys", "/sample", keys, "application/json"))
    # The largest JSON body a server takes (3 MiB by default): 256 images' latents as nested arrays.
    level = lambda c, h: [[[0.123456789] * h] * h] * c  # noqa: E731
    nested = json.dumps({"latents": [[level(2, 14)] * 256, [level(8, 7)] * 256]}).encode()
    out.append(("decode 256 nested (2.7 MB)", "/decode", nested, "application/json"))
    return out


def _percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": 1e3 * values[len(values) // 2],
        "p99_ms": 1e3 * values[min(len(values) - 1, int(0.99 * len(values)))],
        "max_ms": 1e3 * values[-1],
    }


async def _probe(
    session: aiohttp.ClientSession, url: str, stop: asyncio.Event, every_s: float
) -> list[float]:
    times = []
    while not stop.is_set():
        started = time.perf_counter()
        try:
            async with session.get(url + "/health/live") as r:
                await r.read()
        except (aiohttp.ClientError, TimeoutError):  # no answer within the session's timeout: counted as is
            pass
        times.append(time.perf_counter() - started)
        await asyncio.sleep(every_s)
    return times


async def worst_bodies_part(url: str, seconds: float) -> dict[str, Any]:
    bodies = worst_bodies()
    statuses: dict[str, Counter] = {label: Counter() for label, *_ in bodies}
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as hostile,
        aiohttp.ClientSession(timeout=timeout) as probe,
    ):
        prober = asyncio.ensure_future(_probe(probe, url, stop, 0.02))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for label, path, body, kind in bodies:
                try:
                    async with hostile.post(url + path, data=body, headers={"content-type": kind}) as r:
                        await r.read()
                        statuses[label][str(r.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:  # the server reset or never answered
                    statuses[label][type(exc).__name__] += 1
        stop.set()
        health = await prober
    return {"health_live": _percentiles(health), "statuses": {k: dict(v) for k, v in statuses.items()}}


def _logprob_body(images: np.ndarray, samples: int) -> bytes:
    def b64(image: np.ndarray) -> str:
        buf = io.BytesIO()
        Image.fromarray(image[0]).save(buf, "PNG")
        return base64.b64encode(buf.getvalue()).decode()

    return json.dumps({"images": [b64(im) for im in images], "dequantization_samples": samples}).encode()


async def heavy_and_light_part(url: str, seconds: float) -> dict[str, Any]:
    digits = load_mnist().test[:128].numpy()
    heavy_body, light_body = _logprob_body(digits, 64), _logprob_body(digits[:1], 1)
    stop = asyncio.Event()
    heavy_statuses, light_statuses, light_times = Counter(), Counter(), []
    headers = {"content-type": "application/json"}

    async def post(session: aiohttp.ClientSession, body: bytes) -> str:
        try:
            async with session.post(url + "/logprob", data=body, headers=headers) as r:
                await r.read()
                return str(r.status)
        except (aiohttp.ClientError, TimeoutError) as exc:  # reset, or no answer within the timeout
            return type(exc).__name__

    async def heavy(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            status = await post(session, heavy_body)
            heavy_statuses[status] += 1
            if status != "200":
                await asyncio.sleep(0.2)

    async def light(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            status = await post(session, light_body)
            light_statuses[status] += 1
            if status == "200":
                light_times.append(time.perf_counter() - started)
            await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        tasks = [asyncio.ensure_future(heavy(session)) for _ in range(2)]
        await asyncio.sleep(1.0)  # the heavy requests are queued first
        tasks.append(asyncio.ensure_future(light(session)))
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.gather(*tasks)
    return {
        "light": {**_percentiles(light_times), "statuses": dict(light_statuses)},
        "heavy_statuses": dict(heavy_statuses),
    }


SLOW_CLIENTS = {  # pattern -> (what it sends, the server setting that should cut it off)
    "nothing sent": (b"", "header_timeout_s"),
    "partial head": (b"POST /sample HTTP/1.1\r\nHost: x\r\n", "header_timeout_s"),
    "short Content-Length body": (
        b"POST /sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"num',
        "body_timeout_s",
    ),
    "unfinished chunked body": (
        b"POST /sample HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"num\r\n',
        "body_timeout_s",
    ),
}


async def _held_open_s(url: str, payload: bytes, cap_s: float) -> tuple[float, str]:
    """Seconds until the server closes a connection that sent `payload` and then nothing, and the status
    line it answered with (or how long it stayed open, up to `cap_s`)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.perf_counter()
    writer.write(payload)
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(), cap_s)
    except TimeoutError:
        data = b"(still open)"
    writer.close()
    return time.perf_counter() - started, data.split(b"\r\n", 1)[0].decode(errors="replace")


async def slow_clients_part(url: str, cap_s: float) -> list[dict[str, Any]]:
    """Every slow pattern at once, each on its own connection: when the server cuts it off."""
    names = list(SLOW_CLIENTS)
    held = await asyncio.gather(*(_held_open_s(url, SLOW_CLIENTS[n][0], cap_s) for n in names))
    return [
        {"pattern": n, "cut by": SLOW_CLIENTS[n][1], "closed_after_s": round(t, 2), "answer": line}
        for n, (t, line) in zip(names, held, strict=True)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-root", default=None, help="checkout to start the server from")
    parser.add_argument("--seconds", type=float, default=20.0, help="per part")
    parser.add_argument("--tag", default="latest")
    parser.add_argument("--server-args", default="", help="extra server options, as one string")
    parser.add_argument("--slow-cap-s", type=float, default=45.0, help="slow clients: give up after this")
    args = parser.parse_args()
    server_args = ["--torch-threads", "1", *shlex.split(args.server_args)]
    server, url = start_server(str(ROOT / "checkpoints"), server_args, args.server_root)
    try:
        worst = asyncio.run(worst_bodies_part(url, args.seconds))
        heavy = asyncio.run(heavy_and_light_part(url, args.seconds))
        slow = asyncio.run(slow_clients_part(url, args.slow_cap_s))
    finally:
        server.terminate()
        server.wait(60)
    rows = [
        {"part": "health/live beside the worst bodies", **worst["health_live"]},
        {
            "part": "1-image logprob beside 128 x K=64",
            **{k: v for k, v in heavy["light"].items() if k != "statuses"},
        },
    ]
    print_table(rows, ["part", "n", "p50_ms", "p99_ms", "max_ms"])
    print("worst bodies answered:", json.dumps(worst["statuses"]))
    print("light:", heavy["light"]["statuses"], "heavy:", heavy["heavy_statuses"])
    print_table(slow, ["pattern", "cut by", "closed_after_s", "answer"])
    path = write_results(
        f"hostile_{args.tag}",
        rows,
        device=f"CPU ({cpu_name()}), server with 1 inference thread",
        server_root=args.server_root or "this checkout",
        server_args=server_args,
        worst_body_statuses=worst["statuses"],
        light_statuses=heavy["light"]["statuses"],
        heavy_statuses=heavy["heavy_statuses"],
        slow_clients=slow,
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
