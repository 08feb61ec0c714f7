"""Reward guidance: the extracted relative reward as the `Guide` that steers `GaussianDiffusion.sample`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relreward_cli.errors import UserError
from relreward_cli.reward.extraction import reward_gradient
from relreward_cli.reward.trainer import TrainedReward


@dataclass
class RewardGuide:
    """Diffuser-style value guidance by a learned reward `r(x_t, t)` (implements the `Guide` protocol).

    DDPM: each reverse step moves `x_t` `n_guide_steps` times by `scale * grad_x r` (times the posterior
    variance `Sigma_t` when `scale_grad_by_std`: one such step with `scale = 1` is classifier guidance, the base
    tilted by `exp(r)`), with no guidance at `t < t_stopgrad`. DDIM: `eps <- eps - scale * sigma_t * grad_x r`,
    once per step. Finished plans are ranked by `plan_reward` at diffusion step `rank_t`.
    """

    reward: TrainedReward
    scale: float = 1.0
    n_guide_steps: int = 1
    t_stopgrad: int = 0
    scale_grad_by_std: bool = True
    rank_t: int | None = None

    def gradient(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards `(B,)` and `grad_x r(x, t)` `(B, H, D)` for normalized segments `x` `(B, H, D)`."""
        return reward_gradient(self.reward.net, x, t)

    @torch.no_grad()
    def plan_reward(self, x0: torch.Tensor) -> torch.Tensor:
        """`r(sqrt(alpha_bar_t) x_0, t)` `(B,)` of finished (normalized) plans `x0` `(B, H, D)` at `t = rank_t`
        (None: half the diffusion steps): what ranks them. The plan is scaled to the mean of the forward process
        at `t`, as for the reward maps (`reward.evaluate`): a reward fitted on the score difference is poor on
        clean segments (`t = 0`), where that difference is mostly noise."""
        n_steps = self.reward.spec.n_steps
        rank_t = n_steps // 2 if self.rank_t is None else self.rank_t
        if not 0 <= rank_t < n_steps:
            raise UserError(f"steer.rank_t={rank_t} must be a diffusion step in [0, {n_steps - 1}], or null for "
                            f"half the diffusion steps ({n_steps // 2}).")
        t = torch.full((len(x0),), rank_t, dtype=torch.long, device=x0.device)
        return self.reward.net(x0 * float(self.reward.schedule.alpha_bars[rank_t]) ** 0.5, t)
