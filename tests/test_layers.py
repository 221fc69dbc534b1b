"""One contract test over a registry of layers: every layer gets every check by being registered."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from model.layers import (
    ActNorm,
    AffineCoupling,
    FInCConv2d,
    FInCUnit,
    FlowLayer,
    InvConv1x1,
    InverseConv2d,
    InverseConvUnit,
    LogitTransform,
    Split,
    Squeeze,
    subnets_in,
)

from .helpers import dense_jacobian, randomise_parameters


@dataclass(frozen=True)
class Spec:
    """How to build a layer and which inputs it accepts."""

    make: Callable[[int, int], FlowLayer]  # (channels, kernel_size) -> layer
    channels: tuple[int, ...]
    kernel_sizes: tuple[int, ...] = (0,)  # 0: the layer has no kernel size
    shapes: tuple[tuple[int, int], ...] = ((3, 5), (8, 6), (1, 7))
    positive_input: bool = False


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


KS = (2, 3, 4, 5)
REGISTRY: dict[str, Spec] = {
    "actnorm": Spec(lambda c, k: ActNorm(c), (1, 2, 3, 4)),
    "invconv1x1": Spec(lambda c, k: InvConv1x1(c, generator=_gen()), (1, 2, 3, 4)),
    "coupling": Spec(lambda c, k: AffineCoupling(c, hidden=8), (2, 3, 4)),
    "split": Spec(lambda c, k: Split(c), (2, 3, 4)),
    "squeeze": Spec(lambda c, k: Squeeze(), (1, 3), shapes=((4, 6), (2, 8))),
    "logit": Spec(lambda c, k: LogitTransform(), (1, 3), positive_input=True),
    **{
        f"finc_{o}": Spec(lambda c, k, o=o: FInCConv2d(c, k, o, generator=_gen()), (1, 2, 3, 4), KS)
        for o in ("tl", "tr", "bl", "br")
    },
    "finc_fixed_diagonal": Spec(
        lambda c, k: FInCConv2d(c, k, learn_diagonal=False, generator=_gen()), (3,), KS
    ),
    "finc_unit": Spec(lambda c, k: FInCUnit(c, k, generator=_gen()), (4, 8), KS),
    **{
        f"inverse_conv_{o}": Spec(
            lambda c, k, o=o: InverseConv2d(c, k, o, generator=_gen()), (1, 2, 3, 4), KS
        )
        for o in ("tl", "tr", "bl", "br")
    },
    "inverse_conv_unit": Spec(lambda c, k: InverseConvUnit(c, k, generator=_gen()), (4, 8), KS),
}

CASES = [
    pytest.param(name, c, k, h, w, id=f"{name}-C{c}-k{k}-{h}x{w}")
    for name, spec in REGISTRY.items()
    for c in spec.channels
    for k in spec.kernel_sizes
    for h, w in spec.shapes
]
# One shape per (layer, C, k) for the checks that do not depend on the shape.
LAYER_CASES = [
    pytest.param(name, c, k, *spec.shapes[0], id=f"{name}-C{c}-k{k}")
    for name, spec in REGISTRY.items()
    for c in spec.channels
    for k in spec.kernel_sizes
]


def build(name: str, channels: int, k: int, h: int, w: int, dtype=torch.float64):
    """A layer with generic (randomised, ActNorm-initialised) parameters in eval mode, and a batch."""
    spec = REGISTRY[name]
    layer = spec.make(channels, k).to(dtype)
    x = torch.randn(3, channels, h, w, generator=torch.Generator().manual_seed(1), dtype=dtype)
    if spec.positive_input:
        x = torch.rand(3, channels, h, w, generator=torch.Generator().manual_seed(1), dtype=dtype) * 255.9
    layer.train()
    layer(x)  # data-dependent initialisation (ActNorm); a no-op elsewhere
    randomise_parameters(layer, std=0.05)
    layer.eval()
    return layer, x


@pytest.mark.parametrize("name,channels,k,h,w", CASES)
def test_logdet_equals_slogdet_of_the_dense_jacobian(name, channels, k, h, w):
    layer, x = build(name, channels, k, h, w)
    _, logdet = layer(x)
    assert logdet.shape == (x.shape[0],) and logdet.dtype == x.dtype
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        jac = dense_jacobian(lambda v: layer(v)[0], xi)
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(logdet[i].item() - expected.item()) < 1e-8


@pytest.mark.parametrize("name,channels,k,h,w", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_inverse_undoes_forward(name, channels, k, h, w, dtype):
    layer, x = build(name, channels, k, h, w, dtype)
    with torch.no_grad():
        y, _ = layer(x)
        tol = 1e-10 if dtype == torch.float64 else 1e-4
        scale = max(1.0, x.abs().max().item())
        assert (layer.inverse(y) - x).abs().max().item() < tol * scale


@pytest.mark.parametrize("name,channels,k,h,w", LAYER_CASES)
def test_inverse_is_the_dense_inverse(name, channels, k, h, w):
    """The inverse's Jacobian is the inverse of the forward Jacobian (checks the inverse pass itself)."""
    layer, x = build(name, channels, k, h, w)
    xi = x[:1]
    y = layer(xi)[0].detach()
    jf = dense_jacobian(lambda v: layer(v)[0], xi)
    ji = dense_jacobian(layer.inverse, y)
    torch.testing.assert_close(ji @ jf, torch.eye(jf.shape[0], dtype=jf.dtype), atol=1e-9, rtol=0)


