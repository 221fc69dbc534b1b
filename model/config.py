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
Steps = Annotated[int, Field(ge=1, le=64)]
Hidden = Annotated[int, Field(ge=4, le=2048)]


class FlowConfig(BaseModel):
    """A multi-scale flow: `levels` × (squeeze → `steps` flow steps → split), the last without split.

    `steps` and `hidden` are one value for every level, or one per level (finest first), so that a model
    can grow where it is cheap: the coarser levels have a quarter of the pixels of the one before."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Architecture
    image_shape: tuple[int, int, int] = Field(description="(channels, height, width) of input images")
    levels: int = Field(2, ge=1, le=6)
    steps: Steps | tuple[Steps, ...] = Field(8, description="flow steps per level (or one per level)")
    hidden: Hidden | tuple[Hidden, ...] = Field(128, description="coupling network width (or one per level)")
    kernel_size: int = Field(3, ge=2, le=11, description="k of the FInC / inverse convolutions")
    learn_diagonal: bool = True
    logit_alpha: float = Field(0.05, ge=0.0, lt=0.5)

    @model_validator(mode="after")
    def _fits_the_image(self) -> FlowConfig:
        c, h, w = self.image_shape
        if min(c, h, w) < 1:
            raise ValueError(f"image_shape must be positive, got {self.image_shape}")
        for name in ("steps", "hidden"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != self.levels:
                raise ValueError(f"{name} has {len(value)} values for {self.levels} levels")
        factor = 2**self.levels
        if h % factor or w % factor:
            raise ValueError(
                f"{self.levels} levels halve the image {self.levels} times: "
                f"{h}×{w} is not divisible by {factor}"
            )
        return self

    def at_level(self, level: int) -> FlowConfig:
        """This configuration with level `level`'s `steps` and `hidden` as plain numbers (what a step
        builder reads)."""
        pick = lambda v: v[level] if isinstance(v, tuple) else v  # noqa: E731
        return self.model_copy(update={"steps": pick(self.steps), "hidden": pick(self.hidden)})

    @staticmethod
    def architectures() -> list[str]:
        """The names `arch` accepts: the registered architectures (model/architectures)."""
        return list(ARCHITECTURES)

    @property
    def num_dims(self) -> int:
        c, h, w = self.image_shape
        return c * h * w
