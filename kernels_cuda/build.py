"""Compile CUDA sources into shared libraries with `nvcc` (no torch C++ headers), cached by content hash.

    python -m kernels_cuda.build            # build (or find) the kernels; prints the library path

The library lands in `kernels_cuda/_build/` (or `$FLOWS_KERNELS_CACHE`, or `~/.cache/flows_kernels` when
the package folder is read-only). `FLOWS_CUDA_ARCHS="80;90"` overrides the target architectures.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

__all__ = ["DEFAULT_ARCHS", "CompileError", "build_kernels", "compile_library", "find_nvcc", "nvcc_command"]

log = logging.getLogger("kernels_cuda.build")
CSRC = Path(__file__).parent / "csrc"
DEFAULT_ARCHS = ("80", "86", "89", "90")
WARNING_FLAGS = "-Wall,-Wextra"


class CompileError(RuntimeError):
    """nvcc failed; the message holds its output."""


def find_nvcc() -> str | None:
    """`nvcc` from `$CUDA_HOME/bin`, the PATH, or `/usr/local/cuda/bin`."""
    candidates = [os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]
    for root in candidates:
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return shutil.which("nvcc")


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


def compile_library(source: Path, name: str, force: bool = False) -> Path:
    """`lib{name}-{hash}.so` for `source` and the target architectures: from the cache when it is there
    (no nvcc needed, e.g. a runtime image), else compiled with nvcc; raises CompileError."""
    archs = _archs()
    digest = hashlib.sha256(source.read_bytes() + " ".join(archs).encode()).hexdigest()[:16]
    cache = _cache_dir()
    output = cache / f"lib{name}-{digest}.so"
    if output.is_file() and not force:
        return output
    nvcc = find_nvcc()
    if nvcc is None:
        raise CompileError("nvcc not found (set CUDA_HOME or put nvcc on the PATH) and no cached build")
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(output) + ".lock"):
        if output.is_file() and not force:
            return output
        tmp = output.with_suffix(".tmp.so")
        cmd = nvcc_command(nvcc, source, tmp, archs)
        log.info("compiling %s for sm_%s (one-time, about a minute)", source.name, ",".join(archs))
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise CompileError(f"nvcc failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        os.replace(tmp, output)
    return output


def build_kernels(force: bool = False) -> Path:
    """The project's kernel library, compiled if needed."""
    return compile_library(CSRC / "tl_solve.cu", "flows_kernels", force=force)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    try:
        print(build_kernels(force="--force" in sys.argv))
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
