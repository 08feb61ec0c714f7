"""Scoring an extracted reward against a known ground truth: Maze2D reward maps.

A position ``(x, y)`` becomes a trajectory segment by holding it still for the whole horizon (velocity
0, actions 0): the reward network only takes segments, and a segment resting at one point carries
that point's location and nothing else, so its reward is the reward of being there. At diffusion time
``t`` the segment is scaled to ``sqrt(alpha_bar_t) x_0``, the mean of the forward process at ``t``, the
point around which ``r(., t)`` was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from relreward_cli.envs.maze import MazeGeometry
from relreward_cli.reward.trainer import TrainedReward


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long 1-D arrays."""
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-30))


def resting_segments(reward: TrainedReward, positions_xy: np.ndarray) -> torch.Tensor:
    """Normalized segments ``(N, horizon, transition_dim)`` resting at each position ``(N, 2)``."""
    spec = reward.spec
    rows = np.zeros((len(positions_xy), spec.transition_dim), np.float32)
    rows[:, spec.action_dim:spec.action_dim + 2] = positions_xy
    normalized = reward.normalizer.normalize(rows)
    return torch.as_tensor(normalized, dtype=torch.float32)[:, None, :].expand(-1, spec.horizon, -1)


@torch.no_grad()
def reward_at_positions(reward: TrainedReward, positions_xy: np.ndarray, t: int,
                        batch_size: int = 4096) -> np.ndarray:
    """``r(sqrt(alpha_bar_t) x_0, t)`` ``(N,)`` for segments resting at ``positions_xy`` ``(N, 2)``."""
    device = next(reward.net.parameters()).device
    scale = float(reward.schedule.alpha_bars[t]) ** 0.5
    values = []
    for start in range(0, len(positions_xy), batch_size):
        x = resting_segments(reward, positions_xy[start:start + batch_size]).to(device) * scale
        values.append(reward.net(x, torch.full((len(x),), t, device=device, dtype=torch.long)).cpu())
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
                    t_values: Sequence[int], resolution: float = 0.05) -> RewardMap:
    """Evaluate the reward over the maze on a ``resolution``-spaced grid at each ``t`` and correlate it
    (Pearson, over reachable free space) with the negative maze-geodesic distance to ``goal_xy``."""
    xs, ys, dist, free = geometry.distance_field(np.asarray(goal_xy, dtype=np.float64), resolution)
    mask = free & np.isfinite(dist)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    learned = np.stack([reward_at_positions(reward, grid, int(t)).reshape(len(ys), len(xs)) for t in t_values])
    truth = np.where(mask, -dist, np.nan)
    correlations = [pearson(layer[mask], truth[mask]) for layer in learned]
    return RewardMap(xs, ys, learned, truth, mask, [int(t) for t in t_values], correlations)
