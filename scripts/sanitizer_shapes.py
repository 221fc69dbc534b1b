"""Kernel calls for `compute-sanitizer` (memcheck, racecheck, synccheck): shapes covering every code path.

    compute-sanitizer --tool racecheck --error-exitcode 1 python scripts/sanitizer_shapes.py
    python scripts/sanitizer_shapes.py --dry-run     # no GPU: the same cases on the host driver (cuda_host)

Covers both directions, groups, k 1–7, float32 specialisations (k=3, Cg 4…48) and the generic path, float64,
half inputs, single-pixel and single-row images, and a plane too large for shared memory (global workspace).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, without an editable install

from kernels_cuda import reference, tl_conv2d_solve, tl_conv2d_solve_transposed

# (B, C, H, W, k, groups, dtype)
CASES = [
    (1, 1, 1, 1, 2, 1, torch.float64),
    (3, 4, 5, 7, 3, 4, torch.float64),
    (2, 16, 33, 16, 5, 1, torch.float64),
    (1, 96, 8, 9, 3, 1, torch.float64),
    (2, 8, 1, 12, 7, 2, torch.float64),
    (2, 3, 4, 4, 1, 1, torch.float64),
    (2, 8, 14, 14, 3, 1, torch.float32),  # specialisations k=3, Cg = 8, 12, 24, 48, 4
    (1, 12, 16, 16, 3, 1, torch.float32),
    (3, 24, 8, 8, 3, 1, torch.float32),
    (1, 48, 16, 16, 3, 1, torch.float32),
    (2, 16, 6, 6, 3, 4, torch.float32),
    (2, 8, 6, 6, 3, 1, torch.float16),
    (1, 16, 100, 100, 3, 1, torch.float32),  # plane of 102·102·16·4 = 666 KB: the global workspace path
]


def masked(c: int, k: int, groups: int, device: str) -> torch.Tensor:
    cg = c // groups
    weight = torch.randn(c, cg, k, k, device=device, dtype=torch.float64) * 0.05
    for g in range(groups):
        rows = slice(g * cg, (g + 1) * cg)
        centre = weight[rows, :, k - 1, k - 1]
        eye = torch.eye(cg, device=device, dtype=torch.float64)
        weight[rows, :, k - 1, k - 1] = torch.tril(centre, -1) + eye
    return weight


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="run the cases on the CPU host driver")
    args = parser.parse_args(argv)
    device, backend = ("cpu", "cuda_host") if args.dry_run else ("cuda", "cuda")
    torch.manual_seed(0)
    for b, c, h, w, k, groups, dtype in CASES:
        if args.dry_run and h * w > 1000:
            continue  # the workspace path is covered by tests/test_kernels_host.py on the CPU
        weight = masked(c, k, groups, device)
        y = torch.randn(b, c, h, w, device=device, dtype=torch.float64)
        for op in (tl_conv2d_solve, tl_conv2d_solve_transposed):
            got = op(y.to(dtype), weight.to(dtype if dtype != torch.float16 else torch.float32), groups,
                     backend=backend).double()  # fmt: skip
            ref = reference.tl_conv2d_solve if op is tl_conv2d_solve else reference.tl_conv2d_solve_transposed
            want = ref(y, weight, groups)
            err = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
            bound = 1e-12 if dtype == torch.float64 else (1e-5 if dtype == torch.float32 else 2e-3)
            if not err <= bound:
                print(f"mismatch: {(b, c, h, w, k, groups, dtype)} {op.__name__}: {err:.3g}", file=sys.stderr)
                return 1
    if not args.dry_run:
        torch.cuda.synchronize()
    print(f"sanitizer shapes ok: {len(CASES)} cases on {backend}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
