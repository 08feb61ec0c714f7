"""Where ``extract`` and ``steer-eval`` read the models (and the reward) that their command line does not name.

Two ways of running make them, both under ``run_root`` and named by the config's ``name``: the stand-alone stages
(``train-diffusion/<name>-base``, ``train-diffusion/<name>-expert``, ``extract/<name>``) and the pipeline
(``pipeline/<name>/diffusion_base``, ``diffusion_expert``, ``extract``; ``pipeline_dir``). ``models_from`` says which
to read; ``auto`` reads the one that holds every input the stage needs, and refuses when both do (it cannot know
which is meant) or neither does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from relreward_cli.config_schema import MODEL_SOURCES
from relreward_cli.diffusion.artifact import model_file
from relreward_cli.errors import UserError
from relreward_cli.reward.trainer import reward_file
from relreward_cli.stages.common import command_line_keys

WRITTEN_BY = {"stages": {"base_model": "relreward train-diffusion kind=base",
                         "expert_model": "relreward train-diffusion kind=expert",
                         "reward_model": "relreward extract"},
              "pipeline": dict.fromkeys(("base_model", "expert_model", "reward_model"), "relreward pipeline")}
"""The command that writes each input, by source."""


def pipeline_folders(pipeline_dir: Path) -> dict[str, Path]:
    """The run folders of a pipeline's models and reward, by input key (``base_model`` -> ``diffusion_base/``)."""
    return {"base_model": pipeline_dir / "diffusion_base", "expert_model": pipeline_dir / "diffusion_expert",
            "reward_model": pipeline_dir / "extract"}


def stage_folders(run_root: Path, name: str) -> dict[str, Path]:
    """The run folders of the stand-alone ``train-diffusion`` and ``extract`` runs of ``name`` (their
    ``hydra.run.dir``), by input key."""
    return {"base_model": run_root / "train-diffusion" / f"{name}-base",
            "expert_model": run_root / "train-diffusion" / f"{name}-expert",
            "reward_model": run_root / "extract" / name}


def _artifact(key: str, path: Path) -> Path:
    return reward_file(path) if key == "reward_model" else model_file(path)


def resolve_inputs(cfg: DictConfig, stage: str, keys: Sequence[str]) -> dict[str, Path]:
    """The run folder (or file) of each input of ``keys`` (``base_model``, ``expert_model``, ``reward_model``):
    the config's value where it names one, else the folder of the source ``models_from`` picks (``pipeline`` when
    the command line sets ``pipeline_dir``). Raises :class:`UserError` (before any work) when the source holds
    none of them, or, with ``auto``, when both sources hold all of them."""
    named = {key: Path(str(cfg[key])) for key in keys if cfg[key] is not None}
    unnamed = [key for key in keys if key not in named]
    if not unnamed:
        return named
    folders = {"stages": stage_folders(Path(cfg.run_root), cfg.name),
               "pipeline": pipeline_folders(Path(cfg.pipeline_dir))}
    missing = {source: [key for key in unnamed if not _artifact(key, folders[source][key]).is_file()]
               for source in MODEL_SOURCES}
    source = cfg.models_from
    if source == "stages" and "pipeline_dir" in command_line_keys():
        raise UserError(f"pipeline_dir={cfg.pipeline_dir} with models_from=stages: the stand-alone runs are read, so "
                        "pipeline_dir would not act. Drop one of them. Nothing was run.")
    if source == "auto" and "pipeline_dir" in command_line_keys():
        source = "pipeline"
    if source == "auto":
        complete = [source for source in MODEL_SOURCES if not missing[source]]
        if len(complete) == 2:
            raise UserError(
                f"{stage} reads {_listed(unnamed)}, and both the stand-alone runs of {cfg.name} "
                f"({_places(folders['stages'], unnamed)}) and its pipeline run ({cfg.pipeline_dir}) hold them, so "
                "which one is meant is not clear. Say which: models_from=stages or models_from=pipeline (or name "
                "them: " + ", ".join(f"{key}=" for key in unnamed) + "). Nothing was run.")
        if not complete:
            raise UserError(f"{stage} reads {_listed(unnamed)}, and no run of {cfg.name} holds them: "
                            f"{_missing(folders, missing, unnamed, MODEL_SOURCES)}. "
                            f"{_how_to_make(unnamed, MODEL_SOURCES)}")
        source = complete[0]
    elif missing[source]:
        raise UserError(f"{stage} reads {_listed(unnamed)} from the {_source_name(source)} of {cfg.name} "
                        f"({'pipeline_dir given' if cfg.models_from == 'auto' else f'models_from={source}'}), and "
                        f"{_missing(folders, missing, unnamed, (source,))}. {_how_to_make(unnamed, (source,))}")
    return named | {key: folders[source][key] for key in unnamed}


INPUT_NAMES = {"base_model": "a base model", "expert_model": "an expert model", "reward_model": "a reward"}


def _listed(keys: Sequence[str]) -> str:
    names = [INPUT_NAMES[key] for key in keys]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _source_name(source: str) -> str:
    return "stand-alone runs" if source == "stages" else "pipeline run"


def _places(folders: dict[str, Path], keys: Sequence[str]) -> str:
    return ", ".join(str(folders[key]) for key in keys)


def _missing(folders: dict[str, dict[str, Path]], missing: dict[str, list[str]], keys: Sequence[str],
             sources: Sequence[str]) -> str:
    """Per source, what is not there: ``the pipeline run (runs/pipeline/x) has none of them`` when nothing is, else
    the missing files."""
    parts = []
    for source in sources:
        if len(missing[source]) == len(keys):
            where = _places(folders[source], keys) if source == "stages" else folders[source][keys[0]].parent
            parts.append(f"the {_source_name(source)} ({where}) {'have' if source == 'stages' else 'has'} "
                         f"{'none of them' if len(keys) > 1 else 'none'}")
        elif missing[source]:
            parts.append(f"the {_source_name(source)} {'have' if source == 'stages' else 'has'} no "
                         + ", ".join(str(_artifact(key, folders[source][key])) for key in missing[source]))
    return "; ".join(parts)


def _how_to_make(keys: Sequence[str], sources: Sequence[str]) -> str:
    ways = []
    for source in reversed(sources):  # the pipeline, one command, first
        commands = [f"`{command}`" for command in dict.fromkeys(WRITTEN_BY[source][key] for key in keys)]
        ways.append(commands[0] if len(commands) == 1 else ", ".join(commands[:-1]) + " and " + commands[-1])
    return (f"Make them first with {', or '.join(ways)}, with this command's env, goal, seed and sizes; or name the "
            "run folders of finished runs (" + ", ".join(f"{key}=" for key in keys) + "). Nothing was run.")
