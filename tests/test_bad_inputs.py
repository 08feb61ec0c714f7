"""Bad inputs, as a demanding user gives them: each is refused with a message that says what to do, exit code 2,
no traceback, no artifact a later run would take as finished, and no earlier result changed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

FINISHED = ("model.pt", "reward.pt", "metrics.json")


def _digests(root: Path) -> dict[str, str]:
    """Every result file under `root` and its SHA-256: what a refused command must leave as it was (Hydra's own
    `.hydra/` copy of the command line, the log and the refusal's `error.txt` aside)."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and not {"wandb", ".hydra"} & set(path.parts)
            and path.suffix != ".log" and path.name != "error.txt"}


def _assert_refused(proc, *message: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    for part in message:
        assert part in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.n_steps=abc"], "train.n_steps=abc: must be an integer"),
    (["train.n_steps=-5"], "train.n_steps=-5: must be a positive integer"),
    (["train.batch_size=0"], "train.batch_size=0: must be a positive integer"),
    (["train.save_every=0", "train.lr=0"], "train.lr=0: must be a positive, finite learning rate"),
    (["train.lr=inf"], "train.lr=inf: must be a positive, finite learning rate"),  # else nan at the first step
    (["model.dim=2"], "model.dim=2: must be an even integer >= 4"),  # else found after a finished run is set aside
    (["name="], "name='': must be a folder name"),
    (["name=../../elsewhere"], "name=../../elsewhere: must be a folder name"),
    (["name=.hidden"], "name=.hidden: must be a folder name (not empty, no / or \\, not starting with . or __"),
    (["threads=0"], "threads=0: must be a positive integer"),
    # refused here, not by the run's tracker once the run folder is claimed
    (["logger.mode=offlne"], "logger.mode=offlne: must be auto or online or offline or disabled"),
    (["logger.tags=paper"], "logger.tags=paper: must be a list of names"),
    (["train.precision=fp16"], "train.precision=fp16: must be fp32 or bf16"),
    (["extract.ema_decay=1.0"], "extract.ema_decay=1.0: must be in [0, 1) (0: no EMA)"),
    (["seed=abc"], "seed=abc: must be an integer"),
    (["seed=-1"], "seed=-1: must be an integer from 0 to 2147483647"),  # numpy's generators take no negative seed
    (["env.generate.seed=18446744073709551616"], "env.generate.seed=18446744073709551616: must be an integer from 0"),
    (["steer.seeds=[0,0]"], "steer.seeds=[0, 0]: must be a non-empty list of distinct seeds"),  # counted twice
    (["steer.seeds=[-1]"], "steer.seeds=[-1]: must be a non-empty list of distinct seeds"),
    (["seed=null"], "seed=None: must be an integer"),
    (["horizon=null"], "horizon=None: must be an integer >= 2"),
    (["train=5"], "train=5: must be the train section (set its keys, e.g. train.n_steps=...)"),
    (["overwrite=no"], "overwrite=no: must be true or false"),  # read as true, it would set the run aside
    (["use_actions=maybe"], "use_actions=maybe: must be true or false"),
    (["horizon=7"], "horizon=7 (model network): The horizon 7 is not a positive multiple of 2"),
    (["env.goal_cell=[1]"], "env.base_data is built from other values and fails"),
    (["env.goal_cell=[abc,1]"], "env.goal_cell=['abc', 1]: Cell ['abc', 1] is not a cell of a maze: a cell is [row, "
                                "col], two integers"),
    (["env.goal_cell=[1,1.5]"], "env.goal_cell=[1, 1.5]: Cell [1, 1.5] is not a cell of a maze"),  # not cell (1, 1)
    (["env.goal_cell=[2,2]"], ("env.goal_cell=[2, 2]: Cell (2, 2) is not a free cell of this 5x5 maze",
                               "Pick one of the free cells: [(1, 1), (1, 2)")),
    (["env.evaluate.windows=0", "env.evaluate.bin_size=0"], "env.evaluate.windows=0: must be a positive integer"),
    (["extract.grid_resolution=100"], "extract.grid_resolution=100: must be above 0 and at most one maze cell"),
    (["env.generate.base.episode_steps=4"], "env.generate.base.episode_steps=4: must be at least horizon=8"),
    (["steer.n_guide_steps=0"], "steer.n_guide_steps=0: must be a positive integer"),
    (["steer.scale=inf"], "steer.scale=inf: must be a finite number >= 0"),
    (["steer.eta=-1"], "steer.eta=-1: must be a finite number >= 0"),
    (["+steer.controller.p_gian=5"], "steer.controller.p_gian=5"),
    (["steer.controller.d_gain=abc"], "steer.controller.d_gain=abc: must be a number"),
    (["pipeline.steer=true", "steer.sampler=ddpm", "steer.n_sample_steps=3"],
     "steer.n_sample_steps=3 with steer.sampler=ddpm and diffusion.n_steps=5: DDPM runs every diffusion step"),
    (["+steer.controller.extra=2", "steer.controller.d_gain=abc", "steer.controller=5"],
     "steer.controller=5: must be a section with p_gain and d_gain"),
    (["+steer.controller.extra=2", "steer.controller.d_gain=abc"],
     ("steer.controller.d_gain=abc: must be a number",
      "steer.controller.extra=2: steer.controller has no such setting (misspelt?); its settings are p_gain, d_gain")),
    # every problem at once: wrong types of one section, and values of a section beside its nested one's
    (["train.n_steps=abc", "train.lr=xyz", "extract.batch_size=0"],
     ("train.n_steps=abc: must be an integer", "train.lr=xyz: must be a number",
      "extract.batch_size=0: must be a positive integer")),
    (["steer.controller.p_gain=-1", "steer.scale=-2"],
     ("steer.controller.p_gain=-1.0: must be a positive gain", "steer.scale=-2: must be a finite number >= 0")),
    (["formulation=authors"], "env=maze2d_umaze does not define env.authors_steering.scale"),
    # a `+` adds a key the config does not have: outside the env's and Hydra's keys, nothing would read it
    (["+sede=3"], ("+sede=3: there is no setting sede (misspelt?), so nothing would read it; the top-level settings "
                   "are ", "seed, device")),
    (["+env.hoizon=48"], "+env.hoizon=48: no config reads the env setting env.hoizon (misspelt?), so nothing would "
                         "read it; the optional env settings nearest to it: env.horizon"),
    (["+logger.projct=x", "train.n_steps=abc"],
     ("logger.projct=x: logger has no such setting (misspelt?); its settings are mode, project, entity, group, tags",
      "train.n_steps=abc: must be an integer")),
])
def test_impossible_config_is_refused_before_any_work(cli, smoke_data, tmp_path, overrides, message):
    run_root = tmp_path / "runs"
    # train-diffusion refuses settings it does not read before checking their values; the pipeline reads them all
    read_by_others = ("extract.", "steer.", "env.evaluate.", "env.generate.")
    stage = "pipeline" if any(key.lstrip("+").startswith(read_by_others) for key in overrides) else "train-diffusion"
    proc = cli([stage, *smoke_data.overrides(run_root), "logger.mode=disabled", *overrides], tmp_path)
    _assert_refused(proc, *((message,) if isinstance(message, str) else message), "nothing was run")
    made = [path.name for path in run_root.rglob("*") if path.is_file() and ".hydra" not in path.parts]
    assert set(made) <= {"train_diffusion.log", "pipeline.log", "error.txt"}, made  # Hydra's files, the log, the reason


