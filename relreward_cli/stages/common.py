"""What every stage needs from its config: run folder, data root, device, seeds, the tracker hook."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from relreward_cli import provenance
from relreward_cli.config_schema import ENV_REFERENCE, env_settings_the_configs_read, keys_overlap
from relreward_cli.diffusion.artifact import DiffusionSpec, TrainedDiffusion
from relreward_cli.errors import UserError
from relreward_cli.tracking import RunTracker
from relreward_cli.training import resolve_device, use_deterministic_cuda

log = logging.getLogger(__name__)


def hydra_run_dir() -> Path:
    """The output folder Hydra picked for this job (``hydra.run.dir`` or the sweep's subfolder)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def command_line_keys() -> set[str]:
    """The keys this job's command line sets (Hydra's task overrides, ``horizon=48`` -> ``horizon``); empty
    outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return set()
    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    return {override.key_or_group for override in overrides}


def settings_fed_by_env(cfg: DictConfig) -> dict[str, tuple[str, ...]]:
    """The settings whose value comes from env settings, each with those (``steer.scale:
    ${oc.select:env.steer_scale,3.0}`` -> ``{"steer.scale": ("env.steer_scale",)}``; within the env too, as
    ``env.generate.sac.total_steps`` from ``env.quick_sac_steps`` under ``experiment=locomotion_quick``): a value given
    to such an env setting acts through them, and only where they are read."""
    fed: dict[str, tuple[str, ...]] = {}

    def visit(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                visit(value, f"{key}.{name}" if key else str(name))
        elif isinstance(node, str) and (found := ENV_REFERENCE.findall(node)):
            fed[key] = tuple(found)

    visit({name: value for name, value in OmegaConf.to_container(cfg, resolve=False).items() if name != "hydra"}, "")
    return fed


def _env_settings_acting_nowhere(cfg: DictConfig, given: Collection[str], fed: Mapping[str, tuple[str, ...]]
                                 ) -> list[str]:
    """Given env settings that the configs read only to build other settings (:func:`env_settings_the_configs_read`)
    but that build none in this config (``fed``: :func:`settings_fed_by_env`): ``+env.horizon=16`` under
    ``experiment=smoke``, which sets ``horizon: 8`` itself, or ``env.quick_steer.scale=1`` without
    ``experiment=locomotion_quick``, the preset that reads it."""
    from relreward_cli.cli import CONFIG_DIR

    read_by_configs = env_settings_the_configs_read(CONFIG_DIR)
    problems = []
    for key in sorted(key for key in given if key.startswith("env.")):
        builds = [built for env_key, built_from_it in read_by_configs.items() if keys_overlap(env_key, key)
                  for built in built_from_it]
        if not builds or any(keys_overlap(source, key) for sources in fed.values() for source in sources):
            continue
        targets = dict.fromkeys(setting for setting, _ in builds)
        now = ", ".join(f"{target} from {'/'.join(fed[target])}" if target in fed
                        else f"{target}={_as_override(OmegaConf.select(cfg, target))}" for target in targets)
        names = f"{next(iter(targets))} does" if len(targets) == 1 else f"none of {', '.join(targets)} do"
        where = ", ".join(f"{setting} ({file})" for setting, file in builds)
        problems.append(f"{key}={_as_override(OmegaConf.select(cfg, key))} would not act: the configs read it only to "
                        f"set {where}, and here {names} not come from it ({now})")
    return problems


def given_settings(cfg: DictConfig, given: Collection[str] | None = None,
                   fed: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, str]:
    """The settings given (the keys of this job's command line, :func:`command_line_keys`, or ``given``), each with
    how it was given: as itself, or through the env setting it comes from (``fed``, by default
    :func:`settings_fed_by_env`; ``env.horizon=48`` gives ``horizon`` as ``env.horizon``)."""
    given = command_line_keys() if given is None else set(given)
    settings = {key: key for key in given}
    env_keys = sorted(key for key in given if key.startswith("env."))  # not `env` itself: the group's choice
    for key, sources in (settings_fed_by_env(cfg) if fed is None else fed).items():
        through = [set_ for set_ in env_keys if any(keys_overlap(source, set_) for source in sources) and set_ != key]
        if key not in settings and through:
            settings[key] = through[0]
    return settings


MODEL_SETTINGS = {"horizon": "horizon", "use_actions": "use_actions", "model.dim": "dim",
                  "model.dim_mults": "dim_mults", "diffusion.n_steps": "n_steps", "diffusion.schedule": "schedule",
                  "diffusion.clip_denoised": "clip_denoised", "diffusion.prediction": "prediction"}
"""Config keys that shape a diffusion model, with the :class:`DiffusionSpec` field each becomes. A stage that loads
trained models takes them from the models (and ``normalizer`` from their normalizer), not from its config."""

MODEL_SECTIONS = (*dict.fromkeys(key.split(".")[0] for key in MODEL_SETTINGS), "normalizer")
"""The keys and sections of :data:`MODEL_SETTINGS`, and ``normalizer``."""

REWARD_SETTINGS = {"reward.architecture": "kind", "reward.dim": "dim", "reward.dim_mults": "dim_mults"}
"""Config keys that shape a reward network, with the entry of a loaded reward's ``architecture`` each becomes."""


def check_model_settings_not_given(cfg: DictConfig, model: TrainedDiffusion, stage: str, reward: Any = None) -> None:
    """Refuse command-line values of :data:`MODEL_SETTINGS` (or ``normalizer``) that differ from ``model``'s, and
    of :data:`REWARD_SETTINGS` that differ from ``reward``'s (a :class:`TrainedReward`, when the stage loads one):
    ``relreward extract horizon=48`` on models of horizon 32 would otherwise run at 32 without a word. Values
    equal to the model's, and those the config brings by default, pass."""
    given = given_settings(cfg)
    model_values = {key: getattr(model.spec, field) for key, field in MODEL_SETTINGS.items() if key in given}
    if "normalizer" in given:
        model_values["normalizer"] = model.normalizer.kind
    if reward is not None:
        model_values |= {key: reward.architecture[field] for key, field in REWARD_SETTINGS.items()
                         if key in given and field in reward.architecture}
    differing = []
    for key, value in model_values.items():
        asked, value = _as_override(OmegaConf.select(cfg, key)), _as_override(value)
        if asked != value:
            sets = "" if given[key] == key else f"sets {key}; "
            differing.append(f"{given[key]}={asked} ({sets}the models have {value})")
    if differing:
        raise UserError(f"{stage} takes these settings from the models it loads, so the command line's "
                        f"{', '.join(differing)} would not act. Drop them, or make models with them first "
                        f"(relreward pipeline, or train-diffusion and extract, with the same overrides) and pass "
                        f"those (base_model=, expert_model=, reward_model=). Nothing was run.")


SETTINGS_BY_STAGE = {**dict.fromkeys((*MODEL_SECTIONS, "train"), "train-diffusion"), "reward": "extract",
                     "extract": "extract", "steer": "steer-eval"}
"""Settings (top-level keys and sections) that only some stages read, with the stage that first acts on each."""


def check_settings_read(cfg: DictConfig, stage: str, reads: Collection[str], given: Collection[str] | None = None,
                        hint: str = "") -> None:
    """Refuse given settings that ``stage`` does not read: of :data:`SETTINGS_BY_STAGE`, those whose key or section is
    not in ``reads`` (a stage that loads models reads their settings from them, see
    :func:`check_model_settings_not_given`); of the env's, those its kind of env says other stages read
    (:meth:`EnvFamily.stages_reading`; ``relreward pipeline`` runs them all) and those that build nothing in this config
    (:func:`_env_settings_acting_nowhere`). ``relreward train-diffusion extract.n_steps=5`` would otherwise run as if
    it had not been given, and so would ``env.steer_scale=1``, which acts through ``steer.scale``, and
    ``env.evaluate.windows=100``, read by extract. ``given``: the keys set (default: this job's command line; see
    :func:`given_settings`); ``hint``: a sentence on how to make them act."""
    from relreward_cli import families

    fed = settings_fed_by_env(cfg)
    given = given_settings(cfg, given, fed)
    if nowhere := _env_settings_acting_nowhere(cfg, [key for key, how in given.items() if how == key], fed):
        raise UserError(f"{'; '.join(nowhere)}. Give the setting itself, or choose the preset (experiment=, "
                        "formulation=) that reads the env setting. Nothing was run.")
    domain = families.of(cfg)

    def readers(key: str) -> str | None:
        """Who reads ``key``, when ``stage`` does not."""
        if not key.startswith("env."):
            section = key.split(".")[0]
            return SETTINGS_BY_STAGE[section] if section in SETTINGS_BY_STAGE and section not in reads else None
        stages = domain.stages_reading(key)
        if stages is None or stage in stages or (stage == "pipeline" and stages):
            return None
        return " and ".join(stages) or "no stage"

    # an env setting that sets several settings acts where any of them is read
    acting = {how for key, how in given.items() if how != key and readers(key) is None}
    ignored = {key: who for key in sorted(given) if (who := readers(key)) is not None and given[key] not in acting}
    if ignored:
        named = ", ".join(f"{given[key]} ({'' if given[key] == key else f'sets {key}, '}read by {who})"
                          for key, who in ignored.items())
        if all(who == "no stage" for who in ignored.values()):
            hint = "Scripts read it from the env's YAML file, if at all."
        hint = hint or "Give it to the stage that reads it, or to relreward pipeline, which runs them all."
        raise UserError(f"{stage} does not read {named}, so the command line's value would not act. {hint} "
                        "Nothing was run.")


def check_models_fit_the_env(cfg: DictConfig, base: TrainedDiffusion, expert: TrainedDiffusion,
                             reward: Any = None) -> None:
    """Before any work: ``base``, ``expert`` (and ``reward``, a :class:`TrainedReward`) were made for ``cfg.env``:
    trained on that env (their recorded ``env``) and on its two datasets (``env.base_data``, ``env.expert_data``;
    for Maze2D, the goal's). The stage evaluates in the env its config describes, so models of another env or
    goal would be scored against the wrong ground truth."""
    models = {"base model": base, "expert model": expert, **({"reward": reward} if reward is not None else {})}
    env = cfg.env.name
    others = {name: model.info.get("env") for name, model in models.items() if model.info.get("env") not in (None, env)}
    if others:
        listed = ", ".join(f"the {name} {models[name].path} on {trained}" for name, trained in others.items())
        raise UserError(f"env={env}, but {listed}. Evaluate them in their own env (env=<that env>), or pass models "
                        f"trained on {env} (base_model=, expert_model=, reward_model=). Nothing was run.")
    wanted = {"base": cfg.env.get("base_data"), "expert": cfg.env.get("expert_data")}
    if None in wanted.values():  # an env without datasets of its own (two pretrained models)
        return
    for name, model in models.items():
        trained_on = model.info.get("sources")
        if trained_on is not None and dict(trained_on) != wanted:
            raise UserError(
                f"The {name} {model.path} was made from the datasets {trained_on['base']} and "
                f"{trained_on['expert']}, but this config's env reads {wanted['base']} and {wanted['expert']} "
                "(env.base_data, env.expert_data; for Maze2D they follow env.goal_cell), so it would be scored "
                "against another env's ground truth. Give the env settings the models were trained with (e.g. "
                "env.goal_cell=...), or pass models trained on these datasets. Nothing was run.")


def check_two_models(base_file: Path, expert_file: Path, consequence: str) -> None:
    """Refuse a base and an expert model that are one file, or two files equal byte for byte; ``consequence`` says
    what the stage would make of them (``the relative reward ... is zero everywhere``)."""
    one_file = base_file.resolve() == expert_file.resolve()
    if one_file or (base_file.is_file() and expert_file.is_file()
                    and provenance.digest(base_file) == provenance.digest(expert_file)):
        same = base_file if one_file else f"{base_file} and {expert_file} are equal byte for byte"
        raise UserError(f"base_model and expert_model are one model ({same}): {consequence}. Pass the base and the "
                        "expert models trained on the two datasets. Nothing was run.")


def check_made_from_these_data(models: Mapping[str, Any], data: Mapping[str, Path]) -> None:
    """Before any work: the ``models`` (by name, for the message: ``{"base model": ...}``; diffusion models or a
    reward) were made from the dataset files ``data`` (the env's ``dataset_inputs``) as they are now, by the
    digests their run folders' provenance recorded (a model outside a recorded run folder, or data not there, is
    not compared). Models of data made again since (other ``env.generate`` settings, say) would otherwise be paired
    with data they never saw."""
    now: dict[str, str] = {}
    for name, model in models.items():
        recorded = (provenance.recorded(Path(model.path).parent) or {}).get("inputs", {})
        for key, digest in recorded.items():
            if key not in data or not Path(data[key]).exists():
                continue
            now.setdefault(key, provenance.digest(data[key]))
            if now[key] != digest:
                made_by = "relreward extract" if name == "reward" else "relreward train-diffusion"
                raise UserError(
                    f"The {name} {model.path} was made from other contents of {data[key]} ({key}: {digest} then, "
                    f"{now[key]} now): the data were made again since (with other env.generate settings, say). Used "
                    f"with these data it would pair data and models that never met. Make the models again on these "
                    f"data (`relreward pipeline` does it by itself; or `{made_by}` with overwrite=true for that run "
                    f"folder, and the stages after it), or restore the data they were made from. Nothing was run.")


def _as_override(value: Any) -> str:
    """A config or spec value as the command line writes it (``[1, 2]``, ``true``)."""
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    value = list(value) if isinstance(value, tuple) else value
    return str(value).lower() if isinstance(value, bool) else str(value)


def job_cpus() -> int | None:
    """The CPUs SLURM gave this job (``SLURM_CPUS_PER_TASK``, set when the job asked for them), or None."""
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def apply_threads(cfg: DictConfig) -> int:
    """Apply ``threads``: torch's CPU threads (its OpenMP pool). Null means the job's CPUs inside a SLURM job
    (so that jobs sharing a node do not oversubscribe it) and torch's default elsewhere. The count is also
    exported as ``OMP_NUM_THREADS`` for processes the stage starts. Returns the count in effect."""
    threads = cfg.get("threads") or job_cpus()
    if threads:
        torch.set_num_threads(int(threads))
        os.environ["OMP_NUM_THREADS"] = str(int(threads))
    return torch.get_num_threads()


def torch_device(cfg: DictConfig) -> torch.device:
    """Apply ``threads`` (as :func:`apply_threads`) and resolve ``device``, on CUDA with deterministic kernels
    (:func:`use_deterministic_cuda`); logs both."""
    threads = apply_threads(cfg)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        use_deterministic_cuda()
    log.info("device %s, %d torch threads", device, threads)
    return device


def batch_size(section: DictConfig, device: torch.device) -> int:
    """The batch of a training section (``train``, ``extract``) on ``device``: ``cuda_batch_size`` on a CUDA
    device when set, else ``batch_size``."""
    if device.type == "cuda" and section.get("cuda_batch_size") is not None:
        return int(section.cuda_batch_size)
    return int(section.batch_size)


def autocast_dtype(section: DictConfig) -> torch.dtype | None:
    """The autocast dtype of a training section's ``precision`` (``bf16``), or None for full float32."""
    return {"fp32": None, "bf16": torch.bfloat16}[section.get("precision", "fp32")]


def loop_settings(cfg: DictConfig, section: str, device: torch.device, result_neutral: tuple[str, ...]) -> dict:
    """The settings of a training section that shape its result, for provenance: all but ``result_neutral``, with
    the batch the run uses on ``device`` in place of ``batch_size`` / ``cuda_batch_size``."""
    keys = tuple(key for key in cfg[section] if key not in (*result_neutral, "batch_size", "cuda_batch_size"))
    return {section: {**config_subset(cfg, {section: keys})[section],
                      "batch_size": batch_size(cfg[section], device)}}


def config_subset(cfg: DictConfig, keys: dict[str, tuple[str, ...]]) -> dict:
    """``{section: {key: value}}`` of the resolved config for the listed keys; an empty tuple takes the whole
    section (or the top-level value)."""
    subset = {}
    for section, names in keys.items():
        value = OmegaConf.to_container(cfg[section], resolve=True) if OmegaConf.is_config(cfg[section]) \
            else cfg[section]
        subset[section] = {name: value[name] for name in names} if names else value
    return subset


def data_root(cfg: DictConfig) -> Path:
    """Absolute Minari root of generated datasets (``data_dir``)."""
    return Path(cfg.data_dir).expanduser().resolve()


def diffusion_spec(cfg: DictConfig, obs_dim: int, act_dim: int, network: str = "temporal") -> DiffusionSpec:
    """The model spec a config asks for; refuses clipping `x_0` to `[-1, 1]` on Gaussian-normalized data (whose
    values run past one standard deviation)."""
    if cfg.normalizer == "gaussian" and cfg.diffusion.clip_denoised:
        raise UserError("normalizer=gaussian with diffusion.clip_denoised=true would clip every denoised segment "
                        "to [-1, 1], one standard deviation of the data. Pass diffusion.clip_denoised=false "
                        "(with diffusion.prediction=x0, as Diffuser's locomotion models: an eps-predictor's "
                        "unclipped x_0 is unstable at high noise), or keep normalizer=limits.")
    return DiffusionSpec(horizon=cfg.horizon, obs_dim=obs_dim, act_dim=act_dim, use_actions=cfg.use_actions,
                         dim=cfg.model.dim, dim_mults=tuple(cfg.model.dim_mults), n_steps=cfg.diffusion.n_steps,
                         schedule=cfg.diffusion.schedule, clip_denoised=cfg.diffusion.clip_denoised,
                         prediction=cfg.diffusion.prediction, network=network)


def log_to(tracker: RunTracker, prefix: str):
    """An ``on_log`` callback for :func:`relreward_cli.training.train_loop` that prefixes metric names."""
    return lambda scalars, step: tracker.log({f"{prefix}/{k}": v for k, v in scalars.items()}, step)
