import os
from pathlib import Path

import pytest
import torch

# Start-up exports of ONNX graphs (service/onnx_backend.py) go to a cache inside the checkout, not ~/.cache.
os.environ.setdefault("FLOWS_ONNX_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "onnx"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
