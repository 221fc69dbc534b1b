"""The CUDA kernel's own source on the CPU: the host driver (backend `cuda_host`) beyond the shared grid of
tests/test_kernels_reference.py: memory placements, every compiled specialisation, dtypes, the fold cache,
size validation, and a ThreadSanitizer build of the threaded driver."""

from __future__ import annotations

import subprocess

import pytest
import torch

from kernels_cuda import folding, host_backend, reference, tl_conv2d_solve
from kernels_cuda.build import CSRC, compile_host, find_cxx

from .helpers import masked_weight

pytestmark = pytest.mark.skipif(find_cxx() is None, reason="no C++ compiler")


def _solves(y, weight, groups=1, **kwargs):
    """(host driver, reference) for both directions."""
    for transposed, ref in ((False, reference.tl_conv2d_solve), (True, reference.tl_conv2d_solve_transposed)):
        yield host_backend.solve(y, weight, groups, transposed, **kwargs), ref(y, weight, groups)


# Bytes of a C=6, k=3, 5×7 plane in float64: (5+2)·(7+2)·6·8 = 3024; its weights: 9·36·8 = 2592.
@pytest.mark.parametrize(
    "fast_limit,placement",
    [(0, "plane and weights global"), (3024, "plane shared, weights global"), (1 << 20, "both shared")],
)
def test_every_memory_placement_matches_the_reference(fast_limit, placement):
    weight = masked_weight(6, 3, 2, std=0.3)
    y = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    for got, want in _solves(y, weight, 2, fast_limit=fast_limit):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=placement)


@pytest.mark.parametrize("cg", [4, 8, 12, 16, 24, 48, 5])
def test_every_float32_specialisation_matches_the_reference(cg):
    """k=3 with these group widths runs a compiled specialisation (cg=5: the generic path)."""
    weight = masked_weight(2 * cg, 3, 2, std=0.05, dtype=torch.float64)
    y = torch.randn(2, 2 * cg, 6, 5, dtype=torch.float64)
    for got, want in _solves(y.float(), weight.float(), 2):
        assert got.dtype == torch.float32
        assert ((got.double() - want.double()).norm() / want.double().norm()).item() < 1e-5


