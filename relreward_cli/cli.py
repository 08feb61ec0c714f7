"""``relreward <stage> [hydra overrides]``: dispatch to a stage, each with its own primary Hydra config.

Hydra's own flags pass through (``--multirun``, ``--cfg job``, ``--help``, ``hydra/launcher=slurm``).
The stages live in :mod:`relreward_cli.stages`; each exposes ``main(cfg) -> dict``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from relreward_cli.errors import UserError

STAGES: dict[str, str] = {
    "make-dataset": "Generate Maze2D datasets offline in PointMaze, written in Minari's format.",
    "train-diffusion": "Train a trajectory diffusion model (temporal U-Net) on the base or expert data.",
    "extract": "Extract the relative reward from a base and an expert diffusion model; evaluate it.",
    "pipeline": "make-dataset -> train-diffusion (base, expert) -> extract, in one command.",
}

CONFIG_DIR = Path(os.environ.get("RELREWARD_CONFIG_DIR", Path(__file__).resolve().parents[1] / "configs"))


def _usage() -> str:
    width = max(map(len, STAGES))
    lines = [f"  {name:<{width}}  {text}" for name, text in STAGES.items()]
    return ("usage: relreward <stage> [hydra overrides] [--multirun] [--cfg job] [--help]\n\nstages:\n"
            + "\n".join(lines)
            + "\n\nexample: relreward pipeline env=maze2d_medium seed=1\n"
            "`relreward <stage> --help` lists the stage's config groups and options.")


def _module_name(stage: str) -> str:
    return stage.replace("-", "_")


def report_user_errors(stage_main: Callable) -> Callable:
    """Turn a :class:`UserError` raised inside a stage into one paragraph on stderr and exit code 2."""

    @functools.wraps(stage_main)
    def wrapper(cfg):
        try:
            return stage_main(cfg)
        except UserError as err:
            logging.getLogger("relreward").error("%s", err)
            print(f"\nrelreward: error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``relreward`` console script."""
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    stage = argv[0]
    if stage not in STAGES:
        print(f"relreward: unknown stage {stage!r}; choose one of: {', '.join(STAGES)}.\n\n{_usage()}",
              file=sys.stderr)
        return 2
    if not (CONFIG_DIR / f"{_module_name(stage)}.yaml").is_file():
        print(f"relreward: no config directory with {_module_name(stage)}.yaml at {CONFIG_DIR}. Install the "
              "project in editable mode (`make install`) or set RELREWARD_CONFIG_DIR to its configs/ folder.",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"relreward_cli.stages.{_module_name(stage)}")
    sys.argv = [f"relreward {stage}", *argv[1:]]
    task = hydra.main(config_path=str(CONFIG_DIR), config_name=_module_name(stage), version_base=None)(
        report_user_errors(module.main))
    task()
    return 0


if __name__ == "__main__":
    sys.exit(main())
