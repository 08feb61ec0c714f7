"""The `relreward` command: stage listing, Hydra pass-through and errors, and single stages end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import conftest
import pytest
import yaml

from relreward_cli.cli import STAGES
from relreward_cli.data.sources import load_episodes
from relreward_cli.diffusion.artifact import load_diffusion_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMOKE_NAME = "smoke-maze2d_umaze-r1c1-s0"


def _is_png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_help_lists_every_stage_on_one_line(cli, tmp_path):
    for flag in ("--help", "-h"):
        proc = cli([flag], tmp_path)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        for stage, text in STAGES.items():
            matching = [line for line in lines if line.split()[:1] == [stage]]
            assert len(matching) == 1, f"{stage!r} should have exactly one line in:\n{proc.stdout}"
            assert text in matching[0]
    assert cli([], tmp_path).stdout == proc.stdout


def test_help_version_and_unknown_stages_import_no_torch(tmp_path):
    """`relreward --help`, `--version` and an unknown stage answer without importing torch (a second and more on a
    laptop); the config schema's module imports none either."""
    code = ("import sys, contextlib, io\n"
            "from relreward_cli.cli import main\n"
            "import relreward_cli.config_schema\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    codes = [main(['--help']), main(['--version']), main(['no-such-stage'])]\n"
            "print(codes, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split("\n")[0] == "[0, 0, 2] False", proc.stdout + proc.stderr


def test_a_command_forked_from_the_warm_process_answers_as_a_new_process_does(cli, tmp_path, monkeypatch):
    """The tests' warm runner (``conftest.WarmCli``) gives a command's exit code, stdout and stderr as a new process
    would: a refusal, the help and an unknown stage, each run both ways."""
    commands = (["train-diffusion", "kind=base", "train.lr=0", f"run_root={tmp_path / 'runs'}"], ["--help"],
                ["no-such-stage"])
    if os.environ.get("RELREWARD_TEST_COLD_CLI") == "1":
        pytest.skip("RELREWARD_TEST_COLD_CLI=1: every command runs as a new process")
    monkeypatch.setenv("RELREWARD_TEST_CHANGED", "1")  # as a test that sets a variable does: the warm process is
    before = conftest.warm_commands_run                 # started again with it
    warm = [cli(command, tmp_path) for command in commands]
    assert conftest.warm_commands_run == before + len(commands)  # all three ran in a warm process
    monkeypatch.setenv("RELREWARD_TEST_COLD_CLI", "1")
    cold = [cli(command, tmp_path) for command in commands]
    assert [proc.returncode for proc in warm] == [2, 0, 2]
    for warm_proc, cold_proc in zip(warm, cold, strict=True):
        assert (warm_proc.returncode, warm_proc.stdout, warm_proc.stderr) \
            == (cold_proc.returncode, cold_proc.stdout, cold_proc.stderr)


def test_unknown_stage_exits_2_listing_the_stages(cli, tmp_path):
    proc = cli(["trian-diffusion", "experiment=smoke"], tmp_path)
    assert proc.returncode == 2
    assert "unknown stage 'trian-diffusion'" in proc.stderr
    assert all(stage in proc.stderr for stage in STAGES)
    assert "Traceback" not in proc.stderr


def test_hydra_cfg_flag_passes_through(cli, tmp_path):
    proc = cli(["extract", "--cfg", "job", "experiment=smoke", f"run_root={tmp_path / 'runs'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["stage"] == "extract"
    assert cfg["horizon"] == 8 and cfg["model"] == {"dim": 8, "dim_mults": [1, 2]}  # smoke sizes applied
    assert cfg["extract"]["eval_t"] == [0, 2]
    assert not (tmp_path / "runs").exists()  # printed, not run
    # with --multirun (in either order) Hydra raised a ValueError: one paragraph instead
    for flags in (["--cfg", "job", "--multirun"], ["--multirun", "seed=0,1", "--cfg", "job"]):
        proc = cli(["extract", *flags, "experiment=smoke", f"run_root={tmp_path / 'runs'}"], tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "--multirun and --cfg cannot go together" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("args", "said"), [
    (["train-diffusion", "horizn=8"], "horizn=8: the config has no setting horizn, so nothing would read it (the "
                                      "top-level settings nearest to it: horizon)"),
    (["pipeline", "trian.n_steps=5"], "the config has no setting trian, so nothing would read it (the top-level "
                                      "settings nearest to it: train)"),
    (["steer-eval", "steer.scael=2"], "(steer's settings nearest to it: steer.scale)"),
    (["pipeline", "--multirun", "seed=0,1", "env=maze2d_medium", "env.goal_cel=[1,1]"],
     "env.goal_cel=[1,1]: the config has no setting env.goal_cel, so nothing would read it (env's settings nearest "
     "to it: env.goal_cell, env.goal_set)"),
])
def test_a_misspelt_setting_names_the_nearest_ones(cli, tmp_path, args, said):
    """Hydra refuses a key the config does not have and suggests adding it with `+` (which would add a setting that
    nothing reads); relreward names the nearest settings instead, in one paragraph with exit code 2."""
    proc = cli([*args, "experiment=smoke", f"run_root={tmp_path / 'runs'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert said in proc.stderr and f"`relreward {args[0]} --cfg job` prints every setting" in proc.stderr, proc.stderr
    assert "+" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_make_dataset_writes_minari_datasets_and_reuses_them(cli, smoke_data, tmp_path):
    assert smoke_data.process.returncode == 0
    assert "AdroitHand" not in smoke_data.process.stderr  # gymnasium-robotics' import-time notice is dropped
    summary = json.loads((smoke_data.root / "runs" / "make-dataset" / "maze2d_umaze-r1c1" / "metrics.json").read_text())
    assert summary["base/status"] == summary["expert/status"] == "written"
    assert (summary["base/steps"], summary["expert/steps"]) == (2 * 120, 3 * 60)

    base = load_episodes("generated:relreward/pointmaze-umaze/base-r1c1-v0", smoke_data.data_dir)
    expert = load_episodes("generated:relreward/pointmaze-umaze/expert-r1c1-v0", smoke_data.data_dir)
    assert [len(e) for e in base] == [120, 120] and [len(e) for e in expert] == [60, 60, 60]
    assert base[0].observations.shape[1] == 4 and base[0].actions.shape[1] == 2

    # Same settings again: kept, not regenerated. Other settings: refused with a pointer to overwrite=true.
    run_root = tmp_path / "runs"
    again = cli(["make-dataset", *smoke_data.overrides(run_root), "logger.mode=disabled"], tmp_path, check=True)
    assert "exists" in again.stdout
    changed = cli(["make-dataset", *smoke_data.overrides(run_root), "logger.mode=disabled",
                   "env.generate.base.n_episodes=3", "kind=base"], tmp_path)
    assert changed.returncode == 2
    assert "overwrite=true" in changed.stderr and "Traceback" not in changed.stderr
    assert [len(e) for e in load_episodes("generated:relreward/pointmaze-umaze/base-r1c1-v0", smoke_data.data_dir)] \
        == [120, 120]


def test_train_diffusion_end_to_end(cli, smoke_data, run_root):
    proc = cli(["train-diffusion", "kind=expert", *smoke_data.overrides(run_root), "logger.mode=offline"],
               run_root.parent, check=True)
    run_dir = run_root / "train-diffusion" / f"{SMOKE_NAME}-expert"
    assert "train-diffusion maze2d_umaze [expert]" in proc.stdout

    for name in ("model.pt", "checkpoint.pt", "config.yaml", "metrics.jsonl", "metrics.json", "wandb_id.txt"):
        assert (run_dir / name).is_file(), name
    assert _is_png(run_dir / "plots" / "samples.png") and _is_png(run_dir / "plots" / "loss.png")
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["kind"] == "expert" and metrics["steps"] == 20 and metrics["device"] == "cpu"
    assert metrics["segments"] == 3 * (60 - 8 + 1)  # windows of 8 steps inside 3 episodes of 60
    assert math.isfinite(metrics["final_loss"]) and 0.05 < metrics["final_loss"] < 3.0  # eps-MSE starts near 1
    assert metrics["steps_per_s"] > 0 and metrics["peak_memory_mb"] > 0
    assert 0.0 <= metrics["plans/wall_fraction"] <= 1.0
    assert math.isfinite(metrics["plans/final_goal_distance"])

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "train/loss" in row] == [5, 10, 15, 20]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["kind"] == "expert" and config["horizon"] == 8

    model = load_diffusion_model(run_dir)
    assert (model.spec.horizon, model.spec.dim, model.spec.dim_mults, model.spec.n_steps) == (8, 8, (1, 2), 5)
    assert model.info["kind"] == "expert"
    assert model.info["sources"]["expert"] == "generated:relreward/pointmaze-umaze/expert-r1c1-v0"


def test_missing_dataset_exits_2_naming_make_dataset(cli, tmp_path):
    empty = tmp_path / "empty-data"
    empty.mkdir()
    proc = cli(["train-diffusion", "experiment=smoke", f"data_dir={empty}", f"run_root={tmp_path / 'runs'}",
                "logger.mode=disabled", "device=cpu"], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    message = proc.stderr.split("relreward: error: ", 1)[1].strip()
    assert "\n" not in message  # one paragraph
    assert "relreward make-dataset" in message and str(empty) in message
    assert not list((tmp_path / "runs").rglob("*.pt"))
