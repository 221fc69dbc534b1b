"""Affine coupling (Glow): half the channels are scaled and shifted by a network of the other half.

The network may run in bfloat16 (`subnets_in(torch.bfloat16)`, training's `--subnet-precision`): it only
parameterises the transform, which stays float32, so the layer is still exactly invertible and its
log-determinant exact for the function computed; the network's convolutions are most of a step's time.
Its weights may be stored channels-last (`subnets_channels_last`), the layout oneDNN's convolutions run
fastest in: the activations then stay channels-last through the network, and only its input and output
change layout, once per coupling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from .base import FlowLayer

__all__ = ["AffineCoupling", "SubnetFactory", "conv_subnet", "subnets_channels_last", "subnets_in"]

SubnetFactory = Callable[[int, int], nn.Module]
_SUBNET_DTYPE: ContextVar[torch.dtype | None] = ContextVar("subnet_dtype", default=None)


@contextmanager
def subnets_in(dtype: torch.dtype | None) -> Iterator[None]:
    """Run coupling networks under autocast to `dtype` (None or float32: as the inputs) in this block."""
    token = _SUBNET_DTYPE.set(None if dtype in (None, torch.float32) else dtype)
    try:
        yield
    finally:
        _SUBNET_DTYPE.reset(token)


def subnets_channels_last(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Store the coupling networks' weights under `module` channels-last (or back to contiguous), in
    place; the flow's own transforms keep their layout. Do it before building an optimizer: the moments
    take the weights' layout."""
    layout = torch.channels_last if enabled else torch.contiguous_format
    for layer in module.modules():
        if isinstance(layer, AffineCoupling):
            layer.net.to(memory_format=layout)
    return module


class _ZeroConv2d(nn.Conv2d):
    """A 3×3 conv initialised to zero, so that a coupling starts as the identity."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def conv_subnet(hidden: int) -> SubnetFactory:
    """Glow's coupling network: 3×3 conv → ReLU → 1×1 conv → ReLU → zero-initialised 3×3 conv."""

    def make(in_channels: int, out_channels: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, kernel_size=1),
            nn.ReLU(),
            _ZeroConv2d(hidden, out_channels),
        )

    return make


def _log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """`log σ(x) = -(max(-x, 0) + log1p(exp(-|x|)))`, spelled out so that it stays finite in every runtime
    (ONNX exports `logsigmoid` as `log(sigmoid(x))`, which underflows to -inf for very unlikely inputs)."""
    return -(torch.relu(-x) + torch.log1p(torch.exp(-x.abs())))


class AffineCoupling(FlowLayer):
    """`y_b = (x_b + t(x_a)) · σ(s(x_a) + 2)`, `y_a = x_a`; `logdet = Σ log σ(s(x_a) + 2)`.

    The sigmoid bounds the scale in (0, 1) (Glow), which keeps training stable; `+2` starts it near 0.88.
    """

    # log σ(2): the log-scale of a fresh coupling, whose last convolution is zero.
    INITIAL_LOG_SCALE = -math.log1p(math.exp(-2.0))

    def __init__(self, channels: int, hidden: int = 512, subnet: SubnetFactory | None = None):
        super().__init__()
        if channels < 2:
            raise ValueError("AffineCoupling needs at least 2 channels")
        self.split = channels // 2
        factory = subnet or conv_subnet(hidden)
        self.net = factory(self.split, 2 * (channels - self.split))

    def _shift_log_scale(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = _SUBNET_DTYPE.get()
        if dtype is None:
            h = self.net(xa)
        else:
            with torch.autocast(xa.device.type, dtype=dtype):
                h = self.net(xa)
            h = h.to(xa.dtype)
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, _log_sigmoid(raw + 2.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x[:, : self.split], x[:, self.split :]
        shift, log_scale = self._shift_log_scale(xa)
        yb = (xb + shift) * torch.exp(log_scale)
        return torch.cat([xa, yb], dim=1), log_scale.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        ya, yb = y[:, : self.split], y[:, self.split :]
        shift, log_scale = self._shift_log_scale(ya)
        return torch.cat([ya, yb * torch.exp(-log_scale) - shift], dim=1)
