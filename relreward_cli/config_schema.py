"""The typed schema of the configs' shared sections, checked before a stage does any work.

Hydra composes the YAML files and the command line into one config; nothing there knows that
`train.n_steps` is a positive integer. :func:`check_config` merges each key of each section below into its
dataclass (OmegaConf structured configs refuse wrong types and unknown keys; the values, defaults included, come
from the YAML files, so the dataclasses hold types only); a section whose types are right is instantiated, which
runs its range checks in ``__post_init__``. Every problem found is reported at once, as one :class:`UserError`
naming the override that fixes it. The environment section (`env`) belongs to each environment family and is
checked where it is read.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import typing
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from relreward_cli.diffusion.options import PREDICTIONS, SAMPLERS
from relreward_cli.errors import UserError
from relreward_cli.tracking import WANDB_MODES


class _Problems(list):
    """Problems found in one section, as ``(key, value, what it must be)``."""

    def need(self, ok: bool, key: str, value: Any, must: str) -> None:
        if not ok:
            self.append((key, value, must))


def _positive(problems: _Problems, section: object, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        problems.need(value >= 1, name, value, "a positive integer")


def _share(problems: _Problems, section: object, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        problems.need(0.0 <= value <= 1.0, name, value, "a share in [0, 1]")


class _Checked:
    """Runs the subclass's `check(problems)` on instantiation and raises the problems found."""

    def __post_init__(self) -> None:
        problems = _Problems()
        self.check(problems)
        if problems:
            raise _SectionProblems(problems)

    def check(self, problems: _Problems) -> None:  # pragma: no cover - every section overrides it
        raise NotImplementedError


class _SectionProblems(Exception):
    def __init__(self, problems: _Problems) -> None:
        super().__init__(problems)
        self.problems = problems


@dataclass
class ModelConfig(_Checked):
    """`model` / `reward`: the temporal U-Net's (or reward net's) base width and per-level multipliers."""

    dim: int = MISSING
    dim_mults: list[int] = MISSING

    def check(self, problems: _Problems) -> None:
        problems.need(self.dim >= 4 and self.dim % 2 == 0, "dim", self.dim,
                      "an even integer >= 4 (the width of the diffusion-time embedding: sines and cosines)")
        problems.need(bool(self.dim_mults) and min(self.dim_mults) >= 1, "dim_mults", self.dim_mults,
                      "a non-empty list of positive integers")


@dataclass
class RewardConfig(ModelConfig):
    """`reward`: the reward network's architecture (see `relreward_cli.models.networks`) and sizes."""

    architecture: str = MISSING

    def check(self, problems: _Problems) -> None:
        super().check(problems)
        problems.need(self.architecture in ("default", "per_step"), "architecture", self.architecture,
                      "default or per_step")


@dataclass
class DiffusionConfig(_Checked):
    n_steps: int = MISSING
    schedule: str = MISSING
    clip_denoised: bool = MISSING
    prediction: str = MISSING

    def check(self, problems: _Problems) -> None:
        _positive(problems, self, "n_steps")
        problems.need(self.schedule in ("cosine", "linear"), "schedule", self.schedule, "cosine or linear")
        problems.need(self.prediction in PREDICTIONS, "prediction", self.prediction, " or ".join(PREDICTIONS))


PRECISIONS = ("fp32", "bf16")  # training precision: float32, or bfloat16 autocast (weights stay float32)


@dataclass
class _LoopConfig(_Checked):
    """What every training loop takes (`train` and `extract`): steps, batch, learning rate, gradient clip and how
    often to checkpoint and log."""

    n_steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    grad_clip: float | None = MISSING
    save_every: int = MISSING
    log_every: int = MISSING
    cuda_batch_size: int | None = None  # the batch on a CUDA device (null: batch_size)
    precision: str = "fp32"

    def check(self, problems: _Problems) -> None:
        _positive(problems, self, "n_steps", "batch_size", "save_every", "log_every")
        problems.need(self.cuda_batch_size is None or self.cuda_batch_size > 0, "cuda_batch_size",
                      self.cuda_batch_size, "a positive integer or null (batch_size)")
        problems.need(self.precision in PRECISIONS, "precision", self.precision, " or ".join(PRECISIONS))
        problems.need(0 < self.lr < math.inf, "lr", self.lr, "a positive, finite learning rate")
        problems.need(self.grad_clip is None or 0 < self.grad_clip < math.inf, "grad_clip", self.grad_clip,
                      "positive and finite, or null")


