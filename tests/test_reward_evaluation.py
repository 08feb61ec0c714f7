"""Scoring a reward against the env return of dataset segments (`reward.evaluate.segment_return_fit`)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from relreward_cli.data.normalizer import fit_transition_normalizer
from relreward_cli.data.sources import Episode
from relreward_cli.diffusion.artifact import DiffusionSpec
from relreward_cli.diffusion.schedule import NoiseSchedule
from relreward_cli.reward.evaluate import SegmentReturnFit, episode_windows, pearson, segment_return_fit
from relreward_cli.reward.trainer import TrainedReward

OBS_DIM, ACT_DIM, HORIZON = 3, 2, 4


def episodes(seed: int, n: int, length: int) -> list[Episode]:
    """Random episodes whose env reward is the first observation coordinate of each step."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        observations = rng.normal(size=(length + 1, OBS_DIM))
        out.append(Episode(observations, rng.uniform(-1, 1, (length, ACT_DIM)), observations[:-1, 0],
                           np.zeros(length, bool), np.eye(1, length, length - 1, dtype=bool)[0]))
    return out


class SummedCoordinate(torch.nn.Module):
    """r(x, t) = sign * sum over the horizon of the first observation coordinate (normalized units)."""

    def __init__(self, sign: float):
        super().__init__()
        self.sign = torch.nn.Parameter(torch.tensor(sign), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.sign * x[:, :, ACT_DIM].sum(dim=1)


def linear_reward(sign: float, data: list[list[Episode]]) -> TrainedReward:
    spec = DiffusionSpec(HORIZON, OBS_DIM, ACT_DIM, True, 8, (1, 2), 10)
    normalizer = fit_transition_normalizer(data, use_actions=True)
    return TrainedReward(SummedCoordinate(sign), spec, normalizer, NoiseSchedule(10, "cosine"), {}, Path("-"))


def test_episode_windows_cut_full_windows_and_sum_their_rewards():
    data = episodes(0, 3, 10) + episodes(1, 1, 2)  # the 2-step episode is too short for a window
    segments, returns = episode_windows(data, HORIZON, use_actions=True, n_windows=200, seed=0)
    assert segments.shape == (200, HORIZON, ACT_DIM + OBS_DIM)
    np.testing.assert_allclose(returns, segments[:, :, ACT_DIM].sum(axis=1), rtol=1e-5)
    starts = {(tuple(segment[0]),) for segment in segments}
    assert len(starts) == 3 * (10 - HORIZON + 1)  # every window of the long episodes, none of the short one
    again, _ = episode_windows(data, HORIZON, use_actions=True, n_windows=200, seed=0)
    np.testing.assert_array_equal(segments, again)


@pytest.mark.parametrize(("sign", "expected"), [(1.0, 1.0), (-1.0, -1.0)])
def test_segment_return_fit_recovers_a_reward_that_is_the_return(sign, expected):
    base, expert = episodes(2, 4, 50), episodes(3, 4, 50)
    reward = linear_reward(sign, [base, expert])
    fit = segment_return_fit(reward, base, expert, t_values=[0, 5], n_windows=64, noise_samples=0)
    assert fit.learned.shape == (2, 128) and fit.is_expert.sum() == 64
    np.testing.assert_allclose(fit.correlations, [expected, expected], atol=1e-5)
    noisy = segment_return_fit(reward, base, expert, t_values=[0, 9], n_windows=64, noise_samples=4)
    assert expected * noisy.correlations[0] > 0.9  # t=0: little noise
    assert abs(noisy.correlations[1]) < abs(noisy.correlations[0]) - 0.2  # t=9: the noise hides the reward


def _points_and_distances(maze: str, goal_cell: tuple[int, int], n: int = 20000, seed: int = 0):
    """Uniform points in a maze's free space, with their geodesic and straight-line distances to the goal."""
    from relreward_cli.envs.maze import MazeGeometry

    geometry = MazeGeometry.from_name(maze)
    goal_xy = geometry.cell_to_xy(np.array(goal_cell))
    xs, ys, dist, free = geometry.distance_field(goal_xy, 0.05)
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(free & np.isfinite(dist))
    picks = rng.integers(len(rows), size=n)
    points = np.stack([xs[cols[picks]], ys[rows[picks]]], axis=1)
    return geometry, goal_xy, points, dist[rows[picks], cols[picks]], np.linalg.norm(points - goal_xy, axis=1)


def test_binned_map_rewards_the_maze_distance_not_the_straight_line():
    """U-maze, goal in the top-left dead end: a reward of minus the geodesic distance correlates > 0.99 with the
    binned truth; minus the straight-line distance (which rates the bottom-left arm, behind the wall, as near)
    clearly less."""
    from relreward_cli.reward.evaluate import bin_by_position

    geometry, goal_xy, points, geodesic, straight = _points_and_distances("umaze", (1, 1))
    binned = bin_by_position(geometry, goal_xy, points, np.stack([-geodesic, -straight]), [0, 1], bin_size=0.25)
    assert binned.correlations[0] > 0.99
    assert binned.correlations[1] < 0.9
    assert binned.mask.sum() > 50 and (binned.counts[binned.mask] >= 3).all()
    assert np.isnan(binned.learned[0][~binned.mask]).all()


def test_binned_map_leaves_out_sparse_bins():
    from relreward_cli.reward.evaluate import bin_by_position

    geometry, goal_xy, points, geodesic, _ = _points_and_distances("umaze", (1, 1), n=40)
    binned = bin_by_position(geometry, goal_xy, points, -geodesic[None], [0], bin_size=0.25, min_count=3)
    assert (binned.counts[binned.mask] >= 3).all() and binned.mask.sum() < (binned.counts > 0).sum()


def test_a_correlation_with_a_constant_is_undefined_not_zero():
    """Segments whose returns are all equal (no reward in their windows) give no correlation: NaN, which the report
    counts as a run without a value, where 0.0 would read as a measured absence of correlation."""
    ramp = np.arange(10.0)
    assert pearson(ramp, 2 * ramp + 1) == pytest.approx(1.0) and pearson(ramp, -ramp) == pytest.approx(-1.0)
    assert np.isnan(pearson(ramp, np.zeros(10))) and np.isnan(pearson(np.ones(10), ramp))
    def fit(correlations: list[float]) -> SegmentReturnFit:
        return SegmentReturnFit(learned=None, returns=None, is_expert=None, t_values=[0, 2, 5][:len(correlations)],
                                correlations=correlations)

    assert fit([np.nan, 0.3, 0.7]).best == (5, 0.7)  # the defined ones compete
    t, value = fit([np.nan, np.nan]).best
    assert t == 0 and np.isnan(value)
