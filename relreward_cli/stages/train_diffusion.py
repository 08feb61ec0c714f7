"""``relreward train-diffusion``: a trajectory diffusion model on the base or the expert data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from relreward_cli import provenance
from relreward_cli.data.pairs import load_segment_pair
from relreward_cli.diffusion.artifact import train_diffusion
from relreward_cli.envs.registry import check_data_fits_env
from relreward_cli.planning.maze_plans import plan_quality, random_free_positions, sample_maze_plans
from relreward_cli.plots import plot_curve, plot_maze_plans
from relreward_cli.stages.common import (
    check_goal_matches_data,
    config_subset,
    data_root,
    dataset_inputs,
    diffusion_spec,
    hydra_run_dir,
    log_to,
    maze_goal,
    torch_device,
)
from relreward_cli.tracking import RunTracker, print_summary_table, tracker_from_config
from relreward_cli.training import seed_everything

# Training settings that do not shape the model: how often to save and log, what to plot, and n_steps (a
# finished run given more steps continues from its checkpoint as if it had been asked for them at first).
RESULT_NEUTRAL_TRAIN_KEYS = ("n_steps", "save_every", "log_every", "n_plot_samples", "sampler")


def made_from(cfg: DictConfig, kind: str) -> dict:
    """The provenance of the ``kind`` model this config trains: its settings and the datasets' digests."""
    train_keys = tuple(key for key in cfg.train if key not in RESULT_NEUTRAL_TRAIN_KEYS)
    settings = config_subset(cfg, {"seed": (), "horizon": (), "use_actions": (), "normalizer": (), "model": (),
                                   "diffusion": (), "train": train_keys})
    return provenance.record({"stage": "train-diffusion", "kind": kind, "env": cfg.env.name,
                              "base_data": cfg.env.base_data, "expert_data": cfg.env.expert_data, **settings},
                             dataset_inputs(cfg))


def run(cfg: DictConfig, run_dir: Path, kind: str, group: str | None = None, start_afresh: bool = False) -> dict:
    """Train the ``kind`` model into ``run_dir`` (resuming a killed run of the same provenance, see
    :mod:`relreward_cli.provenance`), then plot and score its samples."""
    check_goal_matches_data(cfg)
    provenance.claim(run_dir, made_from(cfg, kind), start_afresh=start_afresh,
                     how_to_start_afresh="overwrite=true")
    generator = seed_everything(cfg.seed)
    device = torch_device(cfg)
    segments = load_segment_pair(cfg.env.base_data, cfg.env.expert_data, data_root(cfg), cfg.horizon,
                                 cfg.use_actions, cfg.normalizer)
    check_data_fits_env(cfg.env.name, segments.obs_dim, segments.act_dim, f"{cfg.env.base_data}, {cfg.env.expert_data}")
    spec = diffusion_spec(cfg, segments.obs_dim, segments.act_dim)
    tc = cfg.train
    with tracker_from_config(cfg, run_dir, f"train-diffusion-{kind}", group) as tracker:
        model, result = train_diffusion(
            spec, segments, kind, run_dir, n_steps=tc.n_steps, batch_size=tc.batch_size, lr=tc.lr,
            ema_decay=tc.ema_decay, ema_start=tc.ema_start, grad_clip=tc.grad_clip, save_every=tc.save_every,
            log_every=tc.log_every, generator=generator, device=device,
            info={"env": cfg.env.name, "kind": kind, "sources": segments.sources, "seed": cfg.seed},
            start_conditioned=tc.start_conditioned, action_weight=tc.action_weight, on_log=log_to(tracker, "train"),
            on_resume=tracker.rewind)
        metrics = {"kind": kind, "steps": result.step, "final_loss": result.final_loss,
                   "steps_per_s": result.steps_per_s, "peak_memory_mb": result.peak_memory_mb,
                   "segments": len(segments[kind]), "device": str(device)}
        _plot_loss(tracker)
        if cfg.env.family == "maze2d":
            metrics |= _maze_samples(cfg, model, tracker, kind)
        tracker.summary(metrics)
    print_summary_table(f"train-diffusion {cfg.env.name} [{kind}] -> {run_dir}", metrics)
    return metrics


def _plot_loss(tracker: RunTracker) -> None:
    rows = tracker.history("train/loss")
    if rows:
        plot_curve([r[0] for r in rows], {"loss": [r[1] for r in rows]}, tracker.plots_dir / "loss.png",
                   "step", "eps MSE", logy=True)


def _maze_samples(cfg: DictConfig, model, tracker: RunTracker, kind: str, n_plans: int = 64) -> dict:
    """Sample plans from random starts; draw some on the maze; score walls and distance to the goal."""
    geometry, goal_xy = maze_goal(cfg)
    starts = random_free_positions(geometry, n_plans, np.random.default_rng(cfg.seed))
    generator = torch.Generator(model.diffusion.device).manual_seed(cfg.seed)
    plans = sample_maze_plans(model, starts, cfg.train.sampler, generator)
    quality = plan_quality(geometry, plans, goal_xy)
    path = plot_maze_plans(geometry, plans[: cfg.train.n_plot_samples], goal_xy, tracker.plots_dir / "samples.png",
                           f"{kind} model: {cfg.train.sampler} plans from random starts "
                           f"(in walls {quality['wall_fraction']:.1%})")
    tracker.log_image("samples", path)
    return {f"plans/{key}": value for key, value in quality.items()}


def main(cfg: DictConfig) -> dict:
    return run(cfg, hydra_run_dir(), cfg.kind, start_afresh=cfg.overwrite)