@dataclass
class TrainConfig(_LoopConfig):
    """`train`: train-diffusion's optimisation (see configs/base.yaml for each key)."""

    ema_decay: float = MISSING
    ema_start: int = MISSING
    start_conditioned: float = MISSING
    action_weight: float = MISSING
    n_plot_samples: int = MISSING
    sampler: str = MISSING

    def check(self, problems: _Problems) -> None:
        super().check(problems)
        problems.need(0.0 <= self.ema_decay < 1.0, "ema_decay", self.ema_decay, "in [0, 1)")
        problems.need(self.ema_start >= 0, "ema_start", self.ema_start, "a step >= 0")
        _share(problems, self, "start_conditioned")
        problems.need(self.action_weight > 0, "action_weight", self.action_weight, "positive")
        problems.need(self.n_plot_samples >= 0, "n_plot_samples", self.n_plot_samples, "an integer >= 0")
        problems.need(self.sampler in SAMPLERS, "sampler", self.sampler, " or ".join(SAMPLERS))


@dataclass
class ExtractConfig(_LoopConfig):
    """`extract`: the reward network's training and evaluation."""

    ema_decay: float = MISSING
    ema_start: int = MISSING
    target: str = MISSING
    start_conditioned: float = MISSING
    sample_fraction: float = MISSING
    sample_pool: int = MISSING
    eval_t: list[int] = MISSING
    report_t: int = MISSING
    eval_noise_samples: int = MISSING
    eval_segments: int = MISSING
    grid_resolution: float = MISSING

    def check(self, problems: _Problems) -> None:
        super().check(problems)
        _positive(problems, self, "sample_pool")
        problems.need(0.0 <= self.ema_decay < 1.0, "ema_decay", self.ema_decay, "in [0, 1) (0: no EMA)")
        problems.need(self.ema_start >= 0, "ema_start", self.ema_start, "a step >= 0")
        problems.need(self.target in ("score", "posterior_mean"), "target", self.target, "score or posterior_mean")
        _share(problems, self, "start_conditioned", "sample_fraction")
        problems.need(bool(self.eval_t) and min(self.eval_t) >= 0, "eval_t", self.eval_t,
                      "a non-empty list of diffusion steps >= 0")
        problems.need(self.report_t >= 0, "report_t", self.report_t, "a diffusion step >= 0")
        problems.need(self.eval_noise_samples >= 0, "eval_noise_samples", self.eval_noise_samples, "an integer >= 0")
        problems.need(self.eval_segments >= 0, "eval_segments", self.eval_segments, "an integer >= 0")
        problems.need(self.grid_resolution > 0, "grid_resolution", self.grid_resolution, "positive (world units)")


@dataclass
class LoggerConfig(_Checked):
    """`logger`: W&B's mode, project and labels (`relreward_cli.tracking.RunTracker`)."""

    mode: str = MISSING
    project: str = MISSING
    entity: str | None = MISSING
    group: str | None = MISSING
    tags: list[str] = MISSING

    def check(self, problems: _Problems) -> None:
        problems.need(self.mode in WANDB_MODES, "mode", self.mode, " or ".join(WANDB_MODES))


@dataclass
class ControllerConfig:
    """`steer.controller`: the PD gains of the tracker of planned Maze2D states (`planning.rollout.WaypointTracker`);
    checked with the rest of `steer` (`SteerConfig.check`), so that its problems are told together with theirs."""

    p_gain: float = MISSING
    d_gain: float = MISSING

    def check(self, problems: _Problems) -> None:
        problems.need(0 < self.p_gain < math.inf, "controller.p_gain", self.p_gain, "a positive gain")
        problems.need(0 <= self.d_gain < math.inf, "controller.d_gain", self.d_gain, "a gain >= 0")


