"""Noise schedules, the temporal U-Net, Gaussian diffusion sampling, inpainting, guidance and EMA."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from relreward_cli.diffusion.ema import EMA
from relreward_cli.diffusion.gaussian import GaussianDiffusion, apply_conditioning
from relreward_cli.diffusion.options import SAMPLERS
from relreward_cli.diffusion.schedule import NoiseSchedule
from relreward_cli.errors import UserError
from relreward_cli.models.reward_net import RewardNet
from relreward_cli.models.unet import TemporalUnet

torch.set_num_threads(1)
HORIZON, TRANSITION_DIM, ACTION_DIM, N_STEPS = 8, 3, 1, 20


class GaussianEps(nn.Module):
    """Exact `E[eps | x_t]` for data `N(mean, std^2 I)`:
    `sigma_t (x_t - sqrt(ab_t) mean) / (ab_t std^2 + sigma_t^2)`."""

    def __init__(self, schedule: NoiseSchedule, mean: torch.Tensor, std: float):
        super().__init__()
        self.schedule, self.mean, self.std = schedule, mean, std

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.schedule.alpha_bars[t][:, None, None]
        sigma = self.schedule.sigmas[t][:, None, None]
        return sigma * (x_t - alpha_bar.sqrt() * self.mean) / (alpha_bar * self.std**2 + sigma**2)


class GaussianX0(GaussianEps):
    """Exact `E[x_0 | x_t]` for the same data: `mean + sqrt(ab_t) std^2 (x_t - sqrt(ab_t) mean) / (ab_t std^2 +
    sigma_t^2)`."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha_bar = self.schedule.alpha_bars[t][:, None, None]
        sigma = self.schedule.sigmas[t][:, None, None]
        gain = alpha_bar.sqrt() * self.std**2 / (alpha_bar * self.std**2 + sigma**2)
        return self.mean + gain * (x_t - alpha_bar.sqrt() * self.mean)


