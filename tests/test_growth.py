"""Growing a flow deeper and wider keeps the function it computes, and the new parts can learn."""

from __future__ import annotations

import pytest
import torch

from model import FlowConfig, build_flow, load_flow, save_flow
from model.architectures import ARCHITECTURES
from model.growth import grow_flow
from model.growth import main as growth_main

ARCHS = list(ARCHITECTURES)


def _trained_like(arch: str) -> torch.nn.Module:
    """A small flow with ActNorm initialised and every weight random (no zero-initialised layer left)."""
    torch.manual_seed(0)
    config = FlowConfig(arch=arch, image_shape=(1, 8, 8), levels=2, steps=(1, 2), hidden=8, kernel_size=3)
    flow = build_flow(config).double()
    flow.train()
    flow.log_prob_continuous(torch.rand(16, 1, 8, 8, dtype=torch.float64) * 256)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if "net." in name or "prior" in name:
                p.add_(torch.randn_like(p) * 0.05)
    return flow.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_growth_preserves_log_prob_and_samples(arch):
    flow = _trained_like(arch)
    bigger = FlowConfig.model_validate({**flow.config.model_dump(), "steps": (3, 4), "hidden": (8, 12)})
    grown = grow_flow(flow.float(), bigger).double()
    flow = flow.double()
    assert grown.num_parameters() > flow.num_parameters()
    x = torch.randint(0, 256, (6, 1, 8, 8)).double()
    with torch.no_grad():
        torch.testing.assert_close(grown.log_prob(x), flow.log_prob(x), rtol=0, atol=1e-6)
        latents = flow.sample_latents(4, 0.8, torch.Generator().manual_seed(1))
        # Pixels in [0, 256): float32 weights (growth runs in float32) round at ~1e-7 relative.
        torch.testing.assert_close(grown.decode(latents), flow.decode(latents), rtol=0, atol=1e-5)


def test_the_new_parts_of_a_grown_flow_receive_gradients():
    flow = _trained_like("finc").float()
    bigger = FlowConfig.model_validate({**flow.config.model_dump(), "steps": (2, 2), "hidden": (16, 8)})
    grown = grow_flow(flow, bigger).train()
    loss = -grown.log_prob_continuous(torch.rand(8, 1, 8, 8) * 256).mean()
    loss.backward()
    new_step = grown.levels[0].steps[1]
    # Every parameter of the new step learns at once, except its coupling's hidden layers, which (as in
    # any fresh coupling) get gradients once the zero-initialised last convolution has moved.
    hidden = {"layers.3.net.0.weight", "layers.3.net.0.bias", "layers.3.net.2.weight", "layers.3.net.2.bias"}
    grads = {n: p.grad for n, p in new_step.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n not in hidden)
    widened = grown.levels[0].steps[0].layers[-1].net  # 8 -> 16 hidden units
    assert widened[-1].weight.grad[:, 8:].abs().sum() > 0  # outgoing weights of the new units learn


def test_growth_refuses_to_shrink_or_change_the_architecture(tmp_path):
    flow = _trained_like("glow").float()
    smaller = FlowConfig.model_validate({**flow.config.model_dump(), "steps": (1, 1)})
    with pytest.raises(ValueError, match="cannot shrink steps"):
        grow_flow(flow, smaller)
    other = FlowConfig.model_validate({**flow.config.model_dump(), "kernel_size": 2})
    with pytest.raises(ValueError, match="kernel_size"):
        grow_flow(flow, other)


def test_growth_cli_writes_a_checkpoint_that_continues_the_history(tmp_path):
    source = save_flow(_trained_like("finc").float(), tmp_path / "small", {"epochs": 3, "steps": 30})
    out = tmp_path / "grown"
    assert growth_main([str(source), "--out", str(out), "--steps", "2,3", "--hidden", "8,16"]) == 0
    grown = load_flow(out)
    assert grown.config.steps == (2, 3) and grown.config.hidden == (8, 16)
    training = __import__("json").loads((out / "config.json").read_text())["training"]
    assert training["epochs"] == 3 and training["grown_from"]["checkpoint"] == "small"
    assert growth_main([str(source), "--out", str(tmp_path / "x"), "--steps", "1", "--hidden", "8"]) == 2
