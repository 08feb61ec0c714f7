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
    once per step. `grad_clip` (None: none) clamps each gradient entry to `[-grad_clip, grad_clip]` (the authors'
    Hopper setting: 0.2). Finished plans are ranked by `plan_reward` at diffusion step `rank_t`.

    The authors' locomotion steering is `scale_grad_by_std=False, n_guide_steps=1` with a reward extracted on
    the `posterior_mean` target (`x_t <- x_t + scale * grad r(x_t, t)`); ours scales by the posterior variance, so
    that `scale=1` with a `score`-target reward moves the base model's step by the expert's score difference.
    """

    reward: TrainedReward
    scale: float = 1.0
    n_guide_steps: int = 1
    t_stopgrad: int = 0
    scale_grad_by_std: bool = True
    rank_t: int | None = None
    grad_clip: float | None = None

    def __post_init__(self):
        if self.n_guide_steps < 1 or self.t_stopgrad < 0 or (self.grad_clip is not None and self.grad_clip <= 0):
            raise UserError(f"Guidance needs n_guide_steps >= 1, t_stopgrad >= 0 and grad_clip > 0 or null; got "
                            f"n_guide_steps={self.n_guide_steps}, t_stopgrad={self.t_stopgrad}, "
                            f"grad_clip={self.grad_clip}.")

    def gradient(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards `(B,)` and `grad_x r(x, t)` `(B, H, D)` (clamped to `grad_clip`) for normalized segments `x`
        `(B, H, D)`."""
        values, grad = reward_gradient(self.reward.net, x, t)
        return values, grad if self.grad_clip is None else grad.clamp(-self.grad_clip, self.grad_clip)

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
