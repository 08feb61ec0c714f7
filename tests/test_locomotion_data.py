import json
import sys
import tempfile
import warnings

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from relreward_cli.cli import CONFIG_DIR
from relreward_cli.data.generate_locomotion import (
    LEVELS,
    generate_locomotion_episodes,
    locomotion_dataset_id,
    locomotion_settings,
    write_locomotion_datasets,
)
from relreward_cli.data.generate_maze import read_dataset_metadata
from relreward_cli.data.sources import dataset_info, load_episodes
from relreward_cli.envs.registry import MuJoCoWarning, make_env
from relreward_cli.errors import UserError

SETTINGS = locomotion_settings("halfcheetah", total_steps=300, eval_every=100, seed=0, eval_episodes=2,
                               learning_starts=100, max_episode_steps=25,
                               n_steps={"random": 60, "medium": 40, "expert": 50})


@pytest.fixture(scope="module")
def generated():
    return generate_locomotion_episodes(SETTINGS, progress=False)


def test_levels_round_trip_through_minari(generated, tmp_path):
    paths = write_locomotion_datasets(generated, tmp_path)
    assert set(paths) == set(LEVELS)
    for level in LEVELS:
        source = f"generated:{locomotion_dataset_id('halfcheetah', level)}"
        episodes = load_episodes(source, tmp_path)
        assert sum(map(len, episodes)) == SETTINGS["n_steps"][level]
        assert [len(episode) for episode in episodes[:-1]] == [25] * (len(episodes) - 1)  # HalfCheetah never ends
        assert all(episode.timeouts[-1] and not episode.terminals.any() for episode in episodes)
        assert episodes[0].observations.shape == (26, 17) and episodes[0].actions.shape == (25, 6)
        assert np.abs(np.concatenate([episode.actions for episode in episodes])).max() <= 1.0
        for stored, episode in zip(episodes, generated[level]["episodes"], strict=True):
            np.testing.assert_array_equal(stored.observations, episode["observations"])
            np.testing.assert_array_equal(stored.actions, episode["actions"])

        metadata = read_dataset_metadata(locomotion_dataset_id("halfcheetah", level), tmp_path)
        assert metadata["settings"] == SETTINGS and metadata["level"] == level
        assert metadata["gym_id"] == "HalfCheetah-v5" and [step for step, _ in metadata["evaluations"]] == [100, 200,
                                                                                                          300]
        assert metadata["medium_snapshot"]["step"] in (100, 200, 300)
        info = dataset_info(source, tmp_path)
        mean_returns = metadata["dataset_mean_return"]
        assert metadata["torch_threads"] == torch.get_num_threads()
        assert info["ref_min_score"] == pytest.approx(mean_returns["random"])
        assert info["ref_max_score"] == pytest.approx(mean_returns["expert"])
    with pytest.raises(UserError, match="already exists"):
        write_locomotion_datasets(generated, tmp_path)


def test_sac_training_leaves_nothing_in_the_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    generate_locomotion_episodes(SETTINGS | {"total_steps": 100, "eval_every": 100}, progress=False)
    assert not list(tmp_path.glob("SB3-*"))  # SB3's default logger folder (torch's own caches may appear here)


