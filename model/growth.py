"""Grow a trained flow into a bigger one that computes the same function: `python -m model.growth SRC --out
DST --steps 8,16 --hidden 128,256`, then `python -m model.train --init-from DST ...`.

Two function-preserving moves (Net2Net-style), so training continues from the trained model's likelihood
instead of from scratch:
- **deeper**: each level's new steps are appended as identities: triangular kernels with zero taps and
  unit diagonal, a 1×1 convolution of the identity, a coupling whose last convolution is zero (as every
  fresh coupling starts: it then scales its second half by the constant σ(2)), and an ActNorm, marked
  initialised, that scales that half by 1/σ(2) beforehand, so the step is exactly the identity;
- **wider**: a coupling network's new hidden units get fresh incoming weights and zero outgoing ones,
  so the network's output is unchanged while their gradients are not zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_flow, read_config, save_flow
from .config import FlowConfig
from .curves import read_training_log, write_training_log
from .flow import MultiScaleFlow, build_flow
from .layers import ActNorm, AffineCoupling, InvConv1x1, TriangularKernel

__all__ = ["grow_flow", "main"]

log = logging.getLogger("model.growth")


def _per_level(value: int | tuple[int, ...], levels: int) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * levels


def _check_growable(old: FlowConfig, new: FlowConfig) -> None:
    fixed = ("arch", "image_shape", "levels", "kernel_size", "learn_diagonal", "logit_alpha")
    changed = [name for name in fixed if getattr(old, name) != getattr(new, name)]
    if changed:
        raise ValueError(f"growth keeps {', '.join(fixed)}; these differ: {', '.join(changed)}")
    for name in ("steps", "hidden"):
        before, after = _per_level(getattr(old, name), old.levels), _per_level(getattr(new, name), new.levels)
        if any(a < b for a, b in zip(after, before, strict=True)):
            raise ValueError(f"growth cannot shrink {name}: {before} -> {after}")


@torch.no_grad()
def _widen_subnet(old: nn.Sequential, new: nn.Sequential) -> None:
    """Copy `old`'s three convolutions into the corners of `new`'s (conv → ReLU → 1×1 → ReLU → conv); the
    new hidden units keep their fresh incoming weights, their outgoing weights are zeroed."""
    first, middle, last = (m for m in new if isinstance(m, nn.Conv2d))
    o_first, o_middle, o_last = (m for m in old if isinstance(m, nn.Conv2d))
    h = o_first.out_channels
    first.weight[:h] = o_first.weight
    first.bias[:h] = o_first.bias
    middle.weight[:, h:] = 0  # new units of the first hidden layer feed nothing old ...
    middle.weight[:h, :h] = o_middle.weight
    middle.bias[:h] = o_middle.bias
    last.weight.zero_()  # ... and the second's feed nothing at all
    last.weight[:, :h] = o_last.weight
    last.bias.copy_(o_last.bias)


@torch.no_grad()
def _make_identity(step: nn.Module) -> None:
    """A fresh flow step (ActNorm first, its coupling last) made the identity map."""
    layers = list(step.layers)
    norm, coupling = layers[0], layers[-1]
    if not isinstance(norm, ActNorm) or not isinstance(coupling, AffineCoupling):
        raise ValueError("growth needs steps that start with ActNorm and end with an affine coupling")
    norm.bias.zero_()
    norm.log_scale.zero_()
    norm.log_scale[:, coupling.split :] = -AffineCoupling.INITIAL_LOG_SCALE
    norm.initialized.fill_(True)
    for layer in step.modules():
        if isinstance(layer, TriangularKernel):
            layer.raw.zero_()
            layer.log_diag.zero_()
        elif isinstance(layer, InvConv1x1):
            layer.perm.copy_(torch.eye(layer.perm.shape[0]))
            layer.sign_s.fill_(1.0)
            layer.lower.zero_()
            layer.upper.zero_()
            layer.log_s.zero_()


@torch.no_grad()
def _copy_step(old: nn.Module, new: nn.Module) -> None:
    """Every tensor of `old` into `new`; coupling networks may be wider in `new`."""
    for old_layer, new_layer in zip(old.modules(), new.modules(), strict=True):
        if isinstance(old_layer, AffineCoupling):
            _widen_subnet(old_layer.net, new_layer.net)
    nets = {name for name, m in new.named_modules() if isinstance(m, AffineCoupling)}
    target = new.state_dict()
    for name, value in old.state_dict().items():
        if not any(name.startswith(f"{net}.net." if net else "net.") for net in nets):
            target[name].copy_(value)


def grow_flow(flow: MultiScaleFlow, config: FlowConfig) -> MultiScaleFlow:
    """A flow of the bigger `config` computing the same function as `flow` (float32, on the CPU)."""
    _check_growable(flow.config, config)
    grown = build_flow(config)
    with torch.no_grad():
        grown.preprocess.load_state_dict(flow.preprocess.state_dict())
        for old_level, new_level in zip(flow.levels, grown.levels, strict=True):
            if old_level.split is not None:
                new_level.split.load_state_dict(old_level.split.state_dict())
            for i, new_step in enumerate(new_level.steps):
                if i < len(old_level.steps):
                    _copy_step(old_level.steps[i], new_step)
                else:
                    _make_identity(new_step)
    return grown.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.growth", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="the trained checkpoint to grow")
    p.add_argument("--out", required=True, help="folder of the grown checkpoint")
    p.add_argument("--steps", required=True, help="flow steps per level, e.g. 8,16")
    p.add_argument("--hidden", required=True, help="coupling widths per level, e.g. 128,256")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    flow = load_flow(args.checkpoint)
    numbers = lambda text: tuple(int(v) for v in text.split(","))  # noqa: E731
    try:
        config = FlowConfig.model_validate(
            {**flow.config.model_dump(), "steps": numbers(args.steps), "hidden": numbers(args.hidden)}
        )
        grown = grow_flow(flow, config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    training = dict(read_config(args.checkpoint)["training"])
    training["grown_from"] = {
        "checkpoint": Path(args.checkpoint).name,
        "num_parameters": flow.num_parameters(),
        "steps": flow.config.steps,
        "hidden": flow.config.hidden,
        "epochs": training.get("epochs"),
    }
    out = save_flow(grown, args.out, training)
    write_training_log(out, read_training_log(args.checkpoint))
    log.info("grew %d -> %d parameters: %s", flow.num_parameters(), grown.num_parameters(), out)
    print(json.dumps(training["grown_from"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
