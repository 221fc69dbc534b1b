"""Compile the kernel sources into shared libraries (no torch C++ headers), cached by content hash.

    python -m kernels_cuda.build            # build (or find) the CUDA kernels with nvcc; prints the path
    python -m kernels_cuda.build --host     # the host driver of the same kernel source, with g++
    python -m kernels_cuda.build --cpu      # the native CPU solve (backend `cpu`), with g++ -O3

The CUDA library is `nvcc` output; the host driver (`csrc/host_driver.cpp`, backend `cuda_host`) runs the
same item functions (`csrc/tl_solve_core.cuh`) on the CPU and needs only a C++20 compiler (`$CXX` or g++).

The library lands in `kernels_cuda/_build/` (or `$FLOWS_KERNELS_CACHE`, or `~/.cache/flows_kernels` when
the package folder is read-only). `FLOWS_CUDA_ARCHS="80;90"` overrides the target architectures.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from .cpu_features import cpu_flags

__all__ = [
    "DEFAULT_ARCHS",
    "CompileError",
    "build_cpu_solve",
    "build_host_driver",
    "build_kernels",
    "cached_build",
    "compile_host",
    "compile_library",
    "cxx_command",
    "find_cxx",
    "find_nvcc",
    "nvcc_command",
]

log = logging.getLogger("kernels_cuda.build")
CSRC = Path(__file__).parent / "csrc"
DEFAULT_ARCHS = ("80", "86", "89", "90")
WARNING_FLAGS = "-Wall,-Wextra"
HEADERS = ("tl_solve_core.cuh",)
CXX_FLAGS = ("-std=c++20", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread")


class CompileError(RuntimeError):
    """A compiler failed (the message holds its output), or none was found."""


def find_nvcc() -> str | None:
    """`nvcc` from `$CUDA_HOME/bin`, the PATH, or `/usr/local/cuda/bin`."""
    candidates = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    for root in candidates:
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return shutil.which("nvcc")


def find_cxx() -> str | None:
    """The host C++ compiler: `$CXX`, else g++ or c++ on the PATH."""
    env = os.environ.get("CXX")
    if env and shutil.which(env):
        return shutil.which(env)
    return shutil.which("g++") or shutil.which("c++")


def _archs() -> list[str]:
    env = os.environ.get("FLOWS_CUDA_ARCHS")
    return [a.strip() for a in env.replace(",", ";").split(";") if a.strip()] if env else list(DEFAULT_ARCHS)


def nvcc_command(nvcc: str, source: Path, output: Path, archs: list[str] | None = None) -> list[str]:
    archs = archs or _archs()
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")  # PTX for newer GPUs
    return [
        nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", f"-fPIC,{WARNING_FLAGS}", "-lineinfo",
        *gencode, "-o", str(output), str(source),
    ]  # fmt: skip


def _cache_dir() -> Path:
    env = os.environ.get("FLOWS_KERNELS_CACHE")
    if env:
        return Path(env)
    local = Path(__file__).parent / "_build"
    try:
        local.mkdir(exist_ok=True)
        probe = local / ".write-test"
        probe.touch()
        probe.unlink()
        return local
    except OSError:
        return Path.home() / ".cache" / "flows_kernels"


def _digest(files: list[Path], flags: str) -> str:
    """Content hash of the sources, the headers they include and the flags: the cache key."""
    h = hashlib.sha256(flags.encode())
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def cached_build(
    output_name: str,
    inputs: list[Path],
    key: str,
    command: Callable[[Path], list[str] | None],
    cache: Path | None = None,
    force: bool = False,
) -> Path:
    """`cache/{output_name with the digest}`: from the cache when it is there, else built by running
    `command(tmp)` under a file lock and renamed into place (so concurrent builders never see half a
    file). The digest covers `inputs` and `key` (compiler and flags). `command` returning None means no
    compiler is available: only a cached build will do. Raises CompileError."""
    stem, dot, suffix = output_name.partition(".")
    cache = cache or _cache_dir()
    output = cache / f"{stem}-{_digest(inputs, key)}{dot}{suffix}"
    if output.is_file() and not force:
        return output
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(output) + ".lock"):
        if output.is_file() and not force:
            return output
        tmp = output.with_name(f"{output.name}.tmp")
        cmd = command(tmp)
        if cmd is None:
            raise CompileError(f"no compiler for {output_name} and no cached build in {cache}")
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(f"{cmd[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        os.replace(tmp, output)
    return output


def cxx_command(
    cxx: str, sources: list[Path], output: Path, flags: list[str], shared: bool = True
) -> list[str]:
    """g++ command line: a shared library (ctypes) or an executable (the ThreadSanitizer self-test)."""
    kind = ["-shared", "-fPIC"] if shared else []
    return [cxx, *CXX_FLAGS, *flags, *kind, "-o", str(output), *map(str, sources)]


def compile_host(
    sources: list[Path],
    name: str,
    flags: list[str] | None = None,
    shared: bool = True,
    cache: Path | None = None,
) -> Path:
    """Compile host C++ sources with g++ into `cache` (default: the kernel cache), keyed by content hash;
    raises CompileError."""
    flags = list(flags or [])
    cxx = find_cxx()
    if cxx is None:
        raise CompileError("no C++ compiler found (set CXX or install g++)")
    return cached_build(
        f"lib{name}.so" if shared else name,
        [*sources, *(CSRC / h for h in HEADERS)],
        " ".join([cxx, *flags, str(shared)]),
        lambda tmp: cxx_command(cxx, sources, tmp, flags, shared),
        cache,
    )


def build_host_driver() -> Path:
    """The host driver of the kernel source (backend `cuda_host`), compiled with g++ if needed."""
    return compile_host([CSRC / "host_driver.cpp"], "flows_host")


def cpu_arch_flags() -> list[str]:
    """Target flags for the native CPU solve on this machine: AVX-512 or AVX2 where the CPU has them (the
    flags are part of the cache key, so another machine gets its own build)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return ["-march=x86-64-v4", "-mprefer-vector-width=512"]
    if {"avx2", "fma", "bmi2"} <= flags:
        return ["-march=x86-64-v3"]
    return []