def test_item_order_and_threads_do_not_change_a_single_bit():
    weight = masked_weight(8, 3, 1, std=0.1)
    y = torch.randn(2, 8, 9, 6, dtype=torch.float64)
    first = host_backend.solve(y, weight, 1, False, seed=1)
    assert torch.equal(first, host_backend.solve(y, weight, 1, False, seed=2))
    assert torch.equal(first, host_backend.solve(y, weight, 1, False, seed=3, threads=3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    weight = masked_weight(4, 3, 1, std=0.05, dtype=torch.float32)
    y = torch.randn(2, 4, 6, 6).to(dtype)
    got = tl_conv2d_solve(y, weight, backend="cuda_host")
    assert got.dtype == dtype
    want = reference.tl_conv2d_solve(y.float(), weight)
    torch.testing.assert_close(got, want.to(dtype))


def test_folded_weights_are_cached_per_weight_version():
    cache = folding.FoldCache()
    weight = masked_weight(4, 3, 1, std=0.2)
    first = cache.get(weight, 1, False, torch.float64)
    assert cache.get(weight, 1, False, torch.float64) is first and cache.hits == 1
    assert cache.get(weight, 1, True, torch.float64) is not first  # the transposed fold is its own entry
    weight.mul_(2)  # in place: a new version
    refolded = cache.get(weight, 1, False, torch.float64)
    assert refolded is not first
    torch.testing.assert_close(refolded, folding.fold_for_kernel(weight, 1, False, torch.float64))
    trainable = weight.clone().requires_grad_()
    assert cache.get(trainable, 1, False, torch.float64) is not cache.get(trainable, 1, False, torch.float64)


def test_cached_fold_follows_an_in_place_update_through_the_backend():
    weight = masked_weight(4, 3, 1, std=0.2)
    y = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    tl_conv2d_solve(y, weight, backend="cuda_host")
    with torch.no_grad():
        weight[:, :, 0, 0] += 0.5
    torch.testing.assert_close(
        tl_conv2d_solve(y, weight, backend="cuda_host"), reference.tl_conv2d_solve(y, weight)
    )


def test_sizes_past_32_bit_indexing_are_refused_before_the_kernel():
    weight = masked_weight(1, 3, 1)
    with pytest.raises(ValueError, match="grid limit"):
        tl_conv2d_solve(torch.empty(2**31, 1, 0, 1, dtype=torch.float64), weight, backend="cuda_host")
    with pytest.raises(ValueError, match="32-bit"):
        tl_conv2d_solve(torch.empty(0, 1, 50_000, 50_000, dtype=torch.float64), weight, backend="cuda_host")
    with pytest.raises(TypeError, match="floating-point"):
        tl_conv2d_solve(torch.zeros(1, 1, 2, 2, dtype=torch.int64), weight, backend="cuda_host")


def test_backend_cuda_host_is_selectable_by_environment(monkeypatch):
    import kernels_cuda

    monkeypatch.setenv("FLOWS_KERNELS", "cuda_host")
    assert kernels_cuda.resolve_backend(torch.zeros(1)) == "cuda_host"
    weight = masked_weight(2, 2, 1)
    y = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(tl_conv2d_solve(y, weight), reference.tl_conv2d_solve(y, weight))


@pytest.fixture(scope="module")
def tsan_selftest(tmp_path_factory):
    sources = [CSRC / "host_driver.cpp", CSRC / "host_selftest.cpp"]
    flags = ["-fsanitize=thread", "-g", "-O1"]
    cache = tmp_path_factory.mktemp("tsan")
    return compile_host(sources, "host_selftest_tsan", flags, shared=False, cache=cache)


def _run(exe, *args):
    env = {"TSAN_OPTIONS": "halt_on_error=0 exitcode=66"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=120)


def test_threaded_driver_is_clean_under_thread_sanitizer(tsan_selftest):
    result = _run(tsan_selftest, "4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ThreadSanitizer" not in result.stderr, result.stderr
    assert "host selftest: ok" in result.stdout


def test_thread_sanitizer_sees_the_race_when_the_diagonal_barrier_is_removed(tsan_selftest):
    """The check above can fail: without the barrier between diagonals, items read unsynchronised writes."""
    result = _run(tsan_selftest, "4", "--no-diagonal-barrier")
    assert "ThreadSanitizer: data race" in result.stderr
    assert result.returncode != 0


def test_a_failed_build_is_remembered_until_an_explicit_retry(caplog):
    """Dispatch (`get`) never rebuilds after a failure, so no request waits for a compiler; `load(retry=True)`
    (what the service calls at start-up) tries again and can succeed."""
    from kernels_cuda.build import CompileError, build_host_driver
    from kernels_cuda.loader import LibraryLoader

    outcomes = [CompileError("compiler crashed"), None]

    def build():
        failure = outcomes.pop(0)
        if failure is not None:
            raise failure
        return build_host_driver()

    loader = LibraryLoader("test library", build, host_backend._bind)
    with caplog.at_level("WARNING", logger="kernels_cuda"):
        assert loader.get() is None and loader.get() is None
    assert loader.attempts == 1 and "compiler crashed" in loader.reason
    assert sum("compiler crashed" in r.getMessage() for r in caplog.records) == 1  # logged once
    assert loader.load(retry=True) is not None and loader.loaded and loader.attempts == 2
    assert loader.reason is None


@pytest.mark.parametrize("arch", ["finc", "inverse_flow"])
def test_a_frozen_flow_runs_the_kernel_source_like_the_reference(arch, monkeypatch):
    """Whole models (four orientations as groups, frozen weights, fold cache) through `cuda_host`."""
    from model import FlowConfig, build_flow

    from .helpers import randomise_parameters

    config = FlowConfig(arch=arch, image_shape=(1, 8, 8), levels=1, steps=1, hidden=8, kernel_size=3)
    flow = build_flow(config)
    flow.train()
    flow.log_prob(torch.randint(0, 256, (4, 1, 8, 8)))
    randomise_parameters(flow, std=0.02)
    flow = flow.eval().double().freeze()
    latents = flow.sample_latents(3, 0.7, torch.Generator().manual_seed(0))
    images = torch.randint(0, 256, (3, 1, 8, 8))
    results = {}
    for backend in ("torch", "cuda_host"):
        monkeypatch.setenv("FLOWS_KERNELS", backend)
        with torch.inference_mode():
            results[backend] = (flow.decode(latents), flow.log_prob(images))
    for got, want in zip(results["cuda_host"], results["torch"], strict=True):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    hits = folding.folded_weights.hits
    with torch.inference_mode():  # FLOWS_KERNELS is still cuda_host
        flow.decode(latents), flow.log_prob(images)
    assert folding.folded_weights.hits > hits  # frozen weights are folded once, then reused


def test_a_frozen_triangular_kernel_is_one_unchanging_tensor():
    from model.layers.triangular import TriangularKernel

    kernel = TriangularKernel(8, 3, groups=4, generator=torch.Generator().manual_seed(0))
    live = kernel.weight
    kernel.freeze()
    assert kernel.weight is kernel.weight and not kernel.weight.requires_grad
    torch.testing.assert_close(kernel.weight, live.detach(), atol=0, rtol=0)
    kernel.freeze(False)
    assert kernel.weight is not kernel.weight and kernel.weight.requires_grad
