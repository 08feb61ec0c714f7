"""Variance-preserving noise schedules: `x_t = sqrt(alpha_bar_t) x_0 + sigma_t eps`, `t = 0` least noisy."""

import math
from typing import Any

import torch
from torch import nn

from relreward_cli.errors import UserError

SCHEDULE_KINDS = ("cosine", "linear")
LINEAR_REFERENCE_STEPS = 1000  # the linear schedule's beta range is DDPM's, for this many steps


def cosine_betas(n_steps: int, offset: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021): `alpha_bar(s) ~ cos^2(pi/2 (s/T + offset) / (1 + offset))`, betas <= 0.999.

    Returns float64 betas `(n_steps,)`.
    """
    s = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    alpha_bar = torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`values[t]` shaped `(B, 1, ..., 1)` to broadcast against `like` (B, ...)."""
    return values[t].reshape(-1, *(1,) * (like.ndim - 1)).to(like.dtype)


class NoiseSchedule(nn.Module):
    """Discrete diffusion schedule over `n_steps` steps, with the DDPM posterior `q(x_{t-1} | x_t, x_0)`.

    Betas are computed in float64 and stored as float32 buffers (not saved in state dicts: they are derived
    from `to_dict()`, which is what a checkpoint should store). Buffers, all `(n_steps,)`: `betas`,
    `alpha_bars` (cumulative product of `1 - beta`), `alpha_bars_prev` (1 before step 0), `sqrt_alpha_bars`,
    `sigmas` (`sqrt(1 - alpha_bar)`), `posterior_variance` and the two posterior mean coefficients.
    Methods take `t` as a long tensor `(B,)` in `[0, n_steps - 1]` and tensors `(B, ...)`.

    `kind="cosine"` follows Nichol & Dhariwal; `kind="linear"` is DDPM's: `beta_start` and `beta_end` are the
    range for 1000 steps, scaled by `1000 / n_steps` (as Nichol & Dhariwal do, capped at 0.999), so that any
    number of steps ends at (nearly) pure noise, where sampling starts: 20 steps unscaled would end at
    `alpha_bar_T = 0.82`.
    """

    def __init__(self, n_steps: int, kind: str = "cosine", beta_start: float = 1e-4, beta_end: float = 2e-2):
        super().__init__()
        if n_steps < 1:
            raise UserError(f"The number of diffusion steps must be at least 1, got {n_steps}.")
        if kind not in SCHEDULE_KINDS:
            raise UserError(f"Unknown noise schedule {kind!r}; use one of {', '.join(SCHEDULE_KINDS)}.")
        if kind == "linear" and not 0 < beta_start <= beta_end < 1:
            raise UserError("A linear schedule needs 0 < beta_start <= beta_end < 1, got "
                            f"beta_start={beta_start} and beta_end={beta_end}.")
        self.n_steps, self.kind, self.beta_start, self.beta_end = n_steps, kind, beta_start, beta_end
        if kind == "cosine":
            betas = cosine_betas(n_steps)
        else:
            scale = LINEAR_REFERENCE_STEPS / n_steps
            betas = torch.linspace(beta_start * scale, beta_end * scale, n_steps, dtype=torch.float64).clamp(max=0.999)
        alpha_bars = torch.cumprod(1 - betas, dim=0)
        alpha_bars_prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
        buffers = {
            "betas": betas,
            "alpha_bars": alpha_bars,
            "alpha_bars_prev": alpha_bars_prev,
            "sqrt_alpha_bars": alpha_bars.sqrt(),
            "sigmas": (1 - alpha_bars).sqrt(),
            "posterior_variance": betas * (1 - alpha_bars_prev) / (1 - alpha_bars),
            "posterior_mean_coef_x0": betas * alpha_bars_prev.sqrt() / (1 - alpha_bars),
            "posterior_mean_coef_xt": (1 - alpha_bars_prev) * (1 - betas).sqrt() / (1 - alpha_bars),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`x_t = sqrt(alpha_bar_t) x_0 + sigma_t eps`."""
        return _gather(self.sqrt_alpha_bars, t, x0) * x0 + _gather(self.sigmas, t, x0) * eps

    def predict_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Invert `add_noise` for `x_0` given the noise."""
        return (x_t - _gather(self.sigmas, t, x_t) * eps) / _gather(self.sqrt_alpha_bars, t, x_t)

    def predict_eps(self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Invert `add_noise` for the noise given `x_0`."""
        return (x_t - _gather(self.sqrt_alpha_bars, t, x_t) * x0) / _gather(self.sigmas, t, x_t)

    def posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean `(B, ...)` and variance `(B, 1, ..., 1)` of `q(x_{t-1} | x_t, x_0)` (variance 0 at t=0)."""
        mean = (_gather(self.posterior_mean_coef_x0, t, x_t) * x0
                + _gather(self.posterior_mean_coef_xt, t, x_t) * x_t)
        return mean, _gather(self.posterior_variance, t, x_t)

    def sampling_timesteps(self, n_sample_steps: int | None = None) -> torch.Tensor:
        """Descending steps `(n_sample_steps,)` evenly spread over `[0, n_steps - 1]`, both ends included."""
        n = self.n_steps if n_sample_steps is None else n_sample_steps
        if not 1 <= n <= self.n_steps:
            raise UserError(f"The number of sampling steps must be between 1 and the model's {self.n_steps} "
                            f"diffusion steps, got {n}.")
        steps = torch.linspace(self.n_steps - 1, 0, n, dtype=torch.float64).round().long()
        return steps.to(self.betas.device)

    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild the schedule (store this in checkpoints)."""
        return {"n_steps": self.n_steps, "kind": self.kind, "beta_start": self.beta_start,
                "beta_end": self.beta_end}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "NoiseSchedule":
        return cls(**config)

    def matches(self, other: "NoiseSchedule") -> bool:
        """Whether `other` defines the same schedule (cosine schedules ignore the beta range)."""
        if self.kind == "cosine":
            return (other.kind, other.n_steps) == ("cosine", self.n_steps)
        return self.to_dict() == other.to_dict()

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.to_dict().items())