@dataclass
class SteerConfig(_Checked):
    """`steer`: steer-eval's planners and rollouts."""

    planners: list[str] = MISSING
    scale: float = MISSING
    n_guide_steps: int = MISSING
    t_stopgrad: int = MISSING
    scale_grad_by_std: bool = MISSING
    grad_clip: float | None = MISSING
    n_plans: int = MISSING
    rank_t: int | None = MISSING
    sampler: str = MISSING
    n_sample_steps: int | None = MISSING
    eta: float = MISSING
    replan_every: int = MISSING
    n_episodes: int = MISSING
    seeds: list[int] = MISSING
    max_episode_steps: int | None = MISSING
    success_radius: float = MISSING
    controller: ControllerConfig = MISSING
    n_plot_paths: int = MISSING

    def check(self, problems: _Problems) -> None:
        from relreward_cli.planning.evaluation import PLANNERS

        problems.need(bool(self.planners) and set(self.planners) <= set(PLANNERS), "planners", self.planners,
                      f"a non-empty list of {', '.join(PLANNERS)}")
        problems.need(0 <= self.scale < math.inf, "scale", self.scale, "a finite number >= 0")
        problems.need(self.n_guide_steps >= 1, "n_guide_steps", self.n_guide_steps,
                      "a positive integer (gradient steps per denoising step; steer.scale=0 turns guidance off)")
        problems.need(self.t_stopgrad >= 0, "t_stopgrad", self.t_stopgrad, "a diffusion step >= 0")
        problems.need(self.grad_clip is None or self.grad_clip > 0, "grad_clip", self.grad_clip, "positive or null")
        _positive(problems, self, "n_plans", "replan_every", "n_episodes")
        problems.need(self.rank_t is None or self.rank_t >= 0, "rank_t", self.rank_t, "a diffusion step >= 0 or null")
        problems.need(self.sampler in SAMPLERS, "sampler", self.sampler, " or ".join(SAMPLERS))
        problems.need(self.n_sample_steps is None or self.n_sample_steps >= 1, "n_sample_steps", self.n_sample_steps,
                      "a positive integer or null")
        problems.need(0 <= self.eta < math.inf, "eta", self.eta, "a finite number >= 0 (0: deterministic DDIM)")
        problems.need(bool(self.seeds) and all(map(is_seed, self.seeds)) and len(set(self.seeds)) == len(self.seeds),
                      "seeds", self.seeds, f"a non-empty list of distinct seeds ({SEED_WORDS}; a seed listed twice "
                      "would count its episodes twice)")
        problems.need(self.max_episode_steps is None or self.max_episode_steps >= 1, "max_episode_steps",
                      self.max_episode_steps, "a positive integer or null")
        problems.need(self.success_radius > 0, "success_radius", self.success_radius, "positive (world units)")
        self.controller.check(problems)
        problems.need(self.n_plot_paths >= 0, "n_plot_paths", self.n_plot_paths, "an integer >= 0")


TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
              "int | None": "an integer or null", "float | None": "a number or null", "str | None": "a string or null",
              "list[int]": "a list of integers", "list[str]": "a list of names",
              "ControllerConfig": "a section with p_gain and d_gain"}
SECTIONS: dict[str, type] = {"model": ModelConfig, "reward": RewardConfig, "diffusion": DiffusionConfig,
                             "train": TrainConfig, "extract": ExtractConfig, "steer": SteerConfig,
                             "logger": LoggerConfig}


def _section_problems(name: str, schema: type, node: Any) -> list[str]:
    """What is wrong with `cfg.<name>` against `schema`, one line per problem: every wrong type or unknown key, or,
    when the types are right, every value out of range."""
    problems = _type_problems(name, schema, node)
    if problems:  # the range checks need every value of its type
        return problems
    try:
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(node, resolve=True)))
    except _SectionProblems as found:
        return [f"{name}.{key}={_shown(node.get(key, value))}: must be {must}" for key, value, must in found.problems]
    return []


def _type_problems(name: str, schema: type, node: DictConfig) -> list[str]:
    """Every key of `node` (the section `name`) whose value is not of its type in `schema`, or that `schema` does not
    have; each key on its own, so that one wrong type does not hide the next, and a nested section key by key."""
    typed = OmegaConf.structured(schema)
    declared = {f.name: str(f.type) for f in fields(schema)}
    nested = {key: hint for key, hint in typing.get_type_hints(schema).items() if is_dataclass(hint)}
    problems = []
    for key, value in OmegaConf.to_container(node, resolve=True).items():  # interpolations resolve in the whole cfg
        if key in nested and isinstance(node.get(key), DictConfig):  # `steer.controller`
            problems += _type_problems(f"{name}.{key}", nested[key], node[key])
        elif key not in declared:
            problems.append(f"{name}.{key}={_shown(node.get(key, value))}: {name} has no such setting (misspelt?); "
                            f"its settings are {', '.join(declared)}")
        else:
            try:
                OmegaConf.merge(typed, {key: value})
            except OmegaConfBaseException:
                problems.append(f"{name}.{key}={_shown(node.get(key, value))}: must be "
                                f"{TYPE_WORDS.get(declared[key], declared[key])}")
    return problems


