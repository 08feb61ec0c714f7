"""Maze2D (PointMaze): a base dataset wandering to random goals and an expert dataset going to one goal, made
offline with D4RL's waypoint controller; the reward compared with the maze distance to that goal; planners that
track planned states with a PD controller, scored by reaching the goal."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from relreward_cli.data.generate_maze import (
    Maze2DGeneration,
    generate_maze2d_episodes,
    read_dataset_metadata,
    write_minari_dataset,
)
from relreward_cli.data.pairs import SegmentPair
from relreward_cli.data.sources import split_source
from relreward_cli.diffusion.artifact import TrainedDiffusion
from relreward_cli.envs.maze import MazeGeometry
from relreward_cli.envs.registry import make_maze_env
from relreward_cli.errors import UserError
from relreward_cli.families.trajectory import TrajectoryFamily, dataset_up_to_date, one_writer_at_a_time
from relreward_cli.planning.maze_plans import plan_quality, random_free_positions, sample_maze_plans
from relreward_cli.planning.rollout import PlanFollower, PlannedActions, Rollouts, WaypointTracker
from relreward_cli.plots import plot_maze_paths, plot_maze_plans, plot_reward_maps
from relreward_cli.reward.evaluate import maze_reward_map
from relreward_cli.reward.trainer import TrainedReward
from relreward_cli.stages.common import data_root
from relreward_cli.tracking import RunTracker


def maze_goal(cfg: DictConfig) -> tuple[MazeGeometry, np.ndarray]:
    """The maze of a Maze2D env config and the expert's goal (world x, y). The goal must be the one the expert
    data were generated for (their metadata's `goal_cell`), else every reward map and success rate would be
    measured against a goal the expert never went to."""
    geometry = MazeGeometry.from_name(cfg.env.maze)
    goal = tuple(geometry.check_free(tuple(cfg.env.goal_cell)))
    kind, dataset_id = split_source(cfg.env.expert_data)
    if kind == "generated":
        data_goal = read_dataset_metadata(dataset_id, data_root(cfg)).get("goal_cell")
        if data_goal is not None and tuple(data_goal) != goal:
            raise UserError(f"env.goal_cell={list(goal)}, but the expert data {cfg.env.expert_data} were made for "
                            f"the goal {list(data_goal)}. Pass env.goal_cell={list(data_goal)}, or make data for "
                            f"this goal (`relreward make-dataset env={cfg.env.name} env.goal_cell={list(goal)} "
                            "overwrite=true`, or another data_dir) and train on them.")
    return geometry, geometry.cell_to_xy(np.asarray(goal))


class Maze2DFamily(TrajectoryFamily):
    name = "maze2d"

    def check_config(self, cfg: DictConfig) -> None:
        maze_goal(cfg)

    @one_writer_at_a_time
    def make_datasets(self, cfg: DictConfig, kinds: tuple[str, ...], overwrite: bool) -> dict[str, dict]:
        """The ``kinds`` (base, expert) named by ``env.<kind>_data``, each written unless identical data exist."""
        root, gen = data_root(cfg), cfg.env.generate
        results = {}
        for kind in kinds:
            source_kind, dataset_id = split_source(cfg.env[f"{kind}_data"])
            if source_kind != "generated":
                raise UserError(f"env.{kind}_data={cfg.env[f'{kind}_data']} is not a generated:<id> source, so "
                                "make-dataset has nothing to write; use generated:<namespace>/<name>-v0.")
            settings = Maze2DGeneration(maze=cfg.env.maze, kind=kind, n_episodes=gen[kind].n_episodes,
                                        episode_steps=gen[kind].episode_steps, goal_cell=tuple(cfg.env.goal_cell),
                                        action_noise=gen.action_noise, seed=gen.seed + (0 if kind == "base" else 1))
            wanted = settings.metadata()
            steps = settings.n_episodes * settings.episode_steps
            if dataset_up_to_date(dataset_id, wanted, root, overwrite):
                results[kind] = {"id": dataset_id, "steps": steps, "seconds": 0.0, "status": "exists"}
                continue
            start = time.perf_counter()
            episodes = generate_maze2d_episodes(settings)
            env = make_maze_env(cfg.env.maze)
            write_minari_dataset(dataset_id, episodes, env, wanted, root, overwrite=(root / dataset_id).exists())
            env.close()
            results[kind] = {"id": dataset_id, "steps": steps, "seconds": time.perf_counter() - start,
                             "status": "written"}
        return results

    def model_diagnostics(self, cfg: DictConfig, model: TrainedDiffusion, tracker: RunTracker, kind: str,
                          n_plans: int = 64) -> dict:
        """Plans sampled from random starts: some drawn on the maze; the share in walls, the distance to the goal."""
        geometry, goal_xy = maze_goal(cfg)
        starts = random_free_positions(geometry, n_plans, np.random.default_rng(cfg.seed))
        generator = torch.Generator(model.diffusion.device).manual_seed(cfg.seed)
        plans = sample_maze_plans(model, starts, cfg.train.sampler, generator)
        quality = plan_quality(geometry, plans, goal_xy)
        path = plot_maze_plans(geometry, plans[: cfg.train.n_plot_samples], goal_xy,
                               tracker.plots_dir / "samples.png", f"{kind} model: {cfg.train.sampler} plans from "
                               f"random starts (in walls {quality['wall_fraction']:.1%})")
        tracker.log_image("samples", path)
        return {f"plans/{key}": value for key, value in quality.items()}

    def reward_diagnostics(self, cfg: DictConfig, reward: TrainedReward, data: SegmentPair,
                           tracker: RunTracker) -> dict:
        """The segment-return fit, and the reward of an agent resting at each point of the maze against minus the
        maze (geodesic) distance to the goal, per diffusion time of ``extract.eval_t``."""
        metrics = super().reward_diagnostics(cfg, reward, data, tracker)
        geometry, goal_xy = maze_goal(cfg)
        ec = cfg.extract
        reward_map = maze_reward_map(reward, geometry, goal_xy, list(ec.eval_t), ec.grid_resolution,
                                     ec.eval_noise_samples)
        path = plot_reward_maps(geometry, reward_map.xs, reward_map.ys, reward_map.learned, reward_map.truth,
                                reward_map.free_mask, reward_map.t_values, reward_map.correlations, goal_xy,
                                tracker.plots_dir / "reward_maps.png")
        tracker.log_image("reward_maps", path)
        best_t, best = reward_map.best
        return metrics | {**{f"pearson/t{t}": rho for t, rho in zip(reward_map.t_values, reward_map.correlations,
                                                                        strict=True)},
                          "pearson/best": best, "pearson/best_t": best_t, "heatmap": str(path)}

    def plan_follower(self, cfg: DictConfig, model: TrainedDiffusion) -> PlanFollower:
        """The planned actions when the model plans them, else a PD controller tracking the planned states."""
        spec, gains = model.spec, cfg.steer.controller
        return PlannedActions(spec.act_dim) if spec.use_actions else WaypointTracker(spec.action_dim, gains.p_gain,
                                                                                       gains.d_gain)

    def reset_options(self, cfg: DictConfig) -> dict:
        return {"goal_cell": np.asarray(cfg.env.goal_cell)}

    def rollout_plots(self, cfg: DictConfig, rollouts: dict[str, list[Rollouts]], tracker: RunTracker
                      ) -> dict[str, Path]:
        geometry, goal_xy = maze_goal(cfg)
        executed = {name: [path[:, :2] for path in runs[0].paths[:cfg.steer.n_plot_paths]]
                    for name, runs in rollouts.items()}
        return {"paths_plot": plot_maze_paths(geometry, executed, goal_xy, tracker.plots_dir / "paths.png")}

    def headline(self, summary: dict) -> str | None:
        if "pearson/best" not in summary:
            return None
        per_t = ", ".join(f"t={key.removeprefix('pearson/t')}: {value:.3f}" for key, value in summary.items()
                          if key.startswith("pearson/t"))
        return (f"Learned reward vs ground truth (negative geodesic distance to the goal): Pearson "
                f"{summary['pearson/best']:.3f} at t={summary['pearson/best_t']} ({per_t}).\n"
                f"Heatmap: {summary['heatmap']}")


FAMILY = Maze2DFamily