def test_a_pipeline_on_a_device_this_machine_lacks_is_refused_before_any_data_are_made(cli, tmp_path):
    proc = cli(["pipeline", "experiment=smoke", f"run_root={tmp_path / 'runs'}", "logger.mode=disabled",
                "device=tpu"], tmp_path)
    _assert_refused(proc, "device=tpu is not a device torch knows")
    assert not (tmp_path / "runs" / "smoke-data").exists()


def test_a_plus_override_may_add_env_and_hydra_keys_and_choose_a_config_group():
    """The additions `+` is for pass the check: an env's optional key (read with a default), a launcher's extra
    parameter and a config group without a default; a misspelt top-level key does not."""
    from omegaconf import OmegaConf

    from relreward_cli.config_schema import check_config
    from relreward_cli.errors import UserError

    cfg = OmegaConf.create({"seed": 0, "env": {"name": "maze2d_umaze", "steer_scale": 2.0}, "experiment": "smoke"})
    check_config(cfg, ["+env.steer_scale=2.0", "+hydra.launcher.additional_parameters.mail-type=END",
                       "+experiment=smoke", "seed=0"], groups={"env", "experiment", "hydra/launcher"})
    with pytest.raises(UserError, match=r"\+experiment=smoke: there is no setting experiment"):
        check_config(cfg, ["+experiment=smoke"], groups={"env"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smoke_data, cli):
    """A finished smoke base model and an extraction from it (their run folders), made once."""
    root = tmp_path_factory.mktemp("trained")
    common = [*smoke_data.overrides(root / "runs"), "logger.mode=disabled"]
    for kind in ("base", "expert"):
        cli(["train-diffusion", f"kind={kind}", *common], root, check=True)
    cli(["extract", *common], root, check=True)
    runs = root / "runs"
    return {"root": root, "common": common, "base": runs / "train-diffusion" / "smoke-maze2d_umaze-r1c1-s0-base",
            "expert": runs / "train-diffusion" / "smoke-maze2d_umaze-r1c1-s0-expert",
            "extract": runs / "extract" / "smoke-maze2d_umaze-r1c1-s0"}


@pytest.mark.parametrize(("overrides", "differs"), [
    (["horizon=16"], "settings.horizon: 8 -> 16"),
    (["model.dim=16"], "settings.model.dim: 8 -> 16"),
    (["train.lr=0.01"], "settings.train.lr: 0.0002 -> 0.01"),
])
def test_rerun_with_other_settings_refuses_and_changes_nothing(cli, trained, overrides, differs):
    before = _digests(trained["base"])
    proc = cli(["train-diffusion", "kind=base", *trained["common"], *overrides], trained["root"])
    _assert_refused(proc, "holds a run made from something else", differs, "overwrite=true")
    assert _digests(trained["base"]) == before  # model, checkpoint, config.yaml, metrics: all as they were


def test_overwrite_sets_the_stale_run_aside_and_starts_afresh(cli, smoke_data, tmp_path):
    common = [*smoke_data.overrides(tmp_path / "runs"), "logger.mode=disabled"]
    cli(["train-diffusion", "kind=base", *common], tmp_path, check=True)
    run = tmp_path / "runs" / "train-diffusion" / "smoke-maze2d_umaze-r1c1-s0-base"
    old_model = (run / "model.pt").read_bytes()
    cli(["train-diffusion", "kind=base", *common, "train.lr=0.01", "overwrite=true"], tmp_path, check=True)
    (aside,) = run.glob("superseded-*")
    assert (aside / "model.pt").read_bytes() == old_model and (aside / "provenance.json").is_file()
    assert (run / "model.pt").read_bytes() != old_model
    assert '"lr": 0.01' in (run / "provenance.json").read_text()
    # the stale run's own config goes with it; the folder's is the new run's
    lr = {folder: yaml.safe_load((folder / "config.yaml").read_text())["train"]["lr"] for folder in (aside, run)}
    assert lr[run] == 0.01 != lr[aside]


def test_a_record_older_than_a_setting_reads_as_the_behaviour_before_it(tmp_path):
    """A run recorded before `train.precision` existed was made in float32: reused as such, refused for bf16."""
    import json

    from relreward_cli import provenance
    from relreward_cli.errors import UserError

    def current(precision: str) -> dict:
        return provenance.record({"stage": "train-diffusion", "train": {"lr": 2e-4, "precision": precision}}, {})

    older = {"settings": {"stage": "train-diffusion", "train": {"lr": 2e-4}}, "inputs": {}}
    (tmp_path / "provenance.json").write_text(json.dumps(older))
    (tmp_path / "model.pt").write_bytes(b"weights")
    assert provenance.matches(tmp_path, current("fp32"))
    provenance.claim(tmp_path, current("fp32"), start_afresh=False, how_to_start_afresh="overwrite=true")
    assert not provenance.matches(tmp_path, current("bf16"))
    with pytest.raises(UserError, match="settings.train.precision: fp32 -> bf16"):
        provenance.claim(tmp_path, current("bf16"), start_afresh=False, how_to_start_afresh="overwrite=true")
    assert (tmp_path / "model.pt").read_bytes() == b"weights"


def test_a_finished_run_is_sealed_and_a_file_changed_afterwards_is_not_reused(tmp_path):
    """A stage seals what it wrote; a file replaced after that is refused (read by a later stage, or resumed)
    and set aside with `start_afresh`; an unsealed run's model is not read; records from before seals are
    read unchecked."""
    import json

    from relreward_cli import provenance
    from relreward_cli.errors import UserError

    run = tmp_path / "run"
    current = provenance.record({"stage": "train-diffusion", "seed": 0}, {})
    provenance.claim(run, current, start_afresh=False, how_to_start_afresh="overwrite=true")
    (run / "model.pt").write_bytes(b"weights")
    with pytest.raises(UserError, match="has not finished"):  # claimed, not sealed: a stopped or running run
        provenance.check_output(run / "model.pt", "relreward train-diffusion")
    assert not provenance.intact(run)
    provenance.seal(run)
    assert provenance.intact(run) and provenance.matches(run, current)
    provenance.check_output(run / "model.pt", "relreward train-diffusion")
    provenance.check_output(tmp_path / "elsewhere" / "model.pt", "relreward train-diffusion")  # no record: unchecked

    (run / "model.pt").write_bytes(b"another model's weights")
    assert not provenance.intact(run) and provenance.matches(run, current)  # the settings still match
    assert provenance.altered_outputs(run)[0].startswith("model.pt: not the file the run wrote")
    with pytest.raises(UserError, match=r"was changed after its run finished .*overwrite=true"):
        provenance.check_output(run / "model.pt", "relreward train-diffusion")
    with pytest.raises(UserError, match="model.pt: not the file the run wrote"):
        provenance.claim(run, current, start_afresh=False, how_to_start_afresh="overwrite=true")
    assert (run / "model.pt").read_bytes() == b"another model's weights"
    provenance.claim(run, current, start_afresh=True, how_to_start_afresh="overwrite=true")
    (aside,) = run.glob("superseded-*")
    assert (aside / "model.pt").read_bytes() == b"another model's weights" and not (run / "model.pt").exists()

    (run / "model.pt").write_bytes(b"weights")
    provenance.seal(run)
    (run / "model.pt").unlink()
    assert provenance.altered_outputs(run) == ["model.pt: gone since the run finished"]

    older = tmp_path / "older"
    older.mkdir()
    (older / "provenance.json").write_text(json.dumps(current))
    (older / "model.pt").write_bytes(b"weights")
    assert provenance.intact(older) and provenance.matches(older, current)
    provenance.check_output(older / "model.pt", "relreward train-diffusion")

    for damaged, entry in (({"settings": [1, 2], "inputs": {}}, "settings"),
                           ({**current, "outputs": "sealed"}, "outputs")):
        (older / "provenance.json").write_text(json.dumps(damaged))
        with pytest.raises(UserError, match=f"its {entry} entry is damaged"):
            provenance.intact(older)


def test_a_model_replaced_after_its_run_finished_is_refused_by_the_stages_that_read_it(cli, trained, tmp_path):
    """The expert's model.pt copied over the base's (as a user might by mistake): extract and steer-eval refuse to
    read it as the base model, before any work."""
    base, expert = tmp_path / "base", tmp_path / "expert"
    shutil.copytree(trained["base"], base)
    shutil.copytree(trained["expert"], expert)
    shutil.copy2(expert / "model.pt", base / "model.pt")
    out = tmp_path / "out"
    for stage, reward in (("extract", []), ("steer-eval", [f"reward_model={trained['extract']}"])):
        proc = cli([stage, *trained["common"], f"base_model={base}", f"expert_model={expert}", *reward,
                    f"hydra.run.dir={out / stage}"], trained["root"])
        _assert_refused(proc, f"{base / 'model.pt'} was changed after its run finished", "overwrite=true")
        assert not (out / stage / "provenance.json").exists()


def test_model_settings_given_to_the_stages_that_load_models_must_match_them(cli, trained, tmp_path):
    """extract and steer-eval take the horizon, sizes, schedule and normalizer from the models they load: another
    value on the command line would not act, so it is refused before any work; the models' own values pass."""
    models = [f"base_model={trained['base']}", f"expert_model={trained['expert']}"]
    for stage, given, said in (
            ("extract", ["horizon=16"], "horizon=16 (the models have 8)"),
            ("steer-eval", [f"reward_model={trained['extract']}", "model.dim_mults=[1,2,4]", "normalizer=gaussian",
                            "diffusion.clip_denoised=true"],  # the last as the models have it: it passes
             "model.dim_mults=[1, 2, 4] (the models have [1, 2]), normalizer=gaussian (the models have limits) would")):
        out = tmp_path / stage
        proc = cli([stage, *trained["common"], *models, *given, f"hydra.run.dir={out}"], trained["root"])
        _assert_refused(proc, f"{stage} takes these settings from the models it loads", said, "would not act")
        assert not (out / "provenance.json").exists()
    reward = (trained["extract"] / "reward.pt").read_bytes()  # the models' own horizon, given, passes: the finished
    cli(["extract", *trained["common"], *models, "horizon=8"], trained["root"], check=True)  # extraction is kept
    assert (trained["extract"] / "reward.pt").read_bytes() == reward


def test_settings_a_stage_does_not_read_are_refused(cli, trained, tmp_path):
    """A setting given to a stage that never reads it would not act (`train-diffusion extract.n_steps=5` trains as
    if it had not been given), so it is refused before any work, naming the stage that reads it; steer-eval takes
    the reward's sizes from the reward it loads, as extract takes the models'. An env setting that a setting of
    another section comes from (`steer.sampler: ${oc.select:env.steer_sampler,ddpm}`) is read where that one is."""
    models = [f"base_model={trained['base']}", f"expert_model={trained['expert']}",
              f"reward_model={trained['extract']}"]
    for stage, given, said in (
            (["train-diffusion", "kind=base"], ["extract.n_steps=5", "steer.scale=2"],
             ["train-diffusion does not read extract.n_steps (read by extract), steer.scale (read by steer-eval)"]),
            (["make-dataset"], ["model.dim=16"], ["make-dataset does not read model.dim (read by train-diffusion)"]),
            (["pipeline"], ["steer.scale=2"],
             ["pipeline does not read steer.scale (read by steer-eval)", "only with pipeline.steer=true"]),
            (["steer-eval", *models], ["train.lr=0.1"],
             ["steer-eval does not read train.lr (read by train-diffusion)"]),
            (["steer-eval", *models], ["reward.dim=16"], ["reward.dim=16 (the models have 8) would not act"]),
            # env settings act through the settings they set, and only where those are read
            (["train-diffusion", "kind=base"], ["env.steer_sampler=ddim"],
             ["train-diffusion does not read env.steer_sampler (sets steer.sampler, read by steer-eval)"]),
            (["steer-eval", *models], ["+env.prediction=x0"],
             ["env.prediction=x0 (sets diffusion.prediction; the models have eps) would not act"]),
            # env settings the family says only some stages read
            (["train-diffusion", "kind=base"], ["env.evaluate.windows=100", "env.generate.seed=3"],
             ["train-diffusion does not read env.evaluate.windows (read by extract), env.generate.seed (read by "
              "make-dataset and extract)"]),
            (["extract", *models[:2]], ["env.generate.base.n_episodes=3"],
             ["extract does not read env.generate.base.n_episodes (read by make-dataset)"]),
            (["pipeline"], ["env.goal_set=[[1,1]]"], ["pipeline does not read env.goal_set (read by no stage)",
                                                      "Scripts read it from the env's YAML file"]),
            # an env setting whose setting the preset gives itself (experiment=smoke: horizon: 8)
            (["train-diffusion", "kind=base"], ["+env.horizon=16"],
             ["env.horizon=16 would not act: the configs read it only to set horizon (base.yaml), and here horizon "
              "does not come from it (horizon=8)"])):
        out = tmp_path / stage[0]
        proc = cli([*stage, *trained["common"], *given, f"hydra.run.dir={out}"], trained["root"])
        _assert_refused(proc, *said, "Nothing was run")
        assert not (out / "provenance.json").exists() and not (out / "metrics.json").exists()


def test_an_env_setting_is_read_where_any_setting_it_sets_is_read():
    from omegaconf import OmegaConf

    from relreward_cli.errors import UserError
    from relreward_cli.stages.common import check_settings_read

    cfg = OmegaConf.create({"env": {"family": "maze2d", "both": 1, "steer_only": 2}, "train": {"lr": "${env.both}"},
                            "steer": {"scale": "${oc.select:env.both,3}", "eta": "${env.steer_only}"}})
    check_settings_read(cfg, "train-diffusion", ("train",), {"env.both", "env"})  # acts through train.lr
    with pytest.raises(UserError, match=r"does not read env.steer_only \(sets steer.eta, read by steer-eval\)"):
        check_settings_read(cfg, "train-diffusion", ("train",), {"env.steer_only"})


def test_a_run_folder_in_use_by_another_process_is_refused_and_left_to_it(cli, trained):
    """Two commands given one folder (two horizons run by hand under one run_root share folder names): while one runs,
    the other is refused before any work and writes no reason or labels into the folder; once it ends, the
    folder is free again and no hold is left behind."""
    from relreward_cli import provenance
    from relreward_cli.errors import UserError

    folder, before = trained["base"], _digests(trained["base"])
    with provenance.held(folder):
        proc = cli(["train-diffusion", "kind=base", *trained["common"]], trained["root"])
        _assert_refused(proc, f"{folder} is in use by another relreward process", "Nothing was run")
        with pytest.raises(UserError, match="is in use by another relreward process"), provenance.held(folder):
            pass
    assert _digests(folder) == before and not (folder / "error.txt").exists()
    assert not (folder / provenance.HOLD_FILE).exists()
    cli(["train-diffusion", "kind=base", *trained["common"]], trained["root"], check=True)
    assert not (folder / provenance.HOLD_FILE).exists()


def test_extract_refuses_to_reuse_a_reward_of_other_models(cli, trained, tmp_path):
    """The base model changed (here: another run folder's model passed in) since the reward was extracted."""
    other = tmp_path / "other-base"
    cli(["train-diffusion", "kind=base", *trained["common"], "seed=1", f"hydra.run.dir={other}"], trained["root"],
        check=True)
    before = _digests(trained["extract"])
    proc = cli(["extract", *trained["common"], f"base_model={other}"], trained["root"])
    _assert_refused(proc, "holds a run made from something else", "inputs.base_model:", "overwrite=true")
    assert _digests(trained["extract"]) == before


def test_steer_eval_refuses_models_of_another_env_before_any_rollout(cli, trained, tmp_path):
    proc = cli(["steer-eval", *trained["common"], "env=maze2d_medium", f"base_model={trained['base']}",
                f"expert_model={trained['expert']}", f"reward_model={trained['extract']}",
                f"hydra.run.dir={tmp_path / 'eval'}"], trained["root"])
    _assert_refused(proc, "env=maze2d_medium, but the base model", "on maze2d_umaze", "Nothing was run")
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("stage", ["extract", "steer-eval"])
def test_models_of_another_goal_are_refused_by_the_stages_that_score_them(cli, trained, tmp_path, stage):
    """Models trained for goal (1, 1) given to a run of goal (3, 1): the stage would score them against the other
    goal's distances (extract) or success (steer-eval), so it is refused before any work."""
    out = tmp_path / "run"
    reward = [f"reward_model={trained['extract']}"] if stage == "steer-eval" else []
    proc = cli([stage, *trained["common"], "env.goal_cell=[3,1]", f"base_model={trained['base']}",
                f"expert_model={trained['expert']}", *reward, f"hydra.run.dir={out}"], trained["root"])
    _assert_refused(proc, f"The base model {trained['base'] / 'model.pt'} was made from the datasets "
                          "generated:relreward/pointmaze-umaze/base-r1c1-v0",
                    "this config's env reads generated:relreward/pointmaze-umaze/base-r3c1-v0", "env.goal_cell",
                    "Nothing was run")
    assert not (out / "metrics.json").exists() and not (out / "reward.pt").exists()


@pytest.mark.parametrize("stage", ["extract", "steer-eval"])
def test_models_of_data_made_again_since_are_refused(cli, trained, tmp_path, stage):
    """The datasets were made again (other generator settings) after the models were trained on them: the stage
    that reads the models with these data refuses, even with overwrite=true, naming both digests."""
    data = tmp_path / "data"
    shutil.copytree(Path(next(arg for arg in trained["common"] if arg.startswith("data_dir=")).split("=", 1)[1]), data)
    common = [arg for arg in trained["common"] if not arg.startswith("data_dir=")] + [f"data_dir={data}"]
    models = [f"base_model={trained['base']}", f"expert_model={trained['expert']}",
              *([f"reward_model={trained['extract']}"] if stage == "steer-eval" else [])]
    out = tmp_path / "run"
    cli([stage, *common, *models, f"hydra.run.dir={out}", *(["steer.n_episodes=1"] if stage == "steer-eval" else [])],
        trained["root"], check=True)  # the same data, copied: accepted
    cli(["make-dataset", *common, "env.generate.seed=1", "overwrite=true"], trained["root"], check=True)
    recipe = ["env.generate.seed=1"] if stage == "extract" else []  # extract draws fresh episodes with it
    proc = cli([stage, *common, *models, *recipe, "overwrite=true", f"hydra.run.dir={out}"], trained["root"])
    _assert_refused(proc, f"The base model {trained['base'] / 'model.pt'} was made from other contents of",
                    "the data were made again since", "Nothing was run")


def test_data_of_another_env_is_refused_before_training(cli, smoke_data, tmp_path):
    maze = "generated:relreward/pointmaze-umaze"
    proc = cli(["train-diffusion", *smoke_data.overrides(tmp_path / "runs"), "logger.mode=disabled", "env=halfcheetah",
                f"env.base_data={maze}/base-r1c1-v0", f"env.expert_data={maze}/expert-r1c1-v0", "horizon=8"], tmp_path)
    _assert_refused(proc, "observations of size 4 and actions of size 2, but env=halfcheetah has 17 and 6",
                    "Nothing was trained")
    assert not list((tmp_path / "runs").rglob("checkpoint.pt"))


def test_random_bytes_as_a_d4rl_file_is_refused(cli, smoke_data, tmp_path):
    junk = tmp_path / "hopper-medium-v2.hdf5"
    junk.write_bytes(bytes(range(256)) * 40)
    proc = cli(["train-diffusion", *smoke_data.overrides(tmp_path / "runs"), "logger.mode=disabled",
                f"env.base_data=hdf5:{junk}"], tmp_path)
    _assert_refused(proc, f"Dataset hdf5:{junk} cannot be read", "Download the file again")


def test_a_truncated_dataset_is_refused_by_make_dataset_and_training(cli, smoke_data, tmp_path):
    """Half of a generated dataset's file is gone: make-dataset no longer calls it `exists`, and nothing trains."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(smoke_data.data_dir, data)
    (file,) = data.glob("relreward/pointmaze-umaze/base-r1c1-v0/data/main_data.hdf5")
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    common = ["experiment=smoke", f"data_dir={data}", f"run_root={tmp_path / 'runs'}", "logger.mode=disabled"]
    for stage in ("make-dataset", "train-diffusion"):
        proc = cli([stage, *common], tmp_path)
        _assert_refused(proc, "relreward/pointmaze-umaze/base-r1c1-v0 cannot be read", "overwrite=true")
        assert "status" not in proc.stdout
    proc = cli(["make-dataset", *common, "overwrite=true"], tmp_path, check=True)  # what the message says, works
    cli(["train-diffusion", *common, "train.n_steps=4"], tmp_path, check=True)


def test_a_run_root_that_is_not_a_folder_is_one_paragraph(cli, smoke_data, tmp_path):
    a_file = tmp_path / "runs"
    a_file.write_text("not a folder")
    proc = cli(["train-diffusion", *smoke_data.overrides(a_file), "logger.mode=disabled"], tmp_path)
    _assert_refused(proc, "relreward: error: Not a directory", "Check the paths this command was given")


def test_a_run_folder_whose_log_cannot_be_opened_is_one_paragraph(smoke_data, tmp_path, monkeypatch, capsys):
    """A finished run's folder on a disk turned read-only: Hydra cannot open the job's log file (it says so with a
    ValueError around the OSError), which is a failure of the machine, not a traceback."""
    import errno
    import logging

    from relreward_cli import cli as relreward_cli

    def read_only(self, filename, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", filename)

    monkeypatch.setattr(logging.FileHandler, "__init__", read_only)
    args = ["train-diffusion", *smoke_data.overrides(tmp_path / "runs"), "logger.mode=disabled"]
    assert relreward_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "relreward: error: Cannot write" in err and "train_diffusion.log" in err and "Traceback" not in err


@pytest.mark.parametrize(("code", "said"), [
    ("ENOSPC", ["relreward: error: No space left on the device", "resumes from its last checkpoint"]),
    ("EROFS", ["relreward: error: Cannot write", "Point run_root= and data_dir= at a folder you can write"]),
    ("zip writer", ["relreward: error: No space left on the device", "resumes from its last checkpoint"]),
])
def test_a_full_or_read_only_disk_is_one_paragraph_and_the_run_resumes_afterwards(smoke_data, tmp_path, monkeypatch,
                                                                                   capsys, code, said):
    """The disk fills up (or turns read-only) while the first checkpoint is written: exit 2 with what to do, no
    traceback, no checkpoint or model left; the same command afterwards trains the run to its end. (As root a
    folder cannot be made unwritable, so torch.save raises the error the system would.)"""
    import errno

    from relreward_cli import cli as relreward_cli
    from relreward_cli import training

    args = ["train-diffusion", *smoke_data.overrides(tmp_path / "runs"), "logger.mode=disabled"]

    def failing_disk(obj, path, *a, **k):
        if code == "zip writer":  # how torch's writer reports a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        raise OSError(getattr(errno, code), "simulated", str(path))

    monkeypatch.setattr(training.torch, "save", failing_disk)
    monkeypatch.setattr(training.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))  # a full disk
    assert relreward_cli.main(args) == 2
    err = capsys.readouterr().err
    assert all(part in err for part in said), err
    assert "Traceback" not in err
    (run,) = (tmp_path / "runs" / "train-diffusion").iterdir()
    assert not list(run.glob("*.pt")) and not list(run.glob("*.tmp*"))
    assert said[0].removeprefix("relreward: error: ") in (run / "error.txt").read_text()  # for `relreward report`
    monkeypatch.undo()  # space again
    assert relreward_cli.main(args) == 0
    assert (run / "model.pt").is_file() and not (run / "error.txt").exists()


def test_a_goal_the_expert_data_were_not_made_for_is_refused_before_work(cli, trained, tmp_path):
    """The smoke data's expert went to cell (1, 1): scoring the reward against another goal would be meaningless."""
    default_goal_data = "env.expert_data=generated:relreward/pointmaze-umaze/expert-r1c1-v0"  # named explicitly
    proc = cli(["extract", *trained["common"], "env.goal_cell=[3,1]", default_goal_data,
                f"base_model={trained['base']}", f"expert_model={trained['expert']}",
                f"hydra.run.dir={tmp_path / 'x'}"], trained["root"])
    _assert_refused(proc, "env.goal_cell=[3, 1], but the expert data", "were made for the goal [1, 1]",
                    "env.goal_cell=[1, 1]")
    assert not (tmp_path / "x" / "reward.pt").exists() and not (tmp_path / "x" / "checkpoint.pt").exists()


def test_pipeline_settings_that_cannot_work_together_are_refused_before_any_work(cli, smoke_data, tmp_path):
    proc = cli(["pipeline", *smoke_data.overrides(tmp_path / "runs"), "logger.mode=disabled", "pipeline.steer=true",
                "steer.replan_every=8", "diffusion.n_steps=2", "steer.t_stopgrad=2"], tmp_path)
    _assert_refused(proc, "steer.replan_every=8 with horizon=8", "steer.t_stopgrad=2 with diffusion.n_steps=2",
                    "extract.eval_t=[0, 2], extract.report_t=2: every time must be below diffusion.n_steps=2",
                    "nothing was run")
    assert not list((tmp_path / "runs").rglob("*.pt"))


def test_steer_eval_refuses_a_reward_of_another_normalized_space_before_any_rollout(cli, trained, tmp_path):
    """A reward extracted in another normalized space (here: its normalizer's scale doubled) would guide the plans
    with gradients of the wrong units; refused before the base planner runs."""
    from relreward_cli.training import load_checkpoint, save_checkpoint

    payload = load_checkpoint(trained["extract"] / "reward.pt", kind="reward-model")
    payload["normalizer"]["scale"] = [2 * value for value in payload["normalizer"]["scale"]]
    other = tmp_path / "reward.pt"
    save_checkpoint(other, {key: value for key, value in payload.items() if key != "format"})
    proc = cli(["steer-eval", *trained["common"], f"base_model={trained['base']}", f"expert_model={trained['expert']}",
                f"reward_model={other}", f"hydra.run.dir={tmp_path / 'eval'}"], trained["root"])
    _assert_refused(proc, "was not extracted in the base model", "normalizers differ", "Nothing was rolled out")
    assert "base seed" not in proc.stderr + proc.stdout  # no planner ran


def test_a_dataset_id_without_a_version_is_refused_before_any_dataset_is_made(cli, tmp_path):
    data = tmp_path / "data"
    proc = cli(["make-dataset", "experiment=smoke", f"run_root={tmp_path / 'runs'}", f"data_dir={data}",
                "logger.mode=disabled", "env.expert_data=generated:umaze-expert"], tmp_path)
    _assert_refused(proc, "'umaze-expert' is not a valid Minari dataset id", "name-v<version>")
    assert not data.exists()  # not even the base dataset, which was named well


def test_fewer_steps_than_a_finished_run_has_are_refused(cli, trained):
    """`n_steps` is left out of the record so that a run can be extended; asking for fewer steps than the folder's
    model was trained for would report that longer model as the shorter one asked for."""
    before = _digests(trained["base"])
    proc = cli(["train-diffusion", "kind=base", *trained["common"], "train.n_steps=10"], trained["root"])
    _assert_refused(proc, "train.n_steps=10, but the folder's run is at step 20", "overwrite=true")
    assert _digests(trained["base"]) == before
    proc = cli(["extract", *trained["common"], "extract.n_steps=10"], trained["root"])
    _assert_refused(proc, "extract.n_steps=10, but the folder's run is at step 20")


@pytest.mark.parametrize(("stage", "made"), [("extract", "checkpoint.pt"), ("steer-eval", "provenance.json")])
def test_one_model_as_base_and_expert_is_refused(cli, trained, tmp_path, stage, made):
    """extract would learn a reward of zero; steer-eval would roll out the base planner as the expert's."""
    reward = [f"reward_model={trained['extract']}"] if stage == "steer-eval" else []
    proc = cli([stage, *trained["common"], f"base_model={trained['base']}", f"expert_model={trained['base']}",
                *reward, f"hydra.run.dir={tmp_path / 'x'}"], trained["root"])
    _assert_refused(proc, "base_model and expert_model are one model", "Nothing was run")
    assert not (tmp_path / "x" / made).exists()
    copy = tmp_path / "copy-of-base"  # the same model under another path
    shutil.copytree(trained["base"], copy)
    proc = cli([stage, *trained["common"], f"base_model={trained['base']}", f"expert_model={copy}", *reward,
                f"hydra.run.dir={tmp_path / 'x'}"], trained["root"])
    _assert_refused(proc, "base_model and expert_model are one model", "equal byte for byte")
    assert not (tmp_path / "x" / made).exists()


def test_steer_eval_refuses_to_replace_an_evaluation_of_other_settings(cli, trained, tmp_path):
    """A finished evaluation is kept: a rerun into its folder with other steering settings is refused before any
    rollout (overwrite=true sets it aside), and settings the models cannot steer with (guidance that could never
    act, a ranking step or sampler steps beyond the models' diffusion steps) are refused before that."""
    models = [f"base_model={trained['base']}", f"expert_model={trained['expert']}",
              f"reward_model={trained['extract']}", f"hydra.run.dir={tmp_path / 'eval'}"]
    cli(["steer-eval", *trained["common"], *models], trained["root"], check=True)
    before = _digests(tmp_path / "eval")
    proc = cli(["steer-eval", *trained["common"], *models, "steer.scale=7"], trained["root"])
    _assert_refused(proc, "holds a run made from something else", "settings.steer.scale:", "overwrite=true")
    assert _digests(tmp_path / "eval") == before
    cli(["steer-eval", *trained["common"], *models, "steer.scale=7", "overwrite=true"], trained["root"], check=True)
    assert list((tmp_path / "eval").glob("superseded-*/metrics.json"))
    # settings the models cannot steer with: refused before the finished evaluation is set aside
    kept = sorted((tmp_path / "eval").glob("superseded-*"))
    proc = cli(["steer-eval", *trained["common"], *models, "steer.t_stopgrad=5", "steer.rank_t=5", "steer.sampler=ddim",
                "steer.n_sample_steps=100", "overwrite=true"], trained["root"])
    _assert_refused(proc, "steer.t_stopgrad=5 with the models' 5 diffusion steps: guidance acts only at steps t >= "
                          "t_stopgrad", "steer.rank_t=5 with the models' 5 diffusion steps",
                    "steer.n_sample_steps=100 with the models' 5 diffusion steps", "nothing was rolled out")
    assert sorted((tmp_path / "eval").glob("superseded-*")) == kept and (tmp_path / "eval" / "metrics.json").is_file()
    # a step count DDPM cannot take (an env's, for its own sampler): refused there too, not while sampling
    proc = cli(["steer-eval", *trained["common"], *models, "steer.sampler=ddpm", "steer.n_sample_steps=3",
                "overwrite=true"], trained["root"])
    _assert_refused(proc, "steer.n_sample_steps=3 with steer.sampler=ddpm and the models' 5 diffusion steps",
                    "add steer.n_sample_steps=null")
    assert sorted((tmp_path / "eval").glob("superseded-*")) == kept and (tmp_path / "eval" / "metrics.json").is_file()


@pytest.mark.parametrize(("override", "said"), [
    ("env.test_fraction=0.999", "env.test_fraction=0.999: gives 1796 test and 1 training images"),
    ("env.split_seed=-1", "env.split_seed=-1: must be an integer in [0, 2**32 - 1]"),
])
def test_digit_settings_that_cannot_split_are_refused_before_any_work(cli, tmp_path, override, said):
    """Before, these reached scikit-learn after the run folder's record was rewritten: a traceback, and the next
    good run set the finished models aside as stale."""
    run_root = tmp_path / "runs"
    proc = cli(["pipeline", "env=digits", "experiment=smoke", f"run_root={run_root}", "logger.mode=disabled",
                "device=cpu", override], tmp_path)
    _assert_refused(proc, said)
    assert not list(run_root.rglob("provenance.json"))


def test_an_unreadable_provenance_record_is_one_paragraph_and_changes_nothing(cli, trained, tmp_path):
    import shutil

    run = tmp_path / "base"
    shutil.copytree(trained["base"], run)
    (run / "provenance.json").write_text("{garbage")
    before = _digests(run)
    proc = cli(["train-diffusion", "kind=base", *trained["common"], f"hydra.run.dir={run}"], trained["root"])
    _assert_refused(proc, "provenance.json cannot be read", "Delete that file and run the command again")
    assert _digests(run) == before
