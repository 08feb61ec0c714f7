"""Scoring an extracted reward against a known ground truth: Maze2D reward maps, and (any env) the env's own
return of dataset segments.

A position ``(x, y)`` becomes a trajectory segment by holding it still for the whole horizon (velocity
0, actions 0): the reward network only takes segments, and a segment resting at one point carries
that point's location and nothing else, so its reward is the reward of being there. At diffusion time
``t`` the reward of a clean segment ``x_0`` is ``E_eps r(sqrt(alpha_bar_t) x_0 + sigma_t eps, t)``: ``r(., t)``
is only trained on noised segments, so it is read where the forward process puts ``x_0`` at ``t``, averaged
over ``noise_samples`` draws (``noise_samples=0`` reads it at the mean ``sqrt(alpha_bar_t) x_0`` alone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from relreward_cli.data.segments import episode_transitions
from relreward_cli.data.sources import Episode
from relreward_cli.diffusion.artifact import normalize_observations
from relreward_cli.envs.maze import MazeGeometry
from relreward_cli.errors import UserError
from relreward_cli.reward.trainer import TrainedReward


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long 1-D arrays; NaN where one of them is constant (undefined)."""
    a, b = a - a.mean(), b - b.mean()
    norms = (a * a).sum() * (b * b).sum()
    return float((a * b).sum() / np.sqrt(norms)) if norms > 0 else math.nan


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
def noised_reward(reward: TrainedReward, x0: torch.Tensor, t: int, noise_samples: int = 16, seed: int = 0,
                  batch_size: int = 4096) -> np.ndarray:
    """``E_eps r(sqrt(alpha_bar_t) x_0 + sigma_t eps, t)`` ``(N,)`` for normalized segments ``x0``
    ``(N, horizon, transition_dim)``, over ``noise_samples`` seeded noise draws (0: at the mean alone)."""
    device = next(reward.net.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    alpha_bar = float(reward.schedule.alpha_bars[t])
    values = []
    for start in range(0, len(x0), batch_size):
        mean = x0[start:start + batch_size].to(device) * alpha_bar**0.5
        steps = torch.full((len(mean),), t, device=device, dtype=torch.long)
        draws = [mean + (1 - alpha_bar) ** 0.5 * torch.randn(mean.shape, generator=generator, device=device)
                 for _ in range(noise_samples)] or [mean]
        values.append(torch.stack([reward.net(x, steps) for x in draws]).mean(0).cpu())
    return torch.cat(values).numpy()


def reward_at_positions(reward: TrainedReward, positions_xy: np.ndarray, t: int, noise_samples: int = 16,
                        seed: int = 0) -> np.ndarray:
    """:func:`noised_reward` ``(N,)`` of segments resting at ``positions_xy`` ``(N, 2)``."""
    return noised_reward(reward, resting_segments(reward, positions_xy), t, noise_samples, seed)


def episode_windows(episodes: list[Episode], horizon: int, use_actions: bool, n_windows: int,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_windows`` raw segments ``(n_windows, horizon, transition_dim)`` drawn uniformly (seeded) from the
    full windows of ``episodes`` (episodes shorter than ``horizon`` are skipped), and each one's return
    ``(n_windows,)``: the sum of the env rewards of its ``horizon`` steps."""
    transitions = episode_transitions(episodes, use_actions)
    long_enough = [i for i, episode in enumerate(episodes) if len(episode) >= horizon]
    if not long_enough:
        raise UserError(f"No episode has {horizon} steps to cut a window from: use a shorter horizon.")
    counts = np.array([len(episodes[i]) - horizon + 1 for i in long_enough])
    rng = np.random.default_rng(seed)
    picks = rng.choice(counts.sum(), size=n_windows, replace=counts.sum() < n_windows)
    bounds = np.cumsum(counts)
    segments, returns = [], []
    for pick in picks:
        slot = int(np.searchsorted(bounds, pick, side="right"))
        index, start = long_enough[slot], int(pick - (bounds[slot] - counts[slot]))
        segments.append(transitions[index][start:start + horizon])
        returns.append(float(episodes[index].rewards[start:start + horizon].sum()))
    return np.stack(segments), np.array(returns)


class BestTime:
    """For results that hold one correlation per diffusion time (``t_values``, ``correlations``)."""

    t_values: list[int]
    correlations: list[float]

    @property
    def best(self) -> tuple[int, float]:
        """(t, correlation) of the best diffusion time (the first, with NaN, where no correlation is defined)."""
        defined = not np.isnan(self.correlations).all()
        index = int(np.nanargmax(self.correlations)) if defined else 0
        return self.t_values[index], self.correlations[index]


@dataclass
class SegmentReturnFit(BestTime):
    """The learned reward of dataset segments next to their env return. ``learned`` ``(len(t_values), N)``,
    ``returns`` ``(N,)``, ``is_expert`` ``(N,)`` which dataset each segment came from; ``correlations`` the
    Pearson correlation of ``learned[i]`` with ``returns``."""

    learned: np.ndarray
    returns: np.ndarray
    is_expert: np.ndarray
    t_values: list[int]
    correlations: list[float]


def segment_return_fit(reward: TrainedReward, base: list[Episode], expert: list[Episode], t_values: Sequence[int],
                       n_windows: int = 1024, noise_samples: int = 16, seed: int = 0) -> SegmentReturnFit:
    """Correlate the learned reward (:func:`noised_reward` at each ``t``) of ``n_windows`` segments from each
    of the base and expert episodes with their env return: the ground truth of any env that logs rewards
    (locomotion: forward progress minus control cost)."""
    spec = reward.spec
    raw, returns = zip(*(episode_windows(episodes, spec.horizon, spec.use_actions, n_windows, seed + i)
                         for i, episodes in enumerate((base, expert))), strict=True)
    x0 = torch.as_tensor(reward.normalizer.normalize(np.concatenate(raw)), dtype=torch.float32)
    returns = np.concatenate(returns)
    learned = np.stack([noised_reward(reward, x0, int(t), noise_samples, seed) for t in t_values])
    is_expert = np.repeat([False, True], n_windows)
    return SegmentReturnFit(learned, returns, is_expert, [int(t) for t in t_values],
                            [pearson(row, returns) for row in learned])


@dataclass
class RewardMap(BestTime):
    """The learned reward on a grid next to the ground truth. ``learned`` is ``(len(t_values), ny, nx)``,
    ``truth`` (negative geodesic distance to the goal, world units) and ``free_mask`` are ``(ny, nx)``."""

    xs: np.ndarray
    ys: np.ndarray
    learned: np.ndarray
    truth: np.ndarray
    free_mask: np.ndarray
    t_values: list[int]
    correlations: list[float]


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


@dataclass
class BinnedRewardMap:
    """The learned reward of trajectory windows averaged per position bin, next to the ground truth at the bin
    centres (the authors' evaluation). ``xs`` ``(nx,)``, ``ys`` ``(ny,)`` bin centres (world units); ``learned``
    ``(len(t_values), ny, nx)`` mean reward of the windows whose mean position falls in the bin (NaN where fewer
    than ``min_count``); ``truth`` ``(ny, nx)`` negative maze-geodesic distance to the goal; ``mask`` ``(ny, nx)``
    the bins holding enough windows; ``counts`` ``(ny, nx)`` windows per bin; ``correlations`` Pearson of each
    ``learned[i][mask]`` with ``truth[mask]``."""

    xs: np.ndarray
    ys: np.ndarray
    learned: np.ndarray
    truth: np.ndarray
    mask: np.ndarray
    counts: np.ndarray
    t_values: list[int]
    correlations: list[float]


def bin_by_position(geometry: MazeGeometry, goal_xy: np.ndarray, positions: np.ndarray, values: np.ndarray,
                    t_values: Sequence[int], bin_size: float = 0.25, min_count: int = 3) -> BinnedRewardMap:
    """Average ``values`` ``(len(t_values), N)`` (one reward per window and diffusion time) over square bins of
    ``bin_size`` world units by the windows' ``positions`` ``(N, 2)`` (x, y), and correlate the bin means with the
    negative geodesic distance from each bin centre to ``goal_xy``. Bins tile the maze's bounds, so with a bin size
    that divides the cell size no bin straddles a wall."""
    xs, ys, dist, free = geometry.distance_field(np.asarray(goal_xy, dtype=np.float64), bin_size)
    xmin, _, ymin, _ = geometry.bounds()
    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    col = np.clip(np.floor((positions[:, 0] - xmin) / dx).astype(int), 0, len(xs) - 1)
    row = np.clip(np.floor((positions[:, 1] - ymin) / dy).astype(int), 0, len(ys) - 1)
    flat = row * len(xs) + col
    counts = np.bincount(flat, minlength=len(xs) * len(ys)).reshape(len(ys), len(xs))
    mask = (counts >= min_count) & free & np.isfinite(dist)
    learned = np.full((len(t_values), len(ys), len(xs)), np.nan)
    for layer, row_values in zip(learned, np.atleast_2d(values), strict=True):
        sums = np.bincount(flat, weights=row_values, minlength=len(xs) * len(ys)).reshape(len(ys), len(xs))
        layer[mask] = sums[mask] / counts[mask]
    truth = np.where(mask, -dist, np.nan)
    correlations = [pearson(layer[mask], truth[mask]) for layer in learned]
    return BinnedRewardMap(xs, ys, learned, truth, mask, counts, [int(t) for t in t_values], correlations)


def window_positions(windows: np.ndarray, action_dim: int) -> np.ndarray:
    """Mean (x, y) ``(N, 2)`` over the steps of raw Maze2D windows ``(N, H, transition_dim)`` (observations
    start at ``action_dim``, x and y first)."""
    return windows[:, :, action_dim:action_dim + 2].mean(axis=1)
