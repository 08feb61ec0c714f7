from dataclasses import replace

import h5py
import minari
import numpy as np
import pytest
import torch
from minari.data_collector import EpisodeBuffer

from relreward_cli.data.generate_maze import (
    Maze2DGeneration,
    generate_maze2d_episodes,
    read_dataset_metadata,
    write_minari_dataset,
)
from relreward_cli.data.normalizer import Normalizer, fit_transition_normalizer
from relreward_cli.data.segments import SegmentDataset, transition_layout
from relreward_cli.data.sources import Episode, dataset_info, load_episodes
from relreward_cli.envs.maze import MazeGeometry
from relreward_cli.envs.registry import make_maze_env
from relreward_cli.errors import UserError

SETTINGS = Maze2DGeneration(
    maze="umaze", kind="expert", n_episodes=3, episode_steps=250, goal_cell=(1, 1), action_noise=0.3, seed=0
)
DATASET_ID = "relreward/umaze-expert-v0"


@pytest.fixture(scope="module")
def expert_episodes():
    return generate_maze2d_episodes(SETTINGS, progress=False)


def test_generation_is_seeded(expert_episodes):
    again = generate_maze2d_episodes(SETTINGS, progress=False)
    other = generate_maze2d_episodes(replace(SETTINGS, seed=1), progress=False)
    for key in expert_episodes[0]:
        assert all(np.array_equal(a[key], b[key]) for a, b in zip(expert_episodes, again, strict=True))
    assert not np.allclose(expert_episodes[0]["observations"], other[0]["observations"])


def test_expert_episodes_end_at_the_goal(expert_episodes):
    goal_xy = MazeGeometry.from_name("umaze").cell_to_xy(np.array(SETTINGS.goal_cell))
    for episode in expert_episodes:
        assert episode["observations"].shape == (251, 4) and episode["actions"].shape == (250, 2)
        assert episode["observations"].dtype == np.float32 and np.abs(episode["actions"]).max() <= 1
        assert episode["truncations"][-1] and not episode["truncations"][:-1].any()
        assert not episode["terminations"].any()
        assert np.linalg.norm(episode["observations"][0, :2] - goal_xy) > 0.6
        assert np.linalg.norm(episode["observations"][-20:, :2] - goal_xy, axis=1).max() < 0.15
        assert episode["rewards"][-20:].min() == 1.0  # the env's sparse reward at its (noisy) goal


def test_base_episodes_wander():
    geometry = MazeGeometry.from_name("umaze")
    (episode,) = generate_maze2d_episodes(replace(SETTINGS, kind="base", n_episodes=1, episode_steps=1000),
                                          progress=False)
    visited = {tuple(cell) for cell in geometry.xy_to_cell(episode["observations"][:, :2]).tolist()}
    assert visited == {tuple(cell) for cell in geometry.free_cells().tolist()}
    with pytest.raises(UserError, match="kind"):
        replace(SETTINGS, kind="random")


def test_random_path_ties_spread_the_open_arena_expert():
    """D4RL's order sends every open-arena expert up first and along the top row to the top-left goal; broken at
    random, the paths cover the arena's middle row as well."""
    arena = MazeGeometry.from_name("open")
    settings = replace(SETTINGS, maze="open", n_episodes=12, episode_steps=60, goal_cell=(1, 1))
    share_on_middle_row = {}
    for ties in ("first", "random"):
        episodes = generate_maze2d_episodes(replace(settings, path_ties=ties), progress=False)
        rows = np.concatenate([arena.xy_to_cell(e["observations"][:, :2])[:, 0] for e in episodes])
        share_on_middle_row[ties] = float(np.mean(rows == 2))
    assert share_on_middle_row["random"] > share_on_middle_row["first"] + 0.05, share_on_middle_row
    with pytest.raises(UserError, match="path_ties"):
        replace(settings, path_ties="diagonal")


