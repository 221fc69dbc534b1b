"""Real requests against a running container: every model samples and scores, errors are JSON."""

from __future__ import annotations

import base64
import io
import math
import sys

import httpx
from PIL import Image

from model.data import load_mnist
from model.images import encode_png


def main(url: str) -> None:
    digits = load_mnist().test[:4]
    with httpx.Client(base_url=url, timeout=120) as client:
        models = client.get("/models").json()["models"]
        assert models, "no models served"
        for m in models:
            r = client.post("/sample", json={"model": m["name"], "num_samples": 4, "seed": 0})
            r.raise_for_status()
            image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
            assert image.size == (28, 28), image.size
            files = [("files", (f"{i}.png", encode_png(d), "image/png")) for i, d in enumerate(digits)]
            r = client.post("/logprob", files=files, data={"model": m["name"]})
            r.raise_for_status()
            bpd = [x["bits_per_dim"] for x in r.json()["results"]]
            assert all(math.isfinite(b) and 0.0 < b < 4 for b in bpd), bpd
            print(
                f"docker_smoke: {m['name']}: sampled 4, scored 4 digits at {sum(bpd) / 4:.3f} bits/dim, "
                f"backend {m['backend']}"
            )
        bad = client.post("/logprob", files=[("files", ("x.png", b"not an image", "image/png"))])
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_image", bad.text
        assert client.get("/metrics").status_code == 200
    print("docker_smoke: ok")


if __name__ == "__main__":
    main(sys.argv[1])
