"""Sweeps on a real SLURM scheduler: an array job per sweep, a job pre-empted by the scheduler (`scontrol
requeue`) that resumes from its checkpoint with the weights of an uninterrupted run and its W&B run id, a job
that reaches its time limit and is requeued, and a submission the cluster refuses.

These tests need a scheduler that answers (`sinfo`); where none does they are skipped with the reason. CI
starts a one-node cluster and sets RELREWARD_REQUIRE_SLURM=1, which turns that skip into a failure. The jobs
ask for 1 CPU each, no GPU, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
import warnings
from pathlib import Path

import pytest
import torch
from conftest import _cli_command

from relreward_cli import cli as relreward_cli

SWEEP_TIMEOUT_S = 240
FAST = ["logger.mode=disabled", "train.n_steps=6", "train.save_every=3", "train.log_every=3",
        "extract.n_steps=6", "extract.save_every=3", "extract.log_every=3"]


def _default_partition() -> str | None:
    """The default partition of a SLURM cluster that answers here, with a node that can run jobs; or None."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return None
    try:
        listing = subprocess.run(["sinfo", "-h", "-o", "%P %a %T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    usable = []
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == "up" and fields[2].rstrip("*~#") in ("idle", "mixed", "allocated"):
            usable.append(fields[0])
    chosen = ([name for name in usable if name.endswith("*")] or usable or [None])[0]
    return chosen.rstrip("*") if chosen else None


@pytest.fixture(scope="module")
def partition() -> str:
    found = _default_partition()
    if found is None:
        reason = ("no SLURM scheduler answers here (`sinfo` lists no usable partition, or sbatch is not on PATH); "
                  "these tests run on a machine with one (CI starts a one-node cluster)")
        if os.environ.get("RELREWARD_REQUIRE_SLURM") == "1":
            pytest.fail(f"RELREWARD_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    return found


@pytest.fixture
def job_name(partition):
    """A SLURM job name of this test's own; whatever of it is still queued at the end is cancelled. A scheduler
    that stopped answering meanwhile (another test run on the machine shut its cluster down) has nothing left
    to cancel, so a `scancel` that cannot reach it is reported, not made an error of the test."""
    name = f"relreward-test-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        subprocess.run(["scancel", "--name", name], capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as err:
        warnings.warn(f"could not cancel the jobs named {name}: {err}", stacklevel=1)


def _slurm(partition: str, job_name: str, run_root: Path) -> list[str]:
    """Overrides that send a sweep to the test cluster: 1 CPU and 1 GB per job, no GPU."""
    return ["hydra/launcher=slurm", f"hydra.launcher.partition={partition}", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", f"hydra.launcher.name={job_name}", f"run_root={run_root}", "device=cpu"]


def _jobs(job_name: str) -> dict[str, str]:
    """Job id -> state of the queued or running jobs called `job_name`."""
    listing = subprocess.run(["squeue", "-h", "-n", job_name, "-o", "%i %T"], capture_output=True, text=True,
                             timeout=15).stdout
    return dict(line.split() for line in listing.splitlines())


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout_s: float = 120):
    """Poll `condition()` until it returns something truthy; fail if `proc` ends first or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert proc.poll() is None, f"the sweep ended before {what}:\n{proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s} s"
        time.sleep(0.1)
    return found


def _launch(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*_cli_command(), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> str:
    """The launcher's output once it returned (bounded); fails unless it exited 0."""
    try:
        output, _ = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the sweep did not end within {SWEEP_TIMEOUT_S} s:\n{proc.communicate()[0][-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    return output


def _job_logs(sweep_dir: Path) -> str:
    return "".join(path.read_text() for path in sorted((sweep_dir / ".submitit").glob("*/*_log.*")))


def _weights(model_file: Path) -> dict[str, torch.Tensor]:
    """The weights a `model.pt` holds (the EMA denoiser's state dict)."""
    return torch.load(model_file, map_location="cpu", weights_only=False)["weights"]


def test_pipeline_sweep_runs_as_slurm_array_jobs_and_reports(partition, job_name, tmp_path, capsys):
    """`relreward pipeline --multirun experiment=smoke seed=0,1 hydra/launcher=slurm` on a CPU partition: two
    tasks of one array job, each a full pipeline with torch threads = the job's CPUs, then the report."""
    run_root = tmp_path / "runs"
    proc = _launch(["pipeline", "--multirun", "experiment=smoke", "seed=0,1", *_slurm(partition, job_name, run_root),
                    *FAST], tmp_path)
    output = _finish(proc)
    assert "Submitit 'slurm' sweep output dir" in output
    sweep_dir = run_root / "multirun" / "pipeline"
    runs = sorted(path for path in sweep_dir.iterdir() if path.is_dir() and not path.name.startswith("."))
    assert [[kv for kv in path.name.split(",") if kv.startswith("seed=")] for path in runs] == [["seed=0"], ["seed=1"]]
    for run in runs:
        assert -1.0 <= json.loads((run / "metrics.json").read_text())["pearson/best"] <= 1.0
    # One array job with two tasks (submitit folders <job id>_<task>), each run by SLURM with 1 CPU, so 1 thread
    # (torch's own default here would be every core).
    tasks = sorted(path.name for path in (sweep_dir / ".submitit").iterdir() if path.is_dir() and "_" in path.name)
    assert len(tasks) == 2 and len({name.split("_")[0] for name in tasks}) == 1, tasks
    logs = _job_logs(sweep_dir)
    assert logs.count("device cpu, 1 torch threads") >= 2 * 3, logs[-3000:]  # 3 torch stages per pipeline
    deadline = time.monotonic() + 60  # the tasks leave the queue once their processes have exited
    while _jobs(job_name):
        assert time.monotonic() < deadline, _jobs(job_name)
        time.sleep(0.5)

    assert relreward_cli.main(["report", str(sweep_dir), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| maze2d_umaze | 2 (0,1)" in report, report


def test_job_preempted_by_the_scheduler_resumes_with_the_weights_of_an_uninterrupted_run(
        partition, job_name, smoke_data, tmp_path):
    """`scontrol requeue` kills the running training job (SIGTERM to every process of it, the W&B service
    included) and queues it again; the job starts over, resumes from its last checkpoint, continues the same
    W&B run and ends with the same weights as a run that was never interrupted."""
    training = ["experiment=smoke", "seed=0", f"data_dir={smoke_data.data_dir}", "logger.mode=offline",
                "train.n_steps=3000", "train.save_every=100", "train.log_every=100"]  # ~25 s: longer than the kill
    # grace period (KillWait), so the requeue finds the job still training
    run_root = tmp_path / "runs"
    proc = _launch(["train-diffusion", "--multirun", *training, *_slurm(partition, job_name, run_root)], tmp_path)
    sweep_dir = run_root / "multirun" / "train-diffusion"
    try:
        run = _wait_for(lambda: next((p.parent for p in sweep_dir.glob("*/checkpoint.pt")), None),
                        "checkpoint", proc)
        (job_id,) = _wait_for(lambda: _jobs(job_name), "running job", proc)
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, timeout=15)
        _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)

    logs = _job_logs(sweep_dir)
    resumed = [line for line in logs.splitlines() if "Resuming diffusion[base]" in line]
    assert len(resumed) == 1, logs[-3000:]
    step = int(resumed[0].rsplit("at step", 1)[1].split()[0])
    assert 100 <= step < 3000 and step % 100 == 0, resumed
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3000
    # Both attempts logged to the one W&B run whose id the run folder keeps.
    run_id = (run / "wandb_id.txt").read_text().strip()
    offline_runs = sorted((run / "wandb").glob("offline-run-*"))
    assert offline_runs and {path.name.rsplit("-", 1)[1] for path in offline_runs} == {run_id}, offline_runs

    reference_root = tmp_path / "reference"
    relreward = subprocess.run([*_cli_command(), "train-diffusion", *training, f"run_root={reference_root}",
                                "logger.mode=disabled", "device=cpu", "threads=1"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
    assert relreward.returncode == 0, relreward.stderr[-3000:]
    (reference,) = reference_root.rglob("model.pt")
    resumed_weights, reference_weights = _weights(run / "model.pt"), _weights(reference)
    assert resumed_weights.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name


def test_job_reaching_its_time_limit_checkpoints_is_requeued_and_finishes(partition, job_name, smoke_data, tmp_path):
    """The job's time limit is cut to 1 minute while it trains (the scheduler then signals it, as it does
    `signal_delay_s` before any limit); submitit counts a timeout and requeues it; the test gives the queued
    job its 5 minutes back, and the second attempt resumes from the checkpoint and finishes. The scheduler checks
    time limits periodically, so the signal may come ~30 s after the cut: the training runs 10000 steps (~80 s on
    one quiet core) so that it is still running then."""
    run_root = tmp_path / "runs"
    args = ["train-diffusion", "--multirun", "experiment=smoke", "seed=0", f"data_dir={smoke_data.data_dir}",
            "train.n_steps=10000", "train.save_every=250", "train.log_every=250", "logger.mode=disabled",
            "hydra.launcher.timeout_min=5", "hydra.launcher.signal_delay_s=55", *_slurm(partition, job_name, run_root)]
    proc = _launch(args, tmp_path)
    sweep_dir = run_root / "multirun" / "train-diffusion"
    try:
        run = _wait_for(lambda: next((p.parent for p in sweep_dir.glob("*/checkpoint.pt")), None),
                        "checkpoint", proc)
        (job_id,) = _wait_for(lambda: _jobs(job_name), "running job", proc)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=1"], check=True, capture_output=True,
                       timeout=15)
        _wait_for(lambda: "Requeued job" in _job_logs(sweep_dir), "requeue after the time limit", proc, 100)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=5"], capture_output=True, timeout=15)
        _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    logs = _job_logs(sweep_dir)
    assert "this job is timed-out" in logs and "Requeued job" in logs, logs[-3000:]
    assert "Resuming diffusion[base]" in logs, logs[-3000:]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 10000


def test_a_submission_the_cluster_refuses_is_one_paragraph_and_exit_2(partition, job_name, tmp_path):
    """The test cluster has no GPU: asking for one is refused by sbatch, which reaches the user as what to set,
    not as a traceback, and no run folder is made."""
    proc = _launch(["pipeline", "--multirun", "experiment=smoke", "seed=0", "hydra.launcher.gpus_per_node=1",
                    *_slurm(partition, job_name, tmp_path / "runs"), *FAST], tmp_path)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, output[-3000:]
    assert "SLURM refused the sweep's jobs: sbatch: error:" in output and "gpus_per_node=1" in output, output
    assert "No job was started" in output and "Traceback" not in output
    made = [path.name for path in (tmp_path / "runs" / "multirun" / "pipeline").iterdir()]
    assert set(made) <= {".submitit", "multirun.yaml"}, made
