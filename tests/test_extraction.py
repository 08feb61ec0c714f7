"""Relative reward extraction against analytic diffusion models of Gaussian (mixture) data.

For data `x_0 ~ sum_k w_k N(m_k, s^2 I)` under a VP schedule, `x_t | k ~ N(sqrt(ab_t) m_k, v_t I)` with
`v_t = ab_t s^2 + sigma_t^2`, so the exact noise predictor is `E[eps | x_t] = sum_k p(k | x_t) sigma_t
(x_t - sqrt(ab_t) m_k) / v_t` and `log p_t(x_t)` is a log-sum-exp. The true relative reward of an expert
over a base model is `log p_expert_t(x_t) - log p_base_t(x_t)` (up to a constant per `t`).
"""

import math

import pytest
import torch

from relreward_cli.diffusion.schedule import NoiseSchedule
from relreward_cli.errors import UserError
from relreward_cli.models.reward_net import RewardNet
from relreward_cli.reward.extraction import (
    extraction_loss,
    loss_by_t_band,
    noised_batch,
    posterior_means,
    reward_gradient,
    score_difference,
)

torch.set_num_threads(1)
HORIZON, TRANSITION_DIM, N_STEPS = 8, 2, 20
EVAL_STEPS = (1, 5, 10, 14)  # sigma_t from 0.17 to 0.93


