"""`relreward pipeline` end to end on the smoke config: artifacts, skip-finished-stages, determinism, and
the reward checkpoint round trip."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import _cli_command

from relreward_cli import provenance
from relreward_cli.data.pairs import load_segment_pair
from relreward_cli.diffusion.artifact import load_diffusion_model
from relreward_cli.envs.maze import MazeGeometry
from relreward_cli.errors import UserError
from relreward_cli.models.reward_net import RewardNet
from relreward_cli.reward.evaluate import maze_reward_map
from relreward_cli.reward.trainer import load_reward_model, model_sample_pool, train_reward
from relreward_cli.stages.inputs import pipeline_folders, stage_folders
from relreward_cli.training import load_checkpoint, save_checkpoint

STAGE_DIRS = ("diffusion_base", "diffusion_expert", "extract")
SMOKE_EVAL_T = (0, 2)


@pytest.fixture(scope="module")
def pipeline_run(smoke_data, tmp_path_factory, cli):
    """One smoke pipeline run: (run_root, pipeline folder, summary, stdout)."""
    run_root = tmp_path_factory.mktemp("pipeline") / "runs"
    proc = cli(["pipeline", *smoke_data.overrides(run_root), "logger.mode=disabled"], run_root.parent,
                   check=True)
    run_dir = run_root / "pipeline" / "smoke-maze2d_umaze-r1c1-s0"
    return run_root, run_dir, json.loads((run_dir / "metrics.json").read_text()), proc.stdout


def test_pipeline_end_to_end(pipeline_run):
    _, run_dir, summary, stdout = pipeline_run
    assert "pipeline maze2d_umaze (seed 0)" in stdout
    for t in SMOKE_EVAL_T:
        rho = summary[f"pearson/t{t}"]
        assert math.isfinite(rho) and -1.0 <= rho <= 1.0
    assert summary["pearson/best"] == max(summary[f"pearson/t{t}"] for t in SMOKE_EVAL_T)
    assert summary["pearson/best_t"] in SMOKE_EVAL_T
    heatmap = Path(summary["heatmap"])
    assert heatmap == run_dir / "extract" / "plots" / "reward_maps.png"
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for kind in ("base", "expert"):
        assert math.isfinite(summary[f"{kind}/final_loss"]) and 0.0 <= summary[f"{kind}/plans/wall_fraction"] <= 1
    assert summary["seconds/total"] >= summary["seconds/extract"] > 0

    assert (run_dir / "config.yaml").is_file()
    for stage in STAGE_DIRS:
        folder = run_dir / stage
        assert (folder / "config.yaml").is_file(), stage
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert rows and rows[-1]["step"] == 20, stage
        assert (folder / "metrics.json").is_file(), stage
    assert (run_dir / "diffusion_base" / "model.pt").is_file()
    assert (run_dir / "extract" / "reward.pt").is_file()
    assert (run_dir / "extract" / "plots" / "extraction_loss.png").is_file()

    # The two models were trained on their own data, in one shared normalized space.
    base, expert = (load_diffusion_model(run_dir / f"diffusion_{kind}") for kind in ("base", "expert"))
    assert (base.info["kind"], expert.info["kind"]) == ("base", "expert")
    assert base.normalizer == expert.normalizer and base.spec == expert.spec


def test_reward_checkpoint_round_trip(pipeline_run):
    """`reward.pt` loads into a network that reproduces the trained one and the reported correlations."""
    _, run_dir, summary, _ = pipeline_run
    extract_dir = run_dir / "extract"
    reward = load_reward_model(extract_dir)
    trained = load_checkpoint(extract_dir / "checkpoint.pt", kind="reward")  # the loop's final state
    assert trained["step"] == 20
    architecture = dict(trained["architecture"])
    assert architecture.pop("kind") == "default"
    net = RewardNet(reward.spec.horizon, reward.spec.transition_dim, **architecture)
    net.load_state_dict(trained["model"])
    net.eval()

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, reward.spec.horizon, reward.spec.transition_dim, generator=generator)
    t = torch.randint(0, reward.spec.n_steps, (16,), generator=generator)
    with torch.no_grad():
        expected, got = net(x, t), reward.net(x, t)
    assert torch.equal(expected, got)
    assert expected.std() > 0  # a real, input-dependent reward

    base = load_diffusion_model(run_dir / "diffusion_base")
    assert reward.spec == base.spec and reward.normalizer == base.normalizer
    assert reward.schedule.matches(base.diffusion.schedule)

    # Re-evaluating the loaded reward with the extract stage's own settings reproduces its correlations.
    ec = yaml.safe_load((extract_dir / "config.yaml").read_text())["extract"]
    geometry = MazeGeometry.from_name("umaze")
    goal_xy = geometry.cell_to_xy(np.asarray((1, 1)))
    options = {"noise_samples": ec["eval_noise_samples"]} if "eval_noise_samples" in ec else {}
    reward_map = maze_reward_map(reward, geometry, goal_xy, ec["eval_t"], ec["grid_resolution"], **options)
    assert tuple(reward_map.t_values) == SMOKE_EVAL_T
    assert reward_map.correlations == [summary[f"pearson/t{t}"] for t in SMOKE_EVAL_T]


def _mtimes(run_dir: Path) -> dict[str, int]:
    return {stage: (run_dir / stage / name).stat().st_mtime_ns
            for stage, name in (("diffusion_base", "model.pt"), ("diffusion_expert", "model.pt"))}


def test_rerun_redoes_only_the_missing_stage_and_is_deterministic(pipeline_run, smoke_data, cli):
    run_root, run_dir, first, _ = pipeline_run
    before = _mtimes(run_dir)
    first_extract = json.loads((run_dir / "extract" / "metrics.json").read_text())
    shutil.rmtree(run_dir / "extract")

    cli(["pipeline", *smoke_data.overrides(run_root), "logger.mode=disabled"], run_root.parent, check=True)
    assert _mtimes(run_dir) == before  # the finished diffusion models were not retrained
    second = json.loads((run_dir / "metrics.json").read_text())
    for key in [f"pearson/t{t}" for t in SMOKE_EVAL_T] + ["pearson/best", "pearson/best_t"]:
        assert second[key] == first[key], key
    second_extract = json.loads((run_dir / "extract" / "metrics.json").read_text())
    assert second_extract["final_loss"] == first_extract["final_loss"]
    assert (run_dir / "extract" / "reward.pt").is_file()


def test_changed_model_reruns_the_stages_built_on_it(pipeline_run, smoke_data, cli):
    """A stage is skipped only if it was made from the same upstream files: a retrained expert model (here:
    one weight nudged, and the expert's folder sealed again as its stage would) makes the pipeline extract again,
    while the base model stays untouched."""
    run_root, run_dir, _, _ = pipeline_run
    expert_file = run_dir / "diffusion_expert" / "model.pt"
    payload = load_checkpoint(expert_file, kind="diffusion-model")
    name = next(key for key, value in payload["weights"].items() if value.is_floating_point())
    payload["weights"][name] = payload["weights"][name] + 0.01
    save_checkpoint(expert_file, {key: value for key, value in payload.items() if key != "format"})
    provenance.seal(expert_file.parent)
    base_mtime = (run_dir / "diffusion_base" / "model.pt").stat().st_mtime_ns
    reward_mtime = (run_dir / "extract" / "reward.pt").stat().st_mtime_ns
    inputs = json.loads((run_dir / "extract" / "provenance.json").read_text())["inputs"]

    cli(["pipeline", *smoke_data.overrides(run_root), "logger.mode=disabled"], run_root.parent, check=True)
    assert (run_dir / "diffusion_base" / "model.pt").stat().st_mtime_ns == base_mtime
    assert (run_dir / "extract" / "reward.pt").stat().st_mtime_ns != reward_mtime
    new_inputs = json.loads((run_dir / "extract" / "provenance.json").read_text())["inputs"]
    assert new_inputs["base_model"] == inputs["base_model"] and new_inputs["expert_model"] != inputs["expert_model"]
    assert list((run_dir / "extract").glob("superseded-*/reward.pt"))  # the stale reward was set aside, not lost


def test_files_changed_after_their_stage_finished_are_not_reused(pipeline_run, smoke_data, cli):
    """The expert's model.pt copied over the base's, and a reward.pt overwritten, without their stages: the pipeline
    sets both folders aside and runs those stages again (same seed, so the base model comes out as it was), where
    it would otherwise have skipped them as finished."""
    run_root, run_dir, _, _ = pipeline_run
    base_file, reward_file = run_dir / "diffusion_base" / "model.pt", run_dir / "extract" / "reward.pt"
    base_bytes = base_file.read_bytes()
    shutil.copy2(run_dir / "diffusion_expert" / "model.pt", base_file)
    reward_file.write_bytes(b"not a reward")
    expert_mtime = (run_dir / "diffusion_expert" / "model.pt").stat().st_mtime_ns

    proc = cli(["pipeline", *smoke_data.overrides(run_root), "logger.mode=disabled"], run_root.parent, check=True)
    assert "model.pt: not the file the run wrote" in proc.stdout + proc.stderr
    assert base_file.read_bytes() == base_bytes
    assert (run_dir / "diffusion_expert" / "model.pt").stat().st_mtime_ns == expert_mtime
    (aside,) = (run_dir / "diffusion_base").glob("superseded-*")
    assert (aside / "model.pt").read_bytes() == (run_dir / "diffusion_expert" / "model.pt").read_bytes()
    assert load_reward_model(reward_file) is not None
    assert any((aside / "reward.pt").read_bytes() == b"not a reward"
               for aside in (run_dir / "extract").glob("superseded-*"))
    assert all(provenance.intact(run_dir / stage) for stage in STAGE_DIRS)


def test_regenerated_data_reruns_every_stage_made_from_it(smoke_data, tmp_path, cli):
    """New datasets in place of the old (`make-dataset overwrite=true` with another generation seed): the pipeline
    trains both models and extracts again (they were made from the old data), instead of reporting old results."""
    run_root = tmp_path / "runs"
    common = ["experiment=smoke", f"run_root={run_root}", f"data_dir={tmp_path / 'data'}", "device=cpu",
              "logger.mode=disabled"]
    cli(["pipeline", *common], tmp_path, check=True)
    run_dir = run_root / "pipeline" / "smoke-maze2d_umaze-r1c1-s0"
    cli(["make-dataset", *common, "env.generate.seed=1", "overwrite=true"], tmp_path, check=True)
    proc = cli(["pipeline", *common, "env.generate.seed=1"], tmp_path, check=True)
    for stage in ("diffusion_base", "diffusion_expert", "extract"):
        assert len(list((run_dir / stage).glob("superseded-*"))) == 1, stage
    assert "made from something else" in proc.stdout + proc.stderr


def test_extraction_can_draw_from_model_samples(pipeline_run, smoke_data, tmp_path):
    """`sample_fraction` mixes a seeded pool of both models' samples into the extraction batches."""
    _, run_dir, _, _ = pipeline_run
    base, expert = (load_diffusion_model(run_dir / f"diffusion_{kind}") for kind in ("base", "expert"))
    pool = model_sample_pool(base, expert, 6, seed=3)
    assert pool.shape == (12, base.spec.horizon, base.spec.transition_dim)
    assert torch.equal(pool, model_sample_pool(base, expert, 6, seed=3))
    assert not torch.equal(pool[:6], pool[6:])  # one half per model

    data = load_segment_pair(base.info["sources"]["base"], base.info["sources"]["expert"],
                             smoke_data.data_dir, base.spec.horizon, base.spec.use_actions,
                             normalizer=base.normalizer)
    losses = {}
    for fraction in (0.0, 0.5):
        reward, result = train_reward(base, expert, data, tmp_path / str(fraction), dim=8, dim_mults=(1, 2),
                                      n_steps=6, batch_size=8, lr=1e-3, grad_clip=1.0, save_every=3, log_every=3,
                                      generator=torch.Generator().manual_seed(0), device=torch.device("cpu"),
                                      info={"seed": 0}, sample_fraction=fraction, sample_pool=6)
        assert math.isfinite(result.final_loss) and result.step == 6
        losses[fraction] = result.final_loss
        saved = load_checkpoint(tmp_path / str(fraction) / "reward.pt", kind="reward-model")
        assert saved["sample_fraction"] == fraction
    assert losses[0.0] != losses[0.5]  # the batches really differ


def test_extraction_keeps_an_ema_of_the_reward_weights_when_asked(pipeline_run, smoke_data, tmp_path):
    """With `ema_decay` > 0 the saved reward is the weights' moving average (kept in the checkpoint for a resume);
    with 0 it is the last weights, as before the option existed."""
    _, run_dir, _, _ = pipeline_run
    base, expert = (load_diffusion_model(run_dir / f"diffusion_{kind}") for kind in ("base", "expert"))
    data = load_segment_pair(base.info["sources"]["base"], base.info["sources"]["expert"], smoke_data.data_dir,
                             base.spec.horizon, base.spec.use_actions, normalizer=base.normalizer)
    saved = {}
    for decay in (0.0, 0.5):
        folder = tmp_path / str(decay)
        torch.manual_seed(0)
        train_reward(base, expert, data, folder, dim=8, dim_mults=(1, 2), n_steps=6, batch_size=8, lr=1e-3,
                     grad_clip=1.0, save_every=6, log_every=3, generator=torch.Generator().manual_seed(0),
                     device=torch.device("cpu"), info={"seed": 0}, ema_decay=decay, ema_start=2)
        checkpoint = load_checkpoint(folder / "checkpoint.pt", kind="reward")
        saved[decay] = (load_checkpoint(folder / "reward.pt", kind="reward-model")["weights"], checkpoint)
    weights, checkpoint = saved[0.0]
    assert checkpoint["ema"] is None
    assert all(torch.equal(weights[key], checkpoint["model"][key]) for key in weights)
    weights, checkpoint = saved[0.5]
    assert checkpoint["ema"]["step"] == 6
    assert all(torch.equal(weights[key], checkpoint["ema"]["model"][key]) for key in weights)
    assert not all(torch.equal(weights[key], checkpoint["model"][key]) for key in weights)
    assert all(torch.equal(checkpoint["model"][key], saved[0.0][1]["model"][key]) for key in weights)  # same run


def test_extraction_targets_and_start_conditioning(pipeline_run, smoke_data, tmp_path):
    """The authors' posterior-mean target and start-inpainted batches train, are recorded in reward.pt, and change
    the batches' losses; an unknown target or share is refused before any step."""
    _, run_dir, _, _ = pipeline_run
    base, expert = (load_diffusion_model(run_dir / f"diffusion_{kind}") for kind in ("base", "expert"))
    data = load_segment_pair(base.info["sources"]["base"], base.info["sources"]["expert"], smoke_data.data_dir,
                             base.spec.horizon, base.spec.use_actions, normalizer=base.normalizer)

    def train(folder: str, **options):
        return train_reward(base, expert, data, tmp_path / folder, dim=8, dim_mults=(1, 2), n_steps=4,
                            batch_size=8, lr=1e-3, grad_clip=1.0, save_every=4, log_every=2,
                            generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), info={"seed": 0},
                            **options)

    losses = {}
    for target, share in (("score", 0.0), ("score", 0.5), ("posterior_mean", 0.0)):
        torch.manual_seed(0)
        reward, result = train(f"{target}-{share}", target=target, start_conditioned=share)
        assert math.isfinite(result.final_loss) and reward.target == target
        assert load_checkpoint(reward.path, kind="reward-model")["start_conditioned"] == share
        losses[target, share] = result.final_loss
    assert len(set(losses.values())) == 3
    with pytest.raises(UserError, match="extract.target"):
        train("bad", target="value")
    with pytest.raises(UserError, match="start_conditioned"):
        train("bad", start_conditioned=1.5)
    assert not (tmp_path / "bad").exists()


