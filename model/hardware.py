"""What the machine offers the flow: native bfloat16 arithmetic, and a name for logs and tables.

bfloat16 pays only where the hardware computes in it (x86 AVX512-BF16 or AMX, Arm's BF16 extension, CUDA
devices from Ampere on); elsewhere oneDNN emulates it and it is slower than float32, so `auto` precision
choices ask `native_bfloat16` first.
"""

from __future__ import annotations

import platform

import torch

from kernels_cuda.cpu_features import cpu_flags

__all__ = ["cpu_flags", "hardware_name", "native_bfloat16"]

_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 (cpuinfo "flags"), Arm (cpuinfo "Features")


def native_bfloat16(device: torch.device | str) -> bool:
    """True when `device` computes bfloat16 natively (so autocast to it is faster than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return platform.system() == "Linux" and bool(cpu_flags() & _BF16_FLAGS)
    return False


def hardware_name(device: torch.device) -> str:
    """What ran the work, for logs, cards and benchmark tables: the GPU's name, or "CPU, N thread(s)"."""
    if device.type != "cpu":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'s' if threads > 1 else ''}"
