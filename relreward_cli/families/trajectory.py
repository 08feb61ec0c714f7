"""What the trajectory families (Maze2D, locomotion) share: datasets of episodes in Minari's format, segments
cut from them, rewards correlated with the return of dataset segments, and steering evaluated by rolling planners
out in the simulator."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig

from relreward_cli import locks
from relreward_cli.data.generate_maze import read_dataset_metadata
from relreward_cli.data.pairs import SegmentPair, load_segment_pair
from relreward_cli.data.sources import dataset_path, load_episodes, split_source
from relreward_cli.diffusion.artifact import TrainedDiffusion
from relreward_cli.envs.registry import check_data_fits_env, environment, make_env
from relreward_cli.errors import UserError
from relreward_cli.families.base import EnvFamily
from relreward_cli.planning.evaluation import episode_seeds, planner_settings, print_results_table, summarize
from relreward_cli.planning.guidance import RewardGuide
from relreward_cli.planning.planner import GuidedPlanner
from relreward_cli.planning.rollout import PlanFollower, Rollouts, rollout
from relreward_cli.planning.scores import score_normalizer
from relreward_cli.plots import plot_episode_returns, plot_segment_rewards
from relreward_cli.reward.evaluate import pearson, segment_return_fit
from relreward_cli.reward.trainer import TrainedReward
from relreward_cli.stages.common import data_root
from relreward_cli.tracking import RunTracker


def data_root_lock(root: Path, env_name: str) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on the data of one env under the data root, so the jobs of a sweep that start together
    (several seeds of one env) do not generate the same dataset at once: the first writes it, the others wait and
    find it. Other envs write other datasets, so they generate side by side."""
    root.mkdir(parents=True, exist_ok=True)
    return locks.exclusive(root / f".make-dataset-{env_name}.lock")


def one_writer_at_a_time(method):
    """Decorate a family's ``make_datasets(cfg, ...)`` with :func:`data_root_lock` on the config's env."""
    @functools.wraps(method)
    def locked(self, cfg: DictConfig, *args, **kwargs):
        with data_root_lock(data_root(cfg), cfg.env.name):
            return method(self, cfg, *args, **kwargs)

    return locked


def dataset_up_to_date(dataset_id: str, wanted: dict, root: Path, overwrite: bool,
                       added: Mapping[str, Any] | None = None) -> bool:
    """True when `dataset_id` exists, its stored metadata holds `wanted` and its episodes can be read; False
    when it is absent or is to be overwritten; refuses one made with other settings, or damaged. `added`: settings
    the generator gained after datasets were written, with the value those were made with (a stored record
    without one reads as that value)."""
    if overwrite or not (root / dataset_id).exists():
        return False
    found = {**(added or {}), **read_dataset_metadata(dataset_id, root)}
    differing = {key: found.get(key) for key in wanted if found.get(key) != wanted[key]}
    if not differing:
        load_episodes(f"generated:{dataset_id}", root)  # a damaged file is refused here, naming overwrite=true
        return True
    raise UserError(f"Dataset {dataset_id} already exists in {root} with other generator settings ({differing}). "
                    "Pass overwrite=true to replace it, or data_dir=<another folder> to keep both.")


