"""``relreward steer-eval``: the base model's planner, steered by the extracted reward in three ways that isolate
guidance from ranking, and the expert model's planner, rolled out in the env.

Planners (``steer.planners``, all from the same start states; the first four share the base model):
- ``base``: one plan per state, unsteered;
- ``guided``: one plan per state sampled with reward guidance (the paper's method);
- ``ranked``: ``steer.n_plans`` unguided plans per state, the one of highest reward kept;
- ``guided_ranked``: ``steer.n_plans`` guided plans, the one of highest reward kept;
- ``expert``: the expert model's planner, one plan per state.

Each planner runs ``steer.n_episodes`` episodes per seed of ``steer.seeds`` in one vectorized env (the plans
of all episodes sampled in one batch). Reported per planner: return and normalized score (mean +- standard error
over all episodes), the paired difference to ``base`` (mean +- s.e. over paired episodes, and per seed), success
rate (Maze2D), episode length, the share of early terminations (falls) and of flips, planning latency.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig

from relreward_cli import provenance
from relreward_cli.diffusion.artifact import (
    TrainedDiffusion,
    check_compatible,
    load_diffusion_model,
    model_file,
    space_mismatches,
)
from relreward_cli.envs.registry import environment, make_env
from relreward_cli.errors import UserError
from relreward_cli.planning.guidance import RewardGuide
from relreward_cli.planning.planner import GuidedPlanner
from relreward_cli.planning.rollout import Rollouts, plan_follower, rollout
from relreward_cli.planning.scores import mean_and_sem, score_normalizer
from relreward_cli.plots import plot_episode_returns, plot_maze_paths
from relreward_cli.reward.trainer import load_reward_model, reward_file
from relreward_cli.stages.common import (
    check_goal_matches_data,
    config_subset,
    data_root,
    hydra_run_dir,
    maze_goal,
    torch_device,
)
from relreward_cli.tracking import RunTracker, tracker_from_config

PLANNERS = ("base", "guided", "ranked", "guided_ranked", "expert")
REWARD_PLANNERS = ("guided", "ranked", "guided_ranked")  # the planners that read the extracted reward


def episode_seeds(seed: int, n_episodes: int) -> list[int]:
    """Distinct env seeds for the episodes of one seed (the same for every planner: paired starts)."""
    return np.random.SeedSequence(seed).generate_state(n_episodes).tolist()


def evaluate_planner(cfg: DictConfig, model: TrainedDiffusion, guide: RewardGuide | None, n_plans: int,
                     seed: int, name: str = "planner") -> Rollouts:
    """``steer.n_episodes`` episodes of one planner (called ``name`` on its progress bar) for one seed, all in
    one vectorized env."""
    sc, env = cfg.steer, environment(cfg.env.name)
    generator = torch.Generator(model.diffusion.device).manual_seed(seed)
    planner = GuidedPlanner(model, guide, n_plans, sc.sampler, sc.n_sample_steps, sc.eta, generator)
    follower = plan_follower(model.spec, env.maze is not None, sc.controller.p_gain, sc.controller.d_gain)
    options = {"goal_cell": np.asarray(cfg.env.goal_cell)} if env.maze is not None else None
    envs = gym.vector.SyncVectorEnv([partial(make_env, cfg.env.name, sc.max_episode_steps)] * sc.n_episodes)
    try:
        return rollout(planner, envs, follower, episode_seeds(seed, sc.n_episodes), sc.replan_every, options,
                       sc.success_radius, progress=f"{name} seed {seed}",
                       max_steps=sc.max_episode_steps or env.max_episode_steps, torso_angle_index=env.torso_angle_index)
    finally:
        envs.close()


def planner_settings(base: TrainedDiffusion, expert: TrainedDiffusion, guide: RewardGuide | None, n_plans: int
                     ) -> dict[str, tuple[TrainedDiffusion, RewardGuide | None, int]]:
    """Model, guide and plans per state of each planner of `PLANNERS` (see the module docstring); the reward
    planners are left out when there is no guide. `ranked` ranks with the guide at scale 0 (no gradient)."""
    planners = {"base": (base, None, 1), "expert": (expert, None, 1)}
    if guide is not None:
        planners |= {"guided": (base, guide, 1), "ranked": (base, dataclasses.replace(guide, scale=0.0), n_plans),
                     "guided_ranked": (base, guide, n_plans)}
    return {name: planners[name] for name in PLANNERS if name in planners}


def summarize(rollouts: list[Rollouts], score, base: list[Rollouts] | None = None) -> dict:
    """Metrics of one planner over the rollouts of every seed; with the base planner's rollouts of the same
    seeds (same start states), the paired return differences to it (``vs_base_*``: mean and s.e. over paired
    episodes, per seed, the share of episodes above base, and in normalized score points)."""
    returns = np.concatenate([r.returns for r in rollouts])
    metrics = dict(zip(("return_mean", "return_sem"), mean_and_sem(returns), strict=True))
    metrics["return_per_seed"] = [float(r.returns.mean()) for r in rollouts]
    if score is not None:
        metrics |= dict(zip(("score_mean", "score_sem"), mean_and_sem(score(returns)), strict=True))
    if base is not None:
        differences = [r.returns - b.returns for r, b in zip(rollouts, base, strict=True)]
        paired = np.concatenate(differences)
        metrics |= dict(zip(("vs_base_mean", "vs_base_sem"), mean_and_sem(paired), strict=True))
        per_seed = [mean_and_sem(difference) for difference in differences]
        metrics["vs_base_per_seed"] = [mean for mean, _ in per_seed]
        metrics["vs_base_sem_per_seed"] = [sem for _, sem in per_seed]
        metrics["vs_base_win_rate"] = float((paired > 0).mean())
        if score is not None:
            base_returns = np.concatenate([b.returns for b in base])
            metrics |= dict(zip(("vs_base_score_mean", "vs_base_score_sem"),
                                mean_and_sem(score(returns) - score(base_returns)), strict=True))
    if rollouts[0].success is not None:
        metrics |= dict(zip(("success_rate", "success_sem"),
                            mean_and_sem(np.concatenate([r.success for r in rollouts])), strict=True))
    metrics["length_mean"] = float(np.concatenate([r.lengths for r in rollouts]).mean())
    metrics["terminated_rate"] = float(np.concatenate([r.terminated for r in rollouts]).mean())
    if rollouts[0].flipped is not None:
        metrics["flipped_rate"] = float(np.concatenate([r.flipped for r in rollouts]).mean())
    metrics["plan_ms"] = 1000 * float(np.concatenate([r.plan_seconds for r in rollouts]).mean())
    metrics["episodes"] = len(returns)
    return metrics


def check_models_fit_the_env(env: str, base: TrainedDiffusion, expert: TrainedDiffusion, reward=None) -> None:
    """Before any rollout: the models were trained on `env` (their recorded env), and the reward was extracted in
    the base model's space (shapes, schedule, normalizer)."""
    models = {"base model": base, "expert model": expert, **({"reward": reward} if reward is not None else {})}
    others = {name: model.info.get("env") for name, model in models.items() if model.info.get("env") not in (None, env)}
    if others:
        listed = ", ".join(f"the {name} {models[name].path} on {trained}" for name, trained in others.items())
        raise UserError(f"env={env}, but {listed}. Evaluate them in their own env (env=<that env>), or pass models "
                        f"trained on {env} (base_model=, expert_model=, reward_model=). Nothing was rolled out.")
    if reward is not None and (problems := space_mismatches(base, reward, ("base model", "reward"))):
        raise UserError(f"The reward {reward.path} was not extracted in the base model {base.path}'s space: "
                        f"{'; '.join(problems)}. Pass the reward extracted from this base model (reward_model=...). "
                        "Nothing was rolled out.")


