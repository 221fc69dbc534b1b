"""Export a checkpoint's convolution-only passes to ONNX: `python -m model.export CHECKPOINT [--out DIR]`.

The passes of an architecture that need no triangular solve are its `onnx_passes` (model/architectures):
`score` (image → log-prob) and `sample` (latents, temperature → pixels) are convolutions only except in the
architecture's `solve_pass`, which needs the wavefront solve and stays on torch (docs/math.md).

Every graph is checked against torch on random and real inputs; the export fails if a tolerance is
missed. Files: `DIR/score.onnx`, `DIR/sample.onnx`, `DIR/manifest.json` (default DIR: CHECKPOINT/onnx).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .architectures import get_architecture
from .checkpoint import load_flow, read_config, weights_digest
from .flow import MultiScaleFlow
from .layers import dequantize

__all__ = [
    "OPSET",
    "SAMPLE_TOLERANCE_PIXELS",
    "SCORE_TOLERANCE_BPD",
    "SCORE_TOLERANCE_RELATIVE",
    "SamplePass",
    "ScorePass",
    "export_checkpoint",
    "weights_digest",
]

log = logging.getLogger("model.export")
OPSET = 18
# float32 graphs reorder sums: ~1e-6 relative error in log p. On real images that is ~1e-4 bits/dim;
# random noise images reach |log p| ~1e4–1e13 nats, where float32 is off by up to ~1e-4 relative in torch
# as in the graph (a FInC model: 7.0e-5 torch, 7.2e-5 ONNX, 1.4e-4 apart, against float64), so there
# the graph is held to torch's own float32 error against a float64 pass, at least this bound.
SCORE_TOLERANCE_BPD = 1e-3
SCORE_TOLERANCE_RELATIVE = 5e-5
SAMPLE_TOLERANCE_PIXELS = 0.05  # continuous pixel values in [0, 256); one 8-bit level is 1.0


class ScorePass(nn.Module):
    """Dequantised images `(B, C, H, W)` in [0, 256) → log-densities `(B,)`, nats.

    Dequantisation noise is an input (the service seeds it per image), so the graph is the bijection only."""

    def __init__(self, flow: MultiScaleFlow):
        super().__init__()
        self.flow = flow

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob_continuous(images)


class SamplePass(nn.Module):
    """Standard normal latents (one per level) and a temperature `(1,)` → continuous pixels in [0, 256)."""

    def __init__(self, flow: MultiScaleFlow):
        super().__init__()
        self.flow = flow

    def forward(self, temperature: torch.Tensor, *latents: torch.Tensor) -> torch.Tensor:
        return self.flow.decode([z * temperature for z in latents])


def _export(module: nn.Module, args: tuple, names: list[str], output: str, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    # Positional structure: (images,) for scoring, (temperature, (z0, z1, ...)) for sampling.
    dynamic = ({0: batch},) if len(args) == 1 else (None, tuple({0: batch} for _ in args[1:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=names,
            output_names=[output],
            dynamic_shapes=dynamic,
            verbose=False,
        )
        program.save(str(path))


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check_score(flow: MultiScaleFlow, path: Path, real: torch.Tensor | None) -> dict[str, float]:
    """The graph's log p against torch: on real images within `SCORE_TOLERANCE_BPD` of torch float32; on
    noise images, where float32 itself is off by up to ~1e-4, no further from a float64 pass than torch's
    own float32 pass is (×2), or `SCORE_TOLERANCE_RELATIVE`, whichever is larger."""
    sess = _session(path)
    exact = copy.deepcopy(flow).freeze(False).double()  # frozen caches stay float32 otherwise
    gen = torch.Generator().manual_seed(0)
    inputs = {"real": real.float()} if real is not None else {}
    inputs["random"] = torch.randint(0, 256, (7, *flow.config.image_shape), generator=gen).float()
    report = {}
    for kind, images in inputs.items():
        dequantized = dequantize(images, "hashed")
        got = sess.run(None, {"images": dequantized.numpy()})[0].astype(np.float64)
        with torch.inference_mode():
            want = flow.log_prob(images).double().numpy()
        diff_bpd = float(np.abs(got - want).max() / (flow.num_dims * math.log(2)))
        report[f"{kind}_max_abs_diff_bits_per_dim"] = diff_bpd
        report[f"{kind}_max_rel_diff_log_prob"] = float((np.abs(got - want) / np.abs(want)).max())
        if kind == "real" and diff_bpd > SCORE_TOLERANCE_BPD:
            raise RuntimeError(f"{path.name}: real images differ from torch by {diff_bpd:.2e} bits/dim")
        if kind == "random":
            with torch.inference_mode():
                want64 = exact.log_prob(images.double()).numpy()
            onnx_error = float((np.abs(got - want64) / np.abs(want64)).max())
            torch_error = float((np.abs(want - want64) / np.abs(want64)).max())
            report["random_max_rel_error_onnx_vs_float64"] = onnx_error
            report["random_max_rel_error_torch_float32_vs_float64"] = torch_error
            if onnx_error > max(SCORE_TOLERANCE_RELATIVE, 2 * torch_error):
                raise RuntimeError(
                    f"{path.name}: on noise images log p is {onnx_error:.1e} (relative) off a float64 pass, "
                    f"torch float32 only {torch_error:.1e}"
                )
    return report


def _check_sample(flow: MultiScaleFlow, path: Path, temperatures=(1.0, 0.7)) -> dict[str, float]:
    sess = _session(path)
    report = {}
    for t in temperatures:
        latents = flow.sample_latents(9, 1.0, torch.Generator().manual_seed(1))
        feed = {"temperature": np.array([t], dtype=np.float32)}
        feed.update({f"z{i}": z.numpy() for i, z in enumerate(latents)})
        got = sess.run(None, feed)[0]
        with torch.inference_mode():
            want = flow.decode([z * t for z in latents]).numpy()
        diff = float(np.abs(got - want).max())
        report[f"T{t}_max_abs_diff_pixels"] = diff
        if not diff <= SAMPLE_TOLERANCE_PIXELS:
            raise RuntimeError(f"{path.name}: temperature {t} samples differ by {diff:.3g} pixel levels")
    return report


def export_checkpoint(
    checkpoint: str | Path, out: str | Path | None = None, real: torch.Tensor | None = None
) -> dict:
    """Export and verify every convolution-only pass; returns (and writes) the manifest."""
    checkpoint = Path(checkpoint)
    out = Path(out) if out else checkpoint / "onnx"
    out.mkdir(parents=True, exist_ok=True)
    flow = load_flow(checkpoint).float().eval().freeze()
    arch = flow.config.arch
    manifest: dict[str, Any] = {
        "checkpoint": checkpoint.name,
        "architecture": arch,
        "opset": OPSET,
        "torch": torch.__version__,
        "image_shape": list(flow.config.image_shape),
        "latent_shapes": [list(s) for s in flow.latent_shapes()],
        "weights_sha256": weights_digest(checkpoint),
        "passes": {},
    }
    for name in get_architecture(arch).onnx_passes:
        path = out / f"{name}.onnx"
        started = time.perf_counter()
        log.info("exporting %s/%s ...", checkpoint.name, name)
        if name == "score":
            example = torch.randint(0, 256, (2, *flow.config.image_shape)).float()
            _export(ScorePass(flow), (example,), ["images"], "log_prob", path)
            check = _check_score(flow, path, real)
            io = {
                "inputs": {"images": "float32 (B, C, H, W): pixels in [0, 255] plus U[0, 1) noise"},
                "output": "log_prob (B,)",
            }
        else:
            latents = flow.sample_latents(2, 1.0, torch.Generator().manual_seed(0))
            names = ["temperature"] + [f"z{i}" for i in range(len(latents))]
            _export(SamplePass(flow), (torch.ones(1), *latents), names, "pixels", path)
            check = _check_sample(flow, path)
            io = {
                "inputs": {
                    "temperature": "float32 (1,)",
                    **{n: "float32 (B, ...) standard normal" for n in names[1:]},
                },
                "output": "pixels: float32 (B, C, H, W) in [0, 256); floor and clamp to get uint8",
            }
        manifest["passes"][name] = {"file": path.name, **io, "check": check}
        log.info("%s/%s: %.1fs, %s", checkpoint.name, name, time.perf_counter() - started, check)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="+")
    p.add_argument("--out", default=None, help="output folder (one checkpoint only; default CHECKPOINT/onnx)")
    p.add_argument("--real-images", type=int, default=64, help="real test images to check scoring on")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.out and len(args.checkpoint) > 1:
        p.error("--out needs a single checkpoint")
    for ckpt in args.checkpoint:
        dataset = read_config(ckpt)["training"].get("dataset")
        real = None
        if dataset and args.real_images:
            from .data import load_dataset

            try:
                real = load_dataset(dataset).test[: args.real_images]
            except (ValueError, OSError) as exc:  # a custom dataset recorded by name only, or absent here
                log.warning("%s: real-image check skipped, dataset %r not loadable: %s", ckpt, dataset, exc)
        manifest = export_checkpoint(ckpt, args.out, real)
        print(json.dumps({k: manifest[k] for k in ("checkpoint", "architecture", "passes")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
