"""The CUDA kernels: compile checks everywhere (CI has nvcc, no GPU), parity with the reference on a GPU.
The kernel's item functions also run on the CPU in CI through the host driver (tests/test_kernels_host.py)."""

from __future__ import annotations

import itertools
import random
import re
import subprocess
from pathlib import Path

import pytest
import torch

from kernels_cuda import tl_conv2d, tl_conv2d_solve, tl_conv2d_solve_transposed
from kernels_cuda.build import find_nvcc, nvcc_command

from .helpers import masked_weight

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.glob("kernels_cuda/csrc/*.cu"), *ROOT.glob("benchmarks/csrc/*.cu")])


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc is not installed")
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_every_cuda_source_compiles_without_warnings_or_spills(source, tmp_path):
    """sm_80 and sm_90 (H100); ptxas's resource report (-v) must show no register spills in any kernel."""
    cmd = nvcc_command(find_nvcc(), source, tmp_path / "lib.so", archs=["80", "90"])
    result = subprocess.run([*cmd, "-Xptxas", "-v"], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", output)
    assert spills, output
    assert all(stores == "0" and loads == "0" for stores, loads in spills), output


# -- on a GPU ------------------------------------------------------------------------------------------


def _parity_cases() -> list[tuple[int, int, int, int, int]]:
    """A spread of the (k, C, H, W, B) grid the issue names, each value of each axis covered."""
    grid = list(
        itertools.product(
            (2, 3, 5, 7),
            (1, 3, 4, 16, 48, 96),
            (1, 5, 16, 32, 33, 64),
            (1, 5, 16, 32, 33, 64),
            (1, 7, 64, 256),
        )
    )
    rng = random.Random(0)
    picked = rng.sample(grid, 40)
    for k, c, h, b in zip(
        (2, 3, 5, 7), (1, 3, 4, 16, 48, 96), (1, 5, 16, 32, 33, 64), (1, 7, 64, 256), strict=False
    ):
        picked.append((k, c, h, 33, b))
    picked.append((3, 96, 64, 64, 7))  # largest weights: read from global memory, not shared
    return [case for case in picked if case[1] * case[2] * case[3] * case[4] <= 2**24]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k,c,h,w,b", _parity_cases())
def test_cuda_solves_match_the_reference(k, c, h, w, b, dtype):
    weight = masked_weight(c, k, std=0.05, dtype=dtype).cuda()
    y = torch.randn(b, c, h, w, dtype=dtype, device="cuda")
    for op in (tl_conv2d_solve, tl_conv2d_solve_transposed):
        got, want = op(y, weight, backend="cuda"), op(y, weight, backend="torch")
        if dtype == torch.float64:
            torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
        else:
            assert ((got - want).norm() / want.norm()).item() <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32_on_the_gpu(dtype):
    weight = masked_weight(8, 3, std=0.05, dtype=torch.float32).cuda()
    y = torch.randn(4, 8, 14, 14, device="cuda").to(dtype)
    got = tl_conv2d_solve(y, weight, backend="cuda")
    assert got.dtype == dtype
    torch.testing.assert_close(got, tl_conv2d_solve(y.float(), weight, backend="torch").to(dtype))


@pytest.mark.gpu
def test_gpu_and_host_driver_agree_to_rounding_in_float64():
    """The same item functions in the same summation order: GPU and CPU runs of the kernel source agree
    to rounding: nvcc contracts multiply-adds into FMAs, g++ for x86-64 does not."""
    weight = masked_weight(12, 3, 2, std=0.1)
    y = torch.randn(3, 12, 16, 16, dtype=torch.float64)
    for op in (tl_conv2d_solve, tl_conv2d_solve_transposed):
        gpu = op(y.cuda(), weight.cuda(), 2, backend="cuda").cpu()
        torch.testing.assert_close(gpu, op(y, weight, 2, backend="cuda_host"), atol=1e-13, rtol=1e-13)


@pytest.mark.gpu
@pytest.mark.parametrize("groups,c", [(4, 4), (4, 16), (2, 6)])
def test_grouped_cuda_solves_match_the_reference(groups, c):
    weight = masked_weight(c, 3, groups, std=0.2).cuda()
    y = torch.randn(5, c, 9, 7, dtype=torch.float64, device="cuda")
    for op in (tl_conv2d_solve, tl_conv2d_solve_transposed):
        torch.testing.assert_close(
            op(y, weight, groups, backend="cuda"), op(y, weight, groups, backend="torch")
        )
    x = tl_conv2d_solve(tl_conv2d(y, weight, groups), weight, groups, backend="cuda")
    torch.testing.assert_close(x, y)


@pytest.mark.gpu
@pytest.mark.parametrize("op", [tl_conv2d_solve, tl_conv2d_solve_transposed])
def test_cuda_solve_gradients_pass_gradcheck(op):
    weight = masked_weight(3, 3, std=0.3).cuda().requires_grad_()
    y = torch.randn(2, 3, 5, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: op(a, w, 1, backend="cuda"), (y, weight))


@pytest.mark.gpu
def test_auto_backend_uses_the_kernels_for_cuda_tensors():
    import kernels_cuda

    assert kernels_cuda.prepare("cuda") == "cuda"
    assert kernels_cuda.resolve_backend(torch.zeros(1, device="cuda")) == "cuda"
