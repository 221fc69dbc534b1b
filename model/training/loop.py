"""The training loop: steps, epochs, checkpoints and stops, for one process or DistributedDataParallel.

Every epoch ends with the test bits/dim, a sample grid, the checkpoint, the training log and its learning
curve. A time or step limit stops mid-epoch with a resumable state; the served checkpoint then stays the
last evaluated one, so its weights and its test bits/dim always belong together. Seeded: the same seed and
arguments give the same batches, across a resume too. A non-finite loss stops the run with its step
number and leaves the last good checkpoint untouched.
"""

from __future__ import annotations

import argparse
import logging
import math
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint import CONFIG_FILE, load_flow, read_config, save_flow
from ..config import FlowConfig
from ..curves import plot_learning_curve, read_training_log, write_training_log
from ..data import ImageData, load_dataset
from ..distributed import setup_distributed
from ..evaluate import evaluate_bits_per_dim
from ..flow import MultiScaleFlow, build_flow
from ..hardware import hardware_name, native_bfloat16
from ..images import save_grid
from ..layers import ActNorm, dequantize, subnets_channels_last, subnets_in
from .polyak import PolyakAverage
from .schedule import Schedule
from .state import STATE_TENSORS, Progress, TrainState, read_train_state, save_train_state

__all__ = ["SUBNET_DTYPES", "Trainer", "TrainingError", "subnet_dtype"]

log = logging.getLogger("model.train")
SUBNET_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class TrainingError(RuntimeError):
    """Training cannot go on: the data does not fit the model, or the loss stopped being finite."""


def subnet_dtype(precision: str, device: torch.device) -> str:
    """`auto`: bfloat16 coupling networks where the device computes bfloat16 natively, else float32."""
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


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


def _per_level(text: str) -> int | tuple[int, ...]:
    """`8` → 8, `8,16` → (8, 16): one value for every level, or one per level."""
    values = tuple(int(v) for v in str(text).split(","))
    return values[0] if len(values) == 1 else values


