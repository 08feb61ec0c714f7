"""What is checked before a ``--multirun`` sweep starts any job: that its launcher can run here, that no two jobs
would share a run folder, and that every job's config can work. A problem found here stops the whole sweep with one
paragraph before anything is submitted or written."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

from relreward_cli.errors import UserError

# Launcher choices (hydra/launcher=<name>) -> the plugin module that provides them and its pip package.
LAUNCHER_PLUGINS: dict[str, tuple[tuple[str, ...], str]] = {
    name: (("hydra_plugins.hydra_submitit_launcher", "submitit"), "hydra-submitit-launcher")
    for name in ("slurm", "local", "submitit_slurm", "submitit_local")
} | {
    "joblib": (("hydra_plugins.hydra_joblib_launcher",), "hydra-joblib-launcher"),
    "ray": (("hydra_plugins.hydra_ray_launcher",), "hydra-ray-launcher"),
    "ray_aws": (("hydra_plugins.hydra_ray_launcher",), "hydra-ray-launcher"),
    "rq": (("hydra_plugins.hydra_rq_launcher",), "hydra-rq-launcher"),
}


def expose_launchers() -> None:
    """Let Hydra find relreward's launchers (``hydra/launcher=slurm`` / ``local``) however relreward was installed.

    Hydra takes launcher classes only from the modules that ``pkgutil`` lists on the ``hydra_plugins`` namespace's
    path. A wheel puts ``hydra_plugins/relreward_launchers`` on that path; an editable install (``make install``)
    imports it through an import hook instead, which such a listing does not see, so its folder is added to the
    namespace's path here (once; nothing changes when it is there already).
    """
    import hydra_plugins
    import hydra_plugins.relreward_launchers as launchers

    folder = str(Path(launchers.__file__).resolve().parent.parent)
    if folder not in [str(Path(entry).resolve()) for entry in hydra_plugins.__path__]:
        hydra_plugins.__path__.append(folder)


def shared_folder_problem(overrides: list[str], config_dir: Path) -> str | None:
    """Why two jobs of a ``--multirun`` sweep would write into one run folder, or None.

    A job's folder is named by its overrides, leaving out the keys that ``hydra.job.config.override_dirname.
    exclude_keys`` names in ``base.yaml`` (paths, and settings that do not change a result). A sweep over one of
    those, or a value listed twice, would give two jobs one folder: one would resume or overwrite the other's
    run. Checked before any job starts; Hydra reports malformed overrides itself.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        parsed = OverridesParser.create().parse_overrides([arg for arg in overrides if not arg.startswith("-")])
    except Exception:  # noqa: BLE001 - Hydra says what is malformed when it parses them itself
        return None
    unnamed = set(OmegaConf.load(config_dir / "base.yaml").hydra.job.config.override_dirname.exclude_keys)
    for override in parsed:
        if not override.is_sweep_override():
            continue
        key, values = override.get_key_element().lstrip("+~"), list(override.sweep_string_iterator())
        if key in unnamed:
            return (f"the sweep runs {key}={','.join(values)}, but {key} is left out of the job folders' names "
                    "(it is a path or does not change a result), so every job would write into one run folder. "
                    f"Launch one sweep per {key}, each with a run_root= of its own. No job was started.")
        if len(set(values)) < len(values):
            repeated = sorted({value for value in values if values.count(value) > 1})
            return (f"the sweep lists {key}={','.join(repeated)} more than once; two jobs of one setting would "
                    "write into one run folder. List each value once. No job was started.")
    return None


