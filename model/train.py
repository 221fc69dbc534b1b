"""Train a flow and write a checkpoint: `python -m model.train --arch finc --dataset mnist --out DIR`.

Every epoch: test bits/dim, a sample grid PNG, a checkpoint, the training log (`training_log.json`) and
its learning curve (`learning_curve.png`). `--max-minutes` stops cleanly mid-epoch with a resumable state
(`--resume`), so long runs fit into short jobs; the served checkpoint stays the last evaluated one. The
resumable state is one file renamed into place, so a run killed at any moment resumes from a whole state.
Seeded: the same seed and arguments give the same batches, also across a resume. With `--ema-decay` the
checkpoint holds Polyak (exponential moving average) weights, which evaluate better than the last
iterate; the live weights stay in the training state. A non-finite loss stops the run with its step
number and leaves the last good checkpoint untouched.
`torchrun --nproc-per-node N -m model.train ...` trains with DistributedDataParallel (model/distributed.py):
`--batch-size` is the global batch and `--lr` its learning rate whatever N; rank 0 writes everything.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .checkpoint import CONFIG_FILE, load_flow, read_config, save_flow
from .config import FlowConfig
from .curves import plot_learning_curve, read_training_log, write_training_log
from .data import ImageData, load_dataset
from .distributed import close_distributed, setup_distributed
from .flow import MultiScaleFlow, build_flow
from .images import save_grid
from .layers import ActNorm, dequantize, subnets_in
from .malloc import tune_malloc

__all__ = [
    "TrainState",
    "TrainingError",
    "evaluate_bits_per_dim",
    "learning_rate",
    "main",
    "read_train_state",
    "train",
]

log = logging.getLogger("model.train")
# Coupling networks' precision in training steps; bfloat16 steps are ~1.5x faster on CPUs with AVX512-BF16
# (benchmarks/subnet_precision.py).
SUBNET_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The resumable state is one file, replaced atomically: the commit point of every checkpoint (below).
STATE_TENSORS = "train_state.safetensors"
# Earlier runs kept it in three files; they still resume (`read_train_state`).
LEGACY_STATE_JSON, LEGACY_LIVE_WEIGHTS = "train_state.json", "train_state_live.safetensors"


class TrainingError(RuntimeError):
    """Training cannot go on: the data does not fit the model, or the loss stopped being finite."""


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@torch.no_grad()
def evaluate_bits_per_dim(
    flow: MultiScaleFlow, images: torch.Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> float:
    """Mean test bits/dim with uniform dequantisation noise (seeded), the number papers report."""
    was_training = flow.training
    flow.eval()
    total, count = 0.0, 0
    noise = torch.Generator(device=device).manual_seed(12345)
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        total += flow.bits_per_dim(batch, dequantization="uniform", generator=noise).sum().item()
        count += batch.shape[0]
    flow.train(was_training)
    return total / count


@dataclass
class TrainState:
    """What `--resume` continues from: counters and history (`meta`), the checkpoint's weights (`weights`:
    the Polyak average with `--ema-decay`, else the live ones), the live weights (`live`, with EMA only) and
    the optimizer's tensors."""

    meta: dict[str, Any]
    weights: dict[str, torch.Tensor] | None
    live: dict[str, torch.Tensor] | None
    optimizer: dict[str, torch.Tensor]


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _save_train_state(
    out: Path,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    weights: torch.nn.Module,
    live: torch.nn.Module | None,
) -> None:
    """Everything `--resume` needs in one safetensors file (the metadata holds `meta` as JSON), written
    beside and renamed over the old one: a run killed at any moment resumes from the last complete state,
    whichever of the other files (served weights, config, log, grids) had been rewritten since."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, param_state in state["state"].items():
        for key, value in param_state.items():
            tensors[f"optimizer/{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors.update({f"weights/{k}": v for k, v in _tensors(weights).items()})
    if live is not None:
        tensors.update({f"live/{k}": v for k, v in _tensors(live).items()})
    meta = {**meta, "param_groups": state["param_groups"]}
    tmp = out / (STATE_TENSORS + ".tmp")
    save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(out / STATE_TENSORS)
    for legacy in (LEGACY_STATE_JSON, LEGACY_LIVE_WEIGHTS):
        (out / legacy).unlink(missing_ok=True)


def read_train_state(out: Path) -> TrainState:
    """The resumable state in `out` (also the three-file layout of earlier runs)."""
    with safe_open(str(out / STATE_TENSORS), "pt") as f:
        metadata = f.metadata() or {}
    tensors = load_file(str(out / STATE_TENSORS))
    if "meta" not in metadata:  # legacy: optimizer tensors only; meta and live weights beside them
        live = out / LEGACY_LIVE_WEIGHTS
        return TrainState(
            meta=json.loads((out / LEGACY_STATE_JSON).read_text()),
            weights=None,  # the checkpoint's model.safetensors
            live=load_file(str(live)) if live.is_file() else None,
            optimizer=tensors,
        )

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    return TrainState(
        meta=json.loads(metadata["meta"]),
        weights=part("weights/"),
        live=part("live/") or None,
        optimizer=part("optimizer/"),
    )


def _load_optimizer_state(
    optimizer: torch.optim.Optimizer, saved: TrainState, device: torch.device
) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in saved.optimizer.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value if key == "step" else value.to(device)
    meta = dict(saved.meta)
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def _config_from_args(args: argparse.Namespace, data: ImageData) -> FlowConfig:
    try:
        return FlowConfig(
            arch=args.arch,
            image_shape=data.image_shape,
            levels=args.levels,
            steps=args.steps,
            hidden=args.hidden,
            kernel_size=args.kernel_size,
            learn_diagonal=not args.fixed_diagonal,
        )
    except ValueError as exc:
        c, h, w = data.image_shape
        raise TrainingError(
            f"dataset {data.name!r} has {c}×{h}×{w} images, which this configuration cannot model: {exc}"
        ) from exc


def hardware_name(device: torch.device) -> str:
    """What ran the work, for logs, cards and benchmark tables: the GPU's name, or "CPU, N thread(s)"."""
    if device.type != "cpu":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'s' if threads > 1 else ''}"


