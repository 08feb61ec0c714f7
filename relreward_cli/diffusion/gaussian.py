"""Gaussian diffusion over trajectory segments: training by noise (eps) or clean-segment (x_0) prediction, DDPM /
DDIM / DPM-Solver++ sampling with inpainting of known states, and value guidance (Diffuser) for reward-steered
planning."""

from typing import NamedTuple, Protocol

import torch
from torch import nn

from relreward_cli.diffusion.options import PREDICTIONS, SAMPLERS
from relreward_cli.diffusion.schedule import NoiseSchedule
from relreward_cli.errors import UserError

Conditions = dict[int, torch.Tensor]


def apply_conditioning(x: torch.Tensor, conditions: Conditions | None, action_dim: int) -> torch.Tensor:
    """Inpaint known states: a copy of `x` (B, H, D) with `x[:, index, action_dim:] = state` for every
    `index: state` in `conditions` (index may be negative, e.g. -1 for the goal; state `(B, obs_dim)` or
    `(obs_dim,)`). Returns `x` itself when there are no conditions."""
    if not conditions:
        return x
    horizon, obs_dim = x.shape[1], x.shape[2] - action_dim
    x = x.clone()
    for index, state in conditions.items():
        if not -horizon <= index < horizon or state.shape[-1] != obs_dim:
            raise UserError(f"Condition at step {index} has shape {tuple(state.shape)}, but segments have "
                            f"{horizon} steps and {obs_dim} observation dimensions; give observations "
                            f"shaped (batch, {obs_dim}) at steps in [-{horizon}, {horizon - 1}].")
        x[:, index, action_dim:] = state.to(x)
    return x


