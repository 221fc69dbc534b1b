"""Out-of-distribution detection through the HTTP API: AUROC and FPR at 95% TPR per model, OOD set and score.

    python benchmarks/ood.py [--images 2000] [--threads 1] [--models finc-mnist ...] [--url URL]

Starts `python -m service` on 127.0.0.1 (as benchmarks/load.py does; `--url` uses a running one) and sends
every model `--images` images of each set as `/logprob` requests with `ood: true`: its own dataset's test
images (the first N, which are among the images its `ood_stats.json` was fit on: no score below depends on
the fit except through the entropy estimate, a mean over 10,000 images), the other dataset's test images
(MNIST models: Fashion-MNIST; the Fashion-MNIST model: MNIST), uniform noise (every pixel uniform in
0..255) and constant images (one value per image, uniform in 0..255). Scores, OOD as the positive class:

- `raw`: −log p(x) (the likelihood alone; flagged when low);
- `complexity`: the service's `ood_score` S(x) = −log₂ p(x) − L(x);
- `typicality-M`: the typicality statistic |mean(−log p) − entropy| of batches of M images: M = 4 and 16
  are requests of M images (the response's `typicality.statistic`); M = 1 is each image's log_prob against
  the entropy estimate from `GET /models/{name}`.

Beside AUROC and FPR@95%TPR it reports, for `complexity`, the share of the OOD set that `is_outlier` flags
at the default false-positive rate (5%) and the share of in-distribution images it flags. Writes
benchmarks/results/ood.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import free_port, print_table, write_results
from model.data import load_dataset

OTHER = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}
BATCHES = (4, 16)  # typicality batch sizes sent as requests (1 is computed from per-image scores)


def auroc(ood: np.ndarray, ind: np.ndarray) -> float:
    """P(score of an OOD item > score of an in-distribution one), ties counted half (Mann-Whitney U)."""
    scores = np.concatenate([ood, ind])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties (infinite scores tie with each other)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    u = ranks[: len(ood)].sum() - len(ood) * (len(ood) + 1) / 2
    return float(u / (len(ood) * len(ind)))


def fpr_at_tpr(ood: np.ndarray, ind: np.ndarray, tpr: float = 0.95) -> float:
    """The share of in-distribution items at or above the highest threshold that catches `tpr` of OOD."""
    threshold = np.sort(ood)[::-1][int(np.ceil(tpr * len(ood))) - 1]
    return float((ind >= threshold).mean())


def image_sets(dataset: str, n: int) -> dict[str, torch.Tensor]:
    """The in-distribution test images and the three OOD sets, `uint8 (n, 1, 28, 28)` each."""
    noise = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (n, 1, 1, 1), generator=torch.Generator().manual_seed(1))
    return {
        "in-distribution": load_dataset(dataset).test[:n],
        OTHER[dataset]: load_dataset(OTHER[dataset]).test[:n],
        "uniform noise": torch.randint(0, 256, (n, 1, 28, 28), generator=noise, dtype=torch.uint8),
        "constant": levels.expand(n, 1, 28, 28).to(torch.uint8).contiguous(),
    }


def _number(value: float | None, missing: float) -> float:
    return missing if value is None else value


def score_set(client: httpx.Client, model: str, images: torch.Tensor, label: str) -> dict[str, np.ndarray]:
    """Per image −log p, S and is_outlier (requests of 4), and per batch the typicality statistic."""
    neg_log_p, s, outlier, typical = [], [], [], {m: [] for m in BATCHES}
    for m in BATCHES:
        starts = range(0, len(images) - m + 1, m)
        for start in tqdm(starts, desc=f"{model} {label} M={m}", mininterval=10, leave=False):
            batch = images[start : start + m, 0].tolist()
            r = client.post("/logprob", json={"model": model, "images": batch, "ood": True})
            r.raise_for_status()
            body = r.json()
            typical[m].append(_number(body["typicality"]["statistic"], np.inf))
            if m == BATCHES[0]:
                for item in body["results"]:
                    neg_log_p.append(-_number(item["log_prob"], -np.inf))
                    s.append(_number(item["ood_score"], np.inf))
                    outlier.append(item["is_outlier"])
    return {
        "raw": np.array(neg_log_p),
        "complexity": np.array(s),
        "is_outlier": np.array(outlier),
        **{f"typicality-{m}": np.array(v) for m, v in typical.items()},
    }


def start_server(models: Path, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "service", "--port", str(port), "--models", str(models)]
    command += ["--torch-threads", str(threads), "--log-level", "warning"]
    server = subprocess.Popen(command, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        try:
            if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.terminate()
    raise TimeoutError("server not ready after 300 s")


def benchmark(url: str, models: list[str] | None, n: int) -> list[dict[str, Any]]:
    rows = []
    with httpx.Client(base_url=url, timeout=120) as client:
        served = {m["name"]: m for m in client.get("/models").json()["models"]}
        for name in models or sorted(served):
            info = served[name]
            if not info["ood"]["available"]:
                print(f"skipping {name}: {info['ood']['message']}", file=sys.stderr)
                continue
            entropy = info["ood"]["entropy"]
            sets = image_sets(info["dataset"], n)
            scores = {label: score_set(client, name, images, label) for label, images in sets.items()}
            for per in scores.values():
                per["typicality-1"] = np.abs(per["raw"] - entropy)
            ind = scores.pop("in-distribution")
            for label, ood in scores.items():
                for method in ("raw", "complexity", "typicality-1", "typicality-4", "typicality-16"):
                    row = {
                        "model": name,
                        "ood_set": label,
                        "method": method,
                        "auroc": round(auroc(ood[method], ind[method]), 4),
                        "fpr_at_95_tpr": round(fpr_at_tpr(ood[method], ind[method]), 4),
                        "ood_items": len(ood[method]),
                        "in_items": len(ind[method]),
                    }
                    if method == "complexity":
                        row["flagged_at_5pct"] = round(float(ood["is_outlier"].mean()), 4)
                        row["in_flagged_at_5pct"] = round(float(ind["is_outlier"].mean()), 4)
                    rows.append(row)
            print_table([r for r in rows if r["model"] == name], COLUMNS)
    return rows


COLUMNS = ["model", "ood_set", "method", "auroc", "fpr_at_95_tpr", "flagged_at_5pct", "in_flagged_at_5pct"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="images per set (in-distribution and each OOD)")
    p.add_argument("--models", nargs="*", default=None, help="default: every served model with statistics")
    p.add_argument("--models-dir", default=str(ROOT / "checkpoints"))
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--url", default=None, help="a running server; default: start one")
    p.add_argument("--tag", default="", help="results go to benchmarks/results/ood[_<tag>].json")
    args = p.parse_args()
    server = None
    url = args.url
    if url is None:
        server, url = start_server(Path(args.models_dir), args.threads)
    started = time.perf_counter()
    try:
        rows = benchmark(url, args.models, args.images)
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
    print()
    print_table(rows, COLUMNS)
    path = write_results(
        "ood" + (f"_{args.tag}" if args.tag else ""),
        rows,
        images_per_set=args.images,
        server_threads=args.threads,
        seconds=round(time.perf_counter() - started, 1),
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
