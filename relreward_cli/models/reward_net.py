"""Time-conditioned scalar reward networks `r(x_t, t)`: the shape of Diffuser's value function, and the mean of a
per-step reward."""

import torch
from torch import nn

from relreward_cli.models.unet import (
    Mish,
    ResidualTemporalBlock,
    TemporalEncoder,
    check_segment,
    time_mlp,
)


class RewardNet(TemporalEncoder):
    """Scalar reward of a noised segment: the temporal U-Net's down path, then a flattening MLP.

    The down path (two residual temporal blocks per level, horizon halved between levels) is followed by a
    block that shrinks the channels 4x; its output is flattened, concatenated with the time embedding and
    mapped to a scalar by a 2-layer MLP. Smooth (Mish, GroupNorm) so that `grad_x r` is differentiable again,
    as the extraction loss needs. `forward(x (B, H, D), t (B,)) -> (B,)`.
    """

    def __init__(self, horizon: int, transition_dim: int, dim: int = 32,
                 dim_mults: tuple[int, ...] = (1, 2, 4), kernel_size: int = 5):
        super().__init__(horizon, transition_dim, dim, dim_mults, kernel_size)
        channels = self.channels
        mid_channels = max(channels[-1] // 4, 1)
        self.mid = ResidualTemporalBlock(channels[-1], mid_channels, dim, kernel_size)
        features = mid_channels * horizon // 2 ** (len(channels) - 1)
        self.head = nn.Sequential(nn.Linear(features + dim, features // 2 + 1), Mish(),
                                  nn.Linear(features // 2 + 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_segment(x, self.horizon, self.transition_dim)
        emb = self.time_mlp(t)
        h, _ = self.down(x.transpose(1, 2), emb)
        h = self.mid(h, emb).flatten(1)
        return self.head(torch.cat([h, emb], dim=-1)).squeeze(-1)


class StepRewardNet(nn.Module):
    """Reward of a noised segment as the mean of a per-step reward: `r(x, t) = mean_k f(x_k, t)`, `f` an MLP of
    one transition and the time embedding (the authors' Maze2D reward). Its input-gradient at step `k` depends on
    `x_k` alone, so it is a function of where the segment goes, not of the segment's shape. Hidden widths
    `4 * dim * dim_mults[i]`; smooth (Mish) for the extraction's double backward.
    `forward(x (B, H, D), t (B,)) -> (B,)`."""

    def __init__(self, horizon: int, transition_dim: int, dim: int = 16, dim_mults: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        self.horizon, self.transition_dim = horizon, transition_dim
        self.time_mlp = time_mlp(dim)
        widths = [transition_dim + dim, *(4 * dim * m for m in dim_mults)]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), Mish()]
        self.mlp = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_segment(x, self.horizon, self.transition_dim)
        emb = self.time_mlp(t)[:, None, :].expand(-1, x.shape[1], -1)
        return self.mlp(torch.cat([x, emb], dim=-1)).squeeze(-1).mean(dim=1)