def test_a_dataset_is_reused_only_for_its_own_path_ties(expert_episodes, tmp_path):
    """A dataset written before `path_ties` existed was made with D4RL's order: reused for `first`, refused for
    `random`; one made with `random` is refused for `first`."""
    from relreward_cli.data.generate_maze import ADDED_SETTINGS
    from relreward_cli.families.trajectory import dataset_up_to_date

    env = make_maze_env("umaze", max_episode_steps=250)
    first, random = SETTINGS.metadata(), replace(SETTINGS, path_ties="random").metadata()
    older = {key: value for key, value in first.items() if key != "path_ties"}
    write_minari_dataset("relreward/older-v0", expert_episodes, env, older, tmp_path)
    write_minari_dataset("relreward/random-v0", expert_episodes, env, random, tmp_path)
    assert dataset_up_to_date("relreward/older-v0", first, tmp_path, False, ADDED_SETTINGS)
    with pytest.raises(UserError, match="path_ties"):
        dataset_up_to_date("relreward/older-v0", random, tmp_path, False, ADDED_SETTINGS)
    with pytest.raises(UserError, match="path_ties"):
        dataset_up_to_date("relreward/random-v0", first, tmp_path, False, ADDED_SETTINGS)


def test_minari_round_trip(expert_episodes, tmp_path, monkeypatch):
    env, metadata = make_maze_env("umaze", max_episode_steps=250), SETTINGS.metadata()
    path = write_minari_dataset(DATASET_ID, expert_episodes, env, metadata, tmp_path)
    assert path == tmp_path / DATASET_ID and sorted(p.name for p in tmp_path.iterdir()) == ["relreward"]

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    dataset = minari.load_dataset(DATASET_ID)
    assert dataset.total_episodes == 3 and dataset.total_steps == 750
    assert dataset.observation_space.shape == (4,)
    for stored, episode in zip(dataset.iterate_episodes(), expert_episodes, strict=True):
        np.testing.assert_array_equal(stored.observations, episode["observations"])
        np.testing.assert_array_equal(stored.actions, episode["actions"])
        np.testing.assert_array_equal(stored.rewards, episode["rewards"])
        np.testing.assert_array_equal(stored.truncations, episode["truncations"])
    stored = dataset.storage.metadata["relreward"]
    assert stored == metadata and stored["goal_xy"] == [-1.0, 1.0]
    assert stored["maze_map"][2] == [1, 1, 1, 0, 1] and stored["kind"] == "expert"
    assert read_dataset_metadata(DATASET_ID, tmp_path) == metadata
    assert dataset.recover_environment().spec.id == "PointMaze_UMaze-v3"

    loaded = load_episodes(f"generated:{DATASET_ID}", tmp_path)
    np.testing.assert_array_equal(loaded[2].observations, expert_episodes[2]["observations"])
    assert loaded[0].timeouts[-1] and dataset_info(f"generated:{DATASET_ID}", tmp_path)["total_steps"] == 750

    with pytest.raises(UserError, match="already exists"):
        write_minari_dataset(DATASET_ID, expert_episodes, env, metadata, tmp_path)
    write_minari_dataset(DATASET_ID, expert_episodes[:1], env, {**metadata, "n_episodes": 1}, tmp_path,
                         overwrite=True)
    assert len(load_episodes(f"generated:{DATASET_ID}", tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relreward"]  # no staging folders left behind


def test_dict_observations_of_minari_datasets(tmp_path, monkeypatch):
    env = make_maze_env("umaze")
    observations = {key: np.arange(3 * size, dtype=np.float64).reshape(3, size)
                    for key, size in (("observation", 4), ("achieved_goal", 2), ("desired_goal", 2))}
    buffer = EpisodeBuffer(
        observations=observations, actions=np.zeros((2, 2), np.float32), rewards=np.ones(2),
        terminations=np.zeros(2, bool), truncations=np.array([False, True]),
    )
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers("D4RL/pointmaze/tiny-v0", [buffer], env=env)
    monkeypatch.delenv("MINARI_DATASETS_PATH")
    (episode,) = load_episodes("minari:D4RL/pointmaze/tiny-v0", tmp_path)
    np.testing.assert_array_equal(episode.observations, observations["observation"])
    assert episode.rewards.tolist() == [1.0, 1.0] and episode.timeouts.tolist() == [False, True]


def test_missing_sources_name_the_fix(tmp_path):
    with pytest.raises(UserError, match="minari download D4RL/pointmaze/umaze-v2"):
        load_episodes("minari:D4RL/pointmaze/umaze-v2", tmp_path)
    with pytest.raises(UserError, match=r"'relreward/nothing-v0'.*relreward make-dataset env="):
        load_episodes("generated:relreward/nothing-v0", tmp_path)
    with pytest.raises(UserError, match="offline_rl"):
        load_episodes(f"hdf5:{tmp_path / 'maze2d-umaze-v1.hdf5'}")
    with pytest.raises(UserError, match="minari:<dataset id>"):
        load_episodes("d4rl:maze2d-umaze-v1")


def write_d4rl_file(path, steps, terminals=(), timeouts=()):
    flags = {name: np.isin(np.arange(steps), indices) for name, indices in (("terminals", terminals),
                                                                           ("timeouts", timeouts))}
    with h5py.File(path, "w") as file:
        file["observations"] = np.arange(steps * 3, dtype=np.float32).reshape(steps, 3)
        file["actions"] = -np.arange(steps * 2, dtype=np.float32).reshape(steps, 2)
        file["rewards"] = np.arange(steps, dtype=np.float32)
        file["terminals"], file["timeouts"] = flags["terminals"], flags["timeouts"]
        file["infos/goal"] = np.zeros((steps, 2))


def test_d4rl_hdf5_is_split_into_episodes(tmp_path):
    path = tmp_path / "hopper-tiny.hdf5"
    write_d4rl_file(path, 12, terminals=[4], timeouts=[8])  # episodes [0, 5), [5, 9), [9, 12)
    episodes = load_episodes(f"hdf5:{path}")
    assert [len(episode) for episode in episodes] == [5, 4, 3]
    assert episodes[1].observations.shape == (4, 3) and episodes[1].observations[0, 0] == 15
    assert episodes[1].actions[-1].tolist() == [-16, -17] and episodes[2].rewards.tolist() == [9, 10, 11]
    assert episodes[0].terminals[-1] and episodes[1].timeouts[-1] and not episodes[2].timeouts.any()
    info = dataset_info(f"hdf5:{path}")
    sizes = (info["total_episodes"], info["total_steps"], info["observation_dim"], info["action_dim"])
    assert sizes == (3, 12, 3, 2)


def test_empty_or_malformed_data_is_refused(tmp_path):
    write_d4rl_file(tmp_path / "empty.hdf5", 0)
    with pytest.raises(UserError, match="at least one step"):
        load_episodes(f"hdf5:{tmp_path / 'empty.hdf5'}")
    with pytest.raises(UserError, match="Malformed episode"):
        Episode(np.zeros((5, 4)), np.zeros((3, 2)), np.zeros(3), np.zeros(3), np.zeros(3))
    with pytest.raises(UserError, match="No episodes"):
        write_minari_dataset(DATASET_ID, [], make_maze_env("umaze"), {}, tmp_path)


def toy_episode(steps, offset=0.0):
    observations = offset + np.arange((steps + 1) * 4, dtype=np.float32).reshape(steps + 1, 4)
    actions = np.linspace(-1, 1, steps * 2, dtype=np.float32).reshape(steps, 2)
    return Episode(observations, actions, np.zeros(steps), np.zeros(steps), np.eye(steps)[-1])


def test_segments_shapes_and_padding():
    episodes = [toy_episode(10), toy_episode(3, offset=100.0)]
    normalizer = fit_transition_normalizer([episodes], use_actions=True)
    dataset = SegmentDataset(episodes, horizon=5, use_actions=True, normalizer=normalizer)
    assert transition_layout(4, 2, True) == (6, 2) and transition_layout(4, 2, False) == (4, 0)
    assert len(dataset) == 6 + 1  # windows start at 0..5 in the long episode, once in the short one
    batch = dataset.sample(64, torch.Generator().manual_seed(0))
    assert batch.shape == (64, 5, 6) and batch.dtype == torch.float32
    assert torch.equal(batch, dataset.sample(64, torch.Generator().manual_seed(0)))
    assert batch.abs().max() <= 1.0 + 1e-6

    raw = normalizer.unnormalize(dataset[6].numpy())  # the short episode: 3 steps, then 2 padded rows
    np.testing.assert_allclose(raw[:3, 2:], episodes[1].observations[:3], atol=1e-3)
    np.testing.assert_allclose(raw[:3, :2], episodes[1].actions, atol=1e-5)
    np.testing.assert_allclose(raw[3:, 2:], np.repeat(episodes[1].observations[2:3], 2, axis=0), atol=1e-3)
    np.testing.assert_allclose(raw[3:, :2], 0.0, atol=1e-5)
    window = normalizer.unnormalize(dataset[2].numpy())
    np.testing.assert_allclose(window[:, 2:], episodes[0].observations[2:7], atol=1e-3)

    observations_only = SegmentDataset(episodes, 5, use_actions=False,
                                       normalizer=fit_transition_normalizer([episodes], use_actions=False))
    assert observations_only.sample(8).shape == (8, 5, 4)


def test_normalizer_round_trip():
    data = np.random.default_rng(0).normal([1.0, -3.0, 7.0], [0.5, 2.0, 1e-3], size=(1000, 3))
    data[:, 2] = 7.0  # a constant dimension must not divide by zero
    limits, gaussian = Normalizer.fit(data, "limits"), Normalizer.fit(data, "gaussian")
    normalized = limits.normalize(data)
    np.testing.assert_allclose(normalized[:, :2].min(axis=0), -1.0)
    np.testing.assert_allclose(normalized[:, :2].max(axis=0), 1.0)
    np.testing.assert_allclose(gaussian.normalize(data)[:, :2].mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(gaussian.normalize(data)[:, :2].std(axis=0), 1.0)
    assert np.isfinite(normalized).all()
    np.testing.assert_allclose(limits.unnormalize(normalized), data)
    tensor = torch.as_tensor(data, dtype=torch.float32)
    torch.testing.assert_close(gaussian.unnormalize(gaussian.normalize(tensor)), tensor)

    restored = Normalizer.from_state_dict(limits.state_dict())
    assert restored == limits and restored.matches(limits) and not limits.matches(gaussian)
    assert not limits.matches(Normalizer.fit(data[:500], "limits"))
    with pytest.raises(UserError, match="fitted on 3 dimensions"):
        limits.normalize(np.zeros((2, 4)))


def test_transition_normalizer_fits_the_union():
    base, expert = [toy_episode(6)], [toy_episode(4, offset=50.0)]
    union = fit_transition_normalizer([base, expert], use_actions=True)
    rows = np.concatenate([np.concatenate([e.actions, e.observations[:-1]], axis=1) for e in base + expert])
    assert union == Normalizer.fit(rows, "limits")
    assert not union.matches(fit_transition_normalizer([base], use_actions=True))


@pytest.mark.parametrize(("change", "message"), [
    ({"n_episodes": 0}, r"expert episodes' \{'n_episodes': 0\} must be positive"),
    ({"episode_steps": -1}, r"\{'episode_steps': -1\} must be positive \(env.generate.expert"),
    ({"action_noise": -0.3}, r"action_noise=-0.3 must be >= 0"),
    ({"goal_cell": (0, 0)}, r"Cell \(0, 0\) is not a free cell"),
])
def test_impossible_generation_settings_are_refused(change, message):
    with pytest.raises(UserError, match=message):
        replace(SETTINGS, **change)
