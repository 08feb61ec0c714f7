"""Diffuser's temporal U-Net (Janner et al. 2022): 1-D convolutions over the horizon of a segment."""

import math

import torch
from torch import nn

from relreward_cli.errors import UserError
from relreward_cli.models.embeddings import SinusoidalTimeEmbedding


def group_count(channels: int, max_groups: int = 8) -> int:
    """GroupNorm groups for `channels`: `gcd(channels, max_groups)` (Diffuser's 8 for the usual widths)."""
    return math.gcd(channels, max_groups)


class Mish(nn.Module):
    """Mish, `x * tanh(softplus(x))`, composed from primitives rather than torch's fused `nn.Mish`.

    The extraction loss differentiates `grad_x r` again; the fused op's double backward evaluates `exp(x)`
    and returns NaN once pre-activations grow large (seen at |x| ~ 100), while softplus and tanh stay finite.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(nn.functional.softplus(x))


class Conv1dBlock(nn.Sequential):
    """Conv1d (length-preserving) -> GroupNorm -> Mish on `(B, channels, horizon)`."""

    def __init__(self, dim_in: int, dim_out: int, kernel_size: int):
        super().__init__(
            nn.Conv1d(dim_in, dim_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(group_count(dim_out), dim_out),
            Mish(),
        )


class ResidualTemporalBlock(nn.Module):
    """Two conv blocks with the time embedding added between them, plus a residual connection.

    `forward(x (B, dim_in, L), time_embedding (B, time_dim)) -> (B, dim_out, L)`.
    """

    def __init__(self, dim_in: int, dim_out: int, time_dim: int, kernel_size: int = 5):
        super().__init__()
        self.block1 = Conv1dBlock(dim_in, dim_out, kernel_size)
        self.block2 = Conv1dBlock(dim_out, dim_out, kernel_size)
        self.time_projection = nn.Sequential(Mish(), nn.Linear(time_dim, dim_out))
        self.residual = nn.Conv1d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.time_projection(time_embedding)[:, :, None]
        return self.block2(h) + self.residual(x)


def time_mlp(dim: int) -> nn.Sequential:
    """Sinusoidal embedding then a 2-layer MLP: `t (B,) -> (B, dim)`."""
    return nn.Sequential(SinusoidalTimeEmbedding(dim), nn.Linear(dim, dim * 4), Mish(),
                         nn.Linear(dim * 4, dim))


def downsample(channels: int) -> nn.Conv1d:
    """Strided conv halving the horizon: `(B, C, L) -> (B, C, L / 2)`."""
    return nn.Conv1d(channels, channels, 3, stride=2, padding=1)


def upsample(channels: int) -> nn.ConvTranspose1d:
    """Transposed conv doubling the horizon: `(B, C, L) -> (B, C, 2 L)`."""
    return nn.ConvTranspose1d(channels, channels, 4, stride=2, padding=1)


def check_architecture(horizon: int, dim_mults: tuple[int, ...], kernel_size: int = 5) -> None:
    """Raise `UserError` unless the horizon survives `len(dim_mults) - 1` halvings and the kernel is odd."""
    if not dim_mults:
        raise UserError("`dim_mults` is empty; give at least one channel multiplier, e.g. (1, 2, 4).")
    factor = 2 ** (len(dim_mults) - 1)
    if horizon < 1 or horizon % factor:
        raise UserError(f"The horizon {horizon} is not a positive multiple of {factor}: a network with "
                        f"{len(dim_mults)} levels (dim_mults={tuple(dim_mults)}) halves the horizon "
                        f"{len(dim_mults) - 1} times. Choose a horizon divisible by {factor} or fewer "
                        "levels.")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise UserError(f"`kernel_size` must be a positive odd number so that convolutions keep the horizon, "
                        f"got {kernel_size}.")


def check_segment(x: torch.Tensor, horizon: int, transition_dim: int) -> None:
    """Raise `UserError` unless `x` is a batch of segments shaped `(B, horizon, transition_dim)`."""
    if x.ndim != 3 or x.shape[1:] != (horizon, transition_dim):
        raise UserError(f"Expected segments shaped (batch, {horizon}, {transition_dim}), got "
                        f"{tuple(x.shape)}; the data's horizon and transition size must match the "
                        "network's configuration.")


class DownPath(nn.Module):
    """Encoder half of the U-Net: per level two residual temporal blocks, horizon halved between levels.

    Level `i` has `channels[i]` channels. `forward(h (B, in_channels, H), time_embedding (B, time_dim))`
    returns the deepest features `(B, channels[-1], H / 2**(levels - 1))` and each level's output (the skips).
    """

    def __init__(self, in_channels: int, channels: list[int], time_dim: int, kernel_size: int):
        super().__init__()
        self.levels = nn.ModuleList()
        for level, (dim_in, dim_out) in enumerate(zip([in_channels, *channels[:-1]], channels, strict=True)):
            self.levels.append(nn.ModuleList([
                ResidualTemporalBlock(dim_in, dim_out, time_dim, kernel_size),
                ResidualTemporalBlock(dim_out, dim_out, time_dim, kernel_size),
                downsample(dim_out) if level < len(channels) - 1 else nn.Identity(),
            ]))

    def forward(self, h: torch.Tensor, time_embedding: torch.Tensor
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for block1, block2, down in self.levels:
            h = block2(block1(h, time_embedding), time_embedding)
            skips.append(h)
            h = down(h)
        return h, skips


class TemporalEncoder(nn.Module):
    """What the U-Net and the reward network share: shape checks, the time-embedding MLP and the down path
    (`channels[i] = dim * dim_mults[i]` at level i)."""

    def __init__(self, horizon: int, transition_dim: int, dim: int, dim_mults: tuple[int, ...], kernel_size: int):
        super().__init__()
        check_architecture(horizon, dim_mults, kernel_size)
        self.horizon, self.transition_dim = horizon, transition_dim
        self.channels = [dim * m for m in dim_mults]
        self.time_mlp = time_mlp(dim)
        self.down = DownPath(transition_dim, self.channels, dim, kernel_size)


class TemporalUnet(TemporalEncoder):
    """Noise predictor `eps(x_t, t)` for trajectory segments.

    Channels per level are `dim * dim_mults[i]`; each level has two residual temporal blocks, the horizon is
    halved between levels on the way down and doubled on the way up, and every down level's output is
    concatenated into the matching up level (skip connection). `forward(x (B, H, D), t (B,)) -> (B, H, D)`.
    """

    def __init__(self, horizon: int, transition_dim: int, dim: int = 32,
                 dim_mults: tuple[int, ...] = (1, 2, 4), kernel_size: int = 5):
        super().__init__(horizon, transition_dim, dim, dim_mults, kernel_size)
        channels = self.channels
        self.mid = nn.ModuleList([ResidualTemporalBlock(channels[-1], channels[-1], dim, kernel_size)
                                  for _ in range(2)])
        self.ups = nn.ModuleList()
        for level in reversed(range(len(channels))):
            dim_out = channels[max(level - 1, 0)]
            self.ups.append(nn.ModuleList([
                ResidualTemporalBlock(2 * channels[level], dim_out, dim, kernel_size),
                ResidualTemporalBlock(dim_out, dim_out, dim, kernel_size),
                upsample(dim_out) if level > 0 else nn.Identity(),
            ]))
        self.final = nn.Sequential(Conv1dBlock(channels[0], channels[0], kernel_size),
                                   nn.Conv1d(channels[0], transition_dim, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_segment(x, self.horizon, self.transition_dim)
        emb = self.time_mlp(t)
        h, skips = self.down(x.transpose(1, 2), emb)
        for block in self.mid:
            h = block(h, emb)
        for block1, block2, up in self.ups:
            h = up(block2(block1(torch.cat([h, skips.pop()], dim=1), emb), emb))
        return self.final(h).transpose(1, 2)