@dataclass
class SumGuide:
    """Analytic guide `r(x) = sum(x)`, gradient all ones; `calls` counts gradient evaluations."""

    scale: float
    n_guide_steps: int = 2
    t_stopgrad: int = 0
    scale_grad_by_std: bool = True
    calls: int = 0

    def gradient(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        return x.sum(dim=(1, 2)), torch.ones_like(x)


def toy_segments(n: int, generator: torch.Generator) -> torch.Tensor:
    """A 1-D family of segments in [-1, 1]: `a * pattern` with `a ~ U(-1, 1)`, plus a little noise."""
    pattern = torch.linspace(-0.8, 0.8, HORIZON * TRANSITION_DIM).reshape(HORIZON, TRANSITION_DIM)
    a = torch.rand(n, 1, 1, generator=generator) * 2 - 1
    return a * pattern + 0.02 * torch.randn(n, HORIZON, TRANSITION_DIM, generator=generator)


def make_diffusion(**kwargs) -> GaussianDiffusion:
    net = TemporalUnet(HORIZON, TRANSITION_DIM, dim=16, dim_mults=(1, 2))
    return GaussianDiffusion(net, NoiseSchedule(N_STEPS), HORIZON, TRANSITION_DIM, ACTION_DIM, **kwargs)


@pytest.fixture(scope="module")
def trained() -> tuple[GaussianDiffusion, float, float]:
    """A tiny diffusion model trained 300 steps on `toy_segments`, with its loss before and after."""
    torch.manual_seed(0)
    diffusion = make_diffusion()
    generator, eval_generator = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    x_eval = toy_segments(512, eval_generator)

    def eval_loss() -> float:
        with torch.no_grad():
            return diffusion.loss(x_eval, generator=torch.Generator().manual_seed(3)).item()

    before = eval_loss()
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=2e-3)
    for _ in range(300):
        loss = diffusion.loss(toy_segments(64, generator), generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return diffusion, before, eval_loss()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- schedule ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_round_trips_and_monotone(kind):
    torch.manual_seed(0)
    schedule = NoiseSchedule(50, kind)
    x0, eps = torch.randn(6, HORIZON, TRANSITION_DIM), torch.randn(6, HORIZON, TRANSITION_DIM)
    t = torch.tensor([0, 1, 10, 25, 48, 49])
    x_t = schedule.add_noise(x0, eps, t)
    torch.testing.assert_close(schedule.predict_x0(x_t, eps, t), x0, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(schedule.predict_eps(x_t, x0, t), eps, atol=1e-4, rtol=1e-5)
    assert (schedule.alpha_bars.diff() < 0).all() and (schedule.alpha_bars > 0).all()
    torch.testing.assert_close(schedule.sigmas**2 + schedule.alpha_bars, torch.ones(50))
    mean, variance = schedule.posterior_mean_variance(x0, x_t, torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(mean, x0)
    assert (variance == 0).all()


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("n_steps", [5, 20, 100, 1000])
def test_every_schedule_ends_at_noise_whatever_its_step_count(kind, n_steps):
    """Sampling starts from N(0, I), so the last step must be (nearly) pure noise at any step count."""
    assert NoiseSchedule(n_steps, kind).alpha_bars[-1].item() < 1e-3


def test_schedule_endpoints_and_config():
    cosine = NoiseSchedule(100, "cosine")
    assert cosine.alpha_bars[0] > 0.999 and cosine.alpha_bars[-1] < 1e-5 and cosine.betas.max() <= 0.999
    linear = NoiseSchedule(100, "linear", beta_start=1e-4, beta_end=0.02)
    # DDPM's range is for 1000 steps; 100 steps take ten times larger betas
    assert linear.betas[0].item() == pytest.approx(1e-3) and linear.betas[-1].item() == pytest.approx(0.2)
    assert NoiseSchedule(1000, "linear").betas[-1].item() == pytest.approx(0.02)
    assert NoiseSchedule.from_dict(linear.to_dict()).matches(linear)
    assert not linear.matches(cosine) and not cosine.matches(NoiseSchedule(50))
    assert cosine.sampling_timesteps(4).tolist() == [99, 66, 33, 0]
    with pytest.raises(UserError, match="Unknown noise schedule"):
        NoiseSchedule(10, "quadratic")


# --- networks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("horizon", "transition_dim", "dim", "dim_mults"),
                         [(4, 2, 16, (1, 2)), (8, 3, 16, (1, 2, 4)), (12, 5, 8, (1, 2)), (3, 1, 8, (1,))])
def test_networks_output_shapes(horizon, transition_dim, dim, dim_mults):
    torch.manual_seed(0)
    x, t = torch.randn(2, horizon, transition_dim), torch.tensor([0, 7])
    assert TemporalUnet(horizon, transition_dim, dim, dim_mults)(x, t).shape == x.shape
    assert RewardNet(horizon, transition_dim, dim, dim_mults)(x, t).shape == (2,)


def test_networks_reject_bad_horizons():
    with pytest.raises(UserError, match="divisible by 4"):
        TemporalUnet(10, 2, dim_mults=(1, 2, 4))
    with pytest.raises(UserError, match="divisible by 2"):
        RewardNet(5, 2, dim_mults=(1, 2))
    with pytest.raises(UserError, match="Expected segments"):
        TemporalUnet(8, 2, dim=16)(torch.randn(1, 4, 2), torch.zeros(1, dtype=torch.long))


def test_reward_net_gradient_is_differentiable():
    torch.manual_seed(0)
    net = RewardNet(4, 2, dim=8, dim_mults=(1, 2))
    x = torch.randn(3, 4, 2, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x, torch.tensor([0, 3, 9])).sum(), x, create_graph=True)
    grad.pow(2).sum().backward()
    first_conv = net.down.levels[0][0].block1[0]
    assert net.head[0].weight.grad.abs().sum() > 0 and first_conv.weight.grad.abs().sum() > 0


# --- sampling ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("prediction", "network"), [("eps", GaussianEps), ("x0", GaussianX0)])
def test_exact_model_samples_its_gaussian(sampler, prediction, network):
    """With the exact noise (or clean-segment) predictor of N(mean, 0.3^2 I), every sampler recovers the data
    distribution (up to the discretization error of 200 steps, which shrinks the std by about 2%)."""
    schedule, mean = NoiseSchedule(200), torch.linspace(-0.5, 0.5, HORIZON * 2).reshape(HORIZON, 2)
    diffusion = GaussianDiffusion(network(schedule, mean, 0.3), schedule, HORIZON, 2, clip_denoised=False,
                                  prediction=prediction)
    x = diffusion.sample(2000, sampler=sampler, generator=seeded(0)).x
    torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
    assert x.std(0).mean().item() == pytest.approx(0.3, abs=0.015)


def test_dpm_solver_in_half_the_steps_keeps_the_gaussian_where_ddim_shrinks_it():
    """Ten steps of the 20-step schedule with the exact predictor of N(mean, 0.3^2 I): second-order DPM-Solver++
    (and its SDE variant) keep the std within 5%, where first-order DDIM shrinks it by more than 10%."""
    schedule, mean = NoiseSchedule(N_STEPS), torch.linspace(-0.5, 0.5, HORIZON * 2).reshape(HORIZON, 2)
    diffusion = GaussianDiffusion(GaussianEps(schedule, mean, 0.3), schedule, HORIZON, 2, clip_denoised=False)

    def draw(sampler: str, eta: float = 0.0) -> torch.Tensor:
        return diffusion.sample(2000, sampler=sampler, n_sample_steps=10, eta=eta, generator=seeded(0)).x

    for x in (draw("dpm"), draw("dpm", eta=1.0)):
        torch.testing.assert_close(x.mean(0), mean, atol=0.03, rtol=0)
        assert x.std(0).mean().item() == pytest.approx(0.3, rel=0.05)
    assert draw("ddim").std(0).mean().item() < 0.9 * 0.3


def test_samplers_are_reproducible():
    torch.manual_seed(0)
    diffusion = make_diffusion()
    for kwargs in ({"sampler": "ddpm"}, {"sampler": "ddim", "n_sample_steps": 5},
                   {"sampler": "ddim", "eta": 1.0}, {"sampler": "dpm", "n_sample_steps": 5},
                   {"sampler": "dpm", "n_sample_steps": 5, "eta": 1.0}):
        first = diffusion.sample(3, generator=seeded(0), **kwargs).x
        assert torch.equal(first, diffusion.sample(3, generator=seeded(0), **kwargs).x)
        assert not torch.allclose(first, diffusion.sample(3, generator=seeded(1), **kwargs).x)
    output = diffusion.sample(3, sampler="ddim", n_sample_steps=5, generator=seeded(0), return_chain=True)
    assert output.chain.shape == (3, 6, HORIZON, TRANSITION_DIM)
    with pytest.raises(UserError, match="sampler='ddim'"):
        diffusion.sample(3, sampler="ddpm", n_sample_steps=5)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_inpainting_keeps_given_states(trained, sampler):
    diffusion, *_ = trained
    start, goal = torch.full((5, TRANSITION_DIM - ACTION_DIM), 0.5), torch.tensor([-0.25, 0.75])
    x = diffusion.sample(5, {0: start, -1: goal}, sampler=sampler, generator=seeded(0)).x
    assert torch.equal(x[:, 0, ACTION_DIM:], start) and torch.equal(x[:, -1, ACTION_DIM:], goal.expand(5, -1))
    with pytest.raises(UserError, match="observation dimensions"):
        apply_conditioning(x, {0: torch.zeros(5, TRANSITION_DIM)}, ACTION_DIM)


def test_x0_prediction_implies_the_same_noise_and_score():
    """An x0-predicting model and an eps-predicting one that agree on the data give the same `predict_eps` (what
    extraction differentiates) and the same samples; unknown predictions are refused."""
    schedule, mean = NoiseSchedule(N_STEPS), torch.linspace(-0.5, 0.5, HORIZON * 2).reshape(HORIZON, 2)
    by_eps, by_x0 = (GaussianDiffusion(network(schedule, mean, 0.3), schedule, HORIZON, 2, prediction=prediction)
                     for network, prediction in ((GaussianEps, "eps"), (GaussianX0, "x0")))
    x_t, t = torch.randn(16, HORIZON, 2, generator=seeded(0)), torch.arange(16) % N_STEPS
    torch.testing.assert_close(by_x0.predict_eps(x_t, t), by_eps.predict_eps(x_t, t), atol=1e-4, rtol=1e-4)
    for sampler in SAMPLERS:
        torch.testing.assert_close(by_x0.sample(8, sampler=sampler, generator=seeded(1)).x,
                                   by_eps.sample(8, sampler=sampler, generator=seeded(1)).x, atol=1e-4, rtol=1e-4)
    with pytest.raises(UserError, match="diffusion.prediction"):
        GaussianDiffusion(GaussianEps(schedule, mean, 0.3), schedule, HORIZON, 2, prediction="v")


def test_x0_loss_regresses_the_clean_segment():
    """With `prediction="x0"` the loss is the weighted MSE to `x0` (a zero network: the mean of `x0`'s squares
    over the free entries, first actions weighted)."""
    diffusion = GaussianDiffusion(ZeroEps(), NoiseSchedule(N_STEPS), HORIZON, TRANSITION_DIM, ACTION_DIM,
                                  prediction="x0")
    x0 = torch.randn(4, HORIZON, TRANSITION_DIM, generator=seeded(6))
    free = torch.ones(HORIZON, TRANSITION_DIM)
    free[0, ACTION_DIM:] = 0
    loss = diffusion.loss(x0, {0: x0[:, 0, ACTION_DIM:]}, seeded(0), action_weight=10.0)
    expected = ((x0**2 * free).sum() + 9 * (x0[:, 0, :ACTION_DIM] ** 2).sum()) / (free.sum() * len(x0))
    torch.testing.assert_close(loss, expected)


def test_training_lowers_the_loss(trained):
    _, before, after = trained
    assert after < 0.5 * before, (before, after)


class ZeroEps(nn.Module):
    """Outputs zeros: as a noise predictor the loss is the mean of the drawn noise's squares, as an x0 predictor
    the mean of the segments' squares."""

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x_t)


