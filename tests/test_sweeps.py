"""Sweeps: a real --multirun through submitit's local executor, the report made from it, a pre-empted job
that submitit requeues and that resumes from its checkpoint, and bad sweeps refused before any job starts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _cli_command

from relreward_cli import cli as relreward_cli
from relreward_cli.errors import UserError
from relreward_cli.report import build_report, mean_sem, select_setting, write_report
from relreward_cli.sweeps import launcher_problem

FAST = ["logger.mode=disabled", "device=cpu", "train.n_steps=6", "train.save_every=3", "train.log_every=3",
        "extract.n_steps=6", "extract.save_every=3", "extract.log_every=3"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cli):
    """``relreward pipeline --multirun seed=0,1 hydra/launcher=local experiment=smoke`` (two smoke pipelines,
    each in its own submitit job). Both start with no dataset in their shared data_dir, as the jobs of a
    new sweep do: one generates it while the other waits for the lock, then finds it."""
    root = tmp_path_factory.mktemp("sweep")
    proc = cli(["pipeline", "--multirun", "seed=0,1", "hydra/launcher=local", "experiment=smoke",
                f"run_root={root / 'runs'}", *FAST], root, check=True)
    return root / "runs" / "multirun" / "pipeline", proc


def test_multirun_with_the_local_submitit_launcher_makes_one_run_folder_per_seed(sweep):
    sweep_dir, proc = sweep
    assert "Submitit 'local' sweep output dir" in proc.stderr + proc.stdout
    runs = sorted(p for p in sweep_dir.iterdir() if not p.name.startswith("."))
    runs = [p for p in runs if p.is_dir()]
    # Deterministic folder names (no timestamp), so a requeued job lands in its own folder again.
    assert [[kv for kv in p.name.split(",") if kv.startswith("seed=")] for p in runs] == [["seed=0"], ["seed=1"]]
    for seed, run in enumerate(runs):
        assert "run_root" not in run.name and "logger.mode" not in run.name
        metrics = json.loads((run / "metrics.json").read_text())
        assert -1.0 <= metrics["pearson/best"] <= 1.0
        assert (run / "extract" / "reward.pt").is_file() and (run / "diffusion_expert" / "model.pt").is_file()
        assert (run / "extract" / "plots" / "reward_maps.png").is_file()
        assert f"seed: {seed}" in (run / "config.yaml").read_text()
    # Each job ran in a submitit process of its own, with its logs under the sweep folder.
    logs = list((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2


def test_report_of_the_sweep(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    out = tmp_path / "report"
    assert relreward_cli.main(["report", str(sweep_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert text in printed
    for name in ("report_bars.png", "reward_maps_grid.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = build_report(sweep_dir)
    assert list(report.tasks) == ["maze2d_umaze"] and len(report.finished) == 2
    values = [json.loads((run.path / "metrics.json").read_text())["pearson/best"] for run in report.finished]
    mean, sem = mean_sem(values)
    row = next(line for line in text.splitlines() if line.startswith("| maze2d_umaze | 2 (0,1)"))
    assert f"{mean:.3f} ± {sem:.3f}" in row
    assert text.count("| task | seeds | reward corr., resting (report t) | reward corr., binned (report t) |") == 1
    assert "Over the tasks" not in text  # one task: nothing to summarize over tasks


def test_a_refused_rerun_leaves_a_finished_run_of_the_sweep_finished_and_labelled_as_it_was(sweep, tmp_path, cli):
    """A typo in a rerun of one job (refused before any work, "nothing was run") changes neither the run's results
    nor how the report lists and labels it, though Hydra rewrote the job's .hydra/overrides.yaml; a failure that
    changed what the folder held is still listed as failed."""
    import shutil

    sweep_dir, _ = sweep
    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns(".submitit"))
    before = build_report(copy)
    job = next(run.path for run in before.runs if run.config["seed"] == 0)
    assert (job / "overrides.yaml").is_file()
    proc = cli(["pipeline", "experiment=smoke", f"run_root={tmp_path / 'runs'}", *FAST, "seed=0", "train.lr=-1",
                f"hydra.run.dir='{job}'"], tmp_path)
    assert proc.returncode == 2 and "train.lr=-1" in proc.stderr and "train.lr=-1" in (job / ".hydra" /
                                                                                        "overrides.yaml").read_text()
    after = build_report(copy)
    assert not (job / "error.txt").exists() and len(after.finished) == 2
    assert list(after.tasks) == list(before.tasks) and [r.overrides for r in after.runs] == [r.overrides for r in
                                                                                           before.runs]
    (job / "metrics.json").unlink()  # as a pipeline does when it starts work; then it fails
    proc = cli(["pipeline", "experiment=smoke", f"run_root={tmp_path / 'runs'}", *FAST, "seed=0", "train.lr=-1",
                f"hydra.run.dir='{job}'"], tmp_path)
    assert (job / "error.txt").is_file() and len(build_report(copy).finished) == 1


def test_report_refuses_a_folder_without_runs(tmp_path, capsys):
    assert relreward_cli.main(["report", str(tmp_path)]) == 2
    assert "No run folders" in capsys.readouterr().err


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the submitit job through /proc")
def test_preempted_job_is_requeued_and_resumes_from_its_checkpoint(smoke_data, tmp_path):
    """Send the job the signal SLURM sends on pre-emption (submitit's USR2, here through the local
    executor, which requeues the same way): submitit checkpoints the launcher, requeues the task, and the
    requeued job finds its checkpoint in the same folder and continues from it."""
    run_root = tmp_path / "runs"
    args = ["train-diffusion", "--multirun", "seed=0", "hydra/launcher=local", "experiment=smoke",
            f"data_dir={smoke_data.data_dir}", f"run_root={run_root}", "logger.mode=disabled", "device=cpu",
            "train.n_steps=200", "train.save_every=10", "train.log_every=10"]
    proc = subprocess.Popen([*_cli_command(), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    sweep_dir = run_root / "multirun" / "train-diffusion"
    try:
        deadline = time.monotonic() + 120
        while not list(sweep_dir.glob("*/checkpoint.pt")):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.02)
        tasks = [pid for pid in _descendants(proc.pid) if "submitit.core._submit" in _cmdline(pid)]
        assert len(tasks) == 1, [_cmdline(pid) for pid in _descendants(proc.pid)]
        os.kill(tasks[0], signal.SIGUSR2)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output[-3000:]

    (run,) = [p.parent for p in sweep_dir.glob("*/checkpoint.pt")]
    assert run.name == "experiment=smoke,seed=0,train.log_every=10,train.n_steps=200,train.save_every=10"
    job_logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.*"))
    assert "this job is preempted" in job_logs and "Requeued job" in job_logs, job_logs[-3000:]
    resumed = [int(s) for s in re.findall(r"Resuming diffusion\[base\] from .* at step (\d+)", job_logs)]
    assert len(resumed) == 1 and resumed[0] >= 10 and resumed[0] % 10 == 0, job_logs[-3000:]

    # metrics.jsonl: the first attempt logged 10, 20, ...; the requeued one continues after the checkpoint
    # (no restart from zero), having dropped what the first attempt logged after it, and the run ends at the
    # configured step.
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    steps = [row["step"] for row in rows if "train/loss" in row]
    assert steps == list(range(10, 201, 10)), steps  # each step once: the rows after the checkpoint were dropped
    assert json.loads((run / "metrics.json").read_text())["steps"] == 200


def test_a_job_whose_config_cannot_work_refuses_the_sweep_before_any_job(cli, tmp_path):
    """A wall cell among a goal sweep's goals, and a typo in one swept value: every job's config is checked before
    the first job starts (with the default launcher, the good jobs ran first, then the sweep stopped at the bad one
    and skipped the jobs after it). Jobs that share a problem are told once; nothing is written."""
    proc = cli(["pipeline", "--multirun", "experiment=smoke", "logger.mode=disabled", "seed=0,1",
                "env.goal_cell=[1,1],[2,2]", "train.lr=0.001,1e-3x", f"run_root={tmp_path / 'runs'}",
                f"data_dir={tmp_path / 'data'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "jobs of the sweep cannot work, so no job was started" in proc.stderr, proc.stderr[-3000:]
    assert ("- 2 of 8 jobs (seed=0 env.goal_cell=[2,2] train.lr=0.001; seed=1 env.goal_cell=[2,2] train.lr=0.001): "
            "env.goal_cell=[2, 2]: Cell (2, 2) is not a free cell") in proc.stderr, proc.stderr[-3000:]
    assert "- 4 of 8 jobs (seed=0 env.goal_cell=[1,1] train.lr=1e-3x; " in proc.stderr
    assert "train.lr=1e-3x: must be a number" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_multirun_may_follow_overrides_and_overwrite_names_no_job_folder(cli, smoke_data, tmp_path):
    """`--multirun` after some overrides is the same sweep (Hydra's parser alone would refuse the words after it),
    and `overwrite=true` acts on the jobs' own folders instead of naming new ones beside them."""
    run_root = tmp_path / "runs"
    cli(["train-diffusion", *smoke_data.overrides(run_root), "kind=base", "--multirun", "seed=0", "overwrite=true",
         *(arg for arg in FAST if not arg.startswith("extract."))], tmp_path, check=True)
    (job,) = [path for path in (run_root / "multirun" / "train-diffusion").iterdir() if path.is_dir()]
    assert "seed=0" in job.name and "overwrite" not in job.name and (job / "model.pt").is_file()


def test_a_setting_the_stage_does_not_read_refuses_the_sweep_before_any_job(cli, tmp_path):
    proc = cli(["train-diffusion", "--multirun", "experiment=smoke", "logger.mode=disabled", "kind=base,expert",
                "extract.n_steps=5", f"run_root={tmp_path / 'runs'}", f"data_dir={tmp_path / 'data'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "- every job: train-diffusion does not read extract.n_steps (read by extract)" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()
    proc = cli(["train-diffusion", "--multirun", "experiment=smoke", "logger.mode=disabled",
                "env.steer_sampler=ddim,dpm", f"run_root={tmp_path / 'runs'}", f"data_dir={tmp_path / 'data'}"],
               tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "does not read env.steer_sampler (sets steer.sampler, read by steer-eval)" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("env=maze2d_umaze,maze2d_huge", "Could not find 'env/maze2d_huge'"),
    ("hydra/launcher=slurmm", "Could not find 'hydra/launcher/slurmm'"),
])
def test_override_naming_no_config_fails_before_any_job(cli, tmp_path, override, message):
    proc = cli(["pipeline", "--multirun", "seed=0,1", "hydra/launcher=local", override, "experiment=smoke",
                f"run_root={tmp_path / 'runs'}"], tmp_path)
    assert proc.returncode != 0
    assert message in proc.stderr and "Available options" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # Hydra checks every job's config before launching: no submitit job, no job folder (at most the
    # sweep's multirun.yaml, written first).
    made = [p.name for p in (tmp_path / "runs").rglob("*")]
    assert set(made) <= {"multirun", "pipeline", "multirun.yaml"}, made


def test_missing_launcher_plugin_fails_before_any_job(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_submitit_launcher", None)  # as if not installed
    for launcher in ("slurm", "local"):
        code = relreward_cli.main(["pipeline", "--multirun", "seed=0,1", f"hydra/launcher={launcher}",
                                   "experiment=smoke", f"run_root={tmp_path / 'runs'}"])
        err = capsys.readouterr().err
        assert code == 2
        assert f"hydra/launcher={launcher} needs the Hydra launcher plugin 'hydra-submitit-launcher'" in err
        assert "pip install hydra-submitit-launcher" in err and "No job was started" in err
    assert not (tmp_path / "runs").exists()
    monkeypatch.undo()
    assert launcher_problem(["hydra/launcher=local"]) is None  # installed here


def test_slurm_launcher_off_a_cluster_fails_before_any_job(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    code = relreward_cli.main(["pipeline", "--multirun", "seed=0,1", "hydra/launcher=slurm", "experiment=smoke",
                               f"run_root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "sbatch and srun are not on PATH" in err and "hydra/launcher=local" in err
    assert not (tmp_path / "runs").exists()


def test_slurm_launcher_config_reaches_sbatch(monkeypatch, tmp_path):
    """The slurm preset and command-line overrides end up in the sbatch script submitit writes."""
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    (tmp_path / "srun").write_text("#!/bin/sh\n")  # submitit's SLURM executor looks for srun on PATH
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    scripts = []

    def capture(executor, *args, **kwargs):
        scripts.append(executor._executor._make_submission_file_text("python -m submitit.core._submit", "u"))
        raise RuntimeError("captured")

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", capture)
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                 "+hydra.launcher.additional_parameters.mail-type=END", f"run_root={tmp_path / 'runs'}",
                 "seed=0"]
    with initialize_config_dir(str(relreward_cli.CONFIG_DIR), version_base=None):
        for extra in ([], ["hydra.launcher.gpus_per_node=2"]):
            cfg = compose("pipeline", overrides=overrides + extra, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            assert "now" not in str(cfg.hydra.sweep)  # deterministic sweep folder
            launcher = instantiate(cfg.hydra.launcher)
            launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
            with pytest.raises(RuntimeError, match="captured"):
                launcher.launch([["seed=0"], ["seed=1"]], initial_job_idx=0)
    default, with_gpu = scripts
    for line in ("#SBATCH --partition=gpu", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=16GB", "#SBATCH --time=90", "#SBATCH --signal=USR2@180",
                 "#SBATCH --job-name=relreward-pipeline", "#SBATCH --mail-type=END"):
        assert line in default and line in with_gpu, default
    assert f"{tmp_path / 'runs'}/multirun/pipeline/.submitit/%j" in default
    # GPUs only when asked for: a CPU partition takes the default script
    assert "gpu" not in default.replace("--partition=gpu", "") and "#SBATCH --gpus-per-node=2" in with_gpu
    assert launcher.params["max_num_timeout"] == 10


def test_report_groups_steering_scores_by_task_and_lists_unfinished_runs(tmp_path):
    """Locomotion-style runs (steer-eval scores), a swept guidance scale, one run still going."""
    import yaml

    scores = {("hopper", "0.1"): [40.0, 50.0, 60.0], ("hopper", "0.3"): [70.0, 80.0], ("walker2d", "0.1"): [20.0]}
    for (env, scale), values in scores.items():
        for seed, value in enumerate(values):
            run = tmp_path / f"env={env},seed={seed},steer.scale={scale}"
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "overrides.yaml").write_text(
                yaml.safe_dump([f"seed={seed}", f"env={env}", f"steer.scale={scale}", "logger.mode=offline"]))
            (run / "config.yaml").write_text(yaml.safe_dump({"env": {"name": env}, "seed": seed}))
            (run / "metrics.json").write_text(json.dumps(
                {"base/score_mean": 30.0, "guided/score_mean": value, "expert/score_mean": 100.0 + seed,
                 "guided/vs_base_score_mean": value - 30.0, "guided/vs_base_score_sem": 2.0}))
    running = tmp_path / "env=walker2d,seed=1,steer.scale=0.1"
    (running / ".hydra").mkdir(parents=True)
    (running / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": {"name": "walker2d"}, "seed": 1}))
    (running / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=1", "env=walker2d", "steer.scale=0.1"]))

    report = build_report(tmp_path)
    assert list(report.tasks) == ["hopper (steer.scale=0.1)", "hopper (steer.scale=0.3)", "walker2d (steer.scale=0.1)"]
    assert [title for title, _, _ in report.columns] == ["base score", "guided score", "expert score",
                                                          "guided − base"]
    written = write_report(tmp_path)
    text = written["markdown"]
    assert ("| hopper (steer.scale=0.1) | 3 (0,1,2) | 30.000 ± 0.000 | 50.000 ± 5.774 | 101.000 ± 0.577 "
            "| 20.000 ± 5.774 |") in text
    # one run: its own s.e. over (paired) episodes where it has one
    assert "| walker2d (steer.scale=0.1) | 1 (0) | 30.000 | 20.000 | 100.000 | -10.000 ± 2.000 |" in text
    failed = tmp_path / "env=hopper,seed=3,steer.scale=0.3"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": {"name": "hopper"}, "seed": 3}))
    (failed / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=3", "env=hopper", "steer.scale=0.3"]))
    (failed / "error.txt").write_text("Minari dataset 'x' is not in the Minari root /data.\n")
    text = write_report(tmp_path)["markdown"]
    assert_valid_markdown_tables(text)
    per_run, left_out = text.split("Per run:")[1].split("Left out:")
    assert "env=walker2d,seed=1," not in per_run and "env=hopper,seed=3," not in per_run  # listed apart
    assert "2 run(s) without metrics.json" in left_out
    assert "| walker2d (steer.scale=0.1) | 1 | running, killed or failed without a message |" in left_out
    assert "| hopper (steer.scale=0.3) | 3 | failed: Minari dataset 'x' is not in the Minari root /data. |" in left_out
    assert written["bars"].is_file() and written["heatmaps"] is None  # no reward maps in these runs
    selection = select_setting(report, "guided/score_mean")
    assert selection["task"] == "hopper (steer.scale=0.3)" and selection["value"] == 75.0
    assert selection["overrides"] == ["steer.scale=0.3"]  # the swept setting only, never the seed or the logger
    with pytest.raises(UserError, match="ranked/return_mean"):
        select_setting(report, "ranked/return_mean")


def test_report_shows_a_run_whose_last_attempt_failed_as_failed_and_skips_unreadable_results(tmp_path, caplog):
    """A refused rerun leaves an `error.txt` beside the results of an earlier attempt, under the refused command's
    labels: the run is listed as failed, not as finished with the earlier numbers. A `metrics.json` that holds no
    mapping is not a result."""
    import yaml

    for seed, metrics in ((0, {"guided/score_mean": 50.0}), (1, {"guided/score_mean": 60.0}), (2, []), (3, None)):
        run = tmp_path / f"seed={seed}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
        (run / "config.yaml").write_text(yaml.safe_dump({"env": {"name": "hopper"}, "seed": seed}))
        (run / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "seed=1" / "error.txt").write_text("The run folder holds a run made from something else.\n")
    report = build_report(tmp_path)
    assert [run.config["seed"] for run in report.finished] == [0]
    states = {run.path.name: run.state for run in report.runs}
    assert states["seed=1"] == "failed: The run folder holds a run made from something else."
    assert states["seed=2"] == states["seed=3"] == "running, killed or failed without a message"
    unreadable = [record.getMessage() for record in caplog.records if "cannot be read" in record.getMessage()]
    assert [message.split("/")[-1].split(" ")[0] for message in unreadable] == ["seed=2,", "seed=3,"]


def test_report_counts_runs_without_a_value_and_writes_only_its_own_files(tmp_path, capsys):
    """A run whose metric is NaN is counted in the cell (n=1 of 2) instead of silently averaging fewer seeds; a
    refused `--select` writes nothing; an output folder that cannot be written is one paragraph; a report without
    `--select` leaves no selection.json of an earlier one."""
    import yaml

    from relreward_cli.report import main as report_main

    sweep = tmp_path / "sweep"
    for seed, value in ((0, 0.5), (1, float("nan"))):
        run = sweep / f"seed={seed}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}"]))
        (run / "config.yaml").write_text(yaml.safe_dump({"env": {"name": "maze2d_umaze"}, "seed": seed}))
        (run / "metrics.json").write_text(json.dumps({"headline/pearson": value, "headline/accuracy": float("nan")}))
    out = tmp_path / "out"
    assert report_main([str(sweep), "--out", str(out), "--select", "headline/pearson"]) == 0
    assert "0.500 (n=1 of 2)" in (out / "report.md").read_text() and (out / "selection.json").is_file()
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()
    assert report_main([str(sweep), "--out", str(out), "--select", "headline/pearsn"]) == 2
    assert "has the metric 'headline/pearsn'" in (err := capsys.readouterr().err) and \
        "the nearest are headline/pearson" in err
    assert report_main([str(sweep), "--out", str(out), "--select", "headline/accuracy"]) == 2
    assert "Every finished run under" in (err := capsys.readouterr().err) and "as NaN" in err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert report_main([str(sweep), "--out", str(out)]) == 0 and not (out / "selection.json").exists()
    (tmp_path / "a-file").write_text("")
    capsys.readouterr()
    assert report_main([str(sweep), "--out", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert "relreward: error: Not a directory" in err and "--out" in err and "run_root" not in err


def assert_valid_markdown_tables(text: str) -> None:
    """Every table: a header, a separator of as many cells, rows of as many cells."""
    blocks, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    assert blocks
    for table in blocks:
        cells = [len(line.replace("\\|", "").strip("|").split("|")) for line in table]
        assert len(table) >= 2 and {cell.strip() for cell in table[1].strip("|").split("|")} == {"---"}, table
        assert len(set(cells)) == 1, table


def test_report_of_a_sweep_whose_runs_all_failed_is_valid_markdown(tmp_path):
    import yaml

    run = tmp_path / "seed=0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"env": {"name": "maze2d_umaze"}, "seed": 0}))
    (run / "extract").mkdir()
    (run / "extract" / "error.txt").write_text("The base model was trained on another dataset.\n")
    text = write_report(tmp_path)["markdown"]
    assert_valid_markdown_tables(text)
    assert "0 finished run(s) of 1" in text and "failed: The base model was trained on another dataset." in text


@pytest.mark.parametrize(("threads", "slurm_cpus", "expected"), [(None, "3", 3), (2, "3", 2), (None, None, None)])
def test_threads_follow_the_slurm_jobs_cpus_unless_set(monkeypatch, threads, slurm_cpus, expected):
    """Inside a SLURM job `threads=null` means the job's CPUs (not torch's default of every core of the node);
    an explicit `threads` wins; outside a job torch's default stays."""
    import torch
    from omegaconf import OmegaConf

    from relreward_cli.stages.common import apply_threads

    before = torch.get_num_threads()
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    if slurm_cpus:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm_cpus)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        in_effect = apply_threads(OmegaConf.create({"threads": threads}))
        assert in_effect == (expected or before) == torch.get_num_threads()
        assert os.environ["OMP_NUM_THREADS"] == str(expected or 1)
    finally:
        torch.set_num_threads(before)


def test_a_job_failing_inside_the_sweep_is_told_with_its_reason_and_log(cli, tmp_path):
    """A bad input found inside a job (here: no dataset where data_dir points) ends the launcher with code 1,
    the job's own one-paragraph reason and the path of its log, not a traceback."""
    proc = cli(["train-diffusion", "--multirun", "seed=0", "hydra/launcher=local", "experiment=smoke",
                f"run_root={tmp_path / 'runs'}", f"data_dir={tmp_path / 'no-data'}", "logger.mode=disabled"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 job(s) of the sweep ended without a result:" in proc.stderr
    assert re.search(r"relreward: error: Minari dataset 'relreward/pointmaze-umaze/[\w-]+-v0' is not in the "
                     r"Minari root", proc.stderr) and "_0_log.err" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # The run folder keeps the reason, so the sweep's report lists the run as failed, with it.
    sweep_dir = tmp_path / "runs" / "multirun" / "train-diffusion"
    (error,) = sweep_dir.glob("*/error.txt")
    reason = error.read_text().strip()
    assert reason.startswith("Minari dataset 'relreward/pointmaze-umaze/") and "is not in the Minari root" in reason
    assert not list(sweep_dir.glob("*/model.pt"))
    assert f"| failed: {reason[:60]}" in write_report(sweep_dir)["markdown"]
    # Launched again: only this attempt's logs are listed, not the earlier attempt's too, even when that attempt
    # ended a moment before (told apart by time, they were listed within a second of it)
    for log in sweep_dir.glob(".submitit/*/*_log.*"):
        os.utime(log)
    again = cli(["train-diffusion", "--multirun", "seed=0", "hydra/launcher=local", "experiment=smoke",
                 f"run_root={tmp_path / 'runs'}", f"data_dir={tmp_path / 'no-data'}", "logger.mode=disabled"], tmp_path)
    assert again.returncode == 1 and again.stderr.count("_log.err") == 1, again.stderr[-3000:]


@pytest.mark.parametrize(("sweep", "said"), [
    (["base_model=/runs/a,/runs/b"], "base_model is left out of the job folders' names"),
    (["seed=0,1,0"], "the sweep lists seed=0 more than once"),
])
def test_a_sweep_whose_jobs_would_share_a_run_folder_is_refused_before_any_job(cli, tmp_path, sweep, said):
    proc = cli(["extract", "--multirun", *sweep, "hydra/launcher=local", "experiment=smoke",
                f"run_root={tmp_path / 'runs'}", "logger.mode=disabled"], tmp_path)
    assert proc.returncode == 2 and said in proc.stderr and "No job was started" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


def test_report_of_a_goal_sweep_gives_mean_and_worst_goal_and_one_figure_of_every_goal(tmp_path):
    import numpy as np
    import yaml

    from relreward_cli.envs.maze import MazeGeometry

    geometry = MazeGeometry.from_name("umaze")
    values = {"[1,1]": [0.9, 0.8], "[3,1]": [0.6], "[1,3]": [0.7]}
    for goal, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            run = tmp_path / f"env.goal_cell={goal},env=maze2d_umaze,seed={seed}"
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "overrides.yaml").write_text(
                yaml.safe_dump([f"env.goal_cell={goal}", "env=maze2d_umaze", f"seed={seed}"]))
            (run / "config.yaml").write_text(yaml.safe_dump({"env": {"name": "maze2d_umaze"}, "seed": seed}))
            (run / "metrics.json").write_text(json.dumps({"headline/pearson": value, "headline/binned_pearson": 0.9,
                                                          "headline/accuracy": 0.8}))
            plots = run / "extract" / "plots"
            plots.mkdir(parents=True)
            xs = ys = np.linspace(-2.4, 2.4, 20)
            maps = np.random.default_rng(seed).normal(size=(2, 20, 20))
            np.savez_compressed(plots / "reward_maps.npz", maze="umaze", goal_xy=geometry.cell_to_xy(np.array(
                yaml.safe_load(goal))), t_values=[0, 10], xs=xs, ys=ys, learned=maps, mask=np.ones((20, 20), bool),
                binned_xs=xs, binned_ys=ys, binned_learned=maps, binned_mask=np.ones((20, 20), bool), report_t=10)
    written = write_report(tmp_path)
    text = written["markdown"]
    assert_valid_markdown_tables(text)
    over = text.split("Over the tasks")[1].split("Per run:")[0]
    # task means 0.85, 0.6, 0.7: mean 0.717, s.e. 0.073, worst 0.6
    assert "| maze2d_umaze | 3 | 0.717 ± 0.073, worst 0.600 |" in over
    assert written["goals"].is_file() and "reward_maps_by_task.png" in text


def test_report_finds_runs_by_their_config_and_no_deeper_than_run_folders_lie(tmp_path):
    """Another program's config.yaml is no run (the search goes on below it), and the search stops
    MAX_RUN_DEPTH folders down, so that a report of a home folder or / ends."""
    import yaml

    from relreward_cli.report import MAX_RUN_DEPTH, find_runs

    def run_at(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"env": {"name": "maze2d_umaze"}, "seed": 0}))

    (tmp_path / "tool").mkdir()
    (tmp_path / "tool" / "config.yaml").write_text("verbose: true\n")
    run_at(tmp_path / "tool" / "runs" / "pipeline" / "a")
    run_at(tmp_path.joinpath(*(["deep"] * MAX_RUN_DEPTH), "b"))
    assert [run.path for run in find_runs(tmp_path)] == [tmp_path / "tool" / "runs" / "pipeline" / "a"]


def test_report_keeps_stages_apart_shows_image_steering_and_reads_each_runs_own_map(tmp_path):
    """A stand-alone extract beside the pipeline it reads is another task, not a second seed; the digits' steering
    (expert share) has columns; a run's reward map is its own file before the path its metrics recorded (a copied
    sweep would otherwise show the original's maps)."""
    import yaml

    from relreward_cli.report import Run

    def run_at(folder: Path, stage: str, metrics: dict) -> None:
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"env": {"name": "digits"}, "seed": 0, "stage": stage}))
        (folder / "metrics.json").write_text(json.dumps(metrics))

    run_at(tmp_path / "pipeline" / "a", "pipeline", {"headline/auroc": 0.9, "base/expert_share": 0.2,
                                                     "guided/expert_share": 0.5, "guided/expert_share_sem": 0.05})
    run_at(tmp_path / "extract" / "a", "extract", {"headline/auroc": 0.8})
    report = build_report(tmp_path)
    assert sorted(report.tasks) == ["digits (extract)", "digits (pipeline)"]
    text = write_report(tmp_path)["markdown"]
    assert "| base expert share | guided expert share |" in text
    assert "| digits (pipeline) | 1 (0) | 0.900 | 0.200 | 0.500 ± 0.050 |" in text, text

    own = tmp_path / "copy" / "plots" / "reward_maps.png"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"own")
    elsewhere = tmp_path / "original" / "reward_maps.png"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(b"original")
    copied = Run(tmp_path / "copy", {}, {"heatmap": str(elsewhere)})
    assert copied.heatmap() == own
    own.unlink()
    assert copied.heatmap() == elsewhere


@pytest.mark.parametrize(("whom", "stop", "code"), [("group", "SIGINT", 130), ("launcher", "SIGTERM", 143)])
def test_stopping_a_local_sweep_stops_its_jobs_without_a_traceback(tmp_path, whom, stop, code):
    """Ctrl-C in the terminal (SIGINT to the whole process group) or `kill` of the launcher: one line, its exit
    code, no traceback from submitit's job controllers, and no job left running (they outlived the launcher)."""
    sweep_dir = tmp_path / "runs" / "multirun" / "pipeline"
    proc = subprocess.Popen([*_cli_command(), "pipeline", "--multirun", "seed=0", "hydra/launcher=local",
                             "experiment=smoke", f"run_root={tmp_path / 'runs'}", "logger.mode=disabled", "threads=1",
                             "train.n_steps=1000000"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def jobs_running() -> list[str]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "submitit" in text and str(sweep_dir) in text:
                found.append(text)
        return found

    deadline = time.monotonic() + 180
    while not list(sweep_dir.glob("*/diffusion_base/metrics.jsonl")):  # the job is training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    assert jobs_running()
    if whom == "group":
        os.killpg(proc.pid, getattr(signal, stop))
    else:
        proc.send_signal(getattr(signal, stop))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in stderr, stderr[-3000:]
    assert "Running the same command again keeps what is finished" in stderr
    job_logs = {log.read_text() for log in sweep_dir.glob(".submitit/*/*_log.err")}
    assert job_logs and not any("Traceback" in text for text in job_logs), job_logs
    deadline = time.monotonic() + 30
    while jobs_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not jobs_running()


def test_select_names_the_tasks_that_tie_and_refuses_an_empty_metric(tmp_path, capsys):
    import yaml

    for scale, seed in (("0", 0), ("0.5", 0), ("1", 0)):
        run = tmp_path / f"steer.scale={scale}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"steer.scale={scale}"]))
        (run / "config.yaml").write_text(yaml.safe_dump({"env": {"name": "hopper"}, "seed": seed}))
        (run / "metrics.json").write_text(json.dumps({"guided/return_mean": 1.0 if scale != "0.5" else 0.5}))
    assert relreward_cli.main(["report", str(tmp_path), "--select", "guided/return_mean"]) == 0
    err = capsys.readouterr().err
    assert "hopper (steer.scale=1) tie(s) with hopper (steer.scale=0) at 1.000" in err, err
    assert relreward_cli.main(["report", str(tmp_path), "--select", ""]) == 2
    assert "has the metric ''" in capsys.readouterr().err
