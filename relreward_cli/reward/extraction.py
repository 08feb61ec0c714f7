"""Relative reward extraction (Nuti et al. 2023): learn `r(x_t, t)` with `grad_x r = s_expert - s_base`.

Two regression targets (`TARGETS`):
- `score` (ours): in eps form (scores `s = -eps / sigma_t`) the target is the eps difference of two frozen
  diffusion models of the same space, and the loss `|| sigma_t grad_x r(x_t) + (eps_expert - eps_base) ||^2` is
  well scaled at every diffusion step.
- `posterior_mean` (the authors' code): `|| grad_x r(mu_base) - (mu_expert - mu_base) ||^2` with `mu` the DDPM
  posterior means `mu(x_t, t)` of the two models (from their unclipped `x_0` estimates), the gradient taken at
  `mu_base`. Since `mu_expert - mu_base = (beta_t / sqrt(alpha_t)) (s_expert - s_base)`, this reward is the
  score-target one times a factor per `t`, so guidance scales do not carry over between the two.
"""

from typing import Protocol

import torch
from torch import nn

from relreward_cli.diffusion.schedule import NoiseSchedule
from relreward_cli.errors import UserError


class EpsModel(Protocol):
    """A diffusion model as extraction sees it (`GaussianDiffusion` is one)."""

    schedule: NoiseSchedule

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


def _check_one_schedule(base: EpsModel, expert: EpsModel) -> None:
    if not base.schedule.matches(expert.schedule):
        raise UserError("The base and expert models use different noise schedules "
                        f"({base.schedule.to_dict()} vs {expert.schedule.to_dict()}); their scores are only "
                        "comparable on one schedule, so train both with the same diffusion settings.")


@torch.no_grad()
def eps_difference(base: EpsModel, expert: EpsModel, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`eps_expert(x_t, t) - eps_base(x_t, t)` `(B, H, D)` for `x_t` `(B, H, D)`, `t` `(B,)`; no gradients."""
    _check_one_schedule(base, expert)
    return expert.predict_eps(x_t, t) - base.predict_eps(x_t, t)


def score_difference(base: EpsModel, expert: EpsModel, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`s_expert - s_base = -(eps_expert - eps_base) / sigma_t` `(B, H, D)`: the gradient the reward fits."""
    return -eps_difference(base, expert, x_t, t) / base.schedule.sigmas[t][:, None, None]


def reward_gradient(reward_net: nn.Module, x_t: torch.Tensor, t: torch.Tensor, create_graph: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards `(B,)` and `grad_x r(x_t, t)` `(B, H, D)`.

    With `create_graph=True` both stay attached to the network's parameters (for a loss on the gradient);
    otherwise they are detached (for guidance).
    """
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        values = reward_net(x, t)
        (grad,) = torch.autograd.grad(values.sum(), x, create_graph=create_graph)
    return (values, grad) if create_graph else (values.detach(), grad.detach())


TARGETS = ("score", "posterior_mean")


@torch.no_grad()
def posterior_means(base: EpsModel, expert: EpsModel, x_t: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The DDPM posterior means `mu_base(x_t, t)` and `mu_expert(x_t, t)` `(B, H, D)` of `x_{t-1}` given `x_t`,
    each from the model's unclipped `x_0 = (x_t - sigma_t eps) / sqrt(alpha_bar_t)`; no gradients."""
    _check_one_schedule(base, expert)
    schedule = base.schedule
    return tuple(schedule.posterior_mean_variance(schedule.predict_x0(x_t, model.predict_eps(x_t, t), t), x_t, t)[0]
                 for model in (base, expert))


def extraction_loss(reward_net: nn.Module, base: EpsModel, expert: EpsModel, x_t: torch.Tensor,
                    t: torch.Tensor, target: str = "score", weights: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The squared error of the reward's input-gradient against `target` (see the module docstring), averaged
    per sample over the `H * D` entries, each entry counted `weights` `(B, H, D)` times when given (0 leaves
    out an inpainted entry, which guidance never moves).

    Returns the batch mean (scalar, differentiable w.r.t. the reward net) and the per-sample losses `(B,)`.
    """
    if target == "score":
        difference = eps_difference(base, expert, x_t, t)
        _, grad = reward_gradient(reward_net, x_t, t, create_graph=True)
        residual = base.schedule.sigmas[t][:, None, None] * grad + difference
    elif target == "posterior_mean":
        mu_base, mu_expert = posterior_means(base, expert, x_t, t)
        _, grad = reward_gradient(reward_net, mu_base, t, create_graph=True)
        residual = grad - (mu_expert - mu_base)
    else:
        raise UserError(f"extract.target={target!r}: the reward regresses the score difference ('score') or the "
                        "posterior-mean difference of the authors' code ('posterior_mean').")
    squared = residual.pow(2)
    if weights is None:
        per_sample = squared.flatten(1).mean(dim=1)
    else:
        per_sample = (squared * weights).flatten(1).sum(dim=1) / weights.flatten(1).sum(dim=1).clamp(min=1e-12)
    return per_sample.mean(), per_sample


def noised_batch(x0: torch.Tensor, schedule: NoiseSchedule, generator: torch.Generator | None = None,
                 t_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise clean segments `x0` `(B, H, D)` at steps drawn uniformly from `t_range` (inclusive bounds,
    default all steps). Returns `x_t` `(B, H, D)` and `t` `(B,)`."""
    low, high = (0, schedule.n_steps - 1) if t_range is None else t_range
    if not 0 <= low <= high < schedule.n_steps:
        raise UserError(f"t_range={t_range} must satisfy 0 <= low <= high <= {schedule.n_steps - 1} (the "
                        "last diffusion step).")
    t = torch.randint(low, high + 1, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return schedule.add_noise(x0, eps, t), t


def loss_by_t_band(per_sample_loss: torch.Tensor, t: torch.Tensor, n_steps: int, n_bands: int = 4
                   ) -> dict[str, torch.Tensor]:
    """Mean loss within `n_bands` equal bands of diffusion steps, keyed `loss_t{first}-{last}`, as 0-d tensors left
    on the loss's device (NaN for a band no sample fell in). `per_sample_loss` and `t` are `(B,)`."""
    bands = t * n_bands // n_steps
    sums = torch.zeros(n_bands, device=t.device).index_add_(0, bands, per_sample_loss.detach().float())
    means = sums / torch.bincount(bands, minlength=n_bands)
    first = [-(-band * n_steps // n_bands) for band in range(n_bands + 1)]
    return {f"loss_t{first[band]}-{first[band + 1] - 1}": means[band] for band in range(n_bands)}
