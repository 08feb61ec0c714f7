"""``relreward make-dataset``: the base and expert datasets of an env, as its kind of env makes them (Maze2D: generated
in PointMaze; locomotion: random, medium and expert data from a Stable-Baselines3 SAC run, the D4RL recipes; both in
Minari's format)."""

from __future__ import annotations

from collections.abc import Collection

import torch
from omegaconf import DictConfig

from relreward_cli import families
from relreward_cli.errors import UserError
from relreward_cli.stages.common import apply_threads, check_settings_read, data_root, hydra_run_dir
from relreward_cli.tracking import print_summary_table, tracker_from_config

KINDS = ("base", "expert")


def check_settings(cfg: DictConfig, given: Collection[str] | None = None) -> None:
    """Refuse settings given on the command line (or ``given``, keys) that this stage does not read."""
    check_settings_read(cfg, "make-dataset", (), given)


def main(cfg: DictConfig) -> dict:
    check_settings(cfg)
    kinds = KINDS if cfg.kind == "both" else (cfg.kind,)
    if not set(kinds) <= set(KINDS):
        raise UserError(f"kind={cfg.kind} is not one of base, expert, both.")
    families.of(cfg).check_config(cfg)
    with tracker_from_config(cfg, hydra_run_dir(), "make-dataset") as tracker:
        apply_threads(cfg)  # SAC trains with torch
        results = families.of(cfg).make_datasets(cfg, kinds, cfg.overwrite)
        summary = {f"{kind}/{key}": value for kind, row in results.items() for key, value in row.items()}
        tracker.summary({**summary, "data_dir": str(data_root(cfg)), "torch_threads": torch.get_num_threads()})
    print_summary_table(f"make-dataset {cfg.env.name} -> {data_root(cfg)}", summary)
    return summary