class GaussianMixtureModel:
    """Analytic diffusion model (`schedule`, `predict_eps`) of isotropic Gaussian mixture data.

    `means` `(K, H, D)`, `weights` `(K,)` summing to 1, `std` the components' standard deviation.
    """

    def __init__(self, schedule: NoiseSchedule, means: torch.Tensor, std: float = 1.0,
                 weights: torch.Tensor | None = None):
        self.schedule, self.means, self.std = schedule, means, std
        self.log_weights = (torch.full((len(means),), 1 / len(means)) if weights is None else weights).log()

    def _components(self, x_t: torch.Tensor, t: torch.Tensor):
        """`x_t - sqrt(ab_t) m_k` `(B, K, H, D)`, `v_t` `(B,)` and `log w_k N(x_t; ...)` `(B, K)`."""
        alpha_bar = self.schedule.alpha_bars[t]
        variance = alpha_bar * self.std**2 + 1 - alpha_bar
        centred = x_t[:, None] - alpha_bar.sqrt()[:, None, None, None] * self.means
        log_normal = (-centred.pow(2).sum(dim=(2, 3)) / (2 * variance[:, None])
                      - x_t[0].numel() / 2 * torch.log(2 * math.pi * variance)[:, None])
        return centred, variance, self.log_weights + log_normal

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        centred, variance, log_joint = self._components(x_t, t)
        posterior = log_joint.softmax(dim=1)[:, :, None, None]
        return (self.schedule.sigmas[t] / variance)[:, None, None] * (posterior * centred).sum(dim=1)

    def log_density(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._components(x_t, t)[2].logsumexp(dim=1)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        component = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        return self.means[component] + self.std * torch.randn(n, *self.means.shape[1:], generator=generator)


def base_and_expert(case: str) -> tuple[GaussianMixtureModel, GaussianMixtureModel]:
    """Base `N(0, I)`; expert `N(mu, I)` (linear true reward) or a 2-component mixture (non-linear)."""
    schedule, generator = NoiseSchedule(N_STEPS), torch.Generator().manual_seed(1)
    base = GaussianMixtureModel(schedule, torch.zeros(1, HORIZON, TRANSITION_DIM))
    if case == "linear":
        return base, GaussianMixtureModel(schedule, 0.5 * torch.randn(1, HORIZON, TRANSITION_DIM,
                                                                      generator=generator))
    means = torch.randn(2, HORIZON, TRANSITION_DIM, generator=generator)
    return base, GaussianMixtureModel(schedule, means, std=0.5, weights=torch.tensor([0.3, 0.7]))


def train_reward(base, expert, steps: int, target: str = "score") -> RewardNet:
    """Plain Adam on the extraction loss, `x_t` noised from both datasets at uniform `t`."""
    torch.manual_seed(0)
    reward_net, generator = RewardNet(HORIZON, TRANSITION_DIM, dim=32, dim_mults=(1, 2)), torch.Generator()
    generator.manual_seed(2)
    optimizer = torch.optim.Adam(reward_net.parameters(), lr=3e-3)
    for _ in range(steps):
        x0 = torch.cat([base.sample(64, generator), expert.sample(64, generator)])
        loss, _ = extraction_loss(reward_net, base, expert, *noised_batch(x0, base.schedule, generator), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return reward_net


def reward_correlations(reward_net, base, expert, target: str = "score") -> list[float]:
    """Pearson correlation of learned and true reward on fresh noised points, per fixed `t` in EVAL_STEPS. The
    posterior-mean target fits the reward's gradient at `mu_base(x_t, t)`, so it is read there."""
    generator, correlations = torch.Generator().manual_seed(3), []
    for step in EVAL_STEPS:
        x0 = torch.cat([base.sample(256, generator), expert.sample(256, generator)])
        x_t, t = noised_batch(x0, base.schedule, generator, t_range=(step, step))
        with torch.no_grad():
            learned = reward_net(posterior_means(base, expert, x_t, t)[0] if target == "posterior_mean" else x_t, t)
        true = expert.log_density(x_t, t) - base.log_density(x_t, t)
        correlations.append(torch.corrcoef(torch.stack([learned, true]))[0, 1].item())
    return correlations


@pytest.mark.parametrize("case", ["linear", "mixture"])
def test_score_difference_is_gradient_of_log_density_ratio(case):
    base, expert = base_and_expert(case)
    x_t, t = noised_batch(torch.randn(16, HORIZON, TRANSITION_DIM), base.schedule, torch.Generator())
    true_reward = lambda x, t: expert.log_density(x, t) - base.log_density(x, t)
    _, true_gradient = reward_gradient(true_reward, x_t, t)
    torch.testing.assert_close(score_difference(base, expert, x_t, t), true_gradient, atol=1e-3, rtol=1e-3)
    loss, per_sample = extraction_loss(true_reward, base, expert, x_t, t)
    assert per_sample.shape == (16,) and loss.item() < 1e-8


@pytest.mark.parametrize("case", ["linear", "mixture"])
def test_extracted_reward_matches_analytic_reward(case):
    base, expert = base_and_expert(case)
    correlations = reward_correlations(train_reward(base, expert, steps=300), base, expert)
    assert min(correlations) > 0.99, correlations


@pytest.mark.parametrize("case", ["linear", "mixture"])
def test_posterior_mean_target_recovers_the_log_density_ratio(case):
    """The authors' target: the exact log-density ratio times `beta_t / sqrt(alpha_t)` (read at `mu_base`) has zero
    loss for the linear pair, and a trained reward correlates > 0.99 with the true ratio at every `t`."""
    base, expert = base_and_expert(case)
    if case == "linear":  # base N(0, I): mu_base(x_t) = sqrt(alpha_t) x_t, and the ratio's gradient is constant
        schedule = base.schedule
        x_t, t = noised_batch(torch.randn(16, HORIZON, TRANSITION_DIM), schedule, torch.Generator(), (1, N_STEPS - 1))
        sqrt_alpha = lambda t: (1 - schedule.betas[t]).sqrt()[:, None, None]

        def scaled_ratio(y, t):  # (beta_t / sqrt(alpha_t)) sqrt(alpha_t) log-ratio(y / sqrt(alpha_t))
            x = y / sqrt_alpha(t)
            return schedule.betas[t] * (expert.log_density(x, t) - base.log_density(x, t))

        loss, _ = extraction_loss(scaled_ratio, base, expert, x_t, t, "posterior_mean")
        assert loss.item() < 1e-8
    correlations = reward_correlations(train_reward(base, expert, 300, "posterior_mean"), base, expert,
                                       "posterior_mean")
    assert min(correlations) > 0.99, correlations


def test_unknown_target_and_masked_entries():
    base, expert = base_and_expert("mixture")
    x_t, t = noised_batch(torch.randn(4, HORIZON, TRANSITION_DIM), base.schedule, torch.Generator())
    with pytest.raises(UserError, match="extract.target"):
        extraction_loss(lambda x, t: x.sum(dim=(1, 2)), base, expert, x_t, t, "value")
    weights = torch.ones_like(x_t)
    weights[:, 0] = 0
    reward = lambda x, t: (x[:, 0] ** 3).sum(dim=1) * 100 + x[:, 1:].sum(dim=(1, 2))  # wild only at step 0
    _, masked = extraction_loss(reward, base, expert, x_t, t, weights=weights)
    _, rest = extraction_loss(lambda x, t: x[:, 1:].sum(dim=(1, 2)), base, expert, x_t, t, weights=weights)
    torch.testing.assert_close(masked, rest)


def test_wrong_sign_reward_does_not_correlate():
    base, expert = base_and_expert("linear")
    correlations = reward_correlations(train_reward(expert, base, steps=100), base, expert)
    assert max(correlations) < 0.5, correlations


def test_batch_helpers():
    schedule = NoiseSchedule(N_STEPS)
    x_t, t = noised_batch(torch.zeros(64, HORIZON, TRANSITION_DIM), schedule, torch.Generator(), (3, 5))
    assert x_t.shape == (64, HORIZON, TRANSITION_DIM) and set(t.tolist()) == {3, 4, 5}
    with pytest.raises(UserError, match="t_range"):
        noised_batch(x_t, schedule, t_range=(5, N_STEPS))
    bands = loss_by_t_band(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([0, 4, 19]), N_STEPS)
    means = {key: value.item() for key, value in bands.items()}
    assert means["loss_t0-4"] == 2.0 and means["loss_t15-19"] == 10.0
    assert set(means) == {"loss_t0-4", "loss_t5-9", "loss_t10-14", "loss_t15-19"}
    assert math.isnan(means["loss_t5-9"]) and math.isnan(means["loss_t10-14"])  # empty bands: left out when logged
    other = GaussianMixtureModel(NoiseSchedule(N_STEPS, "linear"), torch.zeros(1, HORIZON, TRANSITION_DIM))
    with pytest.raises(UserError, match="different noise schedules"):
        score_difference(GaussianMixtureModel(schedule, other.means), other, x_t, t)


def test_per_step_reward_is_a_mean_over_steps_and_differentiable_twice():
    """reward.architecture=per_step: r(x) is the mean of one MLP over the steps, so permuting the steps leaves it
    unchanged and its gradient at a step depends on that step alone; the extraction's double backward is finite."""
    from relreward_cli.models.networks import reward_network
    from relreward_cli.models.reward_net import StepRewardNet

    assert reward_network("temporal", "per_step") is StepRewardNet
    net = reward_network("temporal", "per_step")(8, 4, dim=8, dim_mults=(1, 2))
    x, t = torch.randn(3, 8, 4, requires_grad=True), torch.tensor([0, 3, 7])
    value = net(x, t)
    assert torch.allclose(value, net(x[:, torch.randperm(8)], t), atol=1e-6)
    (grad,) = torch.autograd.grad(value.sum(), x, create_graph=True)
    moved = x.detach().clone()
    moved[:, 5] += 1.0
    (grad_moved,) = torch.autograd.grad(net(moved.requires_grad_(), t).sum(), moved)
    assert torch.allclose(grad[:, :5], grad_moved[:, :5], atol=1e-6)  # other steps' gradients unchanged
    grad.pow(2).sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(UserError, match="per_step"):
        reward_network("image", "per_step")