class Guide(Protocol):
    """What `GaussianDiffusion.sample` needs for value guidance.

    `gradient(x (B, H, D), t (B,))` returns the value `(B,)` and its gradient w.r.t. `x` `(B, H, D)` (it is
    called with autograd enabled). `scale` multiplies the step, `n_guide_steps` gradient steps are taken per
    DDPM step, gradients are zeroed where `t < t_stopgrad`, and `scale_grad_by_std` multiplies them by the
    DDPM posterior variance.
    """

    scale: float
    n_guide_steps: int
    t_stopgrad: int
    scale_grad_by_std: bool

    def gradient(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class SampleOutput(NamedTuple):
    """`x` (B, H, D) the samples; `values` (B,) the guide's values at the last step (None unguided, or guided
    with `scale=0`, which skips the gradients);
    `chain` (B, n_sample_steps + 1, H, D) from the initial noise to `x` (None unless asked for)."""

    x: torch.Tensor
    values: torch.Tensor | None
    chain: torch.Tensor | None


class GaussianDiffusion(nn.Module):
    """A denoising network `model(x_t (B, H, D), t (B,)) -> (B, H, D)` with its noise schedule.

    The network predicts the noise `eps` (`prediction="eps"`, DDPM's choice) or the clean segment `x_0`
    (`prediction="x0"`, Diffuser's locomotion models); either way `predict_eps` gives the noise estimate, so
    the score `-eps / sigma_t` that reward extraction differentiates is defined for both. Segments are
    `(B, horizon, transition_dim)`, the first `action_dim` entries of each step being actions. With
    `clip_denoised`, every predicted `x_0` is clipped to `[-1, 1]` (the range of limits-normalized data) and the
    noise estimate is made consistent with the clipped `x_0`.
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, horizon: int, transition_dim: int,
                 action_dim: int = 0, clip_denoised: bool = True, prediction: str = "eps"):
        super().__init__()
        if not 0 <= action_dim < transition_dim:
            raise UserError(f"action_dim={action_dim} must be in [0, transition_dim={transition_dim}): the "
                            "observation block starts after the actions and cannot be empty.")
        if prediction not in PREDICTIONS:
            raise UserError(f"diffusion.prediction={prediction!r}: the network predicts the noise ('eps') or the "
                            "clean segment ('x0').")
        self.model, self.schedule = model, schedule
        self.horizon, self.transition_dim, self.action_dim = horizon, transition_dim, action_dim
        self.clip_denoised, self.prediction = clip_denoised, prediction

    @property
    def device(self) -> torch.device:
        return self.schedule.betas.device

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's noise estimate `(B, H, D)` for `x_t` `(B, H, D)` at steps `t` `(B,)` (unclipped)."""
        return self._predict(x_t, t)[1]

    def _predict(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's `(x_0, eps)` estimates for `x_t` at `t`, one predicted, the other implied (unclipped)."""
        output = self.model(x_t, t)
        if self.prediction == "eps":
            return self.schedule.predict_x0(x_t, output, t), output
        return output, self.schedule.predict_eps(x_t, output, t)

    def loss(self, x0: torch.Tensor, conditions: Conditions | None = None,
             generator: torch.Generator | None = None, action_weight: float = 1.0) -> torch.Tensor:
        """Prediction MSE (of the noise or of `x0`, as `prediction`) for clean segments `x0` `(B, H, D)` at
        uniformly drawn steps (scalar): the mean of :meth:`row_losses` with every row conditioned."""
        return self.row_losses(x0, conditions, generator, action_weight).mean()

    def row_losses(self, x0: torch.Tensor, conditions: Conditions | None = None,
                   generator: torch.Generator | None = None, action_weight: float = 1.0,
                   conditioned: torch.Tensor | None = None, t: torch.Tensor | None = None,
                   noise: torch.Tensor | None = None) -> torch.Tensor:
        """Per-segment prediction MSE `(B,)` for clean segments `x0` `(B, H, D)` at uniformly drawn steps, in one
        call of the denoiser.

        `conditions` are inpainted into `x_t` with their clean values, as in sampling, in the rows where
        `conditioned` `(B,)` is true (all rows when it is None); those entries carry no noise to predict, so
        they are left out of their row's mean. The errors of the first step's actions (the ones a planner
        executes) count `action_weight` times (Diffuser's locomotion models: 10); the mean stays over the free
        entries, so 1 is the plain MSE. The steps `t` `(B,)` and the noise `noise` `(B, H, D)` are drawn from
        `generator` unless given.
        """
        batch = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.schedule.n_steps, (batch,), generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype) if noise is None else noise
        x_t = self.schedule.add_noise(x0, eps, t)
        rows = torch.ones(batch, dtype=torch.bool, device=x0.device) if conditioned is None else conditioned
        weights = torch.ones_like(x0)
        if conditions:
            x_t = torch.where(rows[:, None, None], apply_conditioning(x_t, conditions, self.action_dim), x_t)
            for index in conditions:
                weights[rows, index, self.action_dim:] = 0
        n_free = weights.sum(dim=(1, 2))
        weights[:, 0, :self.action_dim] = action_weight
        target = eps if self.prediction == "eps" else x0
        return ((self.model(x_t, t) - target) ** 2 * weights).sum(dim=(1, 2)) / n_free

    def _clipped(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x0, eps)` with `x0` clipped if `clip_denoised` (then `eps` recomputed to match)."""
        if not self.clip_denoised:
            return x0, eps
        x0 = x0.clamp(-1.0, 1.0)
        return x0, self.schedule.predict_eps(x_t, x0, t)

    @staticmethod
    def _guide_gradient(guide: Guide, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's values `(B,)` and gradients `(B, H, D)`, zeroed where `t < guide.t_stopgrad`."""
        with torch.enable_grad():
            values, grad = guide.gradient(x, t)
        return values.detach(), torch.where((t >= guide.t_stopgrad)[:, None, None], grad.detach(), 0.0)

    @staticmethod
    def _steers_at(guide: Guide | None, t: torch.Tensor) -> bool:
        """Whether `guide` moves any sample at steps `t` `(B,)`: not at scale 0, nor where all `t < t_stopgrad`
        (no gradient is computed there)."""
        return guide is not None and guide.scale != 0 and bool((t >= guide.t_stopgrad).any())

    def _ddpm_step(self, x: torch.Tensor, t: torch.Tensor, conditions: Conditions | None, guide: Guide | None,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Ancestral step `x_t -> x_{t-1}`. Value guidance as in Diffuser's `n_step_guided_p_sample`: `x_t` is
        moved `n_guide_steps` times by `scale * grad` (times the posterior variance if `scale_grad_by_std`),
        re-inpainting after each move, and the posterior mean is taken at the moved `x_t`."""
        values = None
        if self._steers_at(guide, t):
            variance = self.schedule.posterior_variance[t][:, None, None]
            for _ in range(guide.n_guide_steps):
                values, grad = self._guide_gradient(guide, x, t)
                step = variance * grad if guide.scale_grad_by_std else grad
                x = apply_conditioning(x + guide.scale * step, conditions, self.action_dim)
        x0, _ = self._clipped(x, t, *self._predict(x, t))
        mean, variance = self.schedule.posterior_mean_variance(x0, x, t)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return mean + variance.sqrt() * noise, values

    def _guided_prediction(self, x: torch.Tensor, t: torch.Tensor, guide: Guide | None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """`(x0, eps, values)` at `x_t`, with classifier guidance in eps form, `eps <- eps - scale * sigma_t * grad`
        (one gradient; `values` None when unguided), and `x0` clipped as `clip_denoised` says."""
        (x0, eps), values = self._predict(x, t), None
        if self._steers_at(guide, t):
            values, grad = self._guide_gradient(guide, x, t)
            eps = eps - guide.scale * self.schedule.sigmas[t][:, None, None] * grad
            x0 = self.schedule.predict_x0(x, eps, t)
        return *self._clipped(x, t, x0, eps), values

    def _ddim_step(self, x: torch.Tensor, t: torch.Tensor, t_prev: int, eta: float, guide: Guide | None,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """DDIM step `x_t -> x_{t_prev}` (`t_prev = -1`: to `x_0`), guided as :meth:`_guided_prediction`
        (`n_guide_steps` and `scale_grad_by_std` apply to DDPM only)."""
        x0, eps, values = self._guided_prediction(x, t, guide)
        alpha_bar = self.schedule.alpha_bars[t[0]]
        alpha_bar_prev = self.schedule.alpha_bars[t_prev] if t_prev >= 0 else alpha_bar.new_tensor(1.0)
        std = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
        x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - std**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x_prev = x_prev + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x_prev, values

    def _dpm_solver(self, n_sample_steps: int | None, stochastic: bool):
        """diffusers' multistep DPM-Solver++ (second order) on this schedule's betas, fed the clipped x_0 estimate
        (`prediction_type="sample"`), at the steps of :meth:`NoiseSchedule.sampling_timesteps` (the last is
        step 0, so the final x_0 estimate is taken where almost no noise is left); `stochastic` takes its SDE
        variant."""
        from diffusers import DPMSolverMultistepScheduler  # imported here: it takes seconds, and only dpm needs it

        solver = DPMSolverMultistepScheduler(
            num_train_timesteps=self.schedule.n_steps, trained_betas=self.schedule.betas.double().cpu().numpy(),
            prediction_type="sample", algorithm_type="sde-dpmsolver++" if stochastic else "dpmsolver++",
            solver_order=2, final_sigmas_type="zero", lower_order_final=True)
        solver.set_timesteps(device=self.device, timesteps=self.schedule.sampling_timesteps(n_sample_steps).tolist())
        return solver

    @torch.no_grad()
    def sample(self, batch_size: int, conditions: Conditions | None = None, sampler: str = "ddpm",
               n_sample_steps: int | None = None, eta: float = 0.0, generator: torch.Generator | None = None,
               guide: Guide | None = None, return_chain: bool = False) -> SampleOutput:
        """Draw `batch_size` segments, inpainting `conditions` at every step.

        `sampler="ddpm"` runs all `n_steps` ancestral steps; `sampler="ddim"` runs `n_sample_steps` (default
        all) evenly spaced steps with stochasticity `eta` (0: deterministic given the initial noise);
        `sampler="dpm"` runs `n_sample_steps` steps of second-order DPM-Solver++ (diffusers'; `eta > 0`: its SDE
        variant), guided as DDIM is. All
        randomness comes from `generator` (on the model's device), so a seed reproduces the samples; a guide
        with `scale=0` gives exactly the unguided samples (and costs no gradient).
        """
        if sampler not in SAMPLERS:
            raise UserError(f"Unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}.")
        if sampler == "ddpm" and n_sample_steps not in (None, self.schedule.n_steps):
            raise UserError(f"The DDPM sampler runs all {self.schedule.n_steps} diffusion steps; to sample "
                            f"with {n_sample_steps} steps use sampler='ddim'.")
        solver = self._dpm_solver(n_sample_steps, eta > 0) if sampler == "dpm" else None
        timesteps = (solver.timesteps if solver else self.schedule.sampling_timesteps(n_sample_steps)).tolist()
        shape = (batch_size, self.horizon, self.transition_dim)
        x = apply_conditioning(torch.randn(shape, generator=generator, device=self.device), conditions,
                               self.action_dim)
        chain, values = [x], None
        for i, step in enumerate(timesteps):
            t = torch.full((batch_size,), step, device=self.device, dtype=torch.long)
            if sampler == "ddpm":
                x, values = self._ddpm_step(x, t, conditions, guide, generator)
            elif sampler == "ddim":
                t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
                x, values = self._ddim_step(x, t, t_prev, eta, guide, generator)
            else:
                x0, _, values = self._guided_prediction(x, t, guide)
                x = solver.step(x0, solver.timesteps[i], x, generator=generator).prev_sample
            x = apply_conditioning(x, conditions, self.action_dim)
            if return_chain:
                chain.append(x)
        return SampleOutput(x, values, torch.stack(chain, dim=1) if return_chain else None)

