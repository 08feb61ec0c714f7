"""``relreward <stage> [hydra overrides]``: dispatch to a stage, each with its own primary Hydra config.

Hydra's own flags pass through (``--multirun``, ``--cfg job``, ``--help``, ``hydra/launcher=slurm``).
The stages live in :mod:`relreward_cli.stages`; each exposes ``main(cfg) -> dict``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relreward_cli.config_schema import check_config
from relreward_cli.errors import ERROR_FILE, UserError
from relreward_cli.sweeps import (
    expose_launchers,
    job_config_problems,
    launcher_given,
    launcher_problem,
    shared_folder_problem,
)
from relreward_cli.tracking import RUN_OVERRIDES

STAGES: dict[str, str] = {
    "make-dataset": "Make the env's base and expert data (Maze2D, locomotion: generated offline, in Minari's format).",
    "train-diffusion": "Train a diffusion model (trajectory segments or images) on the base or expert data.",
    "extract": "Extract the relative reward from a base and an expert diffusion model; evaluate it.",
    "steer-eval": "Roll out the base, reward-guided / -ranked base and expert planners in the env; score them.",
    "pipeline": "make-dataset -> train-diffusion (base, expert) -> extract [-> steer-eval], in one command.",
    "report": "Summarize a sweep: `relreward report <sweep folder>` -> report.md (mean ± s.e.), plots.",
}

def packaged_config_dir() -> Path:
    """The Hydra configs that come with the package (the package ``relreward_cli.configs``).

    A wheel (``pip install <path or git URL>``) installs the repository's ``configs/`` as ``relreward_cli/configs/``,
    next to this module (pyproject.toml's package-dir). A source checkout or an editable install (``make install``)
    has no such folder: there the configs are the repository's ``configs/`` itself, read live, so that edits take
    effect without reinstalling.
    """
    package = Path(__file__).resolve().parent
    shipped = package / "configs"
    return shipped if shipped.is_dir() else package.parent / "configs"


# RELREWARD_CONFIG_DIR (a folder laid out like configs/) overrides the packaged configs.
CONFIG_DIR = Path(os.environ.get("RELREWARD_CONFIG_DIR") or packaged_config_dir())


def version() -> str:
    """The installed distribution's version (its metadata), or the source tree's where it is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("relreward")
    except PackageNotFoundError:
        from relreward_cli import __version__

        return __version__


def _usage() -> str:
    width = max(map(len, STAGES))
    lines = [f"  {name:<{width}}  {text}" for name, text in STAGES.items()]
    return ("usage: relreward <stage> [hydra overrides] [--multirun] [--cfg job] [--help]\n"
            "       relreward --version\n\nstages:\n"
            + "\n".join(lines)
            + "\n\nexample: relreward pipeline env=maze2d_medium seed=1\n"
            "`relreward <stage> --help` lists the stage's config groups and options.")


def _module_name(stage: str) -> str:
    return stage.replace("-", "_")


def holds_finished_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds the finished result of an earlier attempt, untouched: its summary and labels, and (for
    a stage's folder) its files as the stage sealed them. A pipeline removes its summary, and a stage unseals its
    folder, before they change anything."""
    from relreward_cli import provenance

    if not ((run_dir / "metrics.json").is_file() and (run_dir / RUN_OVERRIDES).is_file()):
        return False
    try:
        return provenance.intact(run_dir)
    except UserError:  # a damaged record
        return False


def _reason(err: UserError | OSError) -> str:
    """The paragraph that tells the user about a refusal or a failure of the machine."""
    return environment_error(err) if isinstance(err, OSError) else str(err)


def report_user_errors(stage_main: Callable) -> Callable:
    """Check the config (:func:`check_config`), then run the stage. A :class:`UserError` raised by either, or a
    failure of the machine (an :class:`OSError`: disk full, a path that is not a folder), becomes one paragraph on
    stderr and exit code 2; the message also goes to the run folder's ``error.txt`` where it can be written (removed
    when the run starts again), which ``relreward report`` shows for runs that did not finish, unless the folder
    still holds an earlier attempt's finished run as it was. A run that finishes keeps its command-line overrides
    as ``overrides.yaml`` (``RUN_OVERRIDES``), the labels ``relreward report`` gives it."""

    @functools.wraps(stage_main)
    def wrapper(cfg):
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        from relreward_cli import provenance

        # a job of the local launcher (Ctrl-C reaches the main thread only)
        local_job = "SUBMITIT_LOCAL_JOB_ID" in os.environ and threading.current_thread() is threading.main_thread()
        if local_job:  # its controller starts with Ctrl-C ignored: the job takes it back (hydra_plugins/...)
            signal.signal(signal.SIGINT, signal.default_int_handler)

        hydra_config = HydraConfig.get()
        run_dir = Path(hydra_config.runtime.output_dir)
        overrides = list(hydra_config.overrides.task)  # this command's, even if another one rewrites .hydra/
        error_file = run_dir / ERROR_FILE
        try:
            # Held, so that another command given this folder meanwhile is refused and writes nothing here.
            with provenance.held(run_dir):
                with contextlib.suppress(OSError):
                    error_file.unlink(missing_ok=True)
                try:
                    check_config(cfg, overrides, hydra_config.runtime.choices)
                    result = stage_main(cfg)
                except (UserError, OSError) as err:
                    # A refusal that left a finished run as it was is no failure of it; a read-only or full
                    # folder keeps no reason (stderr has it).
                    if not holds_finished_run(run_dir):
                        with contextlib.suppress(OSError):
                            error_file.write_text(f"{_reason(err)}\n")
                    raise
                with contextlib.suppress(OSError):  # the finished run's own labels, left alone by a later attempt
                    OmegaConf.save(OmegaConf.create(overrides), run_dir / RUN_OVERRIDES)
        except (UserError, OSError) as err:
            print(f"\nrelreward: error: {_reason(err)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            if not local_job:
                raise  # a run in this process: main() says it
            # else it would end the job's own log with a traceback through the job runner's frames; a second
            # Ctrl-C (the terminal's reaches the job, and the launcher passes its own on) must not raise again on the
            # way out
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print(f"\nrelreward: interrupted. {run_dir} keeps what is finished and its last checkpoints: launching "
                  "the sweep's command again resumes it.", file=sys.stderr)
            sys.exit(130)
        return result

    return wrapper


def _stage_main(module_name: str) -> Callable[[Any], Any]:
    """The stage module's ``main``, imported when the job runs, after its config has been checked: a config refused
    by the check does not wait for the stage's imports. Hydra names the job after the function's module, as it would
    the stage's own ``main``."""

    def stage_main(cfg: Any) -> Any:
        return importlib.import_module(module_name).main(cfg)

    stage_main.__module__ = module_name
    return stage_main


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``relreward`` console script."""
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"relreward {version()}")
        return 0
    stage = argv[0]
    if stage == "report":
        from relreward_cli.report import main as report_main

        return report_main(argv[1:])
    if stage not in STAGES:
        print(f"relreward: unknown stage {stage!r}; choose one of: {', '.join(STAGES)}.\n\n{_usage()}",
              file=sys.stderr)
        return 2
    if not (CONFIG_DIR / f"{_module_name(stage)}.yaml").is_file():
        fix = ("RELREWARD_CONFIG_DIR points there: point it at a folder laid out like the project's configs/, "
               "or unset it to use the configs that ship with the package." if os.environ.get("RELREWARD_CONFIG_DIR")
               else "The installed package should carry it: reinstall relreward (`pip install <path or git URL>`, "
               "or `make install` in a clone), or set RELREWARD_CONFIG_DIR to a configs/ folder.")
        print(f"relreward: no config directory with {_module_name(stage)}.yaml at {CONFIG_DIR}. {fix}",
              file=sys.stderr)
        return 2
    # Hydra's parser takes the overrides as one run of words, so `seed=0 --multirun seed=1` would be refused
    # as an unknown argument: --multirun goes first
    multirun = [arg for arg in argv[1:] if arg in ("-m", "--multirun")]
    argv = [stage, *multirun[:1], *(arg for arg in argv[1:] if arg not in ("-m", "--multirun"))]
    if multirun and (other := [arg for arg in argv[1:] if arg in ("-c", "--cfg", "-i", "--info", "-r", "--run")]):
        print(f"relreward: error: {multirun[0]} and {other[0]} cannot go together: {other[0]} shows one job's config "
              f"or Hydra's information and runs nothing. Drop {multirun[0]} (and give one value of each swept "
              f"setting) to see a job's config, or drop {other[0]} to launch the sweep.", file=sys.stderr)
        return 2
    problem = launcher_problem(argv[1:])
    if problem:
        print(f"relreward: error: {problem}", file=sys.stderr)
        return 2
    if launcher_given(argv[1:]) and not {"-m", "--multirun"} & set(argv[1:]):
        print("relreward: note: hydra/launcher=... only takes effect with --multirun (-m); this single run "
              "runs here, in this process.", file=sys.stderr)
    if {"-m", "--multirun"} & set(argv[1:]):
        expose_launchers()  # first: composing a job's config reads the launcher plugins' configs
        if problem := (shared_folder_problem(argv[1:], CONFIG_DIR)
                       or job_config_problems(_module_name(stage), argv[1:], CONFIG_DIR)):
            print(f"relreward: error: {problem}", file=sys.stderr)
            return 2
    sys.argv = [f"relreward {stage}", *argv[1:]]
    task = hydra.main(config_path=str(CONFIG_DIR), config_name=_module_name(stage), version_base=None)(
        report_user_errors(_stage_main(f"relreward_cli.stages.{_module_name(stage)}")))
    return run_reporting_failures(task, functools.partial(unknown_setting_problem, stage=stage, overrides=argv[1:]))


def environment_error(err: OSError, folders: str = "run_root= and data_dir=") -> str:
    """One paragraph for a failure of the machine rather than of the code: disk full, no permission, a path that
    is not a folder, a damaged file. `folders`: the options that choose where the command writes."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return (f"No space left on the device{where}. Free some space or point {folders} at another disk, then run "
                "the same command again: a training resumes from its last checkpoint.")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"Cannot write{where}: {err.strerror}. Point {folders} at a folder you can write to, or fix its "
                "permissions, then run the same command again.")
    in_the_way = ": a file stands where a folder is needed" if err.errno in (errno.EEXIST, errno.ENOTDIR) else ""
    return (f"{err.strerror or err}{where}{in_the_way}. Check the paths this command was given ({folders} and any "
            "model or data paths) and that the folders are on a disk that is mounted and not full.")


