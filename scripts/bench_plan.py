"""Planning latency per replanning step: one batch of plans (environments x plans per state), DDPM vs DDIM,
unsteered vs reward-steered, with the default model sizes of configs/base.yaml (untrained weights: latency
does not depend on them).

    python scripts/bench_plan.py [--device cpu|cuda] [--envs 10] [--plans 1 8] [--repeats 3]

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
from relreward_cli.models.reward_net import RewardNet
from relreward_cli.planning.guidance import RewardGuide
from relreward_cli.planning.planner import GuidedPlanner
from relreward_cli.reward.trainer import TrainedReward

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--envs", type=int, default=10, help="states planned for at once")
    parser.add_argument("--plans", type=int, nargs="+", default=[1, 8], help="plans per state")
    parser.add_argument("--ddim-steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    cfg = OmegaConf.load(CONFIG)
    spec = DiffusionSpec(cfg.horizon, 4, 2, False, cfg.model.dim, tuple(cfg.model.dim_mults), cfg.diffusion.n_steps)
    device = torch.device(args.device)
    normalizer = Normalizer("limits", np.zeros(spec.transition_dim), np.ones(spec.transition_dim))
    model = TrainedDiffusion(build_diffusion(spec).to(device).eval().requires_grad_(False), spec, normalizer, {},
                             Path("bench"))
    net = RewardNet(spec.horizon, spec.transition_dim, cfg.reward.dim, tuple(cfg.reward.dim_mults))
    reward = TrainedReward(net.to(device).eval().requires_grad_(False), spec, normalizer, model.schedule, {},
                           Path("bench"))
    sc = cfg.steer
    guide = RewardGuide(reward, sc.scale, sc.n_guide_steps, sc.t_stopgrad, sc.scale_grad_by_std, sc.rank_t)
    states = np.zeros((args.envs, spec.obs_dim), np.float32)
    rows = []
    for sampler, steps in (("ddpm", None), ("ddim", args.ddim_steps)):
        for steered in (False, True):
            for n_plans in args.plans:
                planner = GuidedPlanner(model, guide if steered else None, n_plans, sampler, steps,
                                        generator=torch.Generator(device).manual_seed(0))
                planner.plan(states)  # warm-up
                seconds = [planner.plan(states).seconds for _ in range(args.repeats)]
                rows.append({"sampler": sampler, "sample_steps": steps or spec.n_steps, "steered": steered,
                             "batch": args.envs * n_plans, "ms": 1000 * float(np.median(seconds))})
    table = Table(title=f"planning latency per replanning step ({device}, horizon {spec.horizon}, "
                        f"dim {spec.dim}, {args.envs} states)")
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{value:.1f}" if isinstance(value, float) else str(value) for value in row.values()))
    Console().print(table)
    Path("bench_plan.json").write_text(json.dumps({"device": str(device), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
