"""Planners built from a base model, an expert model and a reward, and their evaluation summarized.

Planners (``steer.planners``; the first four share the base model):
- ``base``: one plan (or sample) per state, unsteered;
- ``guided``: one plan per state sampled with reward guidance (the paper's method);
- ``ranked``: ``steer.n_plans`` unguided plans per state, the one of highest reward kept;
- ``guided_ranked``: ``steer.n_plans`` guided plans, the one of highest reward kept;
- ``expert``: the expert model's planner, one plan per state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from relreward_cli.diffusion.artifact import TrainedDiffusion
from relreward_cli.planning.guidance import RewardGuide
from relreward_cli.planning.rollout import Rollouts
from relreward_cli.planning.scores import mean_and_sem

PLANNERS = ("base", "guided", "ranked", "guided_ranked", "expert")
GUIDED_PLANNERS = ("guided", "guided_ranked")  # sample with reward guidance
RANKED_PLANNERS = ("ranked", "guided_ranked")  # rank plans by the reward
REWARD_PLANNERS = tuple(name for name in PLANNERS if name in (*GUIDED_PLANNERS, *RANKED_PLANNERS))  # read the reward


def reads_reward(planners: Sequence[str]) -> bool:
    """Whether any of ``planners`` (names of :data:`PLANNERS`) reads the extracted reward."""
    return bool(set(REWARD_PLANNERS) & set(planners))


def episode_seeds(seed: int, n_episodes: int) -> list[int]:
    """Distinct env seeds for the episodes of one seed (the same for every planner: paired starts)."""
    return np.random.SeedSequence(seed).generate_state(n_episodes).tolist()


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


def print_results_table(title: str, results: dict[str, dict], score_origin: str | None) -> None:
    """Two tables, one row per planner: return, normalized score and the paired difference to base (mean +- s.e.,
    and per seed); then success rate, episode length, early ends (falls), flips, planning latency (success and
    flips where the env records them)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    scores = Table(title=escape(title), caption=escape(f"mean ± s.e. over episodes (over paired episodes for the "
                                                       f"difference to base); scores: {score_origin}"))
    optional = {"success": "success_rate", "flipped": "flipped_rate"}  # columns of the envs that record them
    shown = {column for column, key in optional.items() if any(key in row for row in results.values())}
    behaviour = Table(caption="ended early: episodes the env ended before the step limit (Hopper, Walker2d: a fall)"
                      + ("; flipped: torso past 90 degrees" if "flipped" in shown else ""))
    behaviour_columns = ("planner", "success", "length", "ended early", "flipped", "plan ms", "episodes")
    behaviour_columns = tuple(column for column in behaviour_columns if column not in optional or column in shown)
    for table, columns in ((scores, ("planner", "return", "normalized score", "vs base (paired)", "vs base per seed")),
                           (behaviour, behaviour_columns)):
        for column in columns:
            table.add_column(column, justify="left" if column == "planner" else "right")
    for name, row in results.items():
        cells = [f"{row[f'{key}_mean']:.2f} ± {row[f'{key}_sem']:.2f}" if f"{key}_mean" in row else "-"
                 for key in ("return", "score", "vs_base")]
        per_seed = " / ".join(f"{value:+.1f}" for value in row.get("vs_base_per_seed", [])) or "-"
        scores.add_row(name, *cells, per_seed)
        cells = {"planner": name, "length": f"{row['length_mean']:.0f}", "ended early": f"{row['terminated_rate']:.0%}",
                 "plan ms": f"{row['plan_ms']:.0f}", "episodes": str(row["episodes"]),
                 "success": f"{row['success_rate']:.0%} ± {row['success_sem']:.0%}" if "success_rate" in row else "-",
                 "flipped": f"{row['flipped_rate']:.0%}" if "flipped_rate" in row else "-"}
        behaviour.add_row(*(cells[column] for column in behaviour_columns))
    console = Console()
    console.print(scores)
    console.print(behaviour)