def _composed(stage: str, overrides: list[str]) -> Any:
    """The stage's config composed with ``overrides``, or None where it cannot be."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(str(CONFIG_DIR.resolve()), version_base=None):
            return compose(_module_name(stage), overrides)
    except Exception:  # noqa: BLE001 - only a hint depends on it
        return None


def unknown_setting_problem(err: Exception, stage: str, overrides: list[str]) -> str | None:
    """One paragraph for an override of a setting the config does not have (`trian.n_steps=5`), or None for other
    errors. Hydra refuses it while composing and suggests adding it with `+`, which would only add a key that
    nothing reads; this names the first part of the key that does not exist and the nearest settings there."""
    import difflib
    import re

    from omegaconf import DictConfig

    found = re.match(r"Could not override '([^']+)'", str(err))
    if not found or "not in struct" not in str(err.__cause__):
        return None
    key = found.group(1)
    given = next((arg for arg in overrides if arg.split("=", 1)[0] == key), key)
    others = [arg for arg in overrides if arg != given and not arg.startswith("-")]
    node = _composed(stage, others) or _composed(stage, [])  # a swept override cannot compose: then the defaults
    parts, where, near, missing = key.split("."), "", [], key
    for depth, part in enumerate(parts if node is not None else []):
        if not isinstance(node, DictConfig) or part not in node:
            where = ".".join(parts[:depth])
            names = list(node) if isinstance(node, DictConfig) else []
            near = difflib.get_close_matches(part, names, n=3, cutoff=0.6)
            missing = ".".join(parts[: depth + 1])
            break
        node = node[part]
    place = f"{where}'s settings" if where else "the top-level settings"
    hint = f" ({place} nearest to it: {', '.join(f'{where}.{n}'.lstrip('.') for n in near)})" if near else ""
    return (f"{given}: the config has no setting {missing}, so nothing would read it{hint}. Fix the name; "
            f"`relreward {stage} --cfg job` prints every setting. Nothing was run.")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, as Ctrl-C raises KeyboardInterrupt."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def run_reporting_failures(task: Callable[[], Any], explain: Callable[[Exception], str | None] = lambda err: None
                           ) -> int:
    """Run a Hydra task with one error boundary: the machine's failures (:class:`OSError`: disk, permissions,
    paths) and Hydra's configuration errors become one paragraph and exit code 2 (``explain``: our own paragraph
    for a Hydra error, or None to show Hydra's), an interrupt (Ctrl-C) one line and exit code 130, and an exit
    asked for inside (``sys.exit``) its code, returned; anything else is a bug and keeps its traceback."""
    from hydra.errors import HydraException

    # `kill` (or a scheduler's) ends a run as Ctrl-C does: one line on how to resume, not a silent exit. Only where
    # nothing else (a job runner) handles SIGTERM already.
    sigterm_handled = (threading.current_thread() is threading.main_thread()
                       and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if sigterm_handled:
        signal.signal(signal.SIGTERM, _raise_terminated)
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing, so that this boundary decides
    try:
        task()
    except HydraException as err:  # first: Hydra's missing-config error is also an OSError
        if explained := explain(err):
            print(f"relreward: error: {explained}", file=sys.stderr)
            return 2
        cause = f"\n{err.__cause__}" if err.__cause__ is not None and str(err.__cause__) not in str(err) else ""
        print(f"{err}{cause}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"relreward: error: {environment_error(err)}", file=sys.stderr)
        return 2
    except ValueError as err:  # Hydra's job log file that cannot be opened (a read-only disk) comes as a ValueError
        cause = err.__cause__ or err.__context__
        if not isinstance(cause, OSError):
            raise
        print(f"relreward: error: {environment_error(cause)}", file=sys.stderr)
        return 2
    except SystemExit as done:  # a stage's refusal (report_user_errors), a sweep's failure report, Hydra's --help
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    except KeyboardInterrupt as stop:
        how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        print(f"\nrelreward: {how}. Running the same command again keeps what is finished (datasets, stages) "
              "and resumes diffusion and reward training from their last checkpoints; an unfinished dataset is "
              "made again from the start.", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(stop, Terminated) else 130
    finally:
        if sigterm_handled:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
    return 0


if __name__ == "__main__":
    sys.exit(main())