def _shown(value: Any) -> str:
    return str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def steering_problems(steer: DictConfig, n_steps: int, horizon: int, of_models: bool = False) -> list[str]:
    """The ``steer`` settings that cannot work with models of ``n_steps`` diffusion steps and plans of ``horizon``
    steps, one line each; settings of planners not in ``steer.planners`` are not read. ``of_models``: the sizes are
    the loaded models' (else the config's ``diffusion.n_steps`` and ``horizon``), for the wording."""
    from relreward_cli.planning.evaluation import GUIDED_PLANNERS, RANKED_PLANNERS

    steps = f"the models' {n_steps} diffusion steps" if of_models else f"diffusion.n_steps={n_steps}"
    plan = f"the models' horizon {horizon}" if of_models else f"horizon={horizon}"
    planners = set(steer.planners)
    problems = []
    if steer.replan_every >= horizon:
        problems.append(f"steer.replan_every={steer.replan_every} with {plan}: a plan of {horizon} steps cannot be "
                        f"followed for {steer.replan_every}; replan sooner")
    if planners & set(GUIDED_PLANNERS) and steer.scale > 0 and steer.t_stopgrad >= n_steps:
        problems.append(f"steer.t_stopgrad={steer.t_stopgrad} with {steps}: guidance acts only at steps t >= "
                        "t_stopgrad, so it would never act; lower it or set steer.scale=0")
    if planners & set(RANKED_PLANNERS) and steer.rank_t is not None and steer.rank_t >= n_steps:
        problems.append(f"steer.rank_t={steer.rank_t} with {steps}: must be a diffusion step below {n_steps}, or null "
                        f"for half of them")
    if steer.sampler == "ddpm" and steer.n_sample_steps not in (None, n_steps):
        problems.append(f"steer.n_sample_steps={steer.n_sample_steps} with steer.sampler=ddpm and {steps}: DDPM "
                        f"runs every diffusion step (an env may set a step count for its own sampler: "
                        f"env.steer_n_sample_steps); add steer.n_sample_steps=null, or take fewer steps with "
                        f"steer.sampler=ddim or dpm")
    if steer.sampler != "ddpm" and steer.n_sample_steps is not None and steer.n_sample_steps > n_steps:
        problems.append(f"steer.n_sample_steps={steer.n_sample_steps} with {steps}: a {steer.sampler} sampler takes "
                        f"at most that many steps")
    return problems


def _combination_problems(cfg: DictConfig) -> list[str]:
    """Values that are each fine but cannot work together. Checked for `pipeline`, whose config trains the models;
    the other stages read sizes from the models they load and check them there."""
    if cfg.get("stage") != "pipeline":
        return []
    n_steps = cfg.diffusion.n_steps
    problems = steering_problems(cfg.steer, n_steps, cfg.horizon) if cfg.pipeline.steer else []
    if max(*cfg.extract.eval_t, cfg.extract.report_t) >= n_steps:
        problems.append(f"extract.eval_t={list(cfg.extract.eval_t)}, extract.report_t={cfg.extract.report_t}: every "
                        "time must be below diffusion.n_steps="
                        f"{n_steps}")
    if cfg.normalizer == "gaussian" and cfg.diffusion.clip_denoised:
        problems.append("normalizer=gaussian with diffusion.clip_denoised=true: clipping to [-1, 1] would cut every "
                        "segment at one standard deviation; pass diffusion.clip_denoised=false")
    return problems


NETWORKS_BUILT_FROM_CONFIG = {"pipeline": ("model", "reward"), "train-diffusion": ("model",)}
"""Per stage, the networks whose horizon comes from `horizon` (the others take it from the models they load)."""