@pytest.mark.parametrize("name,channels,k,h,w", LAYER_CASES)
def test_every_parameter_receives_a_gradient(name, channels, k, h, w):
    layer, x = build(name, channels, k, h, w)
    params = dict(layer.named_parameters())
    if not params:
        pytest.skip("layer has no parameters")
    y, logdet = layer(x)
    (y.square().sum() - logdet.sum()).backward()
    for pname, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    # Entries a mask removes get zero gradients (e.g. InvConv1x1's L and U at C=1); the rest must not.
    assert sum(p.grad.abs().sum() for p in params.values()) > 0


@pytest.mark.parametrize("name,channels,k,h,w", LAYER_CASES)
def test_state_dict_round_trip_gives_identical_outputs(name, channels, k, h, w):
    layer, x = build(name, channels, k, h, w)
    clone, _ = build(name, channels, k, h, w)
    randomise_parameters(clone, std=0.3, seed=5)
    clone.load_state_dict(layer.state_dict())
    clone.eval()
    assert torch.equal(layer(x)[0], clone(x)[0])
    y = layer(x)[0]
    assert torch.equal(layer.inverse(y), clone.inverse(y))


def test_actnorm_initialises_from_the_first_batch_then_train_equals_eval():
    layer = ActNorm(3).double()
    x = torch.randn(64, 3, 5, 5, dtype=torch.float64) * 4 + 2
    y, _ = layer(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(
        y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), rtol=1e-5, atol=0
    )
    train_out = layer(x)[0]
    layer.eval()
    assert torch.equal(train_out, layer(x)[0])


def test_coupling_and_split_start_as_identity_maps():
    x = torch.randn(2, 4, 6, 6)
    coupling, split = AffineCoupling(4, hidden=8), Split(4)
    y, _ = coupling(x)
    torch.testing.assert_close(y[:, 2:], x[:, 2:] * torch.sigmoid(torch.tensor(2.0)))
    assert torch.equal(split(x)[0], x)


@pytest.mark.parametrize("cls", [FInCConv2d, InverseConv2d])
def test_weight_property_returns_the_masked_kernel(cls):
    layer = cls(3, 3)
    w = layer.weight
    centre = w[:, :, 2, 2]
    assert torch.equal(centre, torch.tril(centre))
    torch.testing.assert_close(torch.diagonal(centre), torch.exp(layer.kernel.log_diag))
    assert torch.equal(w[:, :, :2], layer.kernel.raw[:, :, :2])


def test_fixed_diagonal_layer_is_volume_preserving():
    layer = FInCConv2d(4, 3, learn_diagonal=False)
    _, logdet = layer(torch.randn(2, 4, 5, 5))
    assert torch.equal(logdet, torch.zeros(2))
    assert "log_diag" not in dict(layer.named_parameters())


def test_logit_transform_maps_pixel_range_to_the_real_line_and_back():
    layer = LogitTransform(alpha=0.05)
    x = torch.tensor([[[[0.0, 128.0, 255.999]]]], dtype=torch.float64)
    y, _ = layer(x)
    assert y[0, 0, 0, 0] < -2.9 and abs(y[0, 0, 0, 1]) < 1e-12 and y[0, 0, 0, 2] > 2.9
    torch.testing.assert_close(layer.inverse(y), x)


def test_unknown_orientation_and_bad_channel_counts_are_rejected():
    with pytest.raises(ValueError, match="orientation"):
        FInCConv2d(2, 3, orientation="up")
    with pytest.raises(ValueError, match="divisible by 4"):
        FInCUnit(6, 3)
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.zeros(1, 1, 3, 4))


def test_bfloat16_subnets_keep_the_coupling_exactly_invertible_with_its_exact_logdet():
    """Training's `--subnet-precision bfloat16`: the network runs in bfloat16 (its output changes), the
    transform stays float32, so the inverse (in the same precision) and the log-determinant stay exact."""
    layer, x = build("coupling", 4, 0, 5, 6, dtype=torch.float32)
    with torch.no_grad():
        y32, logdet32 = layer(x)
        with subnets_in(torch.bfloat16):
            y, logdet = layer(x)
            x_back = layer.inverse(y)
        assert y.dtype == logdet.dtype == torch.float32
        assert 1e-6 < (y - y32).abs().max().item() < 0.05 * y32.abs().max().item()
        assert (x_back - x).abs().max().item() < 1e-5 * max(1.0, x.abs().max().item())
        assert torch.equal(layer(x)[0], y32)  # the context ended: float32 again
    with subnets_in(torch.bfloat16):
        for i in range(x.shape[0]):
            jac = dense_jacobian(lambda v: layer(v)[0], x[i : i + 1]).double()
            assert abs(logdet[i].item() - torch.linalg.slogdet(jac)[1].item()) < 1e-4 * abs(
                logdet32[i].item()
            )
    layer64, x64 = build("coupling", 4, 0, 5, 6)
    with torch.no_grad():
        y64 = layer64(x64)[0]
        with subnets_in(torch.bfloat16):  # float64 is never autocast
            assert torch.equal(layer64(x64)[0], y64)