def learning_rate(args: argparse.Namespace, step: int, total_steps: int, warmup_from: int = 0) -> float:
    """Linear warm-up over `--warmup-steps` (from step `warmup_from`: a fresh optimizer on trained weights),
    then constant or cosine decay to `lr * min_lr_ratio` at `total_steps`."""
    warmup = min(1.0, (step - warmup_from + 1) / max(1, args.warmup_steps))
    if args.lr_schedule == "constant":
        return args.lr * warmup
    progress = min(1.0, max(0.0, (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)))
    decay = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr * warmup * decay


class _PolyakAverage:
    """Exponential moving average of a flow's parameters; buffers (ActNorm's flag, masks) are copied.

    The decay ramps up as `min(decay, (1 + step) / (10 + step))`, so that the average forgets the
    random initialisation within the first few hundred steps instead of carrying `decay^step` of it.
    """

    def __init__(self, flow: MultiScaleFlow, decay: float):
        self.module = copy.deepcopy(flow)
        self.decay = decay

    @torch.no_grad()
    def update(self, flow: MultiScaleFlow, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        averaged, live = list(self.module.parameters()), list(flow.parameters())
        torch._foreach_lerp_(averaged, live, 1.0 - decay)
        for mine, theirs in zip(self.module.buffers(), flow.buffers(), strict=True):
            mine.copy_(theirs)


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) training as described by the CLI arguments; returns the checkpoint directory."""
    out = Path(args.out)
    ddp, device = setup_distributed(args.device)
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset)
    if args.train_limit:
        data = ImageData(data.name, data.train[: args.train_limit], data.test)
    test_images = data.test[: args.eval_images] if args.eval_images else data.test

    resuming = args.resume and (out / STATE_TENSORS).is_file()
    saved = read_train_state(out) if resuming else None
    start_from = out if resuming else Path(args.init_from) if args.init_from else None
    if start_from is not None:
        flow = load_flow(start_from, device=device).train()
        if saved is not None and saved.weights is not None:  # the state's own copy: the commit point
            flow.load_state_dict(saved.weights)
        if flow.config.image_shape != data.image_shape:
            raise TrainingError(
                f"{start_from} models {flow.config.image_shape} images, dataset {data.name!r} has "
                f"{data.image_shape}"
            )
        log.info("%s from %s", "resuming" if resuming else "starting from the weights of", start_from)
    else:
        flow = build_flow(_config_from_args(args, data)).to(device).train()
    ema = None
    if args.ema_decay > 0:
        ema = _PolyakAverage(flow, args.ema_decay)  # the checkpoint's weights when resuming
        if saved is not None and saved.live is not None:
            flow.load_state_dict(saved.live)
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr)
    model = ddp.wrap(flow, device)  # x -> log p(x); gradients averaged over processes when distributed
    meta: dict[str, Any] = {"epoch": 0, "batch": 0, "global_step": 0, "history": [], "train_seconds": 0.0}
    if saved is not None:
        meta = _load_optimizer_state(optimizer, saved, device)
    elif start_from is not None:  # a fresh optimizer (warm-up again); the same epochs, log and schedule
        history = read_training_log(start_from)
        done = read_config(start_from)["training"]
        meta.update(
            epoch=int(done.get("epochs") or 0),
            global_step=int(done.get("steps") or 0),
            history=history,
            train_seconds=float(done.get("train_seconds") or 0.0),
            warmup_from=int(done.get("steps") or 0),
        )
    out.mkdir(parents=True, exist_ok=True)

    n_dims = flow.num_dims
    batches_per_epoch = data.train.shape[0] // args.batch_size
    if batches_per_epoch == 0:
        raise TrainingError(f"dataset {data.name!r} has fewer images than one batch ({args.batch_size})")
    try:
        ddp.local_batch(args.batch_size)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    total_steps = args.epochs * batches_per_epoch
    started = time.monotonic()
    train_seconds_before = meta["train_seconds"]
    log.info(
        "arch=%s dataset=%s params=%d device=%s batches/epoch=%d ema=%s processes=%d",
        flow.config.arch,
        data.name,
        flow.num_parameters(),
        device,
        batches_per_epoch,
        args.ema_decay or "off",
        ddp.world_size,
    )
    served = (lambda: ema.module) if ema is not None else (lambda: flow)

    def summary(test_bpd: float | None) -> dict[str, Any]:
        return {
            "dataset": data.name,
            "epochs": meta["epoch"],
            "steps": meta["global_step"],
            "batch_size": args.batch_size,
            "lr": args.lr,
            "lr_schedule": args.lr_schedule,
            "ema_decay": args.ema_decay,
            "subnet_precision": args.subnet_precision,
            "test_bits_per_dim": test_bpd,
            "test_images": int(test_images.shape[0]),
            "num_parameters": flow.num_parameters(),
            "device": hardware_name(device),
            "train_seconds": round(meta["train_seconds"], 1),
            "commit": _commit(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seed": args.seed,
            "processes": ddp.world_size,
        }

    def checkpoint(test_bpd: float | None) -> None:
        """The served checkpoint (weights + config with their test bits/dim) and the resumable state."""
        meta["train_seconds"] = train_seconds_before + time.monotonic() - started
        save_flow(served(), out, summary(test_bpd))
        _save_train_state(out, optimizer, meta, served(), flow if ema is not None else None)

    def pause() -> None:
        """Stopping mid-epoch: the resumable state only. The served checkpoint stays the last evaluated
        one, so its weights and its test bits/dim always belong together. A folder with no checkpoint yet
        (before its first epoch ends, or continuing `--init-from` another folder) gets the unevaluated
        weights: `--resume` needs the architecture."""
        if not meta["history"] or not (out / CONFIG_FILE).is_file():
            checkpoint(None)
            return
        meta["train_seconds"] = train_seconds_before + time.monotonic() - started
        _save_train_state(out, optimizer, meta, served(), flow if ema is not None else None)

    def end_of_epoch(epoch: int, train_bpd: float, lr: float) -> None:
        model = served()
        test_bpd = evaluate_bits_per_dim(model, test_images, device=device)
        meta["history"].append(
            {
                "epoch": epoch + 1,
                "step": meta["global_step"],
                "test_bits_per_dim": test_bpd,
                "train_bits_per_dim": train_bpd,
                "lr": lr,
                "train_seconds": round(train_seconds_before + time.monotonic() - started, 1),
                "subnet_precision": args.subnet_precision,
            }
        )
        model.eval()
        with torch.no_grad():
            samples = model.sample(
                64, temperature=args.sample_temperature, generator=torch.Generator(device).manual_seed(0)
            )
        model.train()
        save_grid(samples, out / f"samples_epoch{epoch + 1:03d}.png", nrow=8)
        checkpoint(test_bpd)
        write_training_log(out, meta["history"])
        plot_learning_curve(out, title=f"{flow.config.arch} on {data.name}")
        log.info("epoch %d: test bits/dim %.4f (%d images)", epoch + 1, test_bpd, test_images.shape[0])

    while meta["epoch"] < args.epochs:
        epoch = meta["epoch"]
        order = torch.randperm(
            data.train.shape[0], generator=torch.Generator().manual_seed(args.seed + epoch)
        )
        bar = tqdm(
            range(meta["batch"], batches_per_epoch),
            desc=f"epoch {epoch + 1}/{args.epochs}",
            initial=meta["batch"],
            total=batches_per_epoch,
            disable=args.quiet or not ddp.is_main,
            dynamic_ncols=True,
        )
        noise = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + meta["global_step"])
        loss_sum, loss_count = meta.get("epoch_loss_sum", 0.0), meta.get("epoch_loss_count", 0)
        lr = learning_rate(args, meta["global_step"], total_steps, meta.get("warmup_from", 0))
        for b in bar:
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            x = dequantize(data.train[idx].to(device=device, dtype=torch.float32), "uniform", noise)
            if ddp.enabled and not all(bool(m.initialized) for m in flow.modules() if isinstance(m, ActNorm)):
                with torch.no_grad():  # ActNorm's data-dependent init sees the global batch, as in 1 process
                    flow.log_prob_continuous(x)
            x = ddp.shard(x)  # this process's slice of the global batch (all of it in one process)
            lr = learning_rate(args, meta["global_step"], total_steps, meta.get("warmup_from", 0))
            for group in optimizer.param_groups:
                group["lr"] = lr
            with subnets_in(SUBNET_DTYPES[args.subnet_precision]):
                loss = -model(x).mean() / (n_dims * math.log(2))
            reported = ddp.mean(loss.detach())  # the global batch's loss, the same on every rank
            if not torch.isfinite(reported):
                step = meta["global_step"] + 1
                raise TrainingError(
                    f"loss is {reported.item()} at step {step} (epoch {epoch + 1}, batch {b + 1}); the last"
                    f" good checkpoint in {out} is untouched (lower --lr or --grad-clip, then --resume)"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), args.grad_clip)
            if torch.isfinite(grad_norm):
                optimizer.step()
                if ema is not None:
                    ema.update(flow, meta["global_step"])
            else:
                log.warning("step %d: non-finite gradient norm, step skipped", meta["global_step"] + 1)
            loss_sum, loss_count = loss_sum + reported.item(), loss_count + 1
            meta["global_step"] += 1
            meta["batch"] = b + 1
            meta["epoch_loss_sum"], meta["epoch_loss_count"] = loss_sum, loss_count
            bar.set_postfix(bpd=f"{reported.item():.3f}", gnorm=f"{grad_norm.item():.2f}", lr=f"{lr:.2e}")
            if args.max_steps and meta["global_step"] >= args.max_steps:
                break
            # Every process stops at the same step: the time limit is decided collectively.
            if ddp.any(bool(args.max_minutes) and time.monotonic() - started > 60 * args.max_minutes, device):
                break
        bar.close()
        out_of_time = ddp.any(
            bool(args.max_minutes) and time.monotonic() - started > 60 * args.max_minutes, device
        )
        out_of_steps = args.max_steps and meta["global_step"] >= args.max_steps
        if meta["batch"] < batches_per_epoch:  # stopped mid-epoch: save and leave
            if ddp.is_main:
                pause()
            log.info("stopped mid-epoch %d at batch %d (resume with --resume)", epoch + 1, meta["batch"])
            ddp.barrier()
            return out
        meta["epoch"], meta["batch"] = epoch + 1, 0
        meta["epoch_loss_sum"], meta["epoch_loss_count"] = 0.0, 0
        if ddp.is_main:  # evaluation, sample grid, checkpoint and log: rank 0 only
            end_of_epoch(epoch, loss_sum / max(1, loss_count), lr)
        ddp.barrier()
        if out_of_time or out_of_steps:
            return out
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=FlowConfig.architectures(), default="finc")
    p.add_argument(
        "--dataset", default="mnist", help="mnist, fashion-mnist, a folder of images or a .npy file"
    )
    p.add_argument("--out", required=True, help="checkpoint directory")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine", help="after warm-up")
    p.add_argument("--min-lr-ratio", type=float, default=0.02, help="cosine decays to lr × this at the end")
    p.add_argument(
        "--ema-decay", type=float, default=0.999, help="Polyak/EMA weights in the checkpoint (0: off)"
    )
    p.add_argument("--grad-clip", type=float, default=50.0)
    p.add_argument(
        "--subnet-precision",
        choices=sorted(SUBNET_DTYPES),
        default="float32",
        help="coupling networks' autocast dtype in training steps (transforms, evaluation: float32)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from --out if it holds a training state")
    p.add_argument(
        "--init-from",
        default=None,
        help="start from a checkpoint's weights, epoch count and log with a fresh optimizer (warm-up again)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--levels", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="flow steps per level")
    p.add_argument("--hidden", type=int, default=128)
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
        out = train(args)
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
