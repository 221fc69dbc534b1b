"""The native CPU solve (backend `cpu`) against the torch reference on every code path it has: images in
vector lanes (full, half and partial blocks), one image vectorised over channels, tiled and per-pixel
staging, the transposed direction, groups, runtime and specialised sizes, and any thread count."""

from __future__ import annotations

import pytest
import torch

from kernels_cuda import cpu_backend, reference
from kernels_cuda.build import find_cxx

from .helpers import masked_weight

pytestmark = pytest.mark.skipif(find_cxx() is None, reason="no C++ compiler")

# (B, C, groups, k, H, W): lane blocks of 16 (full, partial: 20 = 16 + 4), half blocks (B 9-16 with
# threads), one image at a time (B <= 8, Cg >= 8), tiled staging (Cg >= 12), specialised Cg with k = 3 and
# the generic path (Cg 5, 7, 20, k 2, 4, 5), non-square images narrower and wider than a lane chunk.
CASES = [
    (1, 8, 1, 3, 6, 5), (3, 16, 1, 3, 9, 17), (2, 48, 1, 3, 4, 5), (1, 5, 1, 4, 7, 3),
    (20, 4, 1, 3, 5, 6), (20, 8, 4, 3, 7, 4), (12, 16, 1, 3, 6, 19), (17, 12, 2, 3, 5, 5),
    (33, 7, 1, 2, 3, 4), (16, 20, 1, 5, 4, 6), (40, 2, 2, 3, 8, 8), (5, 24, 1, 3, 3, 18),
]  # fmt: skip


def _problem(b, c, groups, k, h, w, dtype, seed=0):
    weight = masked_weight(c, k, groups, std=0.2, dtype=dtype, seed=seed)
    y = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    return y, weight


@pytest.mark.parametrize("b,c,groups,k,h,w", CASES)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_solve_equals_the_reference_in_float64(b, c, groups, k, h, w, transposed, threads):
    y, weight = _problem(b, c, groups, k, h, w, torch.float64)
    ref = reference.tl_conv2d_solve_transposed if transposed else reference.tl_conv2d_solve
    got = cpu_backend.solve(y, weight, groups, transposed, threads=threads)
    torch.testing.assert_close(got, ref(y, weight, groups), atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("b,c,groups,k,h,w", CASES)
@pytest.mark.parametrize("transposed", [False, True])
def test_native_solve_in_float32_is_within_rounding_of_float64(b, c, groups, k, h, w, transposed):
    y64, weight64 = _problem(b, c, groups, k, h, w, torch.float64)
    ref = reference.tl_conv2d_solve_transposed if transposed else reference.tl_conv2d_solve
    exact = ref(y64, weight64, groups)
    got = cpu_backend.solve(y64.float(), weight64.float(), groups, transposed)
    reference32 = ref(y64.float(), weight64.float(), groups)
    # The same float32 arithmetic in another order: no further from float64 than the reference is (×4,
    # or a few ulps of the values).
    ours, theirs = (got.double() - exact).abs().max(), (reference32.double() - exact).abs().max()
    assert ours <= max(4 * theirs, 1e-6 * exact.abs().max()), (ours, theirs)


def test_the_thread_count_and_the_batch_around_an_image_change_nothing():
    y, weight = _problem(37, 16, 1, 3, 9, 11, torch.float32)
    one = cpu_backend.solve(y, weight, 1, False, threads=1)
    for threads in (2, 3, 8):
        assert torch.equal(cpu_backend.solve(y, weight, 1, False, threads=threads), one)
    # An image solved alone (a one-image block, or one image vectorised over channels) or inside any
    # block of lanes gets the same bits: every lane computes the same operations in the same order.
    for i in (0, 16, 36):
        assert torch.equal(cpu_backend.solve(y[i : i + 1], weight, 1, False, threads=1)[0], one[i])


def test_half_inputs_are_computed_in_float32_and_cast_back():
    y, weight = _problem(4, 8, 1, 3, 5, 5, torch.float32)
    got = cpu_backend.solve(y.half(), weight.half(), 1, False)
    assert got.dtype == torch.float16
    want = reference.tl_conv2d_solve(y.half().float(), weight.half().float()).half()
    torch.testing.assert_close(got, want)  # float32 arithmetic, rounded once to half


def test_empty_batches_and_bad_devices():
    weight = masked_weight(4, 3, dtype=torch.float32)
    assert cpu_backend.solve(torch.zeros(0, 4, 3, 3), weight, 1, False).shape == (0, 4, 3, 3)
    with pytest.raises(ValueError, match="does not fit"):
        cpu_backend.solve(torch.zeros(1, 3, 3, 3), weight, 1, False)
