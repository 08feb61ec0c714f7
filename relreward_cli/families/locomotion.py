"""Locomotion (MuJoCo Hopper, HalfCheetah, Walker2d): random, medium and expert datasets from one Stable-Baselines3
SAC run (the D4RL recipe) or published ones; planners executing their planned actions, scored by the D4RL-normalized
return."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import ClassVar

from omegaconf import DictConfig

from relreward_cli.data.generate_locomotion import (
    GENERATOR,
    LEVELS,
    generate_locomotion_episodes,
    locomotion_dataset_id,
    locomotion_settings,
    write_locomotion_datasets,
)
from relreward_cli.diffusion.artifact import TrainedDiffusion
from relreward_cli.errors import UserError
from relreward_cli.families.trajectory import TrajectoryFamily, dataset_up_to_date, one_writer_at_a_time
from relreward_cli.planning.rollout import PlanFollower, PlannedActions
from relreward_cli.stages.common import data_root


class LocomotionFamily(TrajectoryFamily):
    name = "locomotion"
    env_settings_by_stage: ClassVar[Mapping[str, tuple[str, ...]]] = {"generate": ("make-dataset",)}  # SAC and data

    @one_writer_at_a_time
    def make_datasets(self, cfg: DictConfig, kinds: tuple[str, ...], overwrite: bool) -> dict[str, dict]:
        """All of random, medium and expert as ``relreward/<env.name>/<level>-v0`` (one SAC run makes them, so
        ``kinds`` does not apply), unless identical ones exist."""
        root, gen = data_root(cfg), cfg.env.generate
        settings = locomotion_settings(cfg.env.name, gen.sac.total_steps, gen.sac.eval_every, dict(gen.n_steps),
                                       gen.seed, gen.sac.eval_episodes, gen.sac.learning_starts,
                                       cfg.env.max_episode_steps)
        wanted = {"generator": GENERATOR, "settings": settings}
        ids = {level: locomotion_dataset_id(cfg.env.name, level) for level in LEVELS}
        if all([dataset_up_to_date(ids[level], wanted, root, overwrite) for level in LEVELS]):
            return {level: {"id": ids[level], "steps": settings["n_steps"][level], "seconds": 0.0,
                            "status": "exists"} for level in LEVELS}
        start = time.perf_counter()
        generated = generate_locomotion_episodes(settings)
        write_locomotion_datasets(generated, root, overwrite=True)
        seconds = time.perf_counter() - start
        return {level: {"id": ids[level], "steps": settings["n_steps"][level], "seconds": seconds,
                        "status": "written", "mean_return": generated[level]["metadata"]["dataset_mean_return"][level]}
                for level in LEVELS}

    def plan_follower(self, cfg: DictConfig, model: TrainedDiffusion) -> PlanFollower:
        if not model.spec.use_actions:
            raise UserError("This model plans observations only (use_actions=false), and only Maze2D has a "
                            "controller that tracks planned states. Train the diffusion models with use_actions=true "
                            "(the locomotion env configs do) so that the planner can execute its planned actions.")
        return PlannedActions(model.spec.act_dim)


FAMILY = LocomotionFamily
