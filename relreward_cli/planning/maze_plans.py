"""Maze2D plans from a diffusion model: sampled from start states, measured against the maze."""

from __future__ import annotations

import numpy as np
import torch

from relreward_cli.diffusion.artifact import TrainedDiffusion, normalize_observations
from relreward_cli.envs.maze import MazeGeometry


def random_free_positions(geometry: MazeGeometry, n: int, rng: np.random.Generator,
                          jitter: float = 0.3) -> np.ndarray:
    """``n`` world positions ``(n, 2)``: random free-cell centres, jittered by up to ``jitter`` cell widths."""
    cells = geometry.free_cells()[rng.integers(len(geometry.free_cells()), size=n)]
    return geometry.cell_to_xy(cells) + rng.uniform(-jitter, jitter, (n, 2)) * geometry.scaling


def sample_maze_plans(model: TrainedDiffusion, starts_xy: np.ndarray, sampler: str = "ddpm",
                      generator: torch.Generator | None = None) -> np.ndarray:
    """Plans ``(N, horizon, 2)`` in world x, y from each start ``(N, 2)`` (at rest), the start inpainted."""
    device = model.diffusion.device
    start = np.concatenate([starts_xy, np.zeros_like(starts_xy)], axis=-1)  # (x, y, vx, vy)
    start_norm = normalize_observations(model.spec, model.normalizer, start)
    conditions = {0: torch.as_tensor(start_norm, dtype=torch.float32, device=device)}
    x = model.diffusion.sample(len(starts_xy), conditions, sampler=sampler, generator=generator).x
    return observations_of(model, x)[..., :2]


def observations_of(model: TrainedDiffusion, x: torch.Tensor) -> np.ndarray:
    """Unnormalized observations ``(B, H, obs_dim)`` of normalized segments ``x`` ``(B, H, transition_dim)``."""
    return model.normalizer.unnormalize(x.detach().cpu().numpy())[..., model.spec.action_dim:]


def plan_quality(geometry: MazeGeometry, plans_xy: np.ndarray, goal_xy: np.ndarray,
                 resolution: float = 0.05) -> dict[str, float]:
    """How plausible Maze2D plans ``(N, H, 2)`` are: the fraction of plan points inside walls, and the mean
    final distance to ``goal_xy`` (Euclidean and maze-geodesic, world units)."""
    points = plans_xy.reshape(-1, 2)
    xs, ys, dist, free = geometry.distance_field(goal_xy, resolution)
    final = plans_xy[:, -1]
    ix = np.clip(np.searchsorted(xs, final[:, 0]), 0, len(xs) - 1)
    iy = np.clip(np.searchsorted(ys, final[:, 1]), 0, len(ys) - 1)
    geodesic = dist[iy, ix]
    return {
        "wall_fraction": float(geometry.in_wall(points).mean()),
        "final_goal_distance": float(np.linalg.norm(final - goal_xy, axis=-1).mean()),
        "final_goal_geodesic": float(np.nanmean(np.where(np.isfinite(geodesic), geodesic, np.nan))),
    }
