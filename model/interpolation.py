"""Paths between two points of a flow's latent space (all levels taken together as one vector)."""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["interpolate_latents"]

Method = Literal["linear", "spherical"]


def _flat(latents: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([z.reshape(-1).double() for z in latents])


def interpolate_latents(
    start: list[torch.Tensor], end: list[torch.Tensor], steps: int, method: Method = "spherical"
) -> tuple[list[torch.Tensor], list[float]]:
    """`steps` points from `start` to `end` (per-level latents of one image each, `(C, H, W)` or
    `(1, C, H, W)`), both ends included exactly: per level `(steps, C, H, W)` float32, and the t of each.

    linear: `(1 − t)·a + t·b`. spherical (slerp): `sin((1 − t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b` with Ω the
    angle between a and b, which keeps the norm of Gaussian latents typical along the path (a straight
    line between two typical points passes through atypically short vectors); linear when Ω ≈ 0 or π."""
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    if method not in ("linear", "spherical"):
        raise ValueError(f"unknown method {method!r}; expected 'linear' or 'spherical'")
    a, b = _flat(start), _flat(end)
    t = torch.linspace(0, 1, steps, dtype=torch.float64)[:, None]
    norms = a.norm() * b.norm()
    omega = math.acos(max(-1.0, min(1.0, float(a @ b / norms)))) if norms > 0 else 0.0
    if method == "spherical" and math.sin(omega) > 1e-6:
        path = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / math.sin(omega)
    else:
        path = (1 - t) * a + t * b
    path[0], path[-1] = a, b
    out, offset = [], 0
    for z in start:
        shape = z.shape[-3:] if z.dim() == 4 else z.shape
        size = math.prod(shape)
        out.append(path[:, offset : offset + size].float().reshape(steps, *shape))
        offset += size
    return out, t.squeeze(1).tolist()