class Trainer:
    """One training run as the CLI describes it (`model.train.build_parser`); `run()` returns the folder."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.ddp, self.device = setup_distributed(args.device)
        torch.manual_seed(args.seed)
        self.data = self._data()
        self.test_images = self.data.test[: args.eval_images] if args.eval_images else self.data.test
        self.precision = subnet_dtype(args.subnet_precision, self.device)

        resuming = args.resume and (self.out / STATE_TENSORS).is_file()
        saved = self._read_state() if resuming else None
        start_from = self.out if resuming else Path(args.init_from) if args.init_from else None
        self.flow = self._flow(start_from, saved, resuming)
        if args.channels_last:
            subnets_channels_last(self.flow)  # before the optimizer and the average copy the weights
        self.ema = PolyakAverage(self.flow, args.ema_decay) if args.ema_decay > 0 else None
        if self.ema is not None and saved is not None and saved.live is not None:
            self.flow.load_state_dict(saved.live)  # the average holds the checkpoint's weights
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=args.lr)
        model = self.ddp.wrap(self.flow, self.device)  # x -> log p(x); gradients averaged when distributed
        self.model = torch.compile(model) if args.compile else model
        self.progress = self._progress(saved, start_from)
        self.continued_from = self._continued_from(resuming)
        self.out.mkdir(parents=True, exist_ok=True)

        self.batches_per_epoch = self.data.train.shape[0] // args.batch_size
        if self.batches_per_epoch == 0:
            raise TrainingError(
                f"dataset {self.data.name!r} has fewer images than one batch ({args.batch_size})"
            )
        try:
            self.ddp.local_batch(args.batch_size)
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc
        self.schedule = self._plan(self.progress.planned(), fresh_optimizer=saved is None)
        self.progress.schedule = self.schedule.to_dict()
        self.started = time.monotonic()
        self.seconds_before = self.progress.train_seconds

    # -- set-up ---------------------------------------------------------------------------------------
    def _data(self) -> ImageData:
        data = load_dataset(self.args.dataset)
        if self.args.train_limit:
            data = ImageData(data.name, data.train[: self.args.train_limit], data.test)
        return data

    def _read_state(self) -> TrainState:
        try:
            return read_train_state(self.out)
        except ValueError as exc:
            raise TrainingError(str(exc)) from exc

    def _config(self) -> FlowConfig:
        args, data = self.args, self.data
        try:
            return FlowConfig(
                arch=args.arch,
                image_shape=data.image_shape,
                levels=args.levels,
                steps=_per_level(args.steps),
                hidden=_per_level(args.hidden),
                kernel_size=args.kernel_size,
                learn_diagonal=not args.fixed_diagonal,
            )
        except ValueError as exc:
            c, h, w = data.image_shape
            raise TrainingError(
                f"dataset {data.name!r} has {c}×{h}×{w} images, which this configuration cannot model: {exc}"
            ) from exc

    def _flow(self, start_from: Path | None, saved: TrainState | None, resuming: bool) -> MultiScaleFlow:
        if start_from is None:
            return build_flow(self._config()).to(self.device).train()
        flow = load_flow(start_from, device=self.device).train()
        if saved is not None:  # the state's own copy of the weights: the commit point
            flow.load_state_dict(saved.weights)
        if flow.config.image_shape != self.data.image_shape:
            raise TrainingError(
                f"{start_from} models {flow.config.image_shape} images, dataset {self.data.name!r} has "
                f"{self.data.image_shape}"
            )
        log.info("%s %s", "resuming from" if resuming else "starting from the weights of", start_from)
        return flow

    def _progress(self, saved: TrainState | None, start_from: Path | None) -> Progress:
        if saved is not None:
            saved.load_optimizer(self.optimizer, self.device)
            return saved.progress
        if start_from is None:
            return Progress()
        # A fresh optimizer on trained weights: the same epochs, log and step count, a new schedule.
        done = read_config(start_from)["training"]
        return Progress(
            epoch=int(done.get("epochs") or 0),
            global_step=int(done.get("steps") or 0),
            history=read_training_log(start_from),
            train_seconds=float(done.get("train_seconds") or 0.0),
        )

    def _continued_from(self, resuming: bool) -> dict[str, Any] | None:
        """The training summary of the checkpoint this run continues (`--init-from`), which nests its own:
        how a shipped model was made, stage by stage (growth included), for its card. Resuming keeps what
        the run's first checkpoint recorded."""
        if resuming and (self.out / CONFIG_FILE).is_file():
            recorded = read_config(self.out).get("training", {}).get("continued_from")
            if recorded is not None:
                return recorded
        return read_config(self.args.init_from)["training"] if self.args.init_from else None

    def _plan(self, planned: Schedule | None, fresh_optimizer: bool) -> Schedule:
        """The schedule of the whole run, planned once; resuming keeps it unless `--epochs` changed."""
        args, p = self.args, self.progress
        if planned is not None and planned.epochs == args.epochs:
            return planned
        if planned is not None:
            log.warning(
                "--epochs %d differs from the %d this run was planned for: the schedule restarts at step %d",
                args.epochs,
                planned.epochs,
                p.global_step,
            )
        remaining = max(0, (args.epochs - p.epoch) * self.batches_per_epoch - p.batch)
        return Schedule(
            lr=args.lr,
            kind=args.lr_schedule,
            min_lr_ratio=args.min_lr_ratio,
            warmup_steps=args.warmup_steps if fresh_optimizer else 0,
            start_step=p.global_step,
            end_step=p.global_step + remaining,
            epochs=args.epochs,
        )

    # -- records --------------------------------------------------------------------------------------
    @property
    def served(self) -> MultiScaleFlow:
        """The weights a checkpoint holds: the Polyak average with `--ema-decay`, else the live ones."""
        return self.ema.module if self.ema is not None else self.flow

    def _seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def summary(self, test_bpd: float | None) -> dict[str, Any]:
        """The `training` section of the checkpoint's config.json."""
        args, p = self.args, self.progress
        return {
            "dataset": self.data.name,
            "epochs": p.epoch,
            "steps": p.global_step,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "lr_schedule": args.lr_schedule,
            "ema_decay": args.ema_decay,
            "subnet_precision": self.precision,
            "channels_last": bool(args.channels_last),
            "test_bits_per_dim": test_bpd,
            "test_images": int(self.test_images.shape[0]),
            "num_parameters": self.flow.num_parameters(),
            "device": hardware_name(self.device),
            "train_seconds": round(p.train_seconds, 1),
            "commit": _commit(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seed": args.seed,
            "processes": self.ddp.world_size,
            **({"continued_from": self.continued_from} if self.continued_from else {}),
        }

    def _save_state(self) -> None:
        self.progress.train_seconds = self._seconds()
        live = self.flow if self.ema is not None else None
        save_train_state(self.out, self.optimizer, self.progress, self.served, live)

    def _checkpoint(self, test_bpd: float | None) -> None:
        """The served checkpoint (weights + config with their test bits/dim), then the resumable state."""
        self.progress.train_seconds = self._seconds()
        save_flow(self.served, self.out, self.summary(test_bpd))
        self._save_state()

    def _pause(self) -> None:
        """Stopping mid-epoch: the resumable state only. A folder with no checkpoint yet (before its first
        epoch ends, or continuing `--init-from` another folder) gets the unevaluated weights, since
        `--resume` needs the architecture."""
        if not self.progress.history or not (self.out / CONFIG_FILE).is_file():
            self._checkpoint(None)
        else:
            self._save_state()

    def _end_of_epoch(self, epoch: int, train_bpd: float, lr: float) -> None:
        model = self.served
        test_bpd = evaluate_bits_per_dim(model, self.test_images, device=self.device)
        self.progress.history.append(
            {
                "epoch": epoch + 1,
                "step": self.progress.global_step,
                "test_bits_per_dim": test_bpd,
                "train_bits_per_dim": train_bpd,
                "lr": lr,
                "train_seconds": round(self._seconds(), 1),
                "subnet_precision": self.precision,
                "batch_size": self.args.batch_size,
            }
        )
        model.eval()
        with torch.no_grad():
            generator = torch.Generator(self.device).manual_seed(0)
            samples = model.sample(64, temperature=self.args.sample_temperature, generator=generator)
        model.train()
        save_grid(samples, self.out / f"samples_epoch{epoch + 1:03d}.png", nrow=8)
        self._checkpoint(test_bpd)
        write_training_log(self.out, self.progress.history)
        plot_learning_curve(self.out, title=f"{self.flow.config.arch} on {self.data.name}")
        log.info("epoch %d: test bits/dim %.4f (%d images)", epoch + 1, test_bpd, self.test_images.shape[0])

    # -- the loop -------------------------------------------------------------------------------------
    def _out_of_time(self) -> bool:
        """Decided collectively, so every process stops at the same step."""
        limit = self.args.max_minutes
        return self.ddp.any(bool(limit) and time.monotonic() - self.started > 60 * limit, self.device)

    def _step(self, x: torch.Tensor, lr: float, where: str) -> tuple[float, float]:
        """One optimizer step on the global batch `x`; returns its loss (bits/dim) and gradient norm."""
        flow, ddp = self.flow, self.ddp
        if ddp.enabled and not all(bool(m.initialized) for m in flow.modules() if isinstance(m, ActNorm)):
            with torch.no_grad():  # ActNorm's data-dependent init sees the global batch, as in 1 process
                flow.log_prob_continuous(x)
        x = ddp.shard(x)  # this process's slice of the global batch (all of it in one process)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with subnets_in(SUBNET_DTYPES[self.precision]):
            loss = -self.model(x).mean() / (flow.num_dims * math.log(2))
        reported = ddp.mean(loss.detach())  # the global batch's loss, the same on every rank
        if not torch.isfinite(reported):
            raise TrainingError(
                f"loss is {reported.item()} at step {self.progress.global_step + 1} ({where}); the last"
                f" good checkpoint in {self.out} is untouched (lower --lr or --grad-clip, then --resume)"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), self.args.grad_clip)
        if torch.isfinite(grad_norm):
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(flow, self.progress.global_step)
        else:
            log.warning("step %d: non-finite gradient norm, step skipped", self.progress.global_step + 1)
        return reported.item(), grad_norm.item()

    def _epoch(self) -> tuple[float, float]:
        """Train the rest of the current epoch (or until a limit); returns its mean loss and last lr."""
        args, p = self.args, self.progress
        epoch = p.epoch
        order = torch.randperm(
            self.data.train.shape[0], generator=torch.Generator().manual_seed(args.seed + epoch)
        )
        bar = tqdm(
            range(p.batch, self.batches_per_epoch),
            desc=f"epoch {epoch + 1}/{args.epochs}",
            initial=p.batch,
            total=self.batches_per_epoch,
            disable=args.quiet or not self.ddp.is_main,
            dynamic_ncols=True,
        )
        noise = torch.Generator(device=self.device).manual_seed(args.seed * 1_000_003 + p.global_step)
        lr = self.schedule.lr_at(p.global_step)
        for b in bar:
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            x = dequantize(self.data.train[idx].to(device=self.device, dtype=torch.float32), "uniform", noise)
            lr = self.schedule.lr_at(p.global_step)
            loss, grad_norm = self._step(x, lr, f"epoch {epoch + 1}, batch {b + 1}")
            p.epoch_loss_sum, p.epoch_loss_count = p.epoch_loss_sum + loss, p.epoch_loss_count + 1
            p.global_step += 1
            p.batch = b + 1
            bar.set_postfix(bpd=f"{loss:.3f}", gnorm=f"{grad_norm:.2f}", lr=f"{lr:.2e}")
            if args.max_steps and p.global_step >= args.max_steps:
                break
            if self._out_of_time():
                break
        bar.close()
        return p.epoch_loss_sum / max(1, p.epoch_loss_count), lr

    def run(self) -> Path:
        args, p = self.args, self.progress
        log.info(
            "arch=%s dataset=%s params=%d device=%s batches/epoch=%d ema=%s processes=%d subnets=%s%s "
            "lr %.2g over steps %d-%d",
            self.flow.config.arch,
            self.data.name,
            self.flow.num_parameters(),
            self.device,
            self.batches_per_epoch,
            args.ema_decay or "off",
            self.ddp.world_size,
            self.precision,
            ", channels-last" if args.channels_last else "",
            self.schedule.lr,
            self.schedule.start_step,
            self.schedule.end_step,
        )
        while p.epoch < args.epochs:
            epoch = p.epoch
            train_bpd, lr = self._epoch()
            out_of_time = self._out_of_time()
            out_of_steps = bool(args.max_steps) and p.global_step >= args.max_steps
            if p.batch < self.batches_per_epoch:  # stopped mid-epoch: save and leave
                if self.ddp.is_main:
                    self._pause()
                log.info("stopped mid-epoch %d at batch %d (resume with --resume)", epoch + 1, p.batch)
                self.ddp.barrier()
                return self.out
            p.epoch, p.batch = epoch + 1, 0
            p.epoch_loss_sum, p.epoch_loss_count = 0.0, 0
            if self.ddp.is_main:  # evaluation, sample grid, checkpoint and log: rank 0 only
                self._end_of_epoch(epoch, train_bpd, lr)
            self.ddp.barrier()
            if out_of_time or out_of_steps:
                return self.out
        return self.out
