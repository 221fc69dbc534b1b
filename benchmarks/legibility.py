"""How legible are the MNIST models' samples, and how tight are their bounds? A small classifier of our
own judges samples; the uniform and importance-weighted bounds are measured side by side.

    python benchmarks/legibility.py [--checkpoints checkpoints/finc-mnist ...] [--samples 1000]
        [--temperature 0.7] [--bound-images 1000] [--threads 2]

1. **Classifier**: a small CNN trained here on the MNIST training set (2 epochs, seeded; its test accuracy
   is reported). An image "reads clearly as a digit" when the classifier gives one class probability
   ≥ 0.9: the fraction of samples that do, beside the same fraction for real test images.
2. **Bounds** on the first `--bound-images` test images: the uniform-dequantisation bound (what papers
   report and `flowserve evaluate` measures on all 10k) and the importance-weighted bound with K = 64
   (`/logprob`'s `dequantization_samples`, docs/math.md §5), in bits/dim.

Writes benchmarks/results/legibility.json and one sample grid per checkpoint,
benchmarks/results/legibility_<checkpoint>.png (the first 64 samples, each captioned by whether it reads).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, cpu_name, print_table, write_results
from model import load_flow
from model.data import load_mnist, mnist_labels
from model.evaluate import evaluate_bits_per_dim, evaluate_iw_bits_per_dim
from model.sampling import draw_latents, torch_decoder

MNIST_CHECKPOINTS = ["finc-mnist", "inverse-flow-mnist", "glow-mnist", "finc-mnist-l"]
CONFIDENT = 0.9


def classifier() -> nn.Module:
    """Two conv layers and two linear ones: ~99% test accuracy after 2 epochs."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def _inputs(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255.0).sub(0.1307).div(0.3081)


def train_classifier(train: torch.Tensor, labels: torch.Tensor, epochs: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = classifier()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(train.shape[0], generator=order).split(128):
            loss = nn.functional.cross_entropy(net(_inputs(train[batch])), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


@torch.no_grad()
def confidences(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The classifier's top class probability per image."""
    return torch.cat([net(_inputs(b)).softmax(1).amax(1) for b in images.split(500)])


def captioned_grid(images: torch.Tensor, confident: torch.Tensor, path: Path, columns: int = 8) -> None:
    """Samples in a grid, each framed green when the classifier reads it (≥ 0.9), red otherwise."""
    size, pad = images.shape[-1] * 3, 4
    rows = (images.shape[0] + columns - 1) // columns
    grid = Image.new("RGB", (columns * (size + pad) + pad, rows * (size + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, ok) in enumerate(zip(images, confident.tolist(), strict=True)):
        x, y = pad + (i % columns) * (size + pad), pad + (i // columns) * (size + pad)
        tile = Image.fromarray(image[0].numpy()).resize((size, size), Image.NEAREST).convert("RGB")
        grid.paste(tile, (x, y))
        draw.rectangle(
            (x - 2, y - 2, x + size + 1, y + size + 1), outline="#1a9850" if ok else "#d73027", width=2
        )
    grid.save(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--checkpoints", nargs="*", default=[str(ROOT / "checkpoints" / c) for c in MNIST_CHECKPOINTS]
    )
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--bound-images", type=int, default=1000, help="0: skip the bounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="legibility")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_mnist()
    train_labels, test_labels = mnist_labels()
    started = time.perf_counter()
    net = train_classifier(data.train, train_labels)
    with torch.no_grad():
        accuracy = float(
            (torch.cat([net(_inputs(b)).argmax(1) for b in data.test.split(500)]) == test_labels)
            .float()
            .mean()
        )
    real = confidences(net, data.test[: args.samples])
    print(f"classifier: test accuracy {accuracy:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    rows = [
        {
            "images": f"MNIST test images ({args.samples})",
            "legible_fraction": float((real >= CONFIDENT).float().mean()),
        }
    ]
    for checkpoint in map(Path, args.checkpoints):
        flow = load_flow(checkpoint)
        decode = torch_decoder(flow)
        with torch.no_grad():
            samples = torch.cat(
                [
                    decode(draw_latents(flow, 100, args.temperature, seed))
                    for seed in range(args.samples // 100)
                ]
            )
        confident = confidences(net, samples) >= CONFIDENT
        captioned_grid(samples[:64], confident[:64], RESULTS / f"{args.tag}_{checkpoint.name}.png")
        row = {
            "images": f"{checkpoint.name} samples, T = {args.temperature}",
            "parameters": flow.num_parameters(),
            "legible_fraction": float(confident.float().mean()),
        }
        if args.bound_images:
            test = data.test[: args.bound_images]
            uniform, weighted = evaluate_bits_per_dim(flow, test), evaluate_iw_bits_per_dim(flow, test, 64)
            row |= {"uniform_bpd": uniform, "iw_k64_bpd": weighted}
        rows.append(row)
        print(row, flush=True)
    print(f"\nlegibility (a sample reads when the classifier gives ≥ {CONFIDENT}) on {cpu_name()}")
    print_table(rows, ["images", "parameters", "legible_fraction", "uniform_bpd", "iw_k64_bpd"])
    path = write_results(
        args.tag,
        rows,
        classifier_test_accuracy=accuracy,
        confidence_threshold=CONFIDENT,
        temperature=args.temperature,
        bound_images=args.bound_images,
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
