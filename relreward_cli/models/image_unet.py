"""2-D counterparts of the temporal U-Net and reward network for small grey images (8x8 digits).

An image `(B, H, W)` (rows x columns, pixel units of the data's normalizer) is laid out as a segment
`(B, horizon=H, transition_dim=W)`, so it plugs into `GaussianDiffusion` and reward extraction unchanged;
internally it is one channel, `(B, 1, H, W)`.
"""

import torch
from torch import nn

from relreward_cli.errors import UserError
from relreward_cli.models.unet import Mish, check_architecture, check_segment, group_count, time_mlp


def check_image_size(height: int, width: int, dim_mults: tuple[int, ...]) -> None:
    """Raise `UserError` unless both image sides survive `len(dim_mults) - 1` halvings."""
    factor = 2 ** max(len(dim_mults) - 1, 0)
    for name, size in (("height (horizon)", height), ("width (transition_dim)", width)):
        if size < 1 or size % factor:
            raise UserError(f"The image {name} {size} is not a positive multiple of {factor}: a network with "
                            f"{len(dim_mults)} levels (dim_mults={tuple(dim_mults)}) halves it "
                            f"{len(dim_mults) - 1} times. Choose images whose sides are divisible by {factor} "
                            "or fewer levels.")


class Conv2dBlock(nn.Sequential):
    """Conv2d (size-preserving) -> GroupNorm -> Mish on `(B, channels, H, W)`."""

    def __init__(self, dim_in: int, dim_out: int, kernel_size: int):
        super().__init__(
            nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(group_count(dim_out), dim_out),
            Mish(),
        )


class ResidualBlock2d(nn.Module):
    """Two 2-D conv blocks with the time embedding added between them, plus a residual connection.

    `forward(x (B, dim_in, H, W), time_embedding (B, time_dim)) -> (B, dim_out, H, W)`.
    """

    def __init__(self, dim_in: int, dim_out: int, time_dim: int, kernel_size: int = 3):
        super().__init__()
        self.block1 = Conv2dBlock(dim_in, dim_out, kernel_size)
        self.block2 = Conv2dBlock(dim_out, dim_out, kernel_size)
        self.time_projection = nn.Sequential(Mish(), nn.Linear(time_dim, dim_out))
        self.residual = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.time_projection(time_embedding)[:, :, None, None]
        return self.block2(h) + self.residual(x)


class ImageEncoder(nn.Module):
    """What `ImageUnet` and `ImageRewardNet` share: shape checks, the time MLP and the down path.

    Level `i` has `channels[i] = dim * dim_mults[i]` channels and two residual blocks; a strided conv halves H and
    W between levels. `encode(x (B, H, W), t (B,))` returns the deepest features
    `(B, channels[-1], H / 2**(levels-1), W / 2**(levels-1))`, each level's output (the skips) and the time
    embedding `(B, dim)`.
    """

    def __init__(self, horizon: int, transition_dim: int, dim: int, dim_mults: tuple[int, ...], kernel_size: int):
        super().__init__()
        check_image_size(horizon, transition_dim, dim_mults)
        check_architecture(horizon, dim_mults, kernel_size)
        self.horizon, self.transition_dim = horizon, transition_dim
        self.channels = channels = [dim * m for m in dim_mults]
        self.time_mlp = time_mlp(dim)
        self.downs = nn.ModuleList()
        for level, (dim_in, dim_out) in enumerate(zip([1, *channels[:-1]], channels, strict=True)):
            self.downs.append(nn.ModuleList([
                ResidualBlock2d(dim_in, dim_out, dim, kernel_size),
                ResidualBlock2d(dim_out, dim_out, dim, kernel_size),
                nn.Conv2d(dim_out, dim_out, 3, stride=2, padding=1) if level < len(channels) - 1 else nn.Identity(),
            ]))

    def encode(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        check_segment(x, self.horizon, self.transition_dim)
        emb = self.time_mlp(t)
        h, skips = x[:, None], []
        for block1, block2, down in self.downs:
            h = block2(block1(h, emb), emb)
            skips.append(h)
            h = down(h)
        return h, skips, emb


class ImageUnet(ImageEncoder):
    """Noise predictor `eps(x_t, t)` for single-channel images: a 2-D U-Net.

    Two residual blocks per level, H and W halved between levels on the way down (strided conv) and doubled on
    the way up (transposed conv), each down level's output concatenated into the matching up level, a final
    1x1 conv (zero-initialized: the untrained net predicts 0) to one channel.
    `forward(x (B, H, W), t (B,)) -> (B, H, W)`.
    """

    def __init__(self, horizon: int, transition_dim: int, dim: int = 16, dim_mults: tuple[int, ...] = (1, 2),
                 kernel_size: int = 3):
        super().__init__(horizon, transition_dim, dim, dim_mults, kernel_size)
        channels = self.channels
        self.mid = nn.ModuleList([ResidualBlock2d(channels[-1], channels[-1], dim, kernel_size) for _ in range(2)])
        self.ups = nn.ModuleList()
        for level in reversed(range(len(channels))):
            dim_out = channels[max(level - 1, 0)]
            self.ups.append(nn.ModuleList([
                ResidualBlock2d(2 * channels[level], dim_out, dim, kernel_size),
                ResidualBlock2d(dim_out, dim_out, dim, kernel_size),
                nn.ConvTranspose2d(dim_out, dim_out, 4, stride=2, padding=1) if level > 0 else nn.Identity(),
            ]))
        self.final = nn.Conv2d(channels[0], 1, 1)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, skips, emb = self.encode(x, t)
        for block in self.mid:
            h = block(h, emb)
        for block1, block2, up in self.ups:
            h = up(block2(block1(torch.cat([h, skips.pop()], dim=1), emb), emb))
        return self.final(h)[:, 0]


class ImageRewardNet(ImageEncoder):
    """Scalar reward `r(x_t, t)` of a noised image: the U-Net's down path, a block shrinking the channels 4x,
    then flatten, concatenate the time embedding and a 2-layer MLP.

    Smooth (Mish, GroupNorm, strided convs; no ReLU or max-pool) so that `grad_x r` is differentiable again, as
    the extraction loss needs. `forward(x (B, H, W), t (B,)) -> (B,)`.
    """

    def __init__(self, horizon: int, transition_dim: int, dim: int = 16, dim_mults: tuple[int, ...] = (1, 2),
                 kernel_size: int = 3):
        super().__init__(horizon, transition_dim, dim, dim_mults, kernel_size)
        mid_channels = max(self.channels[-1] // 4, 1)
        self.mid = ResidualBlock2d(self.channels[-1], mid_channels, dim, kernel_size)
        factor = 2 ** (len(dim_mults) - 1)
        features = mid_channels * (horizon // factor) * (transition_dim // factor)
        self.head = nn.Sequential(nn.Linear(features + dim, features // 2 + 1), Mish(),
                                  nn.Linear(features // 2 + 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, _, emb = self.encode(x, t)
        h = self.mid(h, emb).flatten(1)
        return self.head(torch.cat([h, emb], dim=-1)).squeeze(-1)