def made_from(cfg: DictConfig, base_model: Path, expert_model: Path, reward_model: Path) -> dict:
    """The provenance of an evaluation: the steering settings and seed, and the digests of the three models."""
    return provenance.record({"stage": "steer-eval", "env": cfg.env.name,
                              **config_subset(cfg, {"seed": (), "steer": ()})},
                             {"base_model": model_file(base_model), "expert_model": model_file(expert_model),
                              "reward_model": reward_file(reward_model)})


def run(cfg: DictConfig, run_dir: Path, base_model: Path, expert_model: Path, reward_model: Path,
        group: str | None = None) -> dict:
    """Roll out the planners of ``steer.planners`` into ``run_dir``; returns the summary (also in
    ``metrics.json``). The reward model is read only when a planner that uses it is among them."""
    sc = cfg.steer
    if not sc.planners or not set(sc.planners) <= set(PLANNERS):
        raise UserError(f"steer.planners={list(sc.planners)}: choose one or more of {', '.join(PLANNERS)}.")
    device = torch_device(cfg)
    base, expert = load_diffusion_model(base_model, device), load_diffusion_model(expert_model, device)
    check_compatible(base, expert)
    guide = None
    if set(REWARD_PLANNERS) & set(sc.planners):
        guide = RewardGuide(load_reward_model(reward_model, device), sc.scale, sc.n_guide_steps, sc.t_stopgrad,
                            sc.scale_grad_by_std, sc.rank_t, sc.grad_clip)
    check_models_fit_the_env(cfg.env.name, base, expert, guide.reward if guide else None)
    check_goal_matches_data(cfg)
    planners = {name: planner for name, planner in planner_settings(base, expert, guide, sc.n_plans).items()
                if name in sc.planners}
    score = score_normalizer(environment(cfg.env.name).d4rl_task, cfg.env.expert_data, data_root(cfg))
    rollouts = {name: [evaluate_planner(cfg, *planner, seed, name) for seed in sc.seeds]
                for name, planner in planners.items()}
    results = {name: summarize(runs, score.score if score else None,
                               rollouts["base"] if "base" in rollouts and name != "base" else None)
               for name, runs in rollouts.items()}
    metrics = {f"{name}/{key}": value for name, row in results.items() for key, value in row.items()}
    metrics |= {"score_reference": score.origin if score else "none", "device": str(device)}
    with tracker_from_config(cfg, run_dir, "steer-eval", group) as tracker:
        returns = {name: np.concatenate([r.returns for r in runs]) for name, runs in rollouts.items()}
        for episode, row in enumerate(zip(*returns.values(), strict=True)):
            tracker.log({f"{name}/return": value for name, value in zip(returns, row, strict=True)}, episode)
        metrics |= _plots(cfg, tracker, returns, rollouts)
        tracker.summary(metrics)
    print_results_table(f"steer-eval {cfg.env.name} (scale {sc.scale}, {sc.sampler}) -> {run_dir}", results,
                        score.origin if score else None)
    return metrics


