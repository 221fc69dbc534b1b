"""Invertible flow layers, all following the contract of `model.layers.base.FlowLayer`."""

from .actnorm import ActNorm
from .base import FlowLayer, FlowSequence, zero_logdet
from .coupling import AffineCoupling, SubnetFactory, conv_subnet, subnets_channels_last, subnets_in
from .finc import FInCConv2d, FInCUnit
from .invconv1x1 import InvConv1x1
from .inverse_conv import InverseConv2d, InverseConvUnit
from .preprocess import Dequantization, LogitTransform, dequantize, hashed_noise, hashed_noise_samples
from .split import Split
from .squeeze import Squeeze
from .triangular import ORIENTATIONS, TriangularKernel

__all__ = [
    "ORIENTATIONS",
    "ActNorm",
    "AffineCoupling",
    "Dequantization",
    "FInCConv2d",
    "FInCUnit",
    "FlowLayer",
    "FlowSequence",
    "InvConv1x1",
    "InverseConv2d",
    "InverseConvUnit",
    "LogitTransform",
    "Split",
    "Squeeze",
    "SubnetFactory",
    "TriangularKernel",
    "conv_subnet",
    "dequantize",
    "hashed_noise",
    "hashed_noise_samples",
    "subnets_channels_last",
    "subnets_in",
    "zero_logdet",
]
