"""Train a flow and write a checkpoint: `python -m model.train --arch finc --dataset mnist --out DIR`.

Every epoch: test bits/dim, a sample grid PNG, a checkpoint, the training log (`training_log.json`) and
its learning curve (`learning_curve.png`). `--max-minutes` stops cleanly mid-epoch with a resumable state
(`--resume`). With `--ema-decay` the checkpoint holds Polyak weights, which evaluate better than the last
iterate. By default the coupling networks run channels-last and, where the hardware computes bfloat16
natively, in bfloat16 (the flow's transforms, log-determinants and every evaluation stay float32).
`torchrun --nproc-per-node N -m model.train ...` trains with DistributedDataParallel (model/distributed.py):
`--batch-size` is the global batch and `--lr` its learning rate whatever N; rank 0 writes everything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from .architectures import ARCHITECTURES
from .checkpoint import read_config
from .distributed import close_distributed
from .malloc import tune_malloc
from .training import SUBNET_DTYPES, Trainer, TrainingError

__all__ = ["build_parser", "main"]

log = logging.getLogger("model.train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=list(ARCHITECTURES), default="finc")
    p.add_argument(
        "--dataset", default="mnist", help="mnist, fashion-mnist, a folder of images or a .npy file"
    )
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--epochs", type=int, default=10, help="epochs in all (a continued run counts its own)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine", help="after warm-up")
    p.add_argument("--min-lr-ratio", type=float, default=0.02, help="cosine decays to lr × this at the end")
    p.add_argument(
        "--ema-decay", type=float, default=0.999, help="Polyak/EMA weights in the checkpoint (0: off)"
    )
    p.add_argument("--grad-clip", type=float, default=50.0)
    p.add_argument(
        "--subnet-precision",
        choices=["auto", *sorted(SUBNET_DTYPES)],
        default="auto",
        help="coupling networks' autocast dtype in training steps (auto: bfloat16 where the hardware "
        "computes it natively, else float32); transforms and evaluation stay float32",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="coupling networks' weights and activations channels-last (oneDNN's and cuDNN's fast layout)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the training pass (slow start)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from --out if it holds a training state")
    p.add_argument(
        "--init-from",
        default=None,
        help="start from a checkpoint's weights, epoch count and log with a fresh optimizer (warm-up again)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--steps", default="8", help="flow steps per level: one number, or one per level (8,16)")
    p.add_argument("--hidden", default="128", help="coupling width: one number, or one per level (128,256)")
    p.add_argument("--kernel-size", type=int, default=3)
    p.add_argument("--fixed-diagonal", action="store_true", help="unit diagonal (the published FInC setting)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps in total")
    p.add_argument("--max-minutes", type=float, default=0, help="stop (resumably) after this much wall time")
    p.add_argument("--eval-images", type=int, default=0, help="test images per evaluation (0: all)")
    p.add_argument("--train-limit", type=int, default=0, help="use only the first N training images")
    p.add_argument("--sample-temperature", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun, only rank 0 logs progress
    level = logging.INFO if main_process else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()  # every step frees and reallocates the same activations
    try:
        out = Trainer(args).run()
    except TrainingError as exc:
        log.error("%s", exc)
        return 2
    finally:
        close_distributed()
    if main_process:
        print(json.dumps(read_config(out)["training"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
