"""Reward guidance: the extracted relative reward as the `Guide` that steers `GaussianDiffusion.sample`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relreward_cli.reward.extraction import reward_gradient
from relreward_cli.reward.trainer import TrainedReward


@dataclass
class RewardGuide:
    """Diffuser-style value guidance by a learned reward `r(x_t, t)` (implements the `Guide` protocol).

    DDPM: each reverse step moves `x_t` `n_guide_steps` times by `scale * grad_x r` (times the posterior
    variance `Sigma_t` when `scale_grad_by_std`, so that `scale = 1` tilts the base by `exp(r)`), with no
    guidance at `t < t_stopgrad`. DDIM: `eps <- eps - scale * sigma_t * grad_x r`, once per step.
    """

    reward: TrainedReward
    scale: float = 1.0
    n_guide_steps: int = 1
    t_stopgrad: int = 0
    scale_grad_by_std: bool = True

    def gradient(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards `(B,)` and `grad_x r(x, t)` `(B, H, D)` for normalized segments `x` `(B, H, D)`."""
        return reward_gradient(self.reward.net, x, t)

    @torch.no_grad()
    def final_reward(self, x0: torch.Tensor) -> torch.Tensor:
        """`r(x_0, t=0)` `(B,)` of finished (normalized) plans `x0` `(B, H, D)`: what ranks them."""
        return self.reward.net(x0, torch.zeros(len(x0), dtype=torch.long, device=x0.device))
