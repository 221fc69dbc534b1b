"""The GPU image's pins agree on one CUDA major: base image, torch, onnxruntime-gpu, the CUDA wheels, and
the kernel architectures nvcc of that major can build; the Python is the one the base distribution ships."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile.gpu"
CONSTRAINTS = ROOT / "docker" / "gpu-constraints.txt"
# The python3 of each Ubuntu release's main archive (a `pythonX.Y` other than this is a backport).
UBUNTU_PYTHON = {"22.04": (3, 10), "24.04": (3, 12), "26.04": (3, 14)}
# The oldest GPU architecture each CUDA major's nvcc still compiles for.
OLDEST_ARCH = {12: 50, 13: 75}


def _args(text: str) -> dict[str, str]:
    return {m[1]: m[2].strip('"') for m in re.finditer(r"^ARG (\w+)=(\S+)", text, re.M)}


def _pins(text: str) -> dict[str, tuple[str, int]]:
    """name -> (version, declared CUDA major) from `name==version  # cuda=N ...` lines."""
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)\s+#\s*cuda=(\d+)\b", line)
        if m:
            pins[m[1]] = (m[2], int(m[3]))
        elif line.strip() and not line.startswith("#"):
            raise AssertionError(f"{CONSTRAINTS.name}: pin without `name==version  # cuda=N`: {line!r}")
    return pins


def cuda_majors(dockerfile: str, constraints: str) -> dict[str, int]:
    """Every CUDA major the GPU image's pins imply, by where it comes from."""
    args = _args(dockerfile)
    majors = {"base image CUDA_VERSION": int(args["CUDA_VERSION"].split(".")[0])}
    for image in re.findall(r"^FROM (nvidia/cuda:\S+)", dockerfile, re.M):
        tag = image.split(":", 1)[1].replace("${CUDA_VERSION}", args["CUDA_VERSION"])
        majors[f"FROM {image}"] = int(tag.split(".")[0])
    for name, (version, declared) in _pins(constraints).items():
        majors[f"{name}=={version} (declared)"] = declared
        suffix = re.search(r"-cu(\d+)$", name)
        if suffix:
            majors[f"{name} (wheel name)"] = int(suffix[1])
        if name in ("cuda-toolkit", "nvidia-cuda-runtime"):
            majors[f"{name}=={version} (version)"] = int(version.split(".")[0])
    return majors


def test_the_gpu_image_uses_one_cuda_major():
    majors = cuda_majors(DOCKERFILE.read_text(), CONSTRAINTS.read_text())
    assert len(majors) >= 6, majors
    assert len(set(majors.values())) == 1, f"CUDA majors disagree: {majors}"


def test_a_mismatched_pin_is_caught():
    """The check can fail: an onnxruntime-gpu built for CUDA 12 next to a CUDA 13 base image."""
    text = re.sub(r"^onnxruntime-gpu==\S+\s+# cuda=\d+", "onnxruntime-gpu==1.20.0  # cuda=12",
                  CONSTRAINTS.read_text(), flags=re.M)  # fmt: skip
    assert "cuda=12" in text
    assert len(set(cuda_majors(DOCKERFILE.read_text(), text).values())) == 2


def test_torch_and_onnxruntime_are_pinned_and_installed_through_the_constraints():
    pins = _pins(CONSTRAINTS.read_text())
    assert {"torch", "onnxruntime-gpu"} <= set(pins)
    dockerfile = DOCKERFILE.read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line and "--no-deps" not in line]
    assert installs
    for line in installs:
        assert "-c /tmp/gpu-constraints.txt" in line, line
    assert "--index-url" not in dockerfile  # PyPI's Linux torch wheel is the pinned CUDA build


def test_kernel_architectures_are_built_by_that_nvcc():
    args = _args(DOCKERFILE.read_text())
    major = int(args["CUDA_VERSION"].split(".")[0])
    archs = [int(a) for a in args["CUDA_ARCHS"].split(";")]
    assert all(a >= OLDEST_ARCH[major] for a in archs), (major, archs)


def test_python_is_the_distributions_own_and_fits_the_project():
    dockerfile = DOCKERFILE.read_text()
    ubuntu = _args(dockerfile)["UBUNTU_VERSION"]
    assert ubuntu in UBUNTU_PYTHON, ubuntu
    installed = set(re.findall(r"\bpython3(?:\.\d+)?\b(?=[\s\\])", dockerfile))
    distro = f"python3.{UBUNTU_PYTHON[ubuntu][1]}"
    assert installed <= {"python3", distro}, installed  # no backported pythonX.Y
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(p) for p in required.removeprefix(">=").split("."))
    assert UBUNTU_PYTHON[ubuntu] >= minimum
