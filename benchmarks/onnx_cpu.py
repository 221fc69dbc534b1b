"""torch vs onnxruntime on the CPU for every exported (convolution-only) pass of the shipped checkpoints.

    python benchmarks/onnx_cpu.py [--quick] [--models checkpoints]

Prints images/s and the onnxruntime/torch speed ratio per pass and batch size; writes
benchmarks/results/onnx_cpu.json. The service's `--backend auto` makes the same comparison at start-up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median_seconds, print_table, write_results
from model import load_flow
from service.onnx_backend import load_onnx_passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=str(Path(__file__).resolve().parents[1] / "checkpoints"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 3 if args.quick else 10
    device = torch.device("cpu")
    rows = []
    checkpoints = sorted(p for p in Path(args.models).iterdir() if (p / "onnx" / "manifest.json").is_file())
    jobs = [(c, name, b) for c in checkpoints for name in load_onnx_passes(c, device) for b in (1, 16, 64)]
    for ckpt, name, batch in tqdm(jobs, desc="passes"):
        flow = load_flow(ckpt).freeze()
        session = load_onnx_passes(ckpt, device)[name]
        gen = torch.Generator().manual_seed(0)
        if name == "score":
            images = torch.randint(0, 256, (batch, *flow.config.image_shape), generator=gen).float()
            feed = {"images": (images + 0.5).numpy()}

            def run_torch(images=images):
                with torch.inference_mode():
                    flow.log_prob(images)
        else:
            latents = flow.sample_latents(batch, 1.0, gen)
            feed = {
                "temperature": np.ones(1, np.float32),
                **{f"z{i}": z.numpy() for i, z in enumerate(latents)},
            }

            def run_torch(latents=latents):
                with torch.inference_mode():
                    flow.decode(latents)

        t_torch = median_seconds(run_torch, reps)
        t_onnx = median_seconds(lambda: session.run(feed), reps)
        rows.append(
            {
                "model": ckpt.name,
                "pass": name,
                "batch": batch,
                "torch_img_s": batch / t_torch,
                "onnx_img_s": batch / t_onnx,
                "onnx_speedup": t_torch / t_onnx,
                "faster": "onnx" if t_onnx < t_torch else "torch",
            }
        )
    print_table(rows, ["model", "pass", "batch", "torch_img_s", "onnx_img_s", "onnx_speedup", "faster"])
    print("wrote", write_results("onnx_cpu", rows))


if __name__ == "__main__":
    main()
