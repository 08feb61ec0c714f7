"""Environments by name: which simulator, which maze, how long an episode runs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import gymnasium as gym
import gymnasium_robotics
import mujoco
import numpy as np

from relreward_cli.errors import UserError


class MuJoCoWarning(UserWarning):
    """A warning of the MuJoCo engine (e.g. about a deprecated attribute of an env's XML), as a Python warning."""


def _warn_from_mujoco(message: str) -> None:
    warnings.warn(message.strip(), MuJoCoWarning, stacklevel=2)


# MuJoCo's warnings go through Python's `warnings` (category `MuJoCoWarning`) instead of MuJoCo printing each one:
# a message is then shown once per process, not once per env (HalfCheetah's XML warns about `settotalmass` at
# every construction), and can be filtered like any warning. Set once, for every env this module makes.
mujoco.set_mju_user_warning(_warn_from_mujoco)


@dataclass(frozen=True)
class EnvironmentSpec:
    """One named environment: its Gymnasium id, episode length (steps), for Maze2D its maze key, the D4RL
    task whose published reference returns normalize its scores (`planning.scores`), and for planar bodies the
    observation index of the torso's pitch (radians), past +-90 degrees of which the body has flipped over."""

    gym_id: str
    max_episode_steps: int
    maze: str | None = None
    d4rl_task: str | None = None
    torso_angle_index: int | None = None


ENVIRONMENTS: dict[str, EnvironmentSpec] = {
    "maze2d_open": EnvironmentSpec("PointMaze_Open-v3", 150, maze="open", d4rl_task="maze2d-open"),
    "maze2d_umaze": EnvironmentSpec("PointMaze_UMaze-v3", 300, maze="umaze", d4rl_task="maze2d-umaze"),
    "maze2d_medium": EnvironmentSpec("PointMaze_Medium-v3", 600, maze="medium", d4rl_task="maze2d-medium"),
    "maze2d_large": EnvironmentSpec("PointMaze_Large-v3", 800, maze="large", d4rl_task="maze2d-large"),
    # MuJoCo v5 observations start with qpos[1:] = (rootz, rooty, ...): index 1 is the torso's pitch.
    "hopper": EnvironmentSpec("Hopper-v5", 1000, d4rl_task="hopper", torso_angle_index=1),
    "halfcheetah": EnvironmentSpec("HalfCheetah-v5", 1000, d4rl_task="halfcheetah", torso_angle_index=1),
    "walker2d": EnvironmentSpec("Walker2d-v5", 1000, d4rl_task="walker2d", torso_angle_index=1),
}


def maze_environment(maze: str) -> EnvironmentSpec:
    """The Maze2D entry of `ENVIRONMENTS` for a maze key (umaze, medium, large)."""
    specs = {spec.maze: spec for spec in ENVIRONMENTS.values() if spec.maze is not None}
    if maze not in specs:
        raise UserError(f"Unknown maze '{maze}'. Choose one of: {', '.join(specs)}.")
    return specs[maze]


def make_maze_env(maze: str, max_episode_steps: int | None = None, **kwargs) -> gym.Env:
    """PointMaze for a maze key with a fixed goal (`continuing_task=True, reset_target=False`): episodes
    never terminate and are truncated after `max_episode_steps` (default: the entry's). `kwargs` go to
    `gym.make`."""
    spec = maze_environment(maze)
    gym.register_envs(gymnasium_robotics)
    return gym.make(spec.gym_id, continuing_task=True, reset_target=False,
                    max_episode_steps=max_episode_steps or spec.max_episode_steps, **kwargs)


def environment(name: str) -> EnvironmentSpec:
    """The entry of `ENVIRONMENTS` called `name` (an env config's `env.name`)."""
    if name not in ENVIRONMENTS:
        raise UserError(f"No simulator is registered for env '{name}'. Known environments: "
                        f"{', '.join(ENVIRONMENTS)}; add an entry to relreward_cli/envs/registry.py for a new one.")
    return ENVIRONMENTS[name]


def env_dims(name: str) -> tuple[int, int]:
    """`(observation size, action size)` of the environment `name` (a dict observation's `observation` entry)."""
    env = make_env(name)
    try:
        space = env.observation_space
        if isinstance(space, gym.spaces.Dict):
            space = space["observation"]
        return int(np.prod(space.shape)), int(np.prod(env.action_space.shape))
    finally:
        env.close()


def check_data_fits_env(name: str, obs_dim: int, act_dim: int, sources: str) -> None:
    """Refuse datasets whose observation or action size is not the environment's, before any training."""
    expected = env_dims(name)
    if (obs_dim, act_dim) != expected:
        raise UserError(f"The datasets ({sources}) have observations of size {obs_dim} and actions of size {act_dim}, "
                        f"but env={name} has {expected[0]} and {expected[1]}: they were recorded in another "
                        "environment. Point env.base_data / env.expert_data at data of this env, or choose the env "
                        "the data come from. Nothing was trained.")


def make_env(name: str, max_episode_steps: int | None = None, **kwargs) -> gym.Env:
    """The environment `name` (Maze2D: as `make_maze_env`), truncated after `max_episode_steps` (default:
    the entry's)."""
    spec = environment(name)
    if spec.maze is not None:
        return make_maze_env(spec.maze, max_episode_steps, **kwargs)
    return gym.make(spec.gym_id, max_episode_steps=max_episode_steps or spec.max_episode_steps, **kwargs)
