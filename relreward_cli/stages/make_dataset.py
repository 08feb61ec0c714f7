"""``relreward make-dataset``: Maze2D base and expert datasets generated in PointMaze, in Minari's format."""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from relreward_cli.data.generate_maze import (
    generate_maze2d_episodes,
    generation_metadata,
    read_dataset_metadata,
    write_minari_dataset,
)
from relreward_cli.data.sources import split_source
from relreward_cli.envs.registry import make_maze_env
from relreward_cli.errors import UserError
from relreward_cli.stages.common import data_root, hydra_run_dir
from relreward_cli.tracking import print_summary_table, tracker_from_config

KINDS = ("base", "expert")


@contextmanager
def _data_root_lock(root: Path):
    """Hold an exclusive lock on the data root, so the jobs of a sweep that start together (several seeds
    of one env) do not generate the same dataset at once: the first writes it, the others find it."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".make-dataset.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _one_writer_at_a_time(function):
    @functools.wraps(function)
    def locked(cfg: DictConfig, *args, **kwargs):
        with _data_root_lock(data_root(cfg)):
            return function(cfg, *args, **kwargs)

    return locked


@_one_writer_at_a_time
def make_datasets(cfg: DictConfig, kinds: tuple[str, ...] = KINDS, overwrite: bool = False) -> dict[str, dict]:
    """Generate the ``kinds`` datasets of a Maze2D env config unless identical ones exist.

    A dataset that exists with the same generator settings is kept (so pipelines and sweeps share it);
    one made with other settings is refused unless ``overwrite``. Returns per kind: id, steps, seconds.
    """
    if cfg.env.family != "maze2d":
        raise UserError(f"make-dataset generates Maze2D data; env={cfg.env.name} is not a Maze2D environment. "
                        "For other environments point env.base_data / env.expert_data at Minari ids or D4RL "
                        "HDF5 files.")
    root, gen = data_root(cfg), cfg.env.generate
    results = {}
    for kind in kinds:
        source_kind, dataset_id = split_source(cfg.env[f"{kind}_data"])
        if source_kind != "generated":
            raise UserError(f"env.{kind}_data={cfg.env[f'{kind}_data']} is not a generated:<id> source, so "
                            "make-dataset has nothing to write; use generated:<namespace>/<name>-v0.")
        settings = dict(maze=cfg.env.maze, kind=kind, n_episodes=gen[kind].n_episodes,
                        episode_steps=gen[kind].episode_steps, goal_cell=tuple(cfg.env.goal_cell),
                        action_noise=gen.action_noise, seed=gen.seed + (0 if kind == "base" else 1))
        wanted = generation_metadata(**settings)
        exists = (root / dataset_id).exists()
        if exists and not overwrite:
            found = read_dataset_metadata(dataset_id, root)
            if found == wanted:
                results[kind] = {"id": dataset_id, "steps": wanted["n_episodes"] * wanted["episode_steps"],
                                 "seconds": 0.0, "status": "exists"}
                continue
            raise UserError(f"Dataset {dataset_id} already exists in {root} with other generator settings "
                            f"({ {k: v for k, v in found.items() if wanted.get(k) != v} }). Pass overwrite=true "
                            "to replace it, or data_dir=<another folder> to keep both.")
        start = time.perf_counter()
        episodes = generate_maze2d_episodes(**settings)
        env = make_maze_env(cfg.env.maze)
        write_minari_dataset(dataset_id, episodes, env, wanted, root, overwrite=exists)
        env.close()
        results[kind] = {"id": dataset_id, "steps": wanted["n_episodes"] * wanted["episode_steps"],
                         "seconds": time.perf_counter() - start, "status": "written"}
    return results


def main(cfg: DictConfig) -> dict:
    kinds = KINDS if cfg.kind == "both" else (cfg.kind,)
    if not set(kinds) <= set(KINDS):
        raise UserError(f"kind={cfg.kind} is not one of base, expert, both.")
    with tracker_from_config(cfg, hydra_run_dir(), "make-dataset") as tracker:
        results = make_datasets(cfg, kinds, cfg.overwrite)
        summary = {f"{kind}/{key}": value for kind, row in results.items() for key, value in row.items()}
        tracker.summary({**summary, "data_dir": str(data_root(cfg))})
    print_summary_table(f"make-dataset {cfg.env.name} -> {data_root(cfg)}", summary)
    return summary
