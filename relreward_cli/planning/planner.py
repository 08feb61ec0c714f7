"""Planning with a trajectory diffusion model from the current states, optionally steered by a reward."""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch

from relreward_cli.diffusion.artifact import TrainedDiffusion, normalize_observations, space_mismatches
from relreward_cli.errors import UserError
from relreward_cli.planning.guidance import RewardGuide


class PlanBatch(NamedTuple):
    """`best` `(B, H, transition_dim)`: the chosen plan per state, unnormalized (actions first when the model
    has them); `candidates` `(B, n_plans, H, transition_dim)` every sampled plan, normalized; `rewards`
    `(B, n_plans)` their `RewardGuide.plan_reward` (None unsteered); `seconds` the batch's wall time."""

    best: np.ndarray
    candidates: torch.Tensor
    rewards: torch.Tensor | None
    seconds: float


class GuidedPlanner:
    """Samples `n_plans` plans per current state in one batch of `B * n_plans` segments, each with its state
    inpainted at step 0, and keeps one per state.

    Unsteered (`guide=None`) it keeps the first; steered it samples with reward guidance and keeps the plan of
    highest reward (`RewardGuide.plan_reward`). With `n_plans=1` and `guide.scale=0` the steered planner draws
    exactly the unsteered planner's plans (same `generator` state). `sampler`, `n_sample_steps`, `eta`: as
    `GaussianDiffusion.sample`.
    """

    def __init__(self, model: TrainedDiffusion, guide: RewardGuide | None = None, n_plans: int = 1,
                 sampler: str = "ddpm", n_sample_steps: int | None = None, eta: float = 0.0,
                 generator: torch.Generator | None = None):
        if n_plans < 1:
            raise UserError(f"n_plans={n_plans}: the planner needs at least one plan per state.")
        if guide is not None:
            problems = space_mismatches(model, guide.reward, ("model", "reward"))
            if problems:
                raise UserError(
                    f"The reward {guide.reward.path} was not extracted in the space of the model {model.path}: "
                    f"{'; '.join(problems)}. Steer the base model the reward was extracted from (recorded "
                    f"in the reward file as {guide.reward.info.get('base_model', 'unknown')}).")
        self.model, self.guide, self.n_plans = model, guide, n_plans
        self.sampler, self.n_sample_steps, self.eta = sampler, n_sample_steps, eta
        self.generator = generator

    def sample(self, observations: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalized plans `(B, n_plans, H, D)` from raw observations `(B, obs_dim)`, and their rewards
        `(B, n_plans)` (None unsteered). Plan `j` of state `i` is row `i * n_plans + j` of the batch."""
        diffusion = self.model.diffusion
        states = normalize_observations(self.model.spec, self.model.normalizer,
                                        np.repeat(observations, self.n_plans, axis=0))
        conditions = {0: torch.as_tensor(states, dtype=torch.float32, device=diffusion.device)}
        x = diffusion.sample(len(states), conditions, sampler=self.sampler, n_sample_steps=self.n_sample_steps,
                             eta=self.eta, generator=self.generator, guide=self.guide).x
        rewards = None if self.guide is None else self.guide.plan_reward(x).view(-1, self.n_plans)
        return x.view(len(observations), self.n_plans, *x.shape[1:]), rewards

    def plan(self, observations: np.ndarray) -> PlanBatch:
        """The chosen plan for each raw observation `(B, obs_dim)` (see the class docstring)."""
        start = _clock()
        candidates, rewards = self.sample(observations)
        rows = torch.arange(len(candidates), device=candidates.device)
        best = candidates[rows, 0 if rewards is None else rewards.argmax(dim=1)]
        best = self.model.normalizer.unnormalize(best.cpu().numpy())
        return PlanBatch(best, candidates, rewards, _clock() - start)


def _clock() -> float:
    """Seconds (synchronizing CUDA first, so GPU timings are honest)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()