def test_select_guidance_script_chooses_on_selection_seeds_and_reports_held_out_ones(pipeline_run, smoke_data,
                                                                                     tmp_path):
    run_root, run_dir, _, _ = pipeline_run
    script = Path(__file__).resolve().parents[1] / "scripts" / "select_guidance.sh"
    env = {**os.environ, "ENV": "maze2d_umaze", "PRESET": "smoke", "SCALES": "0,30", "STOPGRADS": "0,1",
           "SELECT_SEEDS": "[0]", "EVAL_SEEDS": "[1,2]", "EPISODES": "2", "OUT": str(tmp_path / "select"),
           "HELDOUT_ROOT": str(tmp_path / "heldout"), "RELREWARD": " ".join(_cli_command())}
    proc = subprocess.run(["bash", str(script), f"data_dir={smoke_data.data_dir}", f"run_root={run_root}",
                           "device=cpu", "logger.mode=disabled", f"base_model={run_dir / 'diffusion_base'}",
                           f"expert_model={run_dir / 'diffusion_expert'}", f"reward_model={run_dir / 'extract'}"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    selection = json.loads((tmp_path / "select" / "select" / "selection.json").read_text())
    assert len(selection["all"]) == 4 and selection["metric"] == "guided/return_mean"
    assert sorted(key.split("=")[0] for key in selection["overrides"]) == ["steer.scale", "steer.t_stopgrad"]
    held_out = json.loads((tmp_path / "heldout" / "maze2d_umaze" / "metrics.json").read_text())
    chosen = yaml.safe_load((tmp_path / "heldout" / "maze2d_umaze" / "config.yaml").read_text())["steer"]
    picked = dict(override.split("=") for override in selection["overrides"])
    assert (chosen["scale"], chosen["t_stopgrad"]) == (float(picked["steer.scale"]), int(picked["steer.t_stopgrad"]))
    assert chosen["seeds"] == [1, 2] and held_out["guided_ranked/episodes"] == 4
    report = (tmp_path / "heldout" / "report.md").read_text()
    assert "guided − base" in report and "| 1 (eval 1/2) |" in report
    # a metric the runs do not have: the script stops after the selection, evaluating nothing
    proc = subprocess.run(["bash", str(script), f"data_dir={smoke_data.data_dir}", f"run_root={run_root}",
                           "device=cpu", "logger.mode=disabled", f"base_model={run_dir / 'diffusion_base'}",
                           f"expert_model={run_dir / 'diffusion_expert'}", f"reward_model={run_dir / 'extract'}"],
                          capture_output=True, text=True, timeout=600,
                          env={**env, "METRIC": "guided/expert_share", "HELDOUT_ROOT": str(tmp_path / "again")})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "No finished run" in proc.stderr and "nothing was evaluated on the held-out seeds" in proc.stderr
    assert "== 3." not in proc.stdout and not (tmp_path / "again").exists()


def test_reward_features_script_correlates_the_reward_with_each_observation(pipeline_run, smoke_data):
    _, run_dir, _, _ = pipeline_run
    script = Path(__file__).resolve().parents[1] / "scripts" / "reward_features.py"
    proc = subprocess.run([sys.executable, str(script), str(run_dir / "extract"), "--data-dir",
                           str(smoke_data.data_dir), "--segments", "8", "--t", "0", "2"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("segment return") == 4 and "obs[3] (mean)" in proc.stdout  # 2 datasets x 2 t


def test_classifier_reference_scores_a_classifier_as_the_reward_is_scored(pipeline_run, tmp_path):
    _, run_dir, _, _ = pipeline_run
    script = Path(__file__).resolve().parents[1] / "scripts" / "classifier_reference.py"
    out = tmp_path / "reference-5-steps"
    proc = subprocess.run([sys.executable, str(script), str(run_dir), "--steps", "5", "--threads", "1", "--out",
                           str(out)], capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for t in SMOKE_EVAL_T:
        assert 0.0 <= metrics[f"accuracy/t{t}"] <= 1.0 and -1.0 <= metrics[f"pearson/t{t}"] <= 1.0
    assert not (run_dir / "classifier_reference").exists()  # --out kept the default folder free
    assert "accuracy, classifier" in proc.stdout
    twin = subprocess.run([sys.executable, str(script), str(run_dir), "--steps", "5", "--threads", "1", "--out",
                           str(tmp_path / "twin")], capture_output=True, text=True, timeout=300)
    assert twin.returncode == 0, twin.stderr[-2000:]  # one seed, one thread count: the same numbers
    twin_metrics = json.loads((tmp_path / "twin" / "metrics.json").read_text())
    figures = {key for key, value in metrics.items() if isinstance(value, float)}
    assert len(figures) > 10 and {key: twin_metrics[key] for key in figures} == {key: metrics[key] for key in figures}
    before = (out / "metrics.json").read_bytes()
    again = subprocess.run([sys.executable, str(script), str(run_dir), "--steps", "6", "--threads", "1", "--out",
                            str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "reference made with {'steps': 5" in again.stderr, again.stderr[-2000:]
    assert (out / "metrics.json").read_bytes() == before  # a reference of other settings is not replaced


def test_other_evaluation_settings_evaluate_a_finished_extraction_again(smoke_data, tmp_path, cli):
    """A finished pipeline asked for another report time (or other fresh-episode bins) evaluates its reward again,
    so the headline is never a stale one, without training anything again; with the same settings it skips every
    stage."""
    run_root = tmp_path / "runs"
    common = [*smoke_data.overrides(run_root), "logger.mode=disabled"]
    cli(["pipeline", *common], tmp_path, check=True)
    run_dir = run_root / "pipeline" / "smoke-maze2d_umaze-r1c1-s0"
    reward, model = (run_dir / "extract" / "reward.pt").read_bytes(), (run_dir / "diffusion_base" / "model.pt")
    model_mtime = model.stat().st_mtime_ns
    first = json.loads((run_dir / "extract" / "metrics.json").read_text())
    assert first["report_t"] == 2 and first["evaluation"]["report_t"] == 2

    cli(["pipeline", *common, "extract.report_t=0"], tmp_path, check=True)
    again = json.loads((run_dir / "extract" / "metrics.json").read_text())
    assert again["report_t"] == 0 and again["evaluation"]["report_t"] == 0
    assert again["headline/pearson"] == again["pearson/t0"] != first["headline/pearson"]
    assert json.loads((run_dir / "metrics.json").read_text())["headline/pearson"] == again["headline/pearson"]
    assert (run_dir / "extract" / "reward.pt").read_bytes() == reward and model.stat().st_mtime_ns == model_mtime

    # The family's own evaluation settings count too: coarser position bins give fewer bins.
    coarse = [*common, "extract.report_t=0", "env.evaluate.bin_size=1.0"]
    cli(["pipeline", *coarse], tmp_path, check=True)
    binned = json.loads((run_dir / "extract" / "metrics.json").read_text())
    assert binned["evaluation"]["env.evaluate"]["bin_size"] == 1.0
    assert binned["binned_bins"] < again["binned_bins"] and binned["pearson/t0"] == again["pearson/t0"]
    assert (run_dir / "extract" / "reward.pt").read_bytes() == reward

    extract_mtime = (run_dir / "extract" / "metrics.json").stat().st_mtime_ns
    cli(["pipeline", *coarse], tmp_path, check=True)
    assert (run_dir / "extract" / "metrics.json").stat().st_mtime_ns == extract_mtime


def test_more_steps_extend_a_finished_pipeline_and_a_damaged_summary_is_written_again(smoke_data, tmp_path, cli):
    """`n_steps` is not part of a stage's record (a run may be extended), so the pipeline compares the steps a
    finished stage took with those asked for: more steps continue its training instead of reporting the shorter
    run. A stage summary that cannot be read is written again, not trusted or crashed on."""
    run_root = tmp_path / "runs"
    common = [*smoke_data.overrides(run_root), "logger.mode=disabled"]
    cli(["pipeline", *common], tmp_path, check=True)
    run_dir = run_root / "pipeline" / "smoke-maze2d_umaze-r1c1-s0"
    shorter = {stage: (run_dir / stage / "model.pt").read_bytes() for stage in ("diffusion_base", "diffusion_expert")}
    steps = json.loads((run_dir / "diffusion_base" / "metrics.json").read_text())["steps"]
    cli(["pipeline", *common, "train.n_steps=30", "extract.n_steps=30"], tmp_path, check=True)
    for stage in STAGE_DIRS:
        assert json.loads((run_dir / stage / "metrics.json").read_text())["steps"] == 30, stage
    for stage, model in shorter.items():  # continued from their checkpoints, not started afresh
        assert not list((run_dir / stage).glob("superseded-*")), stage
        # the shorter finished model is kept, sealed, readable as a run folder of its own
        kept = run_dir / stage / f"finished-{steps}-steps"
        assert (kept / "model.pt").read_bytes() == model and (run_dir / stage / "model.pt").read_bytes() != model
        assert json.loads((kept / "metrics.json").read_text())["steps"] == steps
        assert provenance.intact(kept) and load_diffusion_model(kept).info["kind"] == stage.split("_")[1]
        provenance.check_output(kept / "model.pt", "relreward train-diffusion")
    assert len(list((run_dir / "extract").glob("superseded-*"))) == 1  # made from the shorter models: stale

    (run_dir / "extract" / "metrics.json").write_text('{"steps": 30, "final_lo')
    proc = cli(["pipeline", *common, "train.n_steps=30", "extract.n_steps=30"], tmp_path, check=True)
    assert "Traceback" not in proc.stderr
    assert json.loads((run_dir / "extract" / "metrics.json").read_text())["steps"] == 30


@pytest.mark.parametrize(("stop", "code", "said"), [("SIGINT", 130, "interrupted"),
                                                     ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_an_interrupted_rerun_is_one_line_and_leaves_no_summary_of_the_earlier_run(smoke_data, tmp_path, cli, stop,
                                                                                   code, said):
    """Ctrl-C (or `kill`): one line that says how to resume, exit code 130 (143), no traceback; the folder's summary
    of an earlier attempt (other settings) is gone, so nothing reads the interrupted run as finished."""
    import signal
    import time

    run_root = tmp_path / "runs"
    common = [*smoke_data.overrides(run_root), "logger.mode=disabled"]
    cli(["pipeline", *common], tmp_path, check=True)
    run_dir = run_root / "pipeline" / "smoke-maze2d_umaze-r1c1-s0"
    # Ctrl-C as a terminal delivers it, whatever the test runner's own SIGINT: a runner started in the background by
    # a non-interactive shell ignores SIGINT, and its children would inherit that.
    proc = subprocess.Popen([*_cli_command(), "pipeline", *common, "train.lr=0.001", "train.n_steps=1000000"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list((run_dir / "diffusion_base").glob("superseded-*")):  # the stale model set aside: training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(getattr(signal, stop))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    assert f"relreward: {said}. Running the same command again keeps what is finished" in stderr
    assert not (run_dir / "metrics.json").exists()
    assert "lr: 0.001" in (run_dir / "config.yaml").read_text()


def test_extract_and_steer_eval_read_the_runs_of_their_name_from_the_pipeline_or_the_stand_alone_stages(
        pipeline_run, smoke_data, tmp_path, cli):
    """Not given model paths, extract and steer-eval read the runs of their config's name: a pipeline's when only it
    holds them (`relreward extract` after `relreward pipeline`), the stand-alone stages' when asked
    (``models_from``), the given ``pipeline_dir``'s; they refuse to guess when both hold them, and name the commands
    that make them when neither does."""
    name = "smoke-maze2d_umaze-r1c1-s0"
    run_root = tmp_path / "runs"
    common = [*smoke_data.overrides(run_root), "logger.mode=disabled"]

    def refused(proc, *said: str) -> None:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert all(part in proc.stderr for part in (*said, "Nothing was run")), proc.stderr[-3000:]

    def read(run_dir: Path, key: str) -> str:
        return provenance.recorded(run_dir)["inputs"][key]

    refused(cli(["extract", *common], tmp_path), f"no run of {name} holds them",
            "`relreward pipeline`, or `relreward train-diffusion kind=base`", "base_model=, expert_model=")
    refused(cli(["steer-eval", *common], tmp_path), "a base model, an expert model and a reward",
            "`relreward extract`", "reward_model=")
    assert not (run_root / "extract" / name / "reward.pt").exists()
    assert not (run_root / "steer-eval" / name / "metrics.json").exists()

    shutil.copytree(pipeline_run[1], run_root / "pipeline" / name)
    from_pipeline = pipeline_folders(run_root / "pipeline" / name)
    cli(["extract", *common], tmp_path, check=True)  # only the pipeline holds models of this name
    assert read(run_root / "extract" / name, "base_model") \
        == provenance.digest(from_pipeline["base_model"] / "model.pt")

    for kind in ("base", "expert"):  # stand-alone models unlike the pipeline's (fewer steps)
        cli(["train-diffusion", f"kind={kind}", *common, "train.n_steps=1"], tmp_path, check=True)
    stand_alone = stage_folders(run_root, name)
    assert provenance.digest(stand_alone["base_model"]) != provenance.digest(from_pipeline["base_model"])
    before = provenance.digest(run_root / "extract" / name / "reward.pt")
    refused(cli(["extract", *common], tmp_path), "both the stand-alone runs of", "and its pipeline run",
            "models_from=stages or models_from=pipeline")
    assert provenance.digest(run_root / "extract" / name / "reward.pt") == before
    cli(["extract", *common, "models_from=stages", "overwrite=true"], tmp_path, check=True)
    assert read(run_root / "extract" / name, "base_model") == provenance.digest(stand_alone["base_model"] / "model.pt")

    refused(cli(["steer-eval", *common, "steer.planners=[base]"], tmp_path), "both the stand-alone runs of")
    refused(cli(["steer-eval", *common, "steer.planners=[base]", "models_from=stages",
                 f"pipeline_dir={run_root / 'pipeline' / name}"], tmp_path), "pipeline_dir would not act")
    cli(["steer-eval", *common, "steer.planners=[base]", f"pipeline_dir={run_root / 'pipeline' / name}"], tmp_path,
        check=True)
    assert read(run_root / "steer-eval" / name, "base_model") \
        == provenance.digest(from_pipeline["base_model"] / "model.pt")