def launcher_problem(overrides: list[str]) -> str | None:
    """Why the launcher chosen by ``hydra/launcher=<name>`` in ``overrides`` cannot run, or None.

    Checked before Hydra starts, so a sweep whose launcher plugin is not installed fails before any job
    is composed or submitted, with the pip command that fixes it (Hydra's own message would only say that
    some config ``hydra/launcher/submitit_slurm`` was not found).
    """
    choices = [arg.split("=", 1)[1] for arg in overrides if arg.lstrip("+~").startswith("hydra/launcher=")]
    if not choices or choices[-1] not in LAUNCHER_PLUGINS:
        return None
    name = choices[-1]
    modules, package = LAUNCHER_PLUGINS[name]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            return (f"hydra/launcher={name} needs the Hydra launcher plugin '{package}', which is not "
                    f"installed in this Python ({sys.executable}): importing {module} failed ({err}). "
                    f"Install it with `pip install {package}` (it is a dependency of relreward, so "
                    "`pip install -e .` in the project does it too), then launch the sweep again. No job "
                    "was started.")
    if name in ("slurm", "submitit_slurm"):
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            return (f"hydra/launcher={name} submits the jobs with SLURM, but {' and '.join(missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} not on PATH here: launch the sweep from a "
                    "login node of the cluster, or run it on this machine with hydra/launcher=local. No job "
                    "was started.")
    return None


def launcher_given(overrides: list[str]) -> bool:
    return any(arg.lstrip("+~").startswith("hydra/launcher=") for arg in overrides)


MANY_JOBS = 100
"""A sweep of this many jobs or more says that its configs are being checked (a pause of 10 s or more)."""


def job_config_problems(config_name: str, overrides: list[str], config_dir: Path) -> str | None:
    """Why some jobs of a ``--multirun`` sweep could not run, or None: every job's config (each combination of the
    swept values, as Hydra's basic sweeper expands them) is composed here and checked as its stage would check it
    first (the typed sections, then the environment family's own checks), so that a bad value in the last job of a
    long sweep refuses the sweep before the first job starts, instead of after it finished (or, with the default
    launcher, stopping the jobs after it). A fraction of a second a job. Problems that depend on the run folders (a
    run made from other settings) are still found by the jobs themselves; Hydra reports malformed overrides and
    missing config groups itself."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    from relreward_cli import families
    from relreward_cli.config_schema import check_config

    if any(arg.startswith("-") and arg not in ("-m", "--multirun") for arg in overrides):
        return None  # --cfg, --config-name, ...: Hydra's flags change what is composed, or only print
    try:
        parsed = OverridesParser.create().parse_overrides([arg for arg in overrides if not arg.startswith("-")])
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # noqa: BLE001 - Hydra says what is malformed when it parses them itself
        return None
    swept = {override.key_or_group for override in parsed if override.is_sweep_override()}
    if len(jobs) >= MANY_JOBS:
        print(f"relreward: checking the configs of the sweep's {len(jobs)} jobs before starting any (a fraction of a "
              "second each)", file=sys.stderr)
    refused: dict[str, list[str]] = {}
    stage = importlib.import_module(f"relreward_cli.stages.{config_name}")
    with initialize_config_dir(str(config_dir.resolve()), version_base=None):
        for job in jobs:
            try:
                cfg = compose(config_name, job, return_hydra_config=True)
            except Exception:  # noqa: BLE001 - a missing group or option: Hydra tells it when the sweep starts
                return None
            groups = list(cfg.hydra.runtime.choices)
            with open_dict(cfg):
                del cfg["hydra"]
            if "${hydra:" in OmegaConf.to_yaml(cfg):  # a value Hydra fills per job (`${hydra:job.num}`)
                continue
            try:
                check_config(cfg, job, groups)
                stage.check_settings(cfg, {item.split("=", 1)[0].lstrip("+~") for item in job})
                families.of(cfg).check_config(cfg)
            except OSError:  # an unreadable data folder, say: the job itself reports it
                continue
            except UserError as err:
                label = " ".join(item for item in job if item.split("=", 1)[0].lstrip("+~") in swept)
                refused.setdefault(str(err), []).append(label)
    if not refused:
        return None
    told = []
    for message, labels in refused.items():
        shown = "; ".join(labels[:3]) + ("; ..." if len(labels) > 3 else "")
        who = "every job" if len(labels) == len(jobs) else f"{len(labels)} of {len(jobs)} jobs ({shown})"
        told.append(f"- {who}: " + message.replace("\n", "\n    "))
    return ("jobs of the sweep cannot work, so no job was started. Fix these values (or leave them out of the "
            "sweep) and launch it again:\n" + "\n".join(told))