def test_action_weight_counts_the_first_actions_more():
    diffusion = GaussianDiffusion(ZeroEps(), NoiseSchedule(N_STEPS), HORIZON, TRANSITION_DIM, ACTION_DIM)
    x0 = torch.zeros(4, HORIZON, TRANSITION_DIM)
    conditions = {0: x0[:, 0, ACTION_DIM:]}
    generator = torch.Generator().manual_seed(0)
    torch.randint(0, N_STEPS, (4,), generator=generator)  # the loss draws t first, then the noise
    eps = torch.randn(x0.shape, generator=generator)
    free = torch.ones(HORIZON, TRANSITION_DIM)
    free[0, ACTION_DIM:] = 0  # the inpainted start state has no noise to predict
    n_free = free.sum() * len(x0)
    for weight in (1.0, 10.0):
        loss = diffusion.loss(x0, conditions, torch.Generator().manual_seed(0), action_weight=weight)
        expected = ((eps**2 * free).sum() + (weight - 1) * (eps[:, 0, :ACTION_DIM] ** 2).sum()) / n_free
        torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_guidance_scale_zero_is_unguided(trained, sampler):
    diffusion, *_ = trained
    unguided = diffusion.sample(8, sampler=sampler, generator=seeded(4))
    idle, steering = SumGuide(scale=0.0), SumGuide(scale=1.0)
    guided = diffusion.sample(8, sampler=sampler, generator=seeded(4), guide=idle)
    assert torch.equal(guided.x, unguided.x) and unguided.values is None and guided.values is None
    assert idle.calls == 0, "a guide with scale 0 must not spend gradients"
    assert diffusion.sample(8, sampler=sampler, generator=seeded(4), guide=steering).values.shape == (8,)
    assert steering.calls > 0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_guidance_raises_the_reward(trained, sampler):
    diffusion, *_ = trained
    def reward(guide: SumGuide) -> torch.Tensor:
        return diffusion.sample(256, sampler=sampler, generator=seeded(5), guide=guide).x.sum(dim=(1, 2))

    unguided, guided = reward(SumGuide(scale=0.0)), reward(SumGuide(scale=1.0))
    assert guided.mean() > unguided.mean() + 0.5 * unguided.std(), (unguided.mean(), guided.mean())


# --- EMA --------------------------------------------------------------------------------------------------

def test_ema_update_math():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9, update_after_step=1)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert torch.equal(ema.model.weight, model.weight)
    with torch.no_grad():
        model.weight.fill_(13.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.weight, torch.full((1, 2), 0.9 * 3.0 + 0.1 * 13.0))
    restored = EMA(nn.Linear(2, 1))
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.model.weight, ema.model.weight) and restored.step == 2