def test_same_seed_same_datasets(generated):
    again = generate_locomotion_episodes(SETTINGS, progress=False)
    for level in LEVELS:
        assert again[level]["metadata"] == generated[level]["metadata"]
        for a, b in zip(generated[level]["episodes"], again[level]["episodes"], strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_settings_are_checked():
    with pytest.raises(UserError, match="random, medium, expert"):
        locomotion_settings("halfcheetah", 300, 100, {"random": 10, "expert": 10}, seed=0)
    with pytest.raises(UserError, match="total_steps >= eval_every"):
        locomotion_settings("halfcheetah", 50, 100, dict.fromkeys(LEVELS, 10), seed=0)
    with pytest.raises(UserError, match="env.max_episode_steps=0: an episode needs at least one step"):
        locomotion_settings("halfcheetah", 300, 100, dict.fromkeys(LEVELS, 10), seed=0, max_episode_steps=0)


def test_make_dataset_cli_and_quick_preset(cli, tmp_path):
    args = ["make-dataset", "env=halfcheetah", "experiment=smoke", f"data_dir={tmp_path / 'data'}",
            f"run_root={tmp_path / 'runs'}", "logger.mode=disabled", "threads=1"]
    cli(args, cwd=tmp_path, check=True)
    (metrics,) = (tmp_path / "runs").rglob("metrics.json")
    assert json.loads(metrics.read_text())["torch_threads"] == 1, "SAC must train with the threads asked for"
    for level in LEVELS:
        assert read_dataset_metadata(f"relreward/halfcheetah/{level}-v0", tmp_path / "data")["settings"]["n_steps"] \
            == {"random": 50, "medium": 50, "expert": 50}
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        quick = compose("make_dataset", ["env=halfcheetah", "experiment=locomotion_quick"])
    assert quick.env.base_data == "generated:relreward/halfcheetah/medium-v0"
    assert quick.env.expert_data == "generated:relreward/halfcheetah/expert-v0"


def test_env_configs_carry_their_planning_defaults():
    """Locomotion envs bring Diffuser's settings (first-action loss weight, replanning every step, HalfCheetah's
    horizon 4, Gaussian normalizer with unclipped x_0 prediction); Maze2D keeps the base config's; a preset or
    the command line still overrides them."""
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        cheetah = compose("pipeline", ["env=halfcheetah"])
        hopper = compose("pipeline", ["env=hopper"])
        maze = compose("pipeline", [])
        overridden = compose("pipeline", ["env=halfcheetah", "horizon=8", "steer.replan_every=2"])
    assert (cheetah.horizon, cheetah.train.action_weight, cheetah.steer.replan_every) == (4, 10.0, 1)
    assert (hopper.horizon, hopper.train.action_weight, hopper.steer.replan_every) == (32, 10.0, 1)
    assert (maze.horizon, maze.train.action_weight, maze.steer.replan_every) == (32, 1.0, 8)
    assert (overridden.horizon, overridden.steer.replan_every) == (8, 2)
    for cfg, expected in ((cheetah, ("gaussian", "x0", False)), (hopper, ("gaussian", "x0", False)),
                          (maze, ("limits", "eps", True))):
        assert (cfg.normalizer, cfg.diffusion.prediction, cfg.diffusion.clip_denoised) == expected


def test_authors_formulation_and_quick_steering_presets():
    """formulation=authors carries the authors' target and published per-task steering; the quick preset takes the
    guidance chosen on selection seeds per env (defaults elsewhere) and Hopper's larger SAC budget."""
    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        authors = {env: compose("steer_eval", [f"env={env}", "experiment=locomotion_quick", "formulation=authors"])
                   for env in ("halfcheetah", "hopper", "walker2d")}
        quick = {env: compose("make_dataset", [f"env={env}", "experiment=locomotion_quick"])
                 for env in ("halfcheetah", "hopper", "walker2d")}
        maze = compose("extract", [])
    published = {"halfcheetah": (0.5, 5, None, 4), "hopper": (0.2, 10, 0.2, 32), "walker2d": (0.5, 5, None, 32)}
    for env, cfg in authors.items():
        steer = cfg.steer
        assert (steer.scale, steer.t_stopgrad, steer.grad_clip, cfg.horizon) == published[env]
        assert (cfg.extract.target, steer.n_guide_steps, steer.scale_grad_by_std, steer.replan_every) == (
            "posterior_mean", 1, False, 1)
    chosen = {env: (cfg.steer.scale, cfg.steer.t_stopgrad, cfg.env.generate.sac.total_steps)
              for env, cfg in quick.items()}
    assert chosen == {"halfcheetah": (1.0, 5, 100_000), "hopper": (0.3, 5, 200_000), "walker2d": (0.3, 0, 200_000)}
    assert (maze.extract.target, maze.extract.start_conditioned, quick["hopper"].extract.start_conditioned) == (
        "score", 0.0, 0.5)


def test_env_settings_of_a_preset_act_only_under_it():
    """The quick preset builds settings from the env's quick_* settings: given under it, one acts where the setting it
    builds is read (env.quick_sac_steps sets the SAC budget, which make-dataset reads) and is refused elsewhere;
    without the preset it acts nowhere and is refused everywhere, naming the preset's file."""
    from relreward_cli.stages.common import check_settings_read

    with initialize_config_dir(str(CONFIG_DIR), version_base=None):
        quick = compose("make_dataset", ["env=hopper", "experiment=locomotion_quick"])
        plain = compose("make_dataset", ["env=hopper"])
    check_settings_read(quick, "make-dataset", (), {"env.quick_sac_steps"})
    with pytest.raises(UserError, match=r"train-diffusion does not read env.quick_sac_steps \(sets "
                                        r"env.generate.sac.total_steps, read by make-dataset\)"):
        check_settings_read(quick, "train-diffusion", ("train",), {"env.quick_sac_steps"})
    with pytest.raises(UserError, match=r"env.quick_steer.scale=0.3 would not act: the configs read it only to set "
                                        r"steer.scale \(experiment/locomotion_quick.yaml\)"):
        check_settings_read(plain, "pipeline", ("steer",), {"env.quick_steer.scale"})


def test_missing_stable_baselines3_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # `import stable_baselines3` raises ImportError
    with pytest.raises(UserError, match=r"pip install 'relreward\[locomotion\]'"):
        generate_locomotion_episodes(SETTINGS, progress=False)


def test_mujoco_warnings_become_python_warnings(capfd):
    """HalfCheetah's XML makes MuJoCo warn at every construction; the warning reaches Python's `warnings` (shown
    once per process by default) instead of MuJoCo printing it each time."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            make_env("halfcheetah").close()
    messages = [str(w.message) for w in caught if issubclass(w.category, MuJoCoWarning)]
    assert len(messages) == 2 and all("settotalmass" in message for message in messages)
    assert "settotalmass" not in "".join(capfd.readouterr())
