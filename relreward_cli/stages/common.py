"""What every stage needs from its config: run folder, data root, device, seeds, the tracker hook."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from relreward_cli.data.generate_maze import read_dataset_metadata
from relreward_cli.data.sources import split_source
from relreward_cli.diffusion.artifact import DiffusionSpec
from relreward_cli.envs.maze import MazeGeometry
from relreward_cli.errors import UserError
from relreward_cli.tracking import RunTracker
from relreward_cli.training import resolve_device

log = logging.getLogger(__name__)


def hydra_run_dir() -> Path:
    """The output folder Hydra picked for this job (``hydra.run.dir`` or the sweep's subfolder)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def job_cpus() -> int | None:
    """The CPUs SLURM gave this job (``SLURM_CPUS_PER_TASK``, set when the job asked for them), or None."""
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def apply_threads(cfg: DictConfig) -> int:
    """Apply ``threads``: torch's CPU threads (its OpenMP pool). Null means the job's CPUs inside a SLURM job
    (so that jobs sharing a node do not oversubscribe it) and torch's default elsewhere. The count is also
    exported as ``OMP_NUM_THREADS`` for processes the stage starts. Returns the count in effect."""
    threads = cfg.get("threads") or job_cpus()
    if threads:
        torch.set_num_threads(int(threads))
        os.environ["OMP_NUM_THREADS"] = str(int(threads))
    return torch.get_num_threads()


def torch_device(cfg: DictConfig) -> torch.device:
    """Apply ``threads`` (as :func:`apply_threads`) and resolve ``device``; logs both."""
    threads = apply_threads(cfg)
    device = resolve_device(cfg.device)
    log.info("device %s, %d torch threads", device, threads)
    return device


def config_subset(cfg: DictConfig, keys: dict[str, tuple[str, ...]]) -> dict:
    """``{section: {key: value}}`` of the resolved config for the listed keys; an empty tuple takes the whole
    section (or the top-level value)."""
    subset = {}
    for section, names in keys.items():
        value = OmegaConf.to_container(cfg[section], resolve=True) if OmegaConf.is_config(cfg[section]) \
            else cfg[section]
        subset[section] = {name: value[name] for name in names} if names else value
    return subset


def dataset_inputs(cfg: DictConfig) -> dict[str, Path]:
    """The base and expert datasets of ``cfg.env``, as inputs whose digests a run's provenance records."""
    from relreward_cli.data.sources import dataset_path

    return {f"{kind}_data": dataset_path(cfg.env[f"{kind}_data"], data_root(cfg)) for kind in ("base", "expert")}


def data_root(cfg: DictConfig) -> Path:
    """Absolute Minari root of generated datasets (``data_dir``)."""
    return Path(cfg.data_dir).expanduser().resolve()


def diffusion_spec(cfg: DictConfig, obs_dim: int, act_dim: int) -> DiffusionSpec:
    """The model spec a config asks for; refuses clipping `x_0` to `[-1, 1]` on Gaussian-normalized data (whose
    values run past one standard deviation)."""
    if cfg.normalizer == "gaussian" and cfg.diffusion.clip_denoised:
        raise UserError("normalizer=gaussian with diffusion.clip_denoised=true would clip every denoised segment "
                        "to [-1, 1], one standard deviation of the data. Pass diffusion.clip_denoised=false "
                        "(with diffusion.prediction=x0, as Diffuser's locomotion models: an eps-predictor's "
                        "unclipped x_0 is unstable at high noise), or keep normalizer=limits.")
    return DiffusionSpec(horizon=cfg.horizon, obs_dim=obs_dim, act_dim=act_dim, use_actions=cfg.use_actions,
                         dim=cfg.model.dim, dim_mults=tuple(cfg.model.dim_mults), n_steps=cfg.diffusion.n_steps,
                         schedule=cfg.diffusion.schedule, clip_denoised=cfg.diffusion.clip_denoised,
                         prediction=cfg.diffusion.prediction)


def maze_goal(cfg: DictConfig) -> tuple[MazeGeometry, np.ndarray]:
    """The maze of a Maze2D env config and the expert's goal (world x, y). The goal must be the one the expert
    data were generated for (their metadata's `goal_cell`), else every reward map and success rate would be
    measured against a goal the expert never went to."""
    if cfg.env.family != "maze2d":
        raise UserError(f"env={cfg.env.name} is not a Maze2D environment; this step needs env=maze2d_*.")
    geometry = MazeGeometry.from_name(cfg.env.maze)
    goal = tuple(geometry.check_free(tuple(cfg.env.goal_cell)))
    kind, dataset_id = split_source(cfg.env.expert_data)
    if kind == "generated":
        data_goal = read_dataset_metadata(dataset_id, data_root(cfg)).get("goal_cell")
        if data_goal is not None and tuple(data_goal) != goal:
            raise UserError(f"env.goal_cell={list(goal)}, but the expert data {cfg.env.expert_data} were made for "
                            f"the goal {list(data_goal)}. Pass env.goal_cell={list(data_goal)}, or make data for "
                            f"this goal (`relreward make-dataset env={cfg.env.name} env.goal_cell={list(goal)} "
                            "overwrite=true`, or another data_dir) and train on them.")
    return geometry, geometry.cell_to_xy(np.asarray(goal))


def check_goal_matches_data(cfg: DictConfig) -> None:
    """Before any work: a Maze2D config's goal is the one its expert data were made for (see :func:`maze_goal`);
    nothing to check for environments without a goal."""
    if cfg.env.family == "maze2d":
        maze_goal(cfg)


def log_to(tracker: RunTracker, prefix: str):
    """An ``on_log`` callback for :func:`relreward_cli.training.train_loop` that prefixes metric names."""
    return lambda scalars, step: tracker.log({f"{prefix}/{k}": v for k, v in scalars.items()}, step)
