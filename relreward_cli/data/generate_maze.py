"""Maze2D datasets made the D4RL way: the waypoint controller drives the real PointMaze env, and the episodes
are written as Minari datasets.

Generator settings are stored in the dataset's Minari metadata (`metadata.json` next to the HDF5 data, written
through `MinariStorage.update_metadata`) under the single key `relreward`, so they survive
`minari.load_dataset`: `minari.load_dataset(id).storage.metadata["relreward"]`, or
`read_dataset_metadata(id, root)`.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.namespace import create_namespace, list_local_namespaces
from tqdm import tqdm

from relreward_cli.data.sources import dataset_namespace, minari_root, open_minari
from relreward_cli.envs.maze import MazeGeometry, WaypointController
from relreward_cli.envs.registry import make_maze_env, maze_environment
from relreward_cli.errors import UserError

METADATA_KEY = "relreward"
KINDS = ("base", "expert")
PATH_TIES = ("first", "random")  # how the controller picks among equally short cell paths (see `Maze2DGeneration`)
# Settings added to the recipe after datasets were written, with the value those datasets were made with.
ADDED_SETTINGS = {"path_ties": "first"}
GOAL_RADIUS = 0.1  # world units: a wandering target counts as reached this close (D4RL's solve_thresh)


@dataclass(frozen=True)
class Maze2DGeneration:
    """Settings of one generated Maze2D dataset (see `generate_maze2d_episodes`).

    maze: umaze, medium or large; kind: base or expert; episode_steps: env steps per episode; goal_cell:
    (row, col) of the expert's goal; action_noise: std of the Gaussian noise added to the controller's actions;
    goal_timeout: steps a base episode pursues one target (None: the maze's max episode steps); path_ties: first
    (D4RL's controller: the first equally short neighbour cell in a fixed order, so in open space paths run along
    one row or column first) or random (drawn uniformly from its own stream, seeded by `seed`).
    """

    maze: str
    kind: str
    n_episodes: int
    episode_steps: int
    goal_cell: tuple[int, int]
    action_noise: float
    seed: int
    goal_timeout: int | None = None
    path_ties: str = "first"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"Unknown dataset kind '{self.kind}'. Choose one of: {', '.join(KINDS)}.")
        if self.path_ties not in PATH_TIES:
            raise UserError(f"env.generate.path_ties={self.path_ties} is not one of {', '.join(PATH_TIES)}: first "
                            "(D4RL's controller) or random (ties between equally short paths broken at random).")
        sizes = {"n_episodes": self.n_episodes, "episode_steps": self.episode_steps}
        if bad := {name: value for name, value in sizes.items() if value < 1}:
            raise UserError(f"The {self.kind} episodes' {bad} must be positive (env.generate.{self.kind} for the "
                            f"training data, env.evaluate.{self.kind} for extract's fresh episodes): at least one "
                            "episode of at least one step.")
        if not self.action_noise >= 0:
            raise UserError(f"env.generate.action_noise={self.action_noise} must be >= 0: it is the standard "
                            "deviation of the Gaussian noise added to the controller's actions (D4RL's: 0.3).")
        object.__setattr__(self, "goal_cell", MazeGeometry.from_name(self.maze).check_free(self.goal_cell))
        if self.goal_timeout is None:
            object.__setattr__(self, "goal_timeout", maze_environment(self.maze).max_episode_steps)

    def metadata(self) -> dict:
        """JSON-ready record of these settings with the maze map, the goal cell and its centre (world xy), the
        Gymnasium id and the controller's gains."""
        geometry = MazeGeometry.from_name(self.maze)
        controller = WaypointController(geometry)
        return {
            "generator": "maze2d_waypoint", **asdict(self), "goal_cell": list(self.goal_cell),
            "gym_id": maze_environment(self.maze).gym_id, "maze_map": geometry.maze_map.tolist(),
            "maze_scaling": geometry.scaling, "goal_xy": geometry.cell_to_xy(np.array(self.goal_cell)).tolist(),
            "goal_radius": GOAL_RADIUS,
            "controller": {"p_gain": controller.p_gain, "d_gain": controller.d_gain,
                           "waypoint_radius": controller.waypoint_radius},
        }


def generate_maze2d_episodes(settings: Maze2DGeneration, progress: bool = True) -> list[dict[str, np.ndarray]]:
    """Drive PointMaze (`settings.maze`) with the waypoint controller for `n_episodes` episodes of
    `episode_steps` steps, each from a random free cell.

    kind="base": wanders as D4RL did: heads to a random free cell and, on reaching it (within GOAL_RADIUS) or
    after `goal_timeout` steps, to another one.
    kind="expert": heads to the centre of `goal_cell` from a start cell other than it, then hovers there.
    Actions get Gaussian noise of std `action_noise`, then are clipped to [-1, 1]. The env's own goal (and
    hence its sparse reward: 1 within 0.45 of the goal) is `goal_cell` for both kinds. Same seed, same arrays.

    Returns one dict per episode: observations (T + 1, 4) float32 (x, y, vx, vy), actions (T, 2) float32,
    rewards (T,) float32, terminations (T,) bool, truncations (T,) bool (the last True); T = episode_steps.
    """
    kind, goal = settings.kind, np.array(settings.goal_cell)
    geometry = MazeGeometry.from_name(settings.maze)
    free = geometry.free_cells()
    starts = free if kind == "base" else free[(free != goal).any(axis=1)]
    rng = np.random.default_rng(settings.seed)
    env = make_maze_env(settings.maze, max_episode_steps=settings.episode_steps)
    path_rng = np.random.default_rng([settings.seed, 1]) if settings.path_ties == "random" else None
    controller = WaypointController(geometry, path_rng=path_rng)
    goal_xy = geometry.cell_to_xy(goal)
    episodes = []
    for _ in tqdm(range(settings.n_episodes), desc=f"{settings.maze} {kind} episodes", disable=not progress):
        start = starts[rng.integers(len(starts))]
        obs, _ = env.reset(seed=int(rng.integers(2**31)), options={"reset_cell": start, "goal_cell": goal})
        controller.reset()
        target, steps_to_target = (goal_xy if kind == "expert" else None), 0
        steps = {"observations": [obs["observation"]], "actions": [], "rewards": [], "terminations": [],
                 "truncations": []}
        terminated = truncated = False
        while not (terminated or truncated):
            position = obs["observation"][:2]
            if kind == "base" and (target is None or steps_to_target >= settings.goal_timeout
                                   or np.linalg.norm(position - target) < GOAL_RADIUS):
                here = geometry.xy_to_cell(position)
                candidates = free[(free != here).any(axis=1)]
                target, steps_to_target = geometry.cell_to_xy(candidates[rng.integers(len(candidates))]), 0
            action = controller(obs["observation"], target) + settings.action_noise * rng.standard_normal(2)
            action = np.clip(action, -1.0, 1.0)
            obs, reward, terminated, truncated, _ = env.step(action)
            steps_to_target += 1
            step = (obs["observation"], action, reward, terminated, truncated)
            for key, value in zip(steps, step, strict=True):
                steps[key].append(value)
        episodes.append(stack_episode(steps))
    env.close()
    return episodes


def stack_episode(steps: dict[str, list]) -> dict[str, np.ndarray]:
    """Per-step lists (observations, actions, rewards, terminations, truncations) as the arrays of an episode
    dict: float32, and bool for the flags."""
    return {key: np.array(value, dtype=np.float32 if key in ("observations", "actions", "rewards") else bool)
            for key, value in steps.items()}


def write_minari_dataset(
    dataset_id: str, episodes: list[dict[str, np.ndarray]], env: gym.Env, metadata: dict, root: Path,
    overwrite: bool = False, algorithm_name: str = "relreward waypoint controller (D4RL recipe)",
    ref_min_score: float | None = None, ref_max_score: float | None = None,
) -> Path:
    """Write `episodes` (dicts as `generate_maze2d_episodes` returns) as the Minari dataset `dataset_id` under
    the Minari root `root`, with `metadata` stored under the `relreward` key; returns the dataset's folder.
    `ref_min_score` / `ref_max_score` (both or neither) become Minari's reference returns, which
    `minari.get_normalized_score` uses.

    Observations are stored as a flat Box of the episodes' width (PointMaze's `observation` entry), actions
    with `env.action_space`, and `env`'s spec is recorded for `MinariDataset.recover_environment`. The dataset
    is built in a hidden staging root inside `root` and moved into place in one rename, so a crash never
    leaves a half-written dataset under `dataset_id`.
    """
    root = Path(root)
    if not episodes:
        raise UserError(f"No episodes to write to {dataset_id}; generate at least one (n_episodes >= 1).")
    namespace = dataset_namespace(dataset_id)
    final = root / dataset_id
    if final.exists() and not overwrite:
        raise UserError(
            f"Dataset {dataset_id} already exists at {final}. Delete it, pick a new id or version, or "
            "overwrite it."
        )
    root.mkdir(parents=True, exist_ok=True)
    buffers = [
        EpisodeBuffer(id=index, observations=episode["observations"], actions=episode["actions"],
                      rewards=episode["rewards"], terminations=episode["terminations"],
                      truncations=episode["truncations"])
        for index, episode in enumerate(episodes)
    ]
    observation_space = gym.spaces.Box(-np.inf, np.inf, episodes[0]["observations"].shape[1:], np.float32)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))  # hidden: Minari's listings skip it
    try:
        with minari_root(staging), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(code_permalink|author_email)")
            dataset = minari.create_dataset_from_buffers(
                dataset_id, buffers, env=env, eval_env=env, observation_space=observation_space,
                action_space=env.action_space, algorithm_name=algorithm_name, author="relreward",
                description=f"Generator settings in metadata['{METADATA_KEY}'].", ref_min_score=ref_min_score,
                ref_max_score=ref_max_score,
            )
            dataset.storage.update_metadata({METADATA_KEY: metadata})
        with minari_root(root):
            if namespace is not None and namespace not in list_local_namespaces():
                create_namespace(namespace)
        if final.exists():
            final.rename(staging / ".replaced")
        (staging / dataset_id).rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def read_dataset_metadata(dataset_id: str, root: Path | None = None) -> dict:
    """The generator settings stored by `write_minari_dataset` ({} for datasets made elsewhere)."""
    return open_minari("generated", dataset_id, root).storage.metadata.get(METADATA_KEY, {})