class TrajectoryFamily(EnvFamily):
    """Episodes in a simulator: Minari / D4RL datasets cut into segments, planners rolled out in the env."""

    network = "temporal"

    def check_config(self, cfg: DictConfig) -> None:
        """Both datasets are named in a form that can be read (a malformed Minari id is refused before any data is
        made)."""
        for kind in ("base", "expert"):
            split_source(cfg.env[f"{kind}_data"])

    def generated_kinds(self, cfg: DictConfig) -> tuple[str, ...]:
        return tuple(kind for kind in ("base", "expert") if split_source(cfg.env[f"{kind}_data"])[0] == "generated")

    def dataset_inputs(self, cfg: DictConfig) -> dict[str, Path]:
        return {f"{kind}_data": dataset_path(cfg.env[f"{kind}_data"], data_root(cfg)) for kind in ("base", "expert")}

    def load_data(self, cfg: DictConfig, model: TrainedDiffusion | None = None) -> SegmentPair:
        if model is None:
            sources = {"base": cfg.env.base_data, "expert": cfg.env.expert_data}
            segments = load_segment_pair(sources["base"], sources["expert"], data_root(cfg), cfg.horizon,
                                         cfg.use_actions, cfg.normalizer)
        else:
            sources = model.info["sources"]
            segments = load_segment_pair(sources["base"], sources["expert"], data_root(cfg), model.spec.horizon,
                                         model.spec.use_actions, normalizer=model.normalizer)
        check_data_fits_env(cfg.env.name, segments.obs_dim, segments.act_dim, ", ".join(sources.values()))
        return segments

    def reward_diagnostics(self, cfg: DictConfig, reward: TrainedReward, data: SegmentPair,
                           tracker: RunTracker) -> dict:
        """The learned reward of dataset segments against their env return, per diffusion time of
        ``extract.eval_t`` (``extract.eval_segments`` segments per dataset; 0 skips it)."""
        ec = cfg.extract
        if not ec.eval_segments:
            return {}
        fit = segment_return_fit(reward, data.episodes["base"], data.episodes["expert"], list(ec.eval_t),
                                 ec.eval_segments, ec.eval_noise_samples, cfg.seed)
        best_t, best = fit.best
        learned = fit.learned[fit.t_values.index(best_t)]
        path = plot_segment_rewards(learned, fit.returns, fit.is_expert, best_t, best,
                                    tracker.plots_dir / "segment_rewards.png")
        tracker.log_image("segment_rewards", path)
        within = {f"segment_pearson/best_within_{kind}": pearson(learned[mask], fit.returns[mask])
                  for kind, mask in (("base", ~fit.is_expert), ("expert", fit.is_expert))}
        return {**{f"segment_pearson/t{t}": rho for t, rho in zip(fit.t_values, fit.correlations, strict=True)},
                "segment_pearson/best": best, "segment_pearson/best_t": best_t, **within,
                "segment_plot": str(path)}

    # --- steering: planners rolled out in the simulator -------------------------------------------------------
    def plan_follower(self, cfg: DictConfig, model: TrainedDiffusion) -> PlanFollower:
        """How the env is driven from a plan (its actions, or a controller tracking its states)."""
        raise NotImplementedError

    def reset_options(self, cfg: DictConfig) -> dict | None:
        """Options for the env's ``reset`` (e.g. the goal of a Maze2D episode); None: the env's defaults."""
        return None

    def rollout_planner(self, cfg: DictConfig, model: TrainedDiffusion, guide: RewardGuide | None, n_plans: int,
                        seed: int, name: str = "planner") -> Rollouts:
        """``steer.n_episodes`` episodes of one planner (called ``name`` on its progress bar) for one seed, all
        in one vectorized env."""
        sc, env = cfg.steer, environment(cfg.env.name)
        generator = torch.Generator(model.diffusion.device).manual_seed(seed)
        planner = GuidedPlanner(model, guide, n_plans, sc.sampler, sc.n_sample_steps, sc.eta, generator)
        envs = gym.vector.SyncVectorEnv([functools.partial(make_env, cfg.env.name, sc.max_episode_steps)]
                                        * sc.n_episodes)
        try:
            return rollout(planner, envs, self.plan_follower(cfg, model), episode_seeds(seed, sc.n_episodes),
                           sc.replan_every, self.reset_options(cfg), sc.success_radius,
                           progress=f"{name} seed {seed}", max_steps=sc.max_episode_steps or env.max_episode_steps,
                           torso_angle_index=env.torso_angle_index)
        finally:
            envs.close()

    def evaluate_steering(self, cfg: DictConfig, base: TrainedDiffusion, expert: TrainedDiffusion,
                          guide: RewardGuide | None, tracker: RunTracker) -> dict:
        """Roll out the planners of ``steer.planners`` for every seed of ``steer.seeds`` from paired start states;
        returns, D4RL-normalized scores, paired differences to base (see
        :func:`relreward_cli.planning.evaluation.summarize`)."""
        sc = cfg.steer
        planners = {name: planner for name, planner in planner_settings(base, expert, guide, sc.n_plans).items()
                    if name in sc.planners}
        score = score_normalizer(environment(cfg.env.name).d4rl_task, cfg.env.expert_data, data_root(cfg))
        rollouts = {name: [self.rollout_planner(cfg, *planner, seed, name) for seed in sc.seeds]
                    for name, planner in planners.items()}
        results = {name: summarize(runs, score.score if score else None,
                                   rollouts["base"] if "base" in rollouts and name != "base" else None)
                   for name, runs in rollouts.items()}
        metrics = {f"{name}/{key}": value for name, row in results.items() for key, value in row.items()}
        metrics["score_reference"] = score.origin if score else "none"
        returns = {name: np.concatenate([r.returns for r in runs]) for name, runs in rollouts.items()}
        for episode, row in enumerate(zip(*returns.values(), strict=True)):
            tracker.log({f"{name}/return": value for name, value in zip(returns, row, strict=True)}, episode)
        paths = {"returns_plot": plot_episode_returns(returns, tracker.plots_dir / "returns.png"),
                 **self.rollout_plots(cfg, rollouts, tracker)}
        for key, path in paths.items():
            tracker.log_image(key, path)
        metrics |= {key: str(path) for key, path in paths.items()}
        print_results_table(f"steer-eval {cfg.env.name} (scale {sc.scale}, {sc.sampler})", results,
                            score.origin if score else None)
        return metrics

    def rollout_plots(self, cfg: DictConfig, rollouts: dict[str, list[Rollouts]], tracker: RunTracker
                      ) -> dict[str, Path]:
        """Plots of the executed episodes beyond the returns (e.g. Maze2D paths), by name. Default: none."""
        return {}

    def summary_for_pipeline(self, metrics: dict) -> dict:
        return {key: value for key, value in metrics.items()
                if key.startswith(("pearson/", "binned_pearson/", "accuracy/", "headline/", "segment_pearson/best",
                                   "plans/")) or key in ("heatmap", "binned_heatmap", "report_t")
                or key.endswith(("score_mean", "success_rate"))}
