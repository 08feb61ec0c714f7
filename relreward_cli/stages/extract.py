"""``relreward extract``: learn the relative reward of an expert model over a base model, then score it."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch
from omegaconf import DictConfig

from relreward_cli import families, provenance
from relreward_cli.diffusion.artifact import check_compatible, load_diffusion_model, model_file
from relreward_cli.errors import UserError
from relreward_cli.plots import plot_curve
from relreward_cli.reward.trainer import train_reward
from relreward_cli.stages.common import (
    MODEL_SECTIONS,
    autocast_dtype,
    batch_size,
    check_made_from_these_data,
    check_model_settings_not_given,
    check_models_fit_the_env,
    check_settings_read,
    check_two_models,
    config_subset,
    hydra_run_dir,
    log_to,
    loop_settings,
    torch_device,
)
from relreward_cli.stages.inputs import resolve_inputs
from relreward_cli.tracking import RunTracker, print_summary_table, tracker_from_config
from relreward_cli.training import seed_everything

# Extraction settings that do not shape the reward: saving, logging, how it is evaluated, and n_steps (see
# train_diffusion.RESULT_NEUTRAL_TRAIN_KEYS).
EVALUATION_KEYS = ("eval_t", "report_t", "eval_noise_samples", "eval_segments", "grid_resolution")
RESULT_NEUTRAL_EXTRACT_KEYS = ("n_steps", "save_every", "log_every", *EVALUATION_KEYS)


def evaluation_settings(cfg: DictConfig) -> dict:
    """How the reward is evaluated (``extract``'s evaluation keys and the environment's own, e.g. Maze2D's
    ``env.evaluate``), recorded in ``metrics.json``: a finished extraction asked to be evaluated otherwise is
    evaluated again (its reward is kept)."""
    return config_subset(cfg, {"extract": EVALUATION_KEYS})["extract"] | families.of(cfg).evaluation_settings(cfg)


def made_from(cfg: DictConfig, base_model: Path, expert_model: Path, device: torch.device) -> dict:
    """The provenance of the reward this config extracts on ``device``: its settings (with the batch used there)
    and the digests of both models and datasets."""
    settings = config_subset(cfg, {"seed": (), "reward": ()})
    settings |= loop_settings(cfg, "extract", device, RESULT_NEUTRAL_EXTRACT_KEYS)
    data_settings = families.of(cfg).data_settings(cfg)
    settings |= {"data_settings": data_settings} if data_settings else {}
    return provenance.record({"stage": "extract", "env": cfg.env.name, **settings},
                             {"base_model": model_file(base_model), "expert_model": model_file(expert_model),
                              **families.of(cfg).dataset_inputs(cfg)})


def run(cfg: DictConfig, run_dir: Path, base_model: Path, expert_model: Path, group: str | None = None,
        start_afresh: bool = False) -> dict:
    """Extract the reward of ``expert_model`` relative to ``base_model`` into ``run_dir``, then evaluate it as the
    env's kind (e.g. against the env return of dataset segments, or Maze2D's distance to the goal). Returns
    the summary metrics. A ``run_dir`` holding an extraction of other models or settings is refused (or, with
    ``start_afresh``, set aside; see :mod:`relreward_cli.provenance`)."""
    base_file, expert_file = model_file(base_model), model_file(expert_model)
    for model_path in (base_file, expert_file):  # first: a replaced file explains why two models may be one
        provenance.check_output(model_path, "relreward train-diffusion")
    check_two_models(base_file, expert_file, "the relative reward of a model over itself is zero everywhere")
    domain = families.of(cfg)
    domain.check_config(cfg)
    device = torch_device(cfg)
    base, expert = load_diffusion_model(base_model, device), load_diffusion_model(expert_model, device)
    check_compatible(base, expert)  # before any data is loaded or any step taken
    check_model_settings_not_given(cfg, base, "extract")
    check_models_fit_the_env(cfg, base, expert)
    check_made_from_these_data({"base model": base, "expert model": expert}, domain.dataset_inputs(cfg))
    if max(*cfg.extract.eval_t, cfg.extract.report_t) >= base.spec.n_steps:
        raise UserError(f"extract.eval_t={list(cfg.extract.eval_t)}, extract.report_t={cfg.extract.report_t}: the "
                        f"models have {base.spec.n_steps} diffusion "
                        f"steps, so every time must be below {base.spec.n_steps}. Nothing was run.")
    ec = cfg.extract
    provenance.claim(run_dir, made_from(cfg, base_model, expert_model, device), start_afresh=start_afresh,
                     how_to_start_afresh="overwrite=true", n_steps=("extract.n_steps", ec.n_steps))
    generator = seed_everything(cfg.seed)
    segments = domain.load_data(cfg, base)
    with tracker_from_config(cfg, run_dir, "extract", group) as tracker:
        reward, result = train_reward(
            base, expert, segments, run_dir, dim=cfg.reward.dim, dim_mults=tuple(cfg.reward.dim_mults),
            n_steps=ec.n_steps, batch_size=batch_size(ec, device), lr=ec.lr, grad_clip=ec.grad_clip,
            save_every=ec.save_every, log_every=ec.log_every, generator=generator, device=device,
            info={"env": cfg.env.name, "sources": base.info["sources"], "seed": cfg.seed},
            sample_fraction=ec.sample_fraction, sample_pool=ec.sample_pool, target=ec.target,
            start_conditioned=ec.start_conditioned, architecture=cfg.reward.architecture,
            ema_decay=ec.ema_decay, ema_start=ec.ema_start,
            on_log=log_to(tracker, "extract"), on_resume=tracker.rewind, autocast_dtype=autocast_dtype(ec))
        metrics = {"target": ec.target, "start_conditioned": ec.start_conditioned, "steps": result.step,
                   "final_loss": result.final_loss,
                   "steps_per_s": result.steps_per_s, "peak_memory_mb": result.peak_memory_mb, "device": str(device)}
        _plot_loss_bands(tracker)
        metrics |= domain.reward_diagnostics(cfg, reward, segments, tracker)
        metrics["evaluation"] = evaluation_settings(cfg)
        tracker.summary(metrics)
    provenance.seal(run_dir)
    print_summary_table(f"extract {cfg.env.name} -> {run_dir}", metrics)
    return metrics


def _plot_loss_bands(tracker: RunTracker) -> None:
    rows = [row for row in tracker.rows() if "extract/loss" in row]
    if not rows:
        return
    bands = sorted({key for row in rows for key in row if key.startswith("extract/loss_t")},
                   key=lambda key: int(key.removeprefix("extract/loss_t").split("-")[0]))
    series = {"all t": [row["extract/loss"] for row in rows]}
    series |= {key.removeprefix("extract/loss_"): [row.get(key, float("nan")) for row in rows] for key in bands}
    plot_curve([row["step"] for row in rows], series, tracker.plots_dir / "extraction_loss.png", "step",
               "matching loss", "score-matching loss by band of diffusion time t", logy=True)


def check_settings(cfg: DictConfig, given: Collection[str] | None = None) -> None:
    """Refuse settings given on the command line (or ``given``, keys) that this stage does not read."""
    # the models' settings: checked once they are loaded
    check_settings_read(cfg, "extract", (*MODEL_SECTIONS, "reward", "extract"), given)


def main(cfg: DictConfig) -> dict:
    check_settings(cfg)
    domain = families.of(cfg)
    if domain.pretrained_models:  # two given models (e.g. Stable Diffusion and Safe Stable Diffusion)
        return domain.extract_pretrained(cfg, hydra_run_dir(), None, cfg.overwrite)
    models = resolve_inputs(cfg, "extract", ("base_model", "expert_model"))
    return run(cfg, hydra_run_dir(), models["base_model"], models["expert_model"], start_afresh=cfg.overwrite)