def _plots(cfg: DictConfig, tracker: RunTracker, returns: dict[str, np.ndarray],
           rollouts: dict[str, list[Rollouts]]) -> dict:
    paths = {"returns_plot": plot_episode_returns(returns, tracker.plots_dir / "returns.png")}
    if cfg.env.family == "maze2d":
        geometry, goal_xy = maze_goal(cfg)
        executed = {name: [path[:, :2] for path in runs[0].paths[:cfg.steer.n_plot_paths]]
                    for name, runs in rollouts.items()}
        paths["paths_plot"] = plot_maze_paths(geometry, executed, goal_xy, tracker.plots_dir / "paths.png")
    for key, path in paths.items():
        tracker.log_image(key, path)
    return {key: str(path) for key, path in paths.items()}


def print_results_table(title: str, results: dict[str, dict], score_origin: str | None) -> None:
    """Two tables, one row per planner: return, normalized score and the paired difference to base (mean +- s.e.,
    and per seed); then success rate, episode length, falls, flips, planning latency."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    scores = Table(title=escape(title), caption=escape(f"mean ± s.e. over episodes (over paired episodes for the "
                                                       f"difference to base); scores: {score_origin}"))
    behaviour = Table(caption="fell: episodes the env ended early; flipped: torso past 90 degrees")
    for table, columns in ((scores, ("planner", "return", "normalized score", "vs base (paired)", "vs base per seed")),
                           (behaviour, ("planner", "success", "length", "fell", "flipped", "plan ms", "episodes"))):
        for column in columns:
            table.add_column(column, justify="left" if column == "planner" else "right")
    for name, row in results.items():
        cells = [f"{row[f'{key}_mean']:.2f} ± {row[f'{key}_sem']:.2f}" if f"{key}_mean" in row else "-"
                 for key in ("return", "score", "vs_base")]
        per_seed = " / ".join(f"{value:+.1f}" for value in row.get("vs_base_per_seed", [])) or "-"
        scores.add_row(name, *cells, per_seed)
        success = f"{row['success_rate']:.0%} ± {row['success_sem']:.0%}" if "success_rate" in row else "-"
        flipped = f"{row['flipped_rate']:.0%}" if "flipped_rate" in row else "-"
        behaviour.add_row(name, success, f"{row['length_mean']:.0f}", f"{row['terminated_rate']:.0%}", flipped,
                          f"{row['plan_ms']:.0f}", str(row["episodes"]))
    console = Console()
    console.print(scores)
    console.print(behaviour)


def main(cfg: DictConfig) -> dict:
    return run(cfg, hydra_run_dir(), Path(cfg.base_model), Path(cfg.expert_model), Path(cfg.reward_model))
