"""Environment families behind one interface: the registry, no family code in the stages, and the digits image
family end to end on the smoke config."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from relreward_cli import families
from relreward_cli.errors import UserError
from relreward_cli.families.digits import DigitsFamily, digit_classes, pixel_normalizer

REPO = Path(__file__).resolve().parents[1]


def test_stages_name_no_family():
    found = subprocess.run(["grep", "-rn", "family", str(REPO / "relreward_cli" / "stages")], capture_output=True,
                           text=True)
    assert found.stdout == "", f"stage modules hold family-specific code:\n{found.stdout}"


@pytest.mark.parametrize("env_file", sorted((REPO / "configs" / "env").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_env_config_names_a_registered_family(env_file):
    family = yaml.safe_load(env_file.read_text())["family"]
    assert family in families.known_families()
    assert families.family_named(family).name == family


def test_unknown_family_is_refused_with_the_known_ones():
    for name in ("atari", "base", "trajectory", "../x"):
        with pytest.raises(UserError, match="Known: digits, locomotion, maze2d, stable_diffusion"):
            families.family_named(name)


def test_digit_sources_and_pixel_normalizer():
    assert digit_classes("digits:101") == (0, 1)
    for bad in ("digits:", "digits:1,2", "mnist:1", "digits:a"):
        with pytest.raises(UserError, match="digits:<digits>"):
            digit_classes(bad)
    normalizer = pixel_normalizer()
    assert np.allclose(normalizer.normalize(np.array([[0.0] * 8, [16.0] * 8])), [[-1.0] * 8, [1.0] * 8])


def _digits_config(**env):
    cfg = {"horizon": 8, "use_actions": False, "env": {"base_data": "digits:0123456789",
                                                        "expert_data": "digits:01", "test_fraction": 0.3,
                                                        "split_seed": 0, **env}}
    return OmegaConf.create(cfg)


def test_digits_data_keep_the_classes_and_the_held_out_part_apart():
    family = DigitsFamily()
    cfg = _digits_config()
    data = family.load_data(cfg)
    assert set(data.expert.labels) == {0, 1} and set(data.base.labels) == set(range(10))
    assert data.base.data.shape[1:] == (8, 8)
    assert -1.0 <= float(data.base.data.min()) <= float(data.base.data.max()) <= 1.0
    split = family.split(cfg)
    assert len(data.base) == len(split.train_images)  # the test part is never trained on
    with pytest.raises(UserError, match="subset"):
        family.check_config(_digits_config(expert_data="digits:0123456789"))


def test_digits_pipeline_end_to_end(cli, run_root):
    """Smoke sizes: every stage runs, the held-out metrics are probabilities, the plots are written."""
    cli(["pipeline", "env=digits", "experiment=smoke", "pipeline.steer=true", f"run_root={run_root}",
         "logger.mode=disabled", "threads=1"], run_root.parent, check=True)
    run_dir = run_root / "pipeline" / "smoke-digits-s0"
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= summary["headline/auroc"] <= 1.0 and 0.0 <= summary["headline/accuracy"] <= 1.0
    assert summary["classifier/test_accuracy"] >= 0.9
    for planner in ("base", "guided", "ranked", "guided_ranked", "expert"):
        assert 0.0 <= summary[f"{planner}/expert_share"] <= 1.0
    extract = json.loads((run_dir / "extract" / "metrics.json").read_text())
    for plot in ("class_rewards_plot", "reward_extremes_plot"):
        assert Path(extract[plot]).read_bytes()[:4] == b"\x89PNG"
    steer = json.loads((run_dir / "steer_eval" / "metrics.json").read_text())
    assert Path(steer["class_shares_plot"]).is_file() and Path(steer["samples_plot"]).is_file()
    assert steer["base/samples"] == 2  # smoke: steer.n_episodes samples per seed


def test_digits_refuses_a_bad_subset_before_any_work(cli, run_root):
    proc = cli(["train-diffusion", "env=digits", "experiment=smoke", "env.expert_data=digits:3x",
                f"run_root={run_root}", "logger.mode=disabled"], run_root.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "digits:<digits>" in proc.stderr
    assert not any(run_root.rglob("model.pt"))


def test_pretrained_pair_has_nothing_to_train(cli, run_root):
    proc = cli(["train-diffusion", "env=stable_diffusion", f"run_root={run_root}", "logger.mode=disabled"],
               run_root.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no diffusion model to train" in proc.stderr


def test_pretrained_pair_has_nothing_to_steer(cli, run_root):
    """Before, steer-eval looked for diffusion models and suggested training them, which train-diffusion refuses."""
    proc = cli(["steer-eval", "env=stable_diffusion", f"run_root={run_root}", "logger.mode=disabled"],
               run_root.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "compares two pretrained models, with no planner here to steer" in proc.stderr
    assert "train-diffusion" not in proc.stderr


def test_digits_model_of_another_split_is_not_reused(cli, run_root):
    """The train / test split decides which images a model saw: a run folder trained on one split is refused for
    another (its test images could be training images), naming the difference."""
    args = ["train-diffusion", "env=digits", "experiment=smoke", "kind=base", f"run_root={run_root}",
            "logger.mode=disabled", "threads=1"]
    cli(args, run_root.parent, check=True)
    proc = cli([*args, "env.split_seed=1"], run_root.parent)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data_settings.split_seed: 0 -> 1" in proc.stderr and "overwrite=true" in proc.stderr


def test_the_horizon_check_applies_where_samples_are_horizon_rows():
    """A horizon the networks cannot halve is refused for trajectories, not for Stable Diffusion's latents, whose
    reward network never sees `horizon`."""
    from omegaconf import OmegaConf

    from relreward_cli.config_schema import _horizon_problems

    def config(family: str):
        return OmegaConf.create({"stage": "pipeline", "horizon": 32, "env": {"family": family},
                                 "model": {"dim_mults": [1, 2, 4]}, "reward": {"dim_mults": [1] * 7}})

    assert _horizon_problems(config("maze2d")) == [
        "horizon=32 (reward network): The horizon 32 is not a positive multiple of 64: a network with 7 levels "
        "(dim_mults=(1, 1, 1, 1, 1, 1, 1)) halves the horizon 6 times. Choose a horizon divisible by 64 or fewer "
        "levels."]
    assert _horizon_problems(config("stable_diffusion")) == []


@pytest.mark.parametrize("name", families.known_families())
def test_the_env_settings_only_some_stages_read_are_settings_of_the_env_read_by_stages(name):
    """Each entry of a family's `env_settings_by_stage` is a setting of one of its env configs (a misspelt one would
    leave the real setting read everywhere) and names stages the CLI has."""
    from relreward_cli.cli import STAGES

    family = families.family_named(name)
    configs = (yaml.safe_load(path.read_text()) for path in sorted((REPO / "configs" / "env").glob("*.yaml")))
    envs = [env for env in configs if env["family"] == name]
    for key, stages in family.env_settings_by_stage.items():
        assert any(OmegaConf.select(OmegaConf.create(env), key) is not None for env in envs), key
        assert set(stages) <= set(STAGES) - {"pipeline", "report"}, stages


def test_a_setting_falls_under_its_most_specific_entry():
    maze = families.family_named("maze2d")
    assert maze.stages_reading("env.generate.seed") == ("make-dataset", "extract")
    assert maze.stages_reading("env.generate.base.n_episodes") == ("make-dataset",)
    assert maze.stages_reading("env.evaluate") == ("extract",)
    assert maze.stages_reading("env.goal_set") == ()
    assert maze.stages_reading("env.goal_cell") is None and maze.stages_reading("env.generated") is None
