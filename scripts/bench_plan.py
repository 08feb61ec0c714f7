"""Planning latency per replanning step of each steer-eval planner (base, guided, ranked, guided_ranked, expert):
one batch of plans for `--envs` states, DDPM, DDIM and DPM-Solver++, at the model sizes of a Maze2D demo and of the
locomotion quick preset (untrained weights: latency does not depend on them).

    python scripts/bench_plan.py [--device cpu|cuda] [--envs 10] [--plans 4] [--repeats 3] [--shapes maze2d hopper]

Prints a table and writes bench_plan.json next to where it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from relreward_cli.data.normalizer import Normalizer
from relreward_cli.diffusion.artifact import DiffusionSpec, TrainedDiffusion, build_diffusion
from relreward_cli.errors import at_least, run_script
from relreward_cli.models.reward_net import RewardNet
from relreward_cli.planning.evaluation import planner_settings
from relreward_cli.planning.guidance import RewardGuide
from relreward_cli.planning.planner import GuidedPlanner
from relreward_cli.reward.trainer import TrainedReward
from relreward_cli.training import resolve_device

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"
# (horizon, obs_dim, act_dim, use_actions, dim): configs/base.yaml's Maze2D demo; the quick locomotion preset
SHAPES = {"maze2d": (32, 4, 2, False, 16), "halfcheetah": (4, 17, 6, True, 32), "hopper": (32, 11, 3, True, 32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--envs", type=at_least(1), default=10, help="states planned for at once")
    parser.add_argument("--plans", type=at_least(1), default=4, help="plans per state of the ranked planners")
    parser.add_argument("--few-steps", type=at_least(2), default=5, help="steps of the DDIM and DPM-Solver++ rows")
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--shapes", nargs="+", default=["maze2d", "halfcheetah", "hopper"], choices=list(SHAPES))
    args = parser.parse_args()

    cfg = OmegaConf.load(CONFIG)
    device = resolve_device(args.device)
    sc = cfg.steer
    rows = []
    for shape in args.shapes:
        horizon, obs_dim, act_dim, use_actions, dim = SHAPES[shape]
        spec = DiffusionSpec(horizon, obs_dim, act_dim, use_actions, dim, tuple(cfg.model.dim_mults),
                             cfg.diffusion.n_steps)
        normalizer = Normalizer("limits", np.zeros(spec.transition_dim), np.ones(spec.transition_dim))
        torch.manual_seed(0)
        model = TrainedDiffusion(build_diffusion(spec).to(device).eval().requires_grad_(False), spec, normalizer,
                                 {}, Path("bench"))
        net = RewardNet(spec.horizon, spec.transition_dim, dim, tuple(cfg.reward.dim_mults))
        reward = TrainedReward(net.to(device).eval().requires_grad_(False), spec, normalizer, model.schedule, {},
                               Path("bench"))
        guide = RewardGuide(reward, 1.0, sc.n_guide_steps, sc.t_stopgrad, sc.scale_grad_by_std, sc.rank_t)
        states = np.zeros((args.envs, spec.obs_dim), np.float32)
        for sampler, steps in (("ddpm", None), ("ddim", args.few_steps), ("dpm", args.few_steps)):
            for name, (planning_model, planning_guide, n_plans) in planner_settings(model, model, guide,
                                                                                   args.plans).items():
                planner = GuidedPlanner(planning_model, planning_guide, n_plans, sampler, steps,
                                        generator=torch.Generator(device).manual_seed(0))
                planner.plan(states)  # warm-up
                seconds = [planner.plan(states).seconds for _ in range(args.repeats)]
                rows.append({"shape": shape, "sampler": sampler, "sample_steps": steps or spec.n_steps,
                             "planner": name, "batch": args.envs * n_plans, "ms": 1000 * float(np.median(seconds))})
    table = Table(title=f"planning latency per replanning step ({device}, {args.envs} states, guidance: "
                        f"{sc.n_guide_steps} guide steps, t_stopgrad {sc.t_stopgrad})")
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{value:.1f}" if isinstance(value, float) else str(value) for value in row.values()))
    Console().print(table)
    Path("bench_plan.json").write_text(json.dumps({"device": str(device), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    run_script(main)
