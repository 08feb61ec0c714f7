"""Hydra's submitit launchers (`hydra/launcher=slurm`, `hydra/launcher=local`) with failures told plainly.

The plugin's own launchers let a refused submission (an `sbatch` error: a partition, GPU or memory request the
cluster cannot meet) or a job that ended without a result reach the user as a Python traceback. These
subclasses launch exactly the same way and turn those two cases into one paragraph that says what to do:
a refused submission exits with code 2 before any job ran; failed jobs exit with code 1 once every job of the
sweep has ended, naming the failed jobs' log files.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher


def _job_logs(folder: Path) -> set[Path]:
    """The stderr logs of the jobs under a sweep's `.submitit` folder."""
    return set(folder.glob("*/*_log.err"))


def _failed_job_logs(folder: Path, earlier: set[Path]) -> list[Path]:
    """The logs (stderr, stdout) of the jobs under the sweep's `.submitit` folder that wrote no result, of this
    launch: not among the `earlier` attempts' logs (each job has a folder of its own, named by its job id)."""
    return [log for err in sorted(_job_logs(folder) - earlier)
            if not err.with_name(err.name.replace("_log.err", "_result.pkl")).exists()
            for log in (err, err.with_suffix(".out"))]


def _reasons(err_log: Path) -> list[str]:
    """The paragraphs a job printed as `relreward: error: ...`, with their indented continuation lines (the list
    of problems of a refused config)."""
    reasons: list[list[str]] = []
    for line in err_log.read_text(errors="replace").splitlines():
        if line.startswith("relreward: error:"):
            reasons.append([line])
        elif reasons and line.startswith("  ") and len(reasons[-1]) < 20:
            reasons[-1].append(line)
    return ["\n".join(reason) for reason in reasons]


class _PlainFailures:
    """`launch` of a submitit launcher, with submission refusals and failed jobs reported without a traceback."""

    params: dict
    _EXECUTOR: str

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        self._earlier_logs = _job_logs(self._submitit_root())
        try:
            return super().launch(job_overrides, initial_job_idx)  # type: ignore[misc]
        except FailedJobError as error:
            text = str(error).strip()
            if text.startswith("sbatch:"):  # the submission itself was refused: nothing ran
                asked = ", ".join(f"{key}={self.params.get(key)}" for key in
                                  ("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min"))
                print(f"relreward: error: SLURM refused the sweep's jobs: {text.splitlines()[-1]}. The launcher "
                      f"asked for {asked}; set what this cluster offers with hydra.launcher.<field>=... (GPUs "
                      "only with hydra.launcher.gpus_per_node=N; `sinfo -o '%P %c %m %G'` lists partitions, "
                      "CPUs, memory and GPUs per node). No job was started.", file=sys.stderr)
                sys.exit(2)
            self._report_failed_jobs(text)
        except UncompletedJobError as error:
            self._report_failed_jobs(str(error).strip())

    def _submitit_root(self) -> Path:
        """The `.submitit` folder that holds one folder per job (`submitit_folder` is `<it>/%j`)."""
        return Path(str(self.params["submitit_folder"])).parent

    def _report_failed_jobs(self, text: str) -> NoReturn:
        folder = self._submitit_root()
        logs = _failed_job_logs(folder, getattr(self, "_earlier_logs", set()))
        reasons = sorted({reason for path in logs if path.suffix == ".err" for reason in _reasons(path)})
        told = "".join(f"\n{reason}" for reason in reasons) or f"\n{text.splitlines()[0]}"
        shown = "\n  ".join(str(path) for path in logs) or str(folder)
        print(f"relreward: error: {len(logs) // 2 or 'a'} job(s) of the sweep ended without a result:{told}\n"
              f"Their logs:\n  {shown}\nFinished runs keep their results; launching the same command again "
              "skips them and resumes the others.", file=sys.stderr)
        sys.exit(1)


class PlainSlurmLauncher(_PlainFailures, SlurmLauncher):
    """`hydra/launcher=slurm`: one SLURM array job per sweep."""


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc; none where it cannot be read)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


class PlainLocalLauncher(_PlainFailures, LocalLauncher):
    """`hydra/launcher=local`: submitit's local executor, one process per job.

    A local job counts as done once its process has ended, and it writes its result to this machine's disk before
    that, so a job that ended without one (a refused config) will never have one: it is told at once, not after
    the 15 s that submitit waits for a result to appear on a slow shared filesystem.

    Ctrl-C (or `kill`) stops the sweep's jobs with it. Submitit's job controllers would outlive the launcher, and a
    Ctrl-C in the terminal, which reaches every process of the group, ended them with a traceback each; they start
    with Ctrl-C ignored instead, their jobs take it back (`relreward_cli.cli.report_user_errors`), and the
    launcher, interrupted, interrupts them. Each job then stops as an interrupted command does, and the same
    command resumes the sweep."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.local import local

        waited, start_controller = local.LocalJob._results_timeout_s, local.start_controller
        controllers = []

        def start_ignoring_interrupts(*args, **kwargs):
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the controller
            try:
                controllers.append(start_controller(*args, **kwargs))
                return controllers[-1]
            finally:
                signal.signal(signal.SIGINT, previous)

        local.LocalJob._results_timeout_s, local.start_controller = 0, start_ignoring_interrupts
        try:
            return super().launch(job_overrides, initial_job_idx)
        except KeyboardInterrupt:
            self._interrupt_jobs(controllers)
            raise
        finally:
            local.LocalJob._results_timeout_s, local.start_controller = waited, start_controller

    @staticmethod
    def _interrupt_jobs(controllers, wait_s: float = 30.0) -> None:
        """Send Ctrl-C to the jobs of the still running `controllers` (their child processes) and wait for the
        controllers to end, `wait_s` at most."""
        running = [process for process in controllers if process.poll() is None]
        for process in running:
            for job in _children(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(job, signal.SIGINT)
        deadline = time.monotonic() + wait_s
        while any(process.poll() is None for process in running) and time.monotonic() < deadline:
            time.sleep(0.1)
