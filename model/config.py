"""Typed architecture configuration, stored verbatim in every checkpoint's `config.json`."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .architectures import ARCHITECTURES, get_architecture

__all__ = ["Architecture", "FlowConfig"]


def _registered(name: str) -> str:
    get_architecture(name)  # raises ValueError naming the registered architectures
    return name


# The name of a registered architecture (model/architectures), as checkpoints store it.
Architecture = Annotated[str, AfterValidator(_registered)]


class FlowConfig(BaseModel):
    """A multi-scale flow: `levels` × (squeeze → `steps` flow steps → split), the last without split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Architecture
    image_shape: tuple[int, int, int] = Field(description="(channels, height, width) of input images")
    levels: int = Field(2, ge=1, le=6)
    steps: int = Field(8, ge=1, le=64, description="flow steps per level")
    hidden: int = Field(128, ge=4, le=2048, description="coupling network width")
    kernel_size: int = Field(3, ge=2, le=11, description="k of the FInC / inverse convolutions")
    learn_diagonal: bool = True
    logit_alpha: float = Field(0.05, ge=0.0, lt=0.5)

    @model_validator(mode="after")
    def _fits_the_image(self) -> FlowConfig:
        c, h, w = self.image_shape
        if min(c, h, w) < 1:
            raise ValueError(f"image_shape must be positive, got {self.image_shape}")
        factor = 2**self.levels
        if h % factor or w % factor:
            raise ValueError(
                f"{self.levels} levels halve the image {self.levels} times: "
                f"{h}×{w} is not divisible by {factor}"
            )
        return self

    @staticmethod
    def architectures() -> list[str]:
        """The names `arch` accepts: the registered architectures (model/architectures)."""
        return list(ARCHITECTURES)

    @property
    def num_dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w
