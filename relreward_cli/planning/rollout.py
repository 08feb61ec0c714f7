"""Receding-horizon rollouts of a planner in vectorized environments: the plans of all episodes are sampled
in one batch, followed for `replan_every` steps, then sampled again from the states reached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from relreward_cli.data.sources import flat_observations
from relreward_cli.errors import UserError
from relreward_cli.planning.planner import GuidedPlanner


class PlanFollower(Protocol):
    """Turns plans into actions: `(plans (B, H, transition_dim) unnormalized, steps since they were made,
    observations (B, obs_dim)) -> actions (B, act_dim)`."""

    def __call__(self, plans: np.ndarray, step: int, observations: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PlannedActions:
    """Executes the planned actions (models with `use_actions`): action `step` of each plan, i.e. the first
    right after replanning (the plan's step 0 holds the current state and the action to take in it)."""

    act_dim: int

    def __call__(self, plans: np.ndarray, step: int, observations: np.ndarray) -> np.ndarray:
        return plans[:, step, :self.act_dim]


@dataclass(frozen=True)
class WaypointTracker:
    """Maze2D (state-only plans `x, y, vx, vy`): PD control toward the next planned state, as Diffuser's
    maze2d policy (`action = (x_next - x) + (v_next - v)`) with gains:
    `action = p_gain * (xy_{step+1} - xy) + d_gain * (v_{step+1} - v)`, clipped to [-1, 1].

    PointMaze's ball (about 4.2 kg, gear 100, dt 0.01 s) changes its velocity by 0.24 m/s per step at full
    action, so `d_gain` about 4 inverts the planned velocity change in one step and `p_gain` pulls the
    accumulated position error back (world units).
    """

    action_dim: int
    p_gain: float = 10.0
    d_gain: float = 4.0

    def __call__(self, plans: np.ndarray, step: int, observations: np.ndarray) -> np.ndarray:
        target = plans[:, min(step + 1, plans.shape[1] - 1), self.action_dim:]
        action = (self.p_gain * (target[:, :2] - observations[:, :2])
                  + self.d_gain * (target[:, 2:4] - observations[:, 2:4]))
        return np.clip(action, -1.0, 1.0)


@dataclass
class Rollouts:
    """Episodes of one planner. `returns` `(E,)` summed env rewards, `lengths` `(E,)` steps, `success` `(E,)`
    whether the agent came within the success radius of the env's goal (None without a goal), `paths` E
    arrays `(T_e + 1, obs_dim)` of the observations met, `plan_seconds` one wall time per replanning batch,
    `terminated` `(E,)` whether the env ended the episode early (Hopper, Walker2d: a fall), `flipped` `(E,)`
    whether the torso pitch passed 90 degrees (None for envs without one)."""

    returns: np.ndarray
    lengths: np.ndarray
    success: np.ndarray | None
    paths: list[np.ndarray]
    plan_seconds: np.ndarray
    terminated: np.ndarray
    flipped: np.ndarray | None = None


def _goal_distance(observations: Any) -> np.ndarray | None:
    """Distance `(B,)` from the achieved to the desired goal of goal-conditioned (dict) observations."""
    if isinstance(observations, dict) and {"achieved_goal", "desired_goal"} <= observations.keys():
        return np.linalg.norm(observations["achieved_goal"] - observations["desired_goal"], axis=-1)
    return None


def rollout(planner: GuidedPlanner, envs: gym.vector.VectorEnv, follower: PlanFollower, episode_seeds: list[int],
            replan_every: int, reset_options: dict | None = None, success_radius: float = 0.5,
            progress: str | None = None, max_steps: int | None = None,
            torso_angle_index: int | None = None) -> Rollouts:
    """One episode per sub-environment of `envs` (env `i` reset with `episode_seeds[i]`), until each ends.

    Every `replan_every` steps the planner plans for all unfinished episodes in one batch; in between, the
    follower follows each plan. A finished sub-environment (vector autoreset) is no longer planned for or
    recorded. `replan_every` must leave a next planned step: `1 <= replan_every < horizon`. `progress`: the
    label of a progress bar over env steps (None: no bar), out of `max_steps` (the episodes' step limit).
    `torso_angle_index`: the observation entry of the torso pitch, recorded as `flipped` past 90 degrees.
    """
    horizon = planner.model.spec.horizon
    if not 1 <= replan_every < horizon:
        raise UserError(f"replan_every={replan_every} must be between 1 and horizon - 1 = {horizon - 1}: a plan "
                        f"of {horizon} steps can be followed for at most {horizon - 1} steps.")
    n = envs.num_envs
    if len(episode_seeds) != n:
        raise UserError(f"{len(episode_seeds)} episode seeds for {n} environments; give one seed per episode.")
    raw, _ = envs.reset(seed=list(episode_seeds), options=reset_options)
    observations = flat_observations(raw, "the environment")
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    distance = _goal_distance(raw)
    success = None if distance is None else distance <= success_radius
    paths, done, ended_early = [[row] for row in observations], np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    flipped = None if torso_angle_index is None else np.abs(observations[:, torso_angle_index]) > np.pi / 2
    plans = np.zeros((n, horizon, planner.model.spec.transition_dim), dtype=np.float32)
    plan_seconds, t = [], 0
    space = envs.single_action_space
    bar = tqdm(total=max_steps, desc=progress, unit="step", disable=progress is None, leave=False)
    while not done.all():
        step = t % replan_every
        if step == 0:
            batch = planner.plan(observations[~done])
            plans[~done] = batch.best
            plan_seconds.append(batch.seconds)
        actions = np.clip(follower(plans, step, observations), space.low, space.high).astype(space.dtype)
        raw, rewards, terminated, truncated, _ = envs.step(actions)
        observations, active = flat_observations(raw, "the environment"), ~done
        returns[active] += rewards[active]
        lengths[active] += 1
        if success is not None:
            success[active] |= _goal_distance(raw)[active] <= success_radius
        if flipped is not None:
            flipped[active] |= np.abs(observations[active, torso_angle_index]) > np.pi / 2
        for index in np.flatnonzero(active):
            paths[index].append(observations[index])
        ended_early[active] |= terminated[active]
        done |= terminated | truncated
        t += 1
        bar.update()
        if step == 0:
            bar.set_postfix(mean_return=f"{returns.mean():.1f}", refresh=False)
    bar.close()
    return Rollouts(returns, lengths, success, [np.stack(path) for path in paths], np.array(plan_seconds),
                    ended_early, flipped)
