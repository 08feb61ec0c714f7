"""Offline datasets as lists of episodes, from a source string.

Sources:
  `minari:<id>`      a Minari dataset (`D4RL/pointmaze/umaze-v2`, `mujoco/hopper/medium-v0`, ...)
  `generated:<id>`   a Minari dataset written by `relreward make-dataset`
  `hdf5:<path>`      a D4RL HDF5 file (`maze2d-umaze-v1.hdf5`, `hopper-medium-v2.hdf5`, ...)
Minari datasets live under a Minari root: `root` when given, else Minari's own (`MINARI_DATASETS_PATH`,
default `~/.minari/datasets`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import minari
import numpy as np
from minari import MinariDataset
from minari.dataset.minari_dataset import parse_dataset_id
from minari.storage import get_dataset_path

from relreward_cli.errors import UserError

SOURCE_FORMS = "minari:<dataset id>, generated:<dataset id> or hdf5:<path to a D4RL .hdf5 file>"
D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")  # in Episode's field order


@dataclass
class Episode:
    """One episode. observations (T + 1 or T, obs_dim) float32 (T + 1 when the final observation is known),
    actions (T, act_dim) float32, rewards (T,) float32, terminals (T,) bool, timeouts (T,) bool."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray

    def __post_init__(self):
        self.observations = np.asarray(self.observations, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.rewards = np.asarray(self.rewards, dtype=np.float32).reshape(-1)
        self.terminals = np.asarray(self.terminals, dtype=bool).reshape(-1)
        self.timeouts = np.asarray(self.timeouts, dtype=bool).reshape(-1)
        steps = len(self.actions)
        if (self.observations.ndim != 2 or self.actions.ndim != 2 or steps == 0
                or len(self.observations) not in (steps, steps + 1)
                or not len(self.rewards) == len(self.terminals) == len(self.timeouts) == steps):
            raise UserError(
                f"Malformed episode: observations {self.observations.shape}, actions {self.actions.shape}, "
                f"rewards {self.rewards.shape}, terminals {self.terminals.shape}, timeouts "
                f"{self.timeouts.shape}. Expected observations (T or T + 1, obs_dim), actions (T, act_dim) "
                "and rewards, terminals, timeouts (T,) with T >= 1 and flat vector observations; regenerate "
                "or re-download the dataset."
            )

    def __len__(self) -> int:
        return len(self.actions)


@contextmanager
def minari_root(root: Path | None) -> Iterator[Path]:
    """Point Minari at `root` (via `MINARI_DATASETS_PATH`) for the duration of the block; None keeps Minari's
    own root. Yields the root in use."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    if root is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        yield get_dataset_path()
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def dataset_namespace(dataset_id: str) -> str | None:
    """The namespace of the Minari dataset id ``dataset_id`` (None when it has none); an id Minari cannot parse
    (one without ``-v<version>``, or with a path in it) is refused."""
    try:
        return parse_dataset_id(dataset_id)[0]
    except (ValueError, TypeError):  # minari raises TypeError for an id without a version
        raise UserError(f"'{dataset_id}' is not a valid Minari dataset id; write it as (namespace/)name-v<version>, "
                        "for example relreward/umaze-expert-v0.") from None


def split_source(source: str) -> tuple[str, str]:
    """``(kind, name)`` of a dataset source (:data:`SOURCE_FORMS`); a Minari id is checked here, before any work."""
    kind, _, name = source.partition(":")
    if kind not in ("minari", "generated", "hdf5") or not name:
        raise UserError(f"Unknown dataset source '{source}'. Write it as {SOURCE_FORMS}.")
    if kind != "hdf5":
        dataset_namespace(name)
    return kind, name


def open_minari(kind: str, dataset_id: str, root: Path | None, download: bool = False) -> MinariDataset:
    """A `minari:` or `generated:` dataset; `download` applies to `minari:` ones only."""
    with minari_root(root) as minari_path:
        try:
            return minari.load_dataset(dataset_id, download=download and kind == "minari")
        except FileNotFoundError:
            how = (
                f"Run `MINARI_DATASETS_PATH={minari_path} minari download {dataset_id}` (needs network "
                "access), or use data this project generates (for the locomotion envs, experiment=locomotion_quick "
                "reads the datasets that `relreward make-dataset` makes with D4RL's recipe; README, Data)"
                if kind == "minari"
                else f"Make it with `relreward make-dataset env=<the env naming it, e.g. maze2d_umaze> "
                f"data_dir={minari_path}`, or point data_dir at the root it was written to"
            )
            raise UserError(
                f"Minari dataset '{dataset_id}' is not in the Minari root {minari_path}. {how}."
            ) from None


def flat_observations(observations, dataset_id: str) -> np.ndarray:
    """Dict observations (PointMaze, AntMaze) keep their `observation` entry."""
    if isinstance(observations, dict):
        if "observation" not in observations:
            raise UserError(
                f"Minari dataset '{dataset_id}' has dict observations with keys {sorted(observations)} but "
                "no 'observation' key; only flat vectors or dicts with an 'observation' entry are supported."
            )
        observations = observations["observation"]
    return observations


def minari_episodes(dataset: MinariDataset, dataset_id: str) -> list[Episode]:
    return [
        Episode(flat_observations(episode.observations, dataset_id), episode.actions, episode.rewards,
                episode.terminations, episode.truncations)
        for episode in dataset.iterate_episodes()
    ]


def read_d4rl_arrays(path: Path) -> dict[str, np.ndarray]:
    """The D4RL keys of an HDF5 file; `timeouts` (absent in old v0 files) defaults to all False."""
    if not path.is_file():
        raise UserError(
            f"D4RL file {path} does not exist. Download the archived D4RL HDF5 files (for example "
            "maze2d-umaze-v1.hdf5 or hopper-medium-v2.hdf5 from "
            "http://rail.eecs.berkeley.edu/datasets/offline_rl/) and pass hdf5:<path to the file>, or use a "
            "Minari dataset (minari:D4RL/...)."
        )
    with h5py.File(path, "r") as file:
        missing = [key for key in D4RL_KEYS[:-1] if key not in file]
        if missing:
            raise UserError(
                f"{path} lacks the D4RL keys {missing} (it has {sorted(file.keys())}); a D4RL file holds "
                "observations, actions, rewards, terminals and timeouts arrays with one row per step."
            )
        arrays = {key: file[key][()] for key in D4RL_KEYS if key in file}
    arrays.setdefault("timeouts", np.zeros_like(arrays["terminals"]))
    return arrays


def d4rl_episodes(path: Path) -> list[Episode]:
    """Split the flat D4RL arrays into episodes after every step flagged terminal or timeout; steps after the
    last flag form a final episode."""
    arrays = read_d4rl_arrays(path)
    steps = len(arrays["actions"])
    lengths = {key: len(array) for key, array in arrays.items()}
    if steps == 0 or set(lengths.values()) != {steps}:
        raise UserError(
            f"{path} has arrays of lengths {lengths}; D4RL data needs at least one step and one row per step "
            "in every array. Re-download the file."
        )
    ends = np.flatnonzero(arrays["terminals"].astype(bool) | arrays["timeouts"].astype(bool)) + 1
    bounds = np.unique(np.concatenate([[0], ends, [steps]]))
    return [
        Episode(*(arrays[key][start:stop] for key in D4RL_KEYS))
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def load_episodes(source: str, root: Path | None = None, download: bool = False) -> list[Episode]:
    """Episodes of a dataset source (see the module docstring). `download=True` lets `minari:` sources fetch
    missing datasets from Minari's remote. A file that cannot be read (truncated, not HDF5, damaged) is refused
    with what makes it again."""
    kind, name = split_source(source)
    try:
        episodes = (d4rl_episodes(Path(name).expanduser()) if kind == "hdf5"
                    else minari_episodes(open_minari(kind, name, root, download), name))
    except (OSError, KeyError, ValueError) as err:  # h5py's errors for damaged files; UserError is a ValueError
        if isinstance(err, UserError):
            raise
        again = {"hdf5": "Download the file again",
                 "minari": f"Download it again (`minari download {name}`)",
                 "generated": f"Make it again with `relreward make-dataset ... overwrite=true` (data_dir={root})"}
        raise UserError(f"Dataset {source} cannot be read ({type(err).__name__}: {str(err).splitlines()[0]}): the "
                        f"file is damaged, truncated or not a dataset. {again[kind]}.") from None
    if not episodes:
        raise UserError(f"Dataset {source} holds no episodes; regenerate or re-download it.")
    return episodes


def dataset_path(source: str, root: Path | None = None) -> Path:
    """Where a source's data lie: a Minari dataset's data folder, or the D4RL file (for digests)."""
    kind, name = split_source(source)
    if kind == "hdf5":
        return Path(name).expanduser()
    return Path(open_minari(kind, name, root).storage.data_path)


def dataset_info(source: str, root: Path | None = None) -> dict:
    """Metadata of a source: Minari's metadata (with relreward's generator settings under `relreward` for
    generated datasets), or sizes and file attributes of a D4RL file."""
    kind, name = split_source(source)
    if kind != "hdf5":
        storage = open_minari(kind, name, root).storage
        return {"source": source, **storage.read_raw_metadata(storage.data_path)}
    path = Path(name).expanduser()
    episodes = d4rl_episodes(path)
    with h5py.File(path, "r") as file:
        attributes = {key: np.asarray(value).tolist() for key, value in file.attrs.items()}
    return {
        "source": source, **attributes, "total_episodes": len(episodes),
        "total_steps": sum(map(len, episodes)), "observation_dim": episodes[0].observations.shape[-1],
        "action_dim": episodes[0].actions.shape[-1],
    }
