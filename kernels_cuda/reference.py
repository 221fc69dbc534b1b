"""Exact pure-PyTorch triangular convolution ops: the CPU path and the oracle for every other backend.

`A` is the top-left-padded ("TL") convolution of docs/math.md §1. Its weight has shape
`(C, C // groups, k, k)`; within each group the centre tap `weight[:, :, k-1, k-1]` must be triangular
with a non-zero diagonal (lower for `A`; the transposed solve handles the upper case itself).

The solves run the anti-diagonal wavefront of §2 on a *skewed* buffer: pixel `(r, c)` of the padded image
is stored at column `r + c`, so one anti-diagonal is one column and the k×k neighbourhoods of all its
pixels are a single strided view. Each diagonal costs one view, one matmul and one column write.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "centre_tap",
    "check_shapes",
    "fold_centre",
    "tl_conv2d",
    "tl_conv2d_solve",
    "tl_conv2d_solve_transposed",
    "tl_conv2d_weight_grad",
    "transpose_groups",
]


def check_shapes(x: torch.Tensor, weight: torch.Tensor, groups: int) -> tuple[int, int]:
    """Validate `(B, C, H, W)` against a `(C, C/groups, k, k)` weight; returns `(C/groups, k)`."""
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"expected a (C, C/groups, k, k) weight, got shape {tuple(weight.shape)}")
    channels = x.shape[1]
    if channels % groups or weight.shape[0] != channels or weight.shape[1] * groups != channels:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit {channels} channels in {groups} groups")
    return channels // groups, weight.shape[-1]


def centre_tap(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The per-group channel matrix of the centre tap, shape `(groups, Cg, Cg)`."""
    k = weight.shape[-1]
    cg = weight.shape[1]
    return weight[:, :, k - 1, k - 1].reshape(groups, cg, cg)


def tl_conv2d(x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """`A x`: zero-pad `k-1` on the top and left only, then an unpadded conv2d (differentiable)."""
    _, k = check_shapes(x, weight, groups)
    return F.conv2d(F.pad(x, (k - 1, 0, k - 1, 0)), weight, groups=groups)


def fold_centre(weight: torch.Tensor, groups: int, lower: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the centre tap's inverse into the other taps: `A x = y` becomes `x_p = D⁻¹y_p - Σ M_tap x_nbr`.

    Returns `D⁻¹` `(g, Cg, Cg)` (D = the centre tap, lower or upper triangular per group) and
    `M = D⁻¹ W` with a zero centre tap, `(g, Cg_out, Cg_in, k, k)`. Every backend solves with these.
    """
    g, cg, k = groups, weight.shape[1], weight.shape[-1]
    diag = centre_tap(weight, g)
    diag = torch.tril(diag) if lower else torch.triu(diag)
    eye = torch.eye(cg, dtype=weight.dtype, device=weight.device).expand(g, cg, cg)
    d_inv = torch.linalg.solve_triangular(diag, eye, upper=not lower)
    taps = weight.reshape(g, cg, cg, k, k).clone()
    taps[:, :, :, k - 1, k - 1] = 0
    return d_inv, torch.einsum("gij,gjcab->gicab", d_inv, taps)


def transpose_groups(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Swap input and output channels within each group (the weight of `Aᵀ` in flipped coordinates)."""
    k, cg = weight.shape[-1], weight.shape[1]
    return weight.reshape(groups, cg, cg, k, k).transpose(1, 2).reshape_as(weight)


def tl_conv2d_weight_grad(
    inp: torch.Tensor, grad_out: torch.Tensor, weight_shape: torch.Size, groups: int
) -> torch.Tensor:
    """∂⟨grad_out, A(W) inp⟩/∂W: the ordinary conv weight gradient on the TL-padded input."""
    k = weight_shape[-1]
    return torch.nn.grad.conv2d_weight(
        F.pad(inp, (k - 1, 0, k - 1, 0)), weight_shape, grad_out, groups=groups
    )


def _wavefront(rhs: torch.Tensor, weight: torch.Tensor, groups: int, lower: bool) -> torch.Tensor:
    """Solve `A x = rhs` for a TL conv `A` whose centre tap is lower (or upper) triangular per group."""
    cg, k = check_shapes(rhs, weight, groups)
    b, c, h, w = rhs.shape
    g = groups
    dtype, device = rhs.dtype, rhs.device

    d_inv, m = fold_centre(weight, groups, lower)
    m = m.permute(0, 3, 4, 2, 1).reshape(g, k * k * cg, cg)  # rows (a, b, c_in), columns c_out
    # Channels-last right-hand side (b, g, h, w, cg), already multiplied by D⁻¹.
    rhs = torch.einsum("gij,bgjhw->bghwi", d_inv, rhs.reshape(b, g, cg, h, w)).contiguous()

    # Skewed, zero-padded, channels-last solution buffer: padded pixel (r, c) lives at [r, r + c, :].
    # Channels innermost make every k×k neighbourhood k contiguous runs of k·cg values.
    hp, wp = h + k - 1, w + k - 1
    buf = torch.zeros(b, g, hp, hp + wp - 1, cg, dtype=dtype, device=device)
    sb, sg, sr, ss, _ = buf.stride()
    yb, yg, yr, ys, _ = rhs.stride()
    for d in range(h + w - 1):
        i0, i1 = max(0, d - w + 1), min(h - 1, d)
        n = i1 - i0 + 1
        # Tap (a, b) of pixel (i, d - i) reads padded (i + a, d - i + b), i.e. buf[i + a, d + a + b].
        patches = buf.as_strided(
            (g, b, n, k, k, cg),
            (sg, sb, sr, sr + ss, ss, 1),
            buf.storage_offset() + i0 * sr + d * ss,
        ).reshape(g, b * n, k * k * cg)
        # The right-hand side at pixels (i, d - i): one step in i is (row stride - column stride).
        rhs_d = rhs.as_strided(
            (g, b, n, cg), (yg, yb, yr - ys, 1), rhs.storage_offset() + i0 * yr + (d - i0) * ys
        )
        x_d = rhs_d - torch.bmm(patches, m).view(g, b, n, cg)
        buf[:, :, i0 + k - 1 : i1 + k, d + 2 * (k - 1)] = x_d.transpose(0, 1)
    # Unskew: pixel (i, j) is buf[i + k - 1, i + j + 2(k - 1)].
    out = buf.as_strided(
        (b, g, cg, h, w),
        (sb, sg, 1, sr + ss, ss),
        buf.storage_offset() + (k - 1) * sr + 2 * (k - 1) * ss,
    )
    return out.reshape(b, c, h, w).contiguous()


def tl_conv2d_solve(y: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """`A⁻¹ y` by the anti-diagonal wavefront (H + W - 1 vectorised steps). Not differentiable here."""
    return _wavefront(y, weight, groups, lower=True)


def tl_conv2d_solve_transposed(g: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """`A⁻ᵀ g`. In coordinates flipped in H and W, `Aᵀ` is a TL conv with per-group transposed channels
    and an upper-triangular centre tap, so the same wavefront runs there (last diagonal first)."""
    flipped = torch.flip(g, dims=(2, 3))
    return torch.flip(_wavefront(flipped, transpose_groups(weight, groups), groups, lower=False), dims=(2, 3))