def build_cpu_solve() -> Path:
    """The native CPU solve (backend `cpu`), compiled with g++ -O3 for this CPU if needed."""
    return compile_host([CSRC / "cpu_solve.cpp"], "flows_cpu", ["-O3", *cpu_arch_flags()])


def compile_library(source: Path, name: str, force: bool = False) -> Path:
    """`lib{name}-{hash}.so` for `source` and the target architectures: from the cache when it is there
    (no nvcc needed, e.g. a runtime image), else compiled with nvcc; raises CompileError."""
    archs = _archs()
    nvcc = find_nvcc()

    def command(tmp: Path) -> list[str] | None:
        if nvcc is None:
            return None
        log.info("compiling %s for sm_%s (one-time, about a minute)", source.name, ",".join(archs))
        return nvcc_command(nvcc, source, tmp, archs)

    try:
        inputs = [source, *(CSRC / h for h in HEADERS)]
        return cached_build(f"lib{name}.so", inputs, " ".join(archs), command, force=force)
    except CompileError as exc:
        if nvcc is None:
            raise CompileError(
                "nvcc not found (set CUDA_HOME or put nvcc on the PATH) and no cached build"
            ) from exc
        raise


def build_kernels(force: bool = False) -> Path:
    """The project's kernel library, compiled if needed."""
    return compile_library(CSRC / "tl_solve.cu", "flows_kernels", force=force)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        if "--host" in sys.argv:
            print(build_host_driver())
        elif "--cpu" in sys.argv:
            print(build_cpu_solve())
        else:
            print(build_kernels(force="--force" in sys.argv))
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
