"""Maze2D (PointMaze): a base dataset wandering to random goals and an expert dataset going to one goal, made
offline with D4RL's waypoint controller; the reward compared with the maze distance to that goal; planners that
track planned states with a PD controller, scored by reaching the goal."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from relreward_cli.data.generate_maze import (
    ADDED_SETTINGS,
    Maze2DGeneration,
    generate_maze2d_episodes,
    read_dataset_metadata,
    write_minari_dataset,
)
from relreward_cli.data.pairs import SegmentPair
from relreward_cli.data.sources import Episode, split_source
from relreward_cli.diffusion.artifact import TrainedDiffusion
from relreward_cli.envs.maze import MazeGeometry
from relreward_cli.envs.registry import make_maze_env
from relreward_cli.errors import UserError
from relreward_cli.families.trajectory import TrajectoryFamily, dataset_up_to_date, one_writer_at_a_time
from relreward_cli.planning.maze_plans import plan_quality, random_free_positions, sample_maze_plans
from relreward_cli.planning.rollout import PlanFollower, PlannedActions, Rollouts, WaypointTracker
from relreward_cli.plots import plot_maze_paths, plot_maze_plans, plot_reward_maps
from relreward_cli.reward.classification import auroc, heldout_accuracy
from relreward_cli.reward.evaluate import (
    bin_by_position,
    episode_windows,
    maze_reward_map,
    noised_reward,
    window_positions,
)
from relreward_cli.reward.trainer import TrainedReward
from relreward_cli.stages.common import data_root
from relreward_cli.tracking import RunTracker

MAP_ARRAYS = "reward_maps.npz"  # extract's plots/: the maps' arrays, for `relreward report`'s grid over goals


def maze_goal(cfg: DictConfig) -> tuple[MazeGeometry, np.ndarray]:
    """The maze of a Maze2D env config and the expert's goal (world x, y). The goal must be the one the expert
    data were generated for (their metadata's `goal_cell`), else every reward map and success rate would be
    measured against a goal the expert never went to. (Data not made yet are not checked: make-dataset makes them
    for this goal.)"""
    geometry = MazeGeometry.from_name(cfg.env.maze)
    try:
        goal = geometry.check_free(tuple(cfg.env.goal_cell))
    except UserError as err:
        raise UserError(f"env.goal_cell={list(cfg.env.goal_cell)}: {str(err).rstrip('.')}; nothing was run.") from None
    kind, dataset_id = split_source(cfg.env.expert_data)
    if kind == "generated" and (data_root(cfg) / dataset_id).exists():
        data_goal = read_dataset_metadata(dataset_id, data_root(cfg)).get("goal_cell")
        if data_goal is not None and tuple(data_goal) != goal:
            raise UserError(f"env.goal_cell={list(goal)}, but the expert data {cfg.env.expert_data} were made for "
                            f"the goal {list(data_goal)}. Pass env.goal_cell={list(data_goal)}, or make data for "
                            f"this goal (`relreward make-dataset env={cfg.env.name} env.goal_cell={list(goal)} "
                            "overwrite=true`, or another data_dir) and train on them.")
    return geometry, geometry.cell_to_xy(np.asarray(goal))


def generation(cfg: DictConfig, kind: str, size: DictConfig, seed: int) -> Maze2DGeneration:
    """The env's dataset recipe (``env.generate``) for ``kind`` episodes of ``size`` (``n_episodes``,
    ``episode_steps``) drawn with ``seed``."""
    gen = cfg.env.generate
    return Maze2DGeneration(maze=cfg.env.maze, kind=kind, n_episodes=size.n_episodes,
                            episode_steps=size.episode_steps, goal_cell=tuple(cfg.env.goal_cell),
                            action_noise=gen.action_noise, seed=seed, path_ties=gen.get("path_ties", "first"))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class Maze2DFamily(TrajectoryFamily):
    name = "maze2d"
    env_settings_by_stage: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "generate": ("make-dataset", "extract"),  # the recipe: extract draws its fresh episodes with it
        "generate.base": ("make-dataset",), "generate.expert": ("make-dataset",),  # the training data's sizes
        "evaluate": ("extract",),
        "goal_set": (),  # read from the env's YAML file by scripts/goal_sweep.sh (GOALS= chooses others)
    }

    def check_config(self, cfg: DictConfig) -> None:
        """The goal is a free cell, episodes (made and fresh) are long enough to cut segments from, and the
        evaluation's sizes (``env.evaluate``, ``extract.grid_resolution``) give windows to score and bins no larger
        than a cell, so that the maps show the walls."""
        geometry, _ = maze_goal(cfg)  # first: the data ids are built from the goal cell
        super().check_config(cfg)
        ev, cell = cfg.env.evaluate, geometry.scaling
        counts = {f"{kind}.{key}": ev[kind][key]
                  for kind in ("base", "expert") for key in ("n_episodes", "episode_steps")}
        problems = [f"env.evaluate.{key}={value}: must be a positive integer"
                    for key, value in {**counts, "windows": ev.windows}.items() if not _is_count(value)]
        steps = {f"{section}.{kind}.episode_steps": cfg.env[section][kind].episode_steps
                 for section in ("generate", "evaluate") for kind in ("base", "expert")}
        problems += [f"env.{key}={value}: must be at least horizon={cfg.horizon}, the length of the segments cut "
                     "from the episodes" for key, value in steps.items() if _is_count(value) and value < cfg.horizon]
        sizes = {"env.evaluate.bin_size": ev.bin_size, "extract.grid_resolution": cfg.extract.grid_resolution}
        problems += [f"{key}={value}: must be above 0 and at most one maze cell ({cell} world units)"
                     for key, value in sizes.items()
                     if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= cell)]
        if problems:
            raise UserError("The Maze2D settings cannot work; nothing was run. Fix them on the command line:\n  "
                            + "\n  ".join(problems))

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
            settings = generation(cfg, kind, gen[kind], seed=gen.seed + (0 if kind == "base" else 1))
            wanted = settings.metadata()
            steps = settings.n_episodes * settings.episode_steps
            if dataset_up_to_date(dataset_id, wanted, root, overwrite, ADDED_SETTINGS):
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
        """Three views of the reward against minus the maze (geodesic) distance to the goal, at every diffusion time
        of ``extract.eval_t``, and the headline at ``extract.report_t`` (fixed in the config):

        - ``binned_pearson``: the reward of windows of fresh base episodes (never trained on) averaged per position
          bin, correlated with the bins' distance to the goal (the authors' evaluation);
        - ``accuracy`` / ``auroc``: a one-feature logistic regression on the reward separating fresh expert windows
          from fresh base windows (fit on one half, scored on the other), and the AUROC;
        - ``pearson``: the reward of an agent resting at each point of a fine grid (the resting-segment map);

        plus the segment-return fit of the trajectory families."""
        metrics = super().reward_diagnostics(cfg, reward, data, tracker)
        geometry, goal_xy = maze_goal(cfg)
        ec, t_values = cfg.extract, sorted({*cfg.extract.eval_t, cfg.extract.report_t})
        resting = maze_reward_map(reward, geometry, goal_xy, t_values, ec.grid_resolution, ec.eval_noise_samples)
        windows, positive = self.heldout_windows(cfg, reward)
        x0 = torch.as_tensor(reward.normalizer.normalize(windows), dtype=torch.float32)
        values = np.stack([noised_reward(reward, x0, t, ec.eval_noise_samples, cfg.seed) for t in t_values])
        base_rows = ~positive
        binned = bin_by_position(geometry, goal_xy, window_positions(windows[base_rows], reward.spec.action_dim),
                                 values[:, base_rows], t_values, cfg.env.evaluate.bin_size)
        paths = {
            "heatmap": plot_reward_maps(geometry, resting.xs, resting.ys, resting.learned, resting.truth,
                                        resting.free_mask, resting.t_values, resting.correlations, goal_xy,
                                        tracker.plots_dir / "reward_maps.png"),
            "binned_heatmap": plot_reward_maps(geometry, binned.xs, binned.ys, binned.learned, binned.truth,
                                               binned.mask, binned.t_values, binned.correlations, goal_xy,
                                               tracker.plots_dir / "binned_reward_maps.png"),
        }
        for key, path in paths.items():
            tracker.log_image(key, path)
        np.savez_compressed(tracker.plots_dir / MAP_ARRAYS, maze=cfg.env.maze, goal_xy=goal_xy, t_values=t_values,
                            xs=resting.xs, ys=resting.ys, learned=resting.learned, mask=resting.free_mask,
                            binned_xs=binned.xs, binned_ys=binned.ys, binned_learned=binned.learned,
                            binned_mask=binned.mask, report_t=ec.report_t)
        for t, row, rho, rho_binned in zip(t_values, values, resting.correlations, binned.correlations, strict=True):
            metrics |= {f"pearson/t{t}": rho, f"binned_pearson/t{t}": rho_binned,
                        f"accuracy/t{t}": heldout_accuracy(row, positive, cfg.seed),
                        f"auroc/t{t}": auroc(row, positive)}
        t = ec.report_t
        best_t, best = resting.best
        return metrics | {
            "report_t": t, "headline/binned_pearson": metrics[f"binned_pearson/t{t}"],
            "headline/accuracy": metrics[f"accuracy/t{t}"], "headline/pearson": metrics[f"pearson/t{t}"],
            "pearson/best": best, "pearson/best_t": best_t, "binned_bins": int(binned.mask.sum()),
            **{key: str(path) for key, path in paths.items()}}

    def evaluation_settings(self, cfg: DictConfig) -> dict:
        """``env.evaluate``: the fresh episodes, windows and bin size of :meth:`reward_diagnostics`."""
        return {"env.evaluate": OmegaConf.to_container(cfg.env.evaluate, resolve=True)}

    def heldout_windows(self, cfg: DictConfig, reward: TrainedReward) -> tuple[np.ndarray, np.ndarray]:
        """Raw windows ``(N, horizon, transition_dim)`` of fresh base and expert episodes (generated here with the
        dataset recipe and seeds never used for training data: ``env.generate.seed + 1000``), and which are the
        expert's ``(N,)``: ``env.evaluate.windows`` of each."""
        gen, ev, spec = cfg.env.generate, cfg.env.evaluate, reward.spec
        windows = []
        for offset, kind in enumerate(("base", "expert")):
            settings = generation(cfg, kind, ev[kind], seed=gen.seed + 1000 + offset)
            episodes = [Episode(e["observations"], e["actions"], e["rewards"], e["terminations"], e["truncations"])
                        for e in generate_maze2d_episodes(settings, progress=False)]
            windows.append(episode_windows(episodes, spec.horizon, spec.use_actions, ev.windows,
                                           cfg.seed + offset)[0])
        return np.concatenate(windows), np.repeat([False, True], [len(w) for w in windows])

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
        if "headline/binned_pearson" not in summary:
            return None
        per_t = ", ".join(f"t={key.removeprefix('pearson/t')}: {value:.3f}" for key, value in summary.items()
                          if key.startswith("pearson/t"))
        return (f"Learned reward vs ground truth (negative geodesic distance to the goal) at t={summary['report_t']} "
                f"(fixed in the config): resting-segment map, Pearson {summary['headline/pearson']:.3f} ({per_t}); "
                f"fresh base trajectories binned by position, Pearson {summary['headline/binned_pearson']:.3f}; "
                f"expert vs base windows, held-out accuracy {summary['headline/accuracy']:.3f}.\n"
                f"Heatmaps: {summary['heatmap']}, {summary['binned_heatmap']}")


FAMILY = Maze2DFamily
