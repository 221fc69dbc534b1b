"""`tune_malloc()`: freed tensor memory stays in the process, so repeated batches take no new pages."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc settings"
)

# A forward pass's worth of activations (1-8 MiB, alive together) allocated and freed 15 times; print
# whether the settings applied and the minor page faults of the last 10 rounds.
PROBE = """
import resource, torch
from model.malloc import tune_malloc
applied = tune_malloc()
def rounds(n):
    for _ in range(n):
        activations = [torch.ones(s * 2**18) for s in (1, 3, 2, 5, 8, 4, 6, 7)]
        del activations
rounds(5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(10)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "FLOWS_TUNE_MALLOC"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    applied, faults = done.stdout.split()
    return applied == "True", int(faults)


def test_tuned_malloc_reuses_freed_tensor_memory_where_glibc_defaults_fault_it_back_in():
    applied, faults = probe()
    default_applied, default_faults = probe(FLOWS_TUNE_MALLOC="0")
    assert applied and not default_applied
    assert default_faults > 10 * 1000  # ~9k fresh pages a round with the defaults
    assert faults < 100


def test_the_users_own_glibc_settings_win():
    applied, _ = probe(MALLOC_TRIM_THRESHOLD_="131072")
    assert not applied
