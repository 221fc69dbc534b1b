"""A handful of kernel calls for `compute-sanitizer --tool memcheck` (small, edge-case shapes)."""

import torch

from kernels_cuda import cuda_backend, reference

CASES = [
    (1, 1, 1, 1, 2, 1),
    (3, 4, 5, 7, 3, 4),
    (2, 16, 33, 16, 5, 1),
    (1, 96, 8, 9, 3, 1),
    (2, 8, 1, 12, 7, 2),
]

for b, c, h, w, k, groups in CASES:
    cg = c // groups
    weight = torch.randn(c, cg, k, k, device="cuda", dtype=torch.float64) * 0.05
    for g in range(groups):
        rows = slice(g * cg, (g + 1) * cg)
        weight[rows, :, k - 1, k - 1] = torch.tril(weight[rows, :, k - 1, k - 1], -1) + torch.eye(
            cg, device="cuda"
        )
    y = torch.randn(b, c, h, w, device="cuda", dtype=torch.float64)
    for ours, ref in (
        (cuda_backend.tl_conv2d_solve, reference.tl_conv2d_solve),
        (cuda_backend.tl_conv2d_solve_transposed, reference.tl_conv2d_solve_transposed),
    ):
        err = (ours(y, weight, groups) - ref(y, weight, groups)).abs().max().item()
        assert err < 1e-10, (b, c, h, w, k, groups, err)
torch.cuda.synchronize()
print(f"sanitizer shapes ok: {len(CASES)} cases")
