"""Scoring and encoding as model-level functions over a density backend (model/scoring.py, sampling.py)."""

from __future__ import annotations

import numpy as np
import torch

from model.sampling import draw_latents, onnx_decoder, torch_decoder
from model.scoring import bits_per_dim, encode, log_prob, onnx_log_density, torch_log_density

from .test_flow import tiny_flow


class TorchAsSession:
    """Stands in for an onnxruntime session of the exported passes: the same feeds, computed by torch."""

    def __init__(self, flow, graph: str):
        self.flow, self.graph = flow, graph

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self.graph == "score":
            return self.flow.log_prob_continuous(torch.from_numpy(feed["images"]).double()).numpy()
        t = float(feed["temperature"][0])
        latents = [torch.from_numpy(feed[f"z{i}"]).double() * t for i in range(len(feed) - 1)]
        return self.flow.decode(latents).numpy()


def test_log_prob_is_the_flow_s_bound_for_one_k_or_one_k_per_image():
    flow, images = tiny_flow("finc")
    density = torch_log_density(flow)
    with torch.no_grad():
        for k in (1, 3):
            torch.testing.assert_close(log_prob(density, images, k), flow.log_prob(images, samples=k))
        per_image = log_prob(density, images, torch.tensor([1, 3, 1, 3]))
        for i, k in enumerate([1, 3, 1, 3]):
            torch.testing.assert_close(per_image[i : i + 1], flow.log_prob(images[i : i + 1], samples=k))
        scores = log_prob(density, images)
        torch.testing.assert_close(bits_per_dim(scores, flow.num_dims), flow.bits_per_dim(images))
        session = onnx_log_density(TorchAsSession(flow, "score"))
        torch.testing.assert_close(log_prob(session, images, 2), log_prob(density, images, 2))


def test_encode_gives_latents_and_log_dets_at_the_bin_centre_or_the_scored_point():
    flow, images = tiny_flow("inverse_flow")
    with torch.no_grad():
        hashed = torch.tensor([True, False, True, False])
        encoded = encode(flow, images, hashed)
        assert [tuple(z.shape[1:]) for z in encoded.latents] == flow.latent_shapes()
        assert all(z.dtype == torch.float32 for z in encoded.latents)
        assert encoded.log_det.dtype == encoded.log_prob.dtype == torch.float64
        scored = flow.log_prob(images)
        torch.testing.assert_close(encoded.log_prob[hashed], scored[hashed])
        midpoint = flow.log_prob(images, dequantization="midpoint")
        torch.testing.assert_close(encoded.log_prob[~hashed], midpoint[~hashed])
        decoded = torch_decoder(flow)([z.double() for z in encode(flow, images).latents])
        assert torch.equal(decoded, images.to(torch.uint8))


def test_seeded_latents_and_both_decoders_agree():
    flow, _ = tiny_flow("glow")
    latents = draw_latents(flow, 3, 0.7, seed=5)
    gen = torch.Generator().manual_seed(5)
    for z, shape in zip(latents, flow.latent_shapes(), strict=True):
        assert torch.equal(z, torch.randn((3, *shape), generator=gen, dtype=torch.float64) * 0.7)
    with torch.no_grad():
        as_torch = torch_decoder(flow)(latents)
        as_graph = onnx_decoder(TorchAsSession(flow, "sample"))([z.float() for z in latents])
    assert as_torch.dtype == torch.uint8 and (as_torch.int() - as_graph.int()).abs().max() <= 1