def _horizon_problems(cfg: DictConfig) -> list[str]:
    """A horizon that the networks this stage builds cannot halve down to their deepest level."""
    from relreward_cli import families
    from relreward_cli.models.unet import check_architecture

    networks = NETWORKS_BUILT_FROM_CONFIG.get(cfg.get("stage"), ())
    if not networks or not families.of(cfg).samples_of_horizon:
        return []
    problems = []
    for name in networks:
        try:
            check_architecture(cfg.horizon, tuple(cfg[name].dim_mults))
        except UserError as err:
            problems.append(f"horizon={cfg.horizon} ({name} network): {err}")
    return problems


def _unresolvable(cfg: DictConfig) -> str | None:
    """The first value built from others (``${...}``) that cannot be built, e.g. ``env.base_data`` from an
    ``env.goal_cell`` given as one number."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        reason = str(err).splitlines()[0]
        missing = re.search(r"Interpolation key '(env\.[\w.]+)' not found", reason)
        hint = (f" env={OmegaConf.select(cfg, 'env.name')} does not define {missing.group(1)}: a preset that reads "
                "it does not apply to this env (formulation=authors reads env.authors_steering, which the "
                "locomotion envs define); set the value itself on the command line, or choose another preset"
                if missing else " Check the overrides that set the values it names")
        return f"The config cannot be put together: {key} is built from other values and fails ({reason}).{hint}; " \
               "nothing was run."
    return None


ENV_REFERENCE = re.compile(r"\$\{(?:oc\.select:)?(env\.[\w.]+)")
"""A value built from an env setting (``${oc.select:env.horizon,32}`` -> ``env.horizon``)."""


@functools.cache
def env_settings_the_configs_read(config_dir: Path) -> dict[str, tuple[tuple[str, str], ...]]:
    """The env settings that the configs outside ``env/`` build other settings from, each with the settings it builds
    and their files (``env.horizon`` -> ``(("horizon", "base.yaml"),)``): the optional settings an env may give,
    which act only through the settings they feed. The env's name, which every stage reads, is left out."""
    import yaml

    found: dict[str, list[tuple[str, str]]] = {}

    def visit(node: Any, key: str, file: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                visit(value, f"{key}.{name}" if key else str(name), file)
        elif isinstance(node, str):
            for env_key in ENV_REFERENCE.findall(node):
                found.setdefault(env_key, []).append((key, file))

    for path in sorted(config_dir.rglob("*.yaml")):
        relative = path.relative_to(config_dir)
        if relative.parts[0] not in ("env", "hydra"):
            visit(yaml.safe_load(path.read_text()) or {}, "", relative.as_posix())
    found.pop("env.name", None)
    return {key: tuple(dict.fromkeys(where)) for key, where in found.items()}


def keys_overlap(a: str, b: str) -> bool:
    """One dotted key is the other or inside it (``env.quick_steer`` and ``env.quick_steer.scale``)."""
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


OPEN_SECTIONS = ("hydra", "env")
"""Where a `+key=value` override may add a setting: Hydra's own keys (a launcher's extra parameters), and the env's
optional ones, which the shared configs read with a default (``${oc.select:env.horizon,32}``;
:func:`env_settings_the_configs_read`)."""


def _added_key_problems(cfg: DictConfig, overrides: Sequence[str], groups: Collection[str]) -> list[str]:
    """Settings that `+key=value` overrides add where nothing reads them (`+sede=3`, `+env.hoizon=48`). A `+` is
    needed only for a key the config does not have, so outside :data:`OPEN_SECTIONS` and config groups
    (`+experiment=smoke`) it adds a misspelt or unknown setting, and so it does in the env where no config reads the
    key; the typed sections name their own unknown keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from relreward_cli.cli import CONFIG_DIR

    added = [override for override in OverridesParser.create().parse_overrides(list(overrides)) if override.is_add()]
    added_keys = {override.key_or_group for override in added}
    optional_env = env_settings_the_configs_read(CONFIG_DIR)
    problems = []
    for override in added:
        key = override.key_or_group
        if key.startswith("env.") and not any(keys_overlap(key, known) for known in optional_env):
            nearest = difflib.get_close_matches(key, optional_env, n=3, cutoff=0.6) or sorted(optional_env)
            problems.append(f"+{key}={override.get_value_element_as_str()}: no config reads the env setting {key} "
                            f"(misspelt?), so nothing would read it; the optional env settings "
                            f"{'nearest to it' if nearest != sorted(optional_env) else 'are'}: {', '.join(nearest)}")
            continue
        if key.split(".")[0] in (*OPEN_SECTIONS, *SECTIONS) or key in groups:
            continue
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent) if parent else cfg
        known = [name for name in node if f"{parent}.{name}".lstrip(".") not in added_keys] \
            if isinstance(node, DictConfig) else []
        where = f"{parent}'s settings" if parent else "the top-level settings"
        problems.append(f"+{key}={override.get_value_element_as_str()}: there is no setting {key} (misspelt?), so "
                        "nothing would read it" + (f"; {where} are {', '.join(known)}" if known else ""))
    return problems


SWITCHES = ("overwrite", "use_actions", "pipeline.steer")
"""Top-level yes/no settings outside the typed sections."""

MODEL_SOURCES = ("stages", "pipeline")
"""Where ``extract`` and ``steer-eval`` read the models they are not given (``models_from``, besides ``auto``; see
:mod:`relreward_cli.stages.inputs`)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MAX_SEED = 2**31 - 1
SEED_WORDS = f"integers from 0 to {MAX_SEED}"


def is_seed(value: Any) -> bool:
    """A seed every generator takes (numpy's and gymnasium's want one >= 0; torch's one below 2**63)."""
    return _is_int(value) and 0 <= value <= MAX_SEED


def check_config(cfg: DictConfig, overrides: Sequence[str] = (), groups: Collection[str] = ()) -> None:
    """Refuse a config whose shared sections have a wrong type, an unknown key or a value out of range, naming
    each (e.g. ``train.batch_size=0: must be a positive integer``), before any work. `overrides`: the command line's
    (Hydra's task overrides), whose `+key=value` additions are checked too; `groups`: the config group names."""
    if unresolvable := _unresolvable(cfg):
        raise UserError(unresolvable)
    problems = _added_key_problems(cfg, overrides, groups)
    for key in ("seed", "env.generate.seed"):
        value = OmegaConf.select(cfg, key, default=0)
        if not is_seed(value):
            problems.append(f"{key}={value}: must be an integer from 0 to {MAX_SEED}")
    for name, schema in SECTIONS.items():
        if name not in cfg:
            continue
        if isinstance(cfg[name], DictConfig):
            problems += _section_problems(name, schema, cfg[name])
        else:  # `train=5`, `diffusion=null`: the whole section replaced by a value
            problems.append(f"{name}={_shown(cfg[name])}: must be the {name} section (set its keys, e.g. "
                            f"{name}.{fields(schema)[0].name}=...)")
    run_name = cfg.get("name")
    if run_name is not None and (not isinstance(run_name, str) or not run_name.strip()
                             or run_name.startswith((".", "__"))
                             or any(separator in run_name for separator in ("/", "\\"))):
        shown = run_name if isinstance(run_name, str) and run_name.strip() else repr(run_name)
        problems.append(f"name={shown}: must be a folder name (not empty, no / or \\, not starting with . or __, "
                        "which `relreward report` passes over as hidden): the run folder is <run_root>/<stage>/<name>")
    threads = cfg.get("threads")
    if threads is not None and (not _is_int(threads) or threads < 1):
        problems.append(f"threads={threads}: must be a positive integer or null (torch's default)")
    if "horizon" in cfg and (not _is_int(cfg.horizon) or cfg.horizon < 2):
        problems.append(f"horizon={cfg.horizon}: must be an integer >= 2 (env steps per segment)")
    for key in SWITCHES:  # a string such as `no` would read as true, and `overwrite=no` would set a run aside
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, bool):
            problems.append(f"{key}={value}: must be true or false")
    if "models_from" in cfg and cfg.models_from not in ("auto", *MODEL_SOURCES):
        problems.append(f"models_from={cfg.models_from}: must be auto, {' or '.join(MODEL_SOURCES)}")
    if "pipeline_dir" in cfg and cfg.pipeline_dir is None:
        problems.append("pipeline_dir=null: must be a folder (a pipeline run's, e.g. runs/pipeline/<name>)")
    if not problems:
        problems += _horizon_problems(cfg) + _combination_problems(cfg)
    if problems:
        raise UserError("The config has values that cannot work; nothing was run. Fix them on the command line "
                        "(or in the YAML they come from):\n  " + "\n  ".join(problems))
