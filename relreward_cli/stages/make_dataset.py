"""``relreward make-dataset``: Maze2D base and expert datasets generated in PointMaze, or locomotion random, medium
and expert datasets from a Stable-Baselines3 SAC run (the D4RL recipes), in Minari's format."""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig

from relreward_cli.data.generate_locomotion import (
    GENERATOR,
    LEVELS,
    generate_locomotion_episodes,
    locomotion_dataset_id,
    locomotion_settings,
    write_locomotion_datasets,
)
from relreward_cli.data.generate_maze import (
    Maze2DGeneration,
    generate_maze2d_episodes,
    read_dataset_metadata,
    write_minari_dataset,
)
from relreward_cli.data.sources import load_episodes, split_source
from relreward_cli.envs.registry import make_maze_env
from relreward_cli.errors import UserError
from relreward_cli.stages.common import apply_threads, data_root, hydra_run_dir
from relreward_cli.tracking import print_summary_table, tracker_from_config

KINDS = ("base", "expert")


@contextmanager
def _data_root_lock(root: Path, env_name: str):
    """Hold an exclusive lock on the data of one env under the data root, so the jobs of a sweep that start
    together (several seeds of one env) do not generate the same dataset at once: the first writes it, the
    others find it. Other envs write other datasets, so they generate side by side."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".make-dataset-{env_name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _one_writer_at_a_time(function):
    @functools.wraps(function)
    def locked(cfg: DictConfig, *args, **kwargs):
        with _data_root_lock(data_root(cfg), cfg.env.name):
            return function(cfg, *args, **kwargs)

    return locked


def _up_to_date(dataset_id: str, wanted: dict, root: Path, overwrite: bool) -> bool:
    """True when `dataset_id` exists, its stored metadata holds `wanted` and its episodes can be read; False
    when it is absent or is to be overwritten; refuses one made with other settings, or damaged."""
    if overwrite or not (root / dataset_id).exists():
        return False
    found = read_dataset_metadata(dataset_id, root)
    differing = {key: found.get(key) for key in wanted if found.get(key) != wanted[key]}
    if not differing:
        load_episodes(f"generated:{dataset_id}", root)  # a damaged file is refused here, naming overwrite=true
        return True
    raise UserError(f"Dataset {dataset_id} already exists in {root} with other generator settings ({differing}). "
                    "Pass overwrite=true to replace it, or data_dir=<another folder> to keep both.")


@_one_writer_at_a_time
def make_datasets(cfg: DictConfig, kinds: tuple[str, ...] = KINDS, overwrite: bool = False) -> dict[str, dict]:
    """Generate the datasets of an env config unless identical ones exist: for Maze2D the ``kinds`` (base,
    expert) named by ``env.<kind>_data``, for locomotion all of random, medium and expert (one SAC run makes
    them; ``kinds`` does not apply) as ``relreward/<env.name>/<level>-v0``.

    A dataset that exists with the same generator settings is kept (so pipelines and sweeps share it);
    one made with other settings is refused unless ``overwrite``. Applies ``threads`` (SAC trains with torch).
    Returns per kind: id, steps, seconds.
    """
    apply_threads(cfg)
    if cfg.env.family == "locomotion":
        return _make_locomotion_datasets(cfg, overwrite)
    if cfg.env.family != "maze2d":
        raise UserError(f"make-dataset generates Maze2D and locomotion data; env={cfg.env.name} is neither. "
                        "For other environments point env.base_data / env.expert_data at Minari ids or D4RL "
                        "HDF5 files.")
    root, gen = data_root(cfg), cfg.env.generate
    results = {}
    for kind in kinds:
        source_kind, dataset_id = split_source(cfg.env[f"{kind}_data"])
        if source_kind != "generated":
            raise UserError(f"env.{kind}_data={cfg.env[f'{kind}_data']} is not a generated:<id> source, so "
                            "make-dataset has nothing to write; use generated:<namespace>/<name>-v0.")
        settings = Maze2DGeneration(maze=cfg.env.maze, kind=kind, n_episodes=gen[kind].n_episodes,
                                    episode_steps=gen[kind].episode_steps, goal_cell=tuple(cfg.env.goal_cell),
                                    action_noise=gen.action_noise, seed=gen.seed + (0 if kind == "base" else 1))
        wanted = settings.metadata()
        steps = settings.n_episodes * settings.episode_steps
        if _up_to_date(dataset_id, wanted, root, overwrite):
            results[kind] = {"id": dataset_id, "steps": steps, "seconds": 0.0, "status": "exists"}
            continue
        start = time.perf_counter()
        episodes = generate_maze2d_episodes(settings)
        env = make_maze_env(cfg.env.maze)
        write_minari_dataset(dataset_id, episodes, env, wanted, root, overwrite=(root / dataset_id).exists())
        env.close()
        results[kind] = {"id": dataset_id, "steps": steps, "seconds": time.perf_counter() - start,
                         "status": "written"}
    return results


def _make_locomotion_datasets(cfg: DictConfig, overwrite: bool) -> dict[str, dict]:
    root, gen = data_root(cfg), cfg.env.generate
    settings = locomotion_settings(cfg.env.name, gen.sac.total_steps, gen.sac.eval_every, dict(gen.n_steps),
                                   gen.seed, gen.sac.eval_episodes, gen.sac.learning_starts,
                                   cfg.env.max_episode_steps)
    wanted = {"generator": GENERATOR, "settings": settings}
    ids = {level: locomotion_dataset_id(cfg.env.name, level) for level in LEVELS}
    if all([_up_to_date(ids[level], wanted, root, overwrite) for level in LEVELS]):
        return {level: {"id": ids[level], "steps": settings["n_steps"][level], "seconds": 0.0, "status": "exists"}
                for level in LEVELS}
    start = time.perf_counter()
    generated = generate_locomotion_episodes(settings)
    write_locomotion_datasets(generated, root, overwrite=True)
    seconds = time.perf_counter() - start
    return {level: {"id": ids[level], "steps": settings["n_steps"][level], "seconds": seconds, "status": "written",
                    "mean_return": generated[level]["metadata"]["dataset_mean_return"][level]}
            for level in LEVELS}


def main(cfg: DictConfig) -> dict:
    kinds = KINDS if cfg.kind == "both" else (cfg.kind,)
    if not set(kinds) <= set(KINDS):
        raise UserError(f"kind={cfg.kind} is not one of base, expert, both.")
    with tracker_from_config(cfg, hydra_run_dir(), "make-dataset") as tracker:
        results = make_datasets(cfg, kinds, cfg.overwrite)
        summary = {f"{kind}/{key}": value for kind, row in results.items() for key, value in row.items()}
        tracker.summary({**summary, "data_dir": str(data_root(cfg)), "torch_threads": torch.get_num_threads()})
    print_summary_table(f"make-dataset {cfg.env.name} -> {data_root(cfg)}", summary)
    return summary
