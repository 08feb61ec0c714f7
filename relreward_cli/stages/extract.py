"""``relreward extract``: learn the relative reward of an expert model over a base model, then score it."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from relreward_cli import provenance
from relreward_cli.data.pairs import SegmentPair, load_segment_pair
from relreward_cli.diffusion.artifact import check_compatible, load_diffusion_model, model_file
from relreward_cli.errors import UserError
from relreward_cli.plots import plot_curve, plot_reward_maps, plot_segment_rewards
from relreward_cli.reward.evaluate import maze_reward_map, pearson, segment_return_fit
from relreward_cli.reward.trainer import train_reward
from relreward_cli.stages.common import (
    check_goal_matches_data,
    config_subset,
    data_root,
    dataset_inputs,
    hydra_run_dir,
    log_to,
    maze_goal,
    torch_device,
)
from relreward_cli.tracking import RunTracker, print_summary_table, tracker_from_config
from relreward_cli.training import seed_everything

# Extraction settings that do not shape the reward: saving, logging, how it is evaluated, and n_steps (see
# train_diffusion.RESULT_NEUTRAL_TRAIN_KEYS).
RESULT_NEUTRAL_EXTRACT_KEYS = ("n_steps", "save_every", "log_every", "eval_t", "eval_noise_samples", "eval_segments",
                               "grid_resolution")


def made_from(cfg: DictConfig, base_model: Path, expert_model: Path) -> dict:
    """The provenance of the reward this config extracts: its settings and the digests of both models and
    datasets."""
    extract_keys = tuple(key for key in cfg.extract if key not in RESULT_NEUTRAL_EXTRACT_KEYS)
    settings = config_subset(cfg, {"seed": (), "reward": (), "extract": extract_keys})
    return provenance.record({"stage": "extract", "env": cfg.env.name, **settings},
                             {"base_model": model_file(base_model), "expert_model": model_file(expert_model),
                              **dataset_inputs(cfg)})


def run(cfg: DictConfig, run_dir: Path, base_model: Path, expert_model: Path, group: str | None = None,
        start_afresh: bool = False) -> dict:
    """Extract the reward of ``expert_model`` relative to ``base_model`` into ``run_dir``, then correlate it with
    the env return of dataset segments and, on Maze2D, draw the reward maps against the ground truth. Returns
    the summary metrics. A ``run_dir`` holding an extraction of other models or settings is refused (or, with
    ``start_afresh``, set aside; see :mod:`relreward_cli.provenance`)."""
    device = torch_device(cfg)
    base, expert = load_diffusion_model(base_model, device), load_diffusion_model(expert_model, device)
    check_compatible(base, expert)  # before any data is loaded or any step taken
    if max(cfg.extract.eval_t) >= base.spec.n_steps:
        raise UserError(f"extract.eval_t={list(cfg.extract.eval_t)}: the models have {base.spec.n_steps} diffusion "
                        f"steps, so every time must be below {base.spec.n_steps}. Nothing was run.")
    check_goal_matches_data(cfg)
    provenance.claim(run_dir, made_from(cfg, base_model, expert_model), start_afresh=start_afresh,
                     how_to_start_afresh="overwrite=true")
    generator = seed_everything(cfg.seed)
    sources = base.info["sources"]
    segments = load_segment_pair(sources["base"], sources["expert"], data_root(cfg), base.spec.horizon,
                                 base.spec.use_actions, normalizer=base.normalizer)
    ec = cfg.extract
    with tracker_from_config(cfg, run_dir, "extract", group) as tracker:
        reward, result = train_reward(
            base, expert, segments, run_dir, dim=cfg.reward.dim, dim_mults=tuple(cfg.reward.dim_mults),
            n_steps=ec.n_steps, batch_size=ec.batch_size, lr=ec.lr, grad_clip=ec.grad_clip,
            save_every=ec.save_every, log_every=ec.log_every, generator=generator, device=device,
            info={"env": cfg.env.name, "sources": sources, "seed": cfg.seed}, sample_fraction=ec.sample_fraction,
            sample_pool=ec.sample_pool, target=ec.target, start_conditioned=ec.start_conditioned,
            on_log=log_to(tracker, "extract"), on_resume=tracker.rewind)
        metrics = {"target": ec.target, "start_conditioned": ec.start_conditioned, "steps": result.step,
                   "final_loss": result.final_loss,
                   "steps_per_s": result.steps_per_s, "peak_memory_mb": result.peak_memory_mb, "device": str(device)}
        _plot_loss_bands(tracker)
        if ec.eval_segments:
            metrics |= _segment_returns(cfg, reward, segments, tracker)
        if cfg.env.family == "maze2d":
            metrics |= _maze_reward_maps(cfg, reward, tracker)
        tracker.summary(metrics)
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


def _segment_returns(cfg: DictConfig, reward, segments: SegmentPair, tracker: RunTracker) -> dict:
    ec = cfg.extract
    fit = segment_return_fit(reward, segments.episodes["base"], segments.episodes["expert"], list(ec.eval_t),
                             ec.eval_segments, ec.eval_noise_samples, cfg.seed)
    best_t, best = fit.best
    learned = fit.learned[fit.t_values.index(best_t)]
    path = plot_segment_rewards(learned, fit.returns, fit.is_expert, best_t, best,
                                tracker.plots_dir / "segment_rewards.png")
    tracker.log_image("segment_rewards", path)
    within = {f"segment_pearson/best_within_{kind}": pearson(learned[mask], fit.returns[mask])
              for kind, mask in (("base", ~fit.is_expert), ("expert", fit.is_expert))}
    return {**{f"segment_pearson/t{t}": rho for t, rho in zip(fit.t_values, fit.correlations, strict=True)},
            "segment_pearson/best": best, "segment_pearson/best_t": best_t, **within, "segment_plot": str(path)}


def _maze_reward_maps(cfg: DictConfig, reward, tracker: RunTracker) -> dict:
    geometry, goal_xy = maze_goal(cfg)
    ec = cfg.extract
    reward_map = maze_reward_map(reward, geometry, goal_xy, list(ec.eval_t), ec.grid_resolution, ec.eval_noise_samples)
    path = plot_reward_maps(geometry, reward_map.xs, reward_map.ys, reward_map.learned, reward_map.truth,
                            reward_map.free_mask, reward_map.t_values, reward_map.correlations, goal_xy,
                            tracker.plots_dir / "reward_maps.png")
    tracker.log_image("reward_maps", path)
    best_t, best = reward_map.best
    return {**{f"pearson/t{t}": rho for t, rho in zip(reward_map.t_values, reward_map.correlations, strict=True)},
            "pearson/best": best, "pearson/best_t": best_t, "heatmap": str(path)}


def main(cfg: DictConfig) -> dict:
    return run(cfg, hydra_run_dir(), Path(cfg.base_model), Path(cfg.expert_model), start_afresh=cfg.overwrite)
