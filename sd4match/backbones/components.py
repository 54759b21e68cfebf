"""The parts of a Stable Diffusion model the features need (a plain record, shared by the
loaders of real, tiny and random-weight stacks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SDComponents:
    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    model_id: str
