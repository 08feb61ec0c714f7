"""``relreward train-diffusion``: a diffusion model (of trajectory segments or images) on the base or the expert
data."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch
from omegaconf import DictConfig

from relreward_cli import families, provenance
from relreward_cli.diffusion.artifact import train_diffusion
from relreward_cli.errors import UserError
from relreward_cli.plots import plot_curve
from relreward_cli.stages.common import (
    MODEL_SECTIONS,
    autocast_dtype,
    batch_size,
    check_settings_read,
    config_subset,
    diffusion_spec,
    hydra_run_dir,
    log_to,
    loop_settings,
    torch_device,
)
from relreward_cli.tracking import RunTracker, print_summary_table, tracker_from_config
from relreward_cli.training import seed_everything

# Training settings that do not shape the model: how often to save and log, what to plot, and n_steps (a
# finished run given more steps continues from its checkpoint as if it had been asked for them at first).
RESULT_NEUTRAL_TRAIN_KEYS = ("n_steps", "save_every", "log_every", "n_plot_samples", "sampler")


def made_from(cfg: DictConfig, kind: str, device: torch.device) -> dict:
    """The provenance of the ``kind`` model this config trains on ``device``: its settings (with the batch used
    there) and the datasets' digests."""
    settings = config_subset(cfg, {"seed": (), "horizon": (), "use_actions": (), "normalizer": (), "model": (),
                                   "diffusion": ()})
    settings |= loop_settings(cfg, "train", device, RESULT_NEUTRAL_TRAIN_KEYS)
    data_settings = families.of(cfg).data_settings(cfg)
    settings |= {"data_settings": data_settings} if data_settings else {}
    return provenance.record({"stage": "train-diffusion", "kind": kind, "env": cfg.env.name,
                              "base_data": cfg.env.base_data, "expert_data": cfg.env.expert_data, **settings},
                             families.of(cfg).dataset_inputs(cfg))


def run(cfg: DictConfig, run_dir: Path, kind: str, group: str | None = None, start_afresh: bool = False) -> dict:
    """Train the ``kind`` model into ``run_dir`` (resuming a killed run of the same provenance, see
    :mod:`relreward_cli.provenance`), then plot and score its samples."""
    domain = families.of(cfg)
    if domain.pretrained_models:
        raise UserError(f"env={cfg.env.name} compares two pretrained models, so there is no diffusion model to train. "
                        f"Run `relreward make-dataset env={cfg.env.name}` and then `relreward extract "
                        f"env={cfg.env.name}`, or both with `relreward pipeline env={cfg.env.name}`.")
    domain.check_config(cfg)
    device = torch_device(cfg)
    tc = cfg.train
    provenance.claim(run_dir, made_from(cfg, kind, device), start_afresh=start_afresh,
                     how_to_start_afresh="overwrite=true", n_steps=("train.n_steps", tc.n_steps))
    generator = seed_everything(cfg.seed)
    segments = domain.load_data(cfg)
    spec = diffusion_spec(cfg, segments.obs_dim, segments.act_dim, domain.network)
    with tracker_from_config(cfg, run_dir, f"train-diffusion-{kind}", group) as tracker:
        model, result = train_diffusion(
            spec, segments, kind, run_dir, n_steps=tc.n_steps, batch_size=batch_size(tc, device), lr=tc.lr,
            ema_decay=tc.ema_decay, ema_start=tc.ema_start, grad_clip=tc.grad_clip, save_every=tc.save_every,
            log_every=tc.log_every, generator=generator, device=device,
            info={"env": cfg.env.name, "kind": kind, "sources": segments.sources, "seed": cfg.seed},
            start_conditioned=tc.start_conditioned, action_weight=tc.action_weight, on_log=log_to(tracker, "train"),
            on_resume=tracker.rewind, autocast_dtype=autocast_dtype(tc))
        metrics = {"kind": kind, "steps": result.step, "final_loss": result.final_loss,
                   "steps_per_s": result.steps_per_s, "peak_memory_mb": result.peak_memory_mb,
                   "segments": len(segments[kind]), "device": str(device)}
        _plot_loss(tracker)
        metrics |= domain.model_diagnostics(cfg, model, tracker, kind)
        tracker.summary(metrics)
    provenance.seal(run_dir)
    print_summary_table(f"train-diffusion {cfg.env.name} [{kind}] -> {run_dir}", metrics)
    return metrics


def _plot_loss(tracker: RunTracker) -> None:
    rows = tracker.history("train/loss")
    if rows:
        plot_curve([r[0] for r in rows], {"loss": [r[1] for r in rows]}, tracker.plots_dir / "loss.png",
                   "step", "eps MSE", logy=True)


def check_settings(cfg: DictConfig, given: Collection[str] | None = None) -> None:
    """Refuse settings given on the command line (or ``given``, keys) that this stage does not read."""
    check_settings_read(cfg, "train-diffusion", (*MODEL_SECTIONS, "train"), given)


def main(cfg: DictConfig) -> dict:
    check_settings(cfg)
    return run(cfg, hydra_run_dir(), cfg.kind, start_afresh=cfg.overwrite)
