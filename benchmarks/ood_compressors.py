"""Which lossless compressor makes the best complexity correction: AUROC of S(x) = −log₂ p(x) − L(x).

    python benchmarks/ood_compressors.py [--images 2000] [--threads 1]

For every shipped model: its own dataset's test images against the other dataset's (the first `--images`
of each), scored as the service scores (hashed dequantisation, K = 1, on torch in this process), with L(x)
from each candidate of `model.complexity.CODECS` (PNG at compression level 9, WebP lossless, lossless
JPEG 2000). Prints AUROC and FPR at 95% TPR per model and codec beside raw likelihood's, and each codec's
mean length and encode time per image; writes benchmarks/results/ood_compressors.json. The service's
choice (`model.complexity.COMPRESSOR`) is the codec this table puts first in both directions.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kernels_cuda
from benchmarks.common import print_table, write_results
from benchmarks.ood import OTHER, auroc, fpr_at_tpr
from model import load_flow, read_config
from model.complexity import CODECS, compressed_bits
from model.data import load_dataset
from model.scoring import log_prob, torch_log_density


@torch.inference_mode()
def neg_log2_p(checkpoint: Path, images: torch.Tensor, label: str) -> np.ndarray:
    density = torch_log_density(load_flow(checkpoint).freeze())
    out = [
        log_prob(density, images[s : s + 250]).numpy()
        for s in tqdm(range(0, len(images), 250), desc=label, mininterval=10, leave=False)
    ]
    return -np.concatenate(out) / math.log(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models-dir", default=str(ROOT / "checkpoints"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kernels_cuda.prepare("cpu")
    sets = {name: load_dataset(name).test[: args.images] for name in OTHER}
    lengths, codec_rows = {}, []
    for codec in CODECS:
        start = time.perf_counter()
        lengths[codec] = {name: compressed_bits(images, codec) for name, images in sets.items()}
        per_image = (time.perf_counter() - start) / sum(len(v) for v in sets.values())
        row = {"codec": codec, "encode_us_per_image": round(1e6 * per_image, 1)}
        for name, bits in lengths[codec].items():
            row[f"{name}_bits_per_dim"] = round(float(bits.mean()) / 784, 3)
        codec_rows.append(row)
    rows = []
    models = sorted(p for p in Path(args.models_dir).iterdir() if (p / "config.json").is_file())
    for checkpoint in models:
        own = read_config(checkpoint)["training"]["dataset"]
        if own not in OTHER:
            continue
        nll = {name: neg_log2_p(checkpoint, sets[name], f"{checkpoint.name} {name}") for name in OTHER}
        ind, ood = nll[own], nll[OTHER[own]]
        rows.append(
            {
                "model": checkpoint.name,
                "ood_set": OTHER[own],
                "score": "raw",
                "auroc": round(auroc(ood, ind), 4),
                "fpr_at_95_tpr": round(fpr_at_tpr(ood, ind), 4),
            }
        )
        for codec in CODECS:
            s_in, s_out = ind - lengths[codec][own], ood - lengths[codec][OTHER[own]]
            rows.append(
                {
                    "model": checkpoint.name,
                    "ood_set": OTHER[own],
                    "score": f"S, {codec}",
                    "auroc": round(auroc(s_out, s_in), 4),
                    "fpr_at_95_tpr": round(fpr_at_tpr(s_out, s_in), 4),
                }
            )
    print_table(codec_rows, list(codec_rows[0]))
    print()
    print_table(rows, ["model", "ood_set", "score", "auroc", "fpr_at_95_tpr"])
    path = write_results("ood_compressors", rows, images_per_set=args.images, codecs=codec_rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
