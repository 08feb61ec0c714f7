"""Scoring an extracted reward against a known ground truth: Maze2D reward maps.

A position ``(x, y)`` becomes a trajectory segment by holding it still for the whole horizon (velocity
0, actions 0): the reward network only takes segments, and a segment resting at one point carries
that point's location and nothing else, so its reward is the reward of being there. At diffusion time
``t`` the reward of a clean segment ``x_0`` is ``E_eps r(sqrt(alpha_bar_t) x_0 + sigma_t eps, t)``: ``r(., t)``
is only trained on noised segments, so it is read where the forward process puts ``x_0`` at ``t``, averaged
over ``noise_samples`` draws (``noise_samples=0`` reads it at the mean ``sqrt(alpha_bar_t) x_0`` alone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from relreward_cli.diffusion.artifact import normalize_observations
from relreward_cli.envs.maze import MazeGeometry
from relreward_cli.reward.trainer import TrainedReward


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long 1-D arrays."""
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-30))


def resting_segments(reward: TrainedReward, positions_xy: np.ndarray) -> torch.Tensor:
    """Normalized segments ``(N, horizon, transition_dim)`` resting at each position ``(N, 2)``: every step
    holds the observation ``(x, y, 0, ...)`` (velocity 0) and a normalized action of 0."""
    spec = reward.spec
    observations = np.zeros((len(positions_xy), spec.obs_dim), np.float32)
    observations[:, :2] = positions_xy
    rows = torch.zeros(len(positions_xy), spec.transition_dim)
    rows[:, spec.action_dim:] = torch.as_tensor(normalize_observations(spec, reward.normalizer, observations))
    return rows[:, None, :].expand(-1, spec.horizon, -1)


@torch.no_grad()
def reward_at_positions(reward: TrainedReward, positions_xy: np.ndarray, t: int, noise_samples: int = 16,
                        seed: int = 0, batch_size: int = 4096) -> np.ndarray:
    """``E_eps r(sqrt(alpha_bar_t) x_0 + sigma_t eps, t)`` ``(N,)`` for segments ``x_0`` resting at
    ``positions_xy`` ``(N, 2)``, over ``noise_samples`` noise draws (0: at the mean alone), seeded."""
    device = next(reward.net.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    alpha_bar = float(reward.schedule.alpha_bars[t])
    values = []
    for start in range(0, len(positions_xy), batch_size):
        mean = resting_segments(reward, positions_xy[start:start + batch_size]).to(device) * alpha_bar**0.5
        steps = torch.full((len(mean),), t, device=device, dtype=torch.long)
        draws = [mean + (1 - alpha_bar) ** 0.5 * torch.randn(mean.shape, generator=generator, device=device)
                 for _ in range(noise_samples)] or [mean]
        values.append(torch.stack([reward.net(x, steps) for x in draws]).mean(0).cpu())
    return torch.cat(values).numpy()


@dataclass
class RewardMap:
    """The learned reward on a grid next to the ground truth. ``learned`` is ``(len(t_values), ny, nx)``,
    ``truth`` (negative geodesic distance to the goal, world units) and ``free_mask`` are ``(ny, nx)``."""

    xs: np.ndarray
    ys: np.ndarray
    learned: np.ndarray
    truth: np.ndarray
    free_mask: np.ndarray
    t_values: list[int]
    correlations: list[float]

    @property
    def best(self) -> tuple[int, float]:
        """(t, correlation) of the best diffusion time."""
        index = int(np.argmax(self.correlations))
        return self.t_values[index], self.correlations[index]


def maze_reward_map(reward: TrainedReward, geometry: MazeGeometry, goal_xy: np.ndarray,
                    t_values: Sequence[int], resolution: float = 0.05, noise_samples: int = 16) -> RewardMap:
    """Evaluate the reward over the maze's reachable free space on a ``resolution``-spaced grid at each ``t``
    (see :func:`reward_at_positions`) and correlate it (Pearson) with the negative maze-geodesic distance to
    ``goal_xy``. Grid points in walls are NaN in ``learned`` and ``truth``."""
    xs, ys, dist, free = geometry.distance_field(np.asarray(goal_xy, dtype=np.float64), resolution)
    mask = free & np.isfinite(dist)
    points = np.stack(np.meshgrid(xs, ys), axis=-1)[mask]
    learned = np.full((len(t_values), len(ys), len(xs)), np.nan)
    for layer, t in zip(learned, t_values, strict=True):
        layer[mask] = reward_at_positions(reward, points, int(t), noise_samples)
    truth = np.where(mask, -dist, np.nan)
    correlations = [pearson(layer[mask], truth[mask]) for layer in learned]
    return RewardMap(xs, ys, learned, truth, mask, [int(t) for t in t_values], correlations)
