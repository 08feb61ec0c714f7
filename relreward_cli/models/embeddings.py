"""Embeddings of the diffusion time step."""

import math

import torch
from torch import nn

from relreward_cli.errors import UserError


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of the diffusion time.

    `forward(t)` maps `t` of shape `(B,)` (integer or float steps) to `(B, dim)`: `dim / 2` sines then
    `dim / 2` cosines at frequencies spaced geometrically from 1 to 1/10000.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise UserError(f"The time embedding size must be an even number of at least 4, got {dim}; "
                            "choose a model `dim` such as 16, 32 or 64.")
        half = dim // 2
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.to(self.frequencies.dtype)[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)
