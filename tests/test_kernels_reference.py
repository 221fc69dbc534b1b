"""The triangular-convolution ops against dense linear algebra (docs/math.md §4), on every CPU backend:
`torch` (the reference), `cpu` (the native CPU solve, the default for CPU tensors) and `cuda_host` (the
CUDA kernel's own item functions run by the g++ host driver, so this whole grid checks the kernel source
on every CI run)."""

from __future__ import annotations

import pytest
import torch

import kernels_cuda
from kernels_cuda import tl_conv2d, tl_conv2d_solve, tl_conv2d_solve_transposed
from kernels_cuda.build import find_cxx

from .helpers import dense_conv_matrix, masked_weight

_NO_CXX = pytest.mark.skipif(find_cxx() is None, reason="no C++ compiler")
CPU_BACKENDS = ["torch", pytest.param("cpu", marks=_NO_CXX), pytest.param("cuda_host", marks=_NO_CXX)]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request) -> str:
    return request.param


SHAPES = [(1, 1), (3, 5), (6, 4), (8, 7), (2, 8)]
CASES = [
    (channels, groups, k, h, w)
    for k in (2, 3, 4, 5)
    for channels, groups in ((1, 1), (2, 1), (3, 1), (4, 1), (4, 4), (8, 4), (6, 2))
    for h, w in SHAPES
]


def _batch(channels, h, w, seed=1, b=3):
    return torch.randn(b, channels, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("channels,groups,k,h,w", CASES)
def test_solve_equals_dense_solve(channels, groups, k, h, w, backend):
    weight = masked_weight(channels, k, groups, std=0.3)
    a = dense_conv_matrix(weight, groups, (channels, h, w))
    y = _batch(channels, h, w)
    expected = torch.linalg.solve(a, y.reshape(len(y), -1).T).T.reshape_as(y)
    torch.testing.assert_close(
        tl_conv2d_solve(y, weight, groups, backend=backend), expected, atol=1e-10, rtol=1e-10
    )


@pytest.mark.parametrize("channels,groups,k,h,w", CASES)
def test_transposed_solve_equals_dense_transposed_solve(channels, groups, k, h, w, backend):
    weight = masked_weight(channels, k, groups, std=0.3)
    a = dense_conv_matrix(weight, groups, (channels, h, w))
    g = _batch(channels, h, w)
    expected = torch.linalg.solve(a.T, g.reshape(len(g), -1).T).T.reshape_as(g)
    torch.testing.assert_close(
        tl_conv2d_solve_transposed(g, weight, groups, backend=backend), expected, atol=1e-10, rtol=1e-10
    )


@pytest.mark.parametrize("channels,groups,k,h,w", CASES[:: len(SHAPES)])
def test_dense_matrix_is_triangular_with_the_centre_diagonal(channels, groups, k, h, w):
    weight = masked_weight(channels, k, groups, std=0.3)
    # Raster-then-channel order: index = (i * W + j) * C + c.
    a = dense_conv_matrix(weight, groups, (channels, 4, 5))
    n = a.shape[0]
    perm = torch.arange(n).reshape(channels, 4, 5).permute(1, 2, 0).reshape(-1)
    a = a[perm][:, perm]
    assert torch.equal(a, torch.tril(a))
    centre = weight[:, :, k - 1, k - 1].reshape(groups, channels // groups, -1)
    diag = torch.diagonal(centre, dim1=1, dim2=2).reshape(-1)
    torch.testing.assert_close(torch.diagonal(a), diag.repeat(20))


@pytest.mark.parametrize("k,channels,groups", [(2, 1, 1), (3, 3, 1), (3, 4, 4), (5, 2, 1), (4, 8, 4)])
@pytest.mark.parametrize("op", [tl_conv2d_solve, tl_conv2d_solve_transposed])
def test_solve_gradients_pass_gradcheck(op, k, channels, groups, backend):
    weight = masked_weight(channels, k, groups, std=0.3).requires_grad_()
    y = _batch(channels, 4, 3, b=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: op(a, b, groups, backend=backend), (y, weight))


def test_solve_input_gradient_is_the_dense_transposed_solve(backend):
    weight = masked_weight(3, 3, std=0.3)
    a = dense_conv_matrix(weight, 1, (3, 5, 4))
    y = _batch(3, 5, 4, b=1).requires_grad_()
    g = _batch(3, 5, 4, seed=7, b=1)
    (tl_conv2d_solve(y, weight, backend=backend) * g).sum().backward()
    torch.testing.assert_close(y.grad.reshape(-1), torch.linalg.solve(a.T, g.reshape(-1)), atol=1e-12, rtol=0)


def test_solve_inverts_the_convolution(backend):
    weight = masked_weight(4, 3, std=0.3)
    x = _batch(4, 7, 5)
    y = tl_conv2d(x, weight)
    torch.testing.assert_close(tl_conv2d_solve(y, weight, backend=backend), x, atol=1e-12, rtol=0)


def test_float32_round_trip_error_at_a_realistic_shape(backend):
    """B=16, C=16, 32×32, k=3, kernel N(0, 0.05) as training initialises it.

    Bound: each solved value is one dot product of 144 terms against a unit-diagonal centre, so its
    rounding error is ~√144·2⁻²⁴·|terms| ≈ 1e-6; the wavefront feeds errors forward through 63 diagonals,
    but with weights this small (‖off-centre taps‖₁ ≈ 0.05·144·0.8 ≈ 6 spread over channels of norm ~1)
    the amplification stays modest. 1e-4 is ~10× above what we measure (~1e-5), far below anything a
    user could see in an image (one 8-bit level in logit space is ~1e-2).
    """
    gen = torch.Generator().manual_seed(0)
    weight = masked_weight(16, 3, std=0.05, dtype=torch.float32)
    x = torch.randn(16, 16, 32, 32, generator=gen)
    err = (tl_conv2d_solve(tl_conv2d(x, weight), weight, backend=backend) - x).abs().max().item()
    assert err < 1e-4, err


def test_backend_is_chosen_per_call(monkeypatch):
    x = torch.zeros(1, 1, 2, 2)
    monkeypatch.setenv("FLOWS_KERNELS", "torch")
    assert kernels_cuda.resolve_backend(x) == "torch"
    monkeypatch.setenv("FLOWS_KERNELS", "auto")
    native = find_cxx() is not None
    assert kernels_cuda.resolve_backend(x) == ("cpu" if native else "torch")  # native solve when built
    assert kernels_cuda.serving_backend("cpu") == kernels_cuda.resolve_backend(x)
    monkeypatch.setenv("FLOWS_KERNELS", "nonsense")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels_cuda.resolve_backend(x)
    monkeypatch.delenv("FLOWS_KERNELS")
    with pytest.raises(RuntimeError, match="forced"):
        kernels_cuda.resolve_backend(x, backend="cuda")


def test_bad_shapes_are_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="does not fit"):
        tl_conv2d_solve(torch.zeros(1, 3, 4, 4), torch.zeros(4, 4, 3, 3))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        tl_conv2d_solve(torch.zeros(3, 4, 4), torch.zeros(3, 3, 3, 3))
