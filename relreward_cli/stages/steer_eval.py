"""``relreward steer-eval``: the base model's planner (or sampler), steered by the extracted reward in three ways
that isolate guidance from ranking, and the expert model's, evaluated as the env's kind measures it (rollouts in
the simulator with returns and normalized scores, or the content of sampled images).

Planners: see :mod:`relreward_cli.planning.evaluation`; their evaluation: the env kind's ``evaluate_steering``.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from omegaconf import DictConfig

from relreward_cli import families, provenance
from relreward_cli.config_schema import steering_problems
from relreward_cli.diffusion.artifact import (
    check_compatible,
    load_diffusion_model,
    model_file,
    space_mismatches,
)
from relreward_cli.errors import UserError
from relreward_cli.planning.evaluation import PLANNERS, reads_reward
from relreward_cli.planning.guidance import RewardGuide
from relreward_cli.reward.trainer import load_reward_model, reward_file
from relreward_cli.stages.common import (
    MODEL_SECTIONS,
    check_made_from_these_data,
    check_model_settings_not_given,
    check_models_fit_the_env,
    check_settings_read,
    check_two_models,
    config_subset,
    hydra_run_dir,
    torch_device,
)
from relreward_cli.stages.inputs import resolve_inputs
from relreward_cli.tracking import tracker_from_config


def made_from(cfg: DictConfig, base_model: Path, expert_model: Path, reward_model: Path | None) -> dict:
    """The provenance of an evaluation: the steering settings and seed, and the digests of the models it reads
    (the reward model only when a planner of ``steer.planners`` uses it)."""
    models = {"base_model": model_file(base_model), "expert_model": model_file(expert_model)}
    if reads_reward(cfg.steer.planners):
        models["reward_model"] = reward_file(reward_model)
    return provenance.record({"stage": "steer-eval", "env": cfg.env.name,
                              **config_subset(cfg, {"seed": (), "steer": ()})}, models)


def run(cfg: DictConfig, run_dir: Path, base_model: Path, expert_model: Path, reward_model: Path | None,
        group: str | None = None, start_afresh: bool = False) -> dict:
    """Evaluate the planners of ``steer.planners`` into ``run_dir``; returns the summary (also in
    ``metrics.json``). The reward model is read only when a planner that uses it is among them (else it may be
    None). A ``run_dir`` holding an evaluation of other models or settings is refused (or, with ``start_afresh``,
    set aside)."""
    sc, domain = cfg.steer, families.of(cfg)
    _check_there_is_something_to_steer(cfg)
    for model in (base_model, expert_model):
        provenance.check_output(model_file(model), "relreward train-diffusion")
    check_two_models(model_file(base_model), model_file(expert_model),
                     "the expert planner would be the base planner, and the comparison of the two would show nothing")
    if reads_reward(sc.planners):
        provenance.check_output(reward_file(reward_model), "relreward extract")
    domain.check_config(cfg)
    device = torch_device(cfg)
    base, expert = load_diffusion_model(base_model, device), load_diffusion_model(expert_model, device)
    check_compatible(base, expert)
    guide = None
    if reads_reward(sc.planners):
        guide = RewardGuide(load_reward_model(reward_model, device), sc.scale, sc.n_guide_steps, sc.t_stopgrad,
                            sc.scale_grad_by_std, sc.rank_t, sc.grad_clip)
    check_model_settings_not_given(cfg, base, "steer-eval", guide.reward if guide else None)
    if problems := steering_problems(sc, base.spec.n_steps, base.spec.horizon, of_models=True):
        raise UserError("The steering settings cannot work with these models; nothing was rolled out. Fix them on "
                        "the command line:\n  " + "\n  ".join(problems))
    check_models_fit_the_env(cfg, base, expert, guide.reward if guide else None)
    try:
        data = domain.dataset_inputs(cfg)
    except UserError:  # the datasets are not here: steering does not read them, and there is nothing to compare
        data = {}
    check_made_from_these_data({"base model": base, "expert model": expert,
                                **({"reward": guide.reward} if guide else {})}, data)
    if guide is not None and (problems := space_mismatches(base, guide.reward, ("base model", "reward"))):
        raise UserError(f"The reward {guide.reward.path} was not extracted in the base model {base.path}'s space: "
                        f"{'; '.join(problems)}. Pass the reward extracted from this base model (reward_model=...). "
                        "Nothing was rolled out.")
    provenance.claim(run_dir, made_from(cfg, base_model, expert_model, reward_model), start_afresh=start_afresh,
                     how_to_start_afresh="overwrite=true")
    with tracker_from_config(cfg, run_dir, "steer-eval", group) as tracker:
        metrics = domain.evaluate_steering(cfg, base, expert, guide, tracker) | {"device": str(device)}
        tracker.summary(metrics)
    provenance.seal(run_dir)
    print(f"steer-eval {cfg.env.name} -> {run_dir}")
    return metrics


def _check_there_is_something_to_steer(cfg: DictConfig) -> None:
    if families.of(cfg).pretrained_models:
        raise UserError(f"env={cfg.env.name} compares two pretrained models, with no planner here to steer, so "
                        f"steer-eval has nothing to evaluate. Its reward is extracted and evaluated by `relreward "
                        f"extract env={cfg.env.name}` (or `relreward pipeline env={cfg.env.name}`). Nothing was run.")
    if not cfg.steer.planners or not set(cfg.steer.planners) <= set(PLANNERS):
        raise UserError(f"steer.planners={list(cfg.steer.planners)}: choose one or more of {', '.join(PLANNERS)}.")


def check_settings(cfg: DictConfig, given: Collection[str] | None = None) -> None:
    """Refuse settings given on the command line (or ``given``, keys) that this stage does not read."""
    reward = ("reward",) if reads_reward(cfg.steer.planners) else ()  # read when a planner uses it
    # the models' settings: checked once they are loaded
    check_settings_read(cfg, "steer-eval", (*MODEL_SECTIONS, *reward, "steer"), given)


def main(cfg: DictConfig) -> dict:
    check_settings(cfg)
    _check_there_is_something_to_steer(cfg)  # before looking for models to read
    reward = ("reward_model",) if reads_reward(cfg.steer.planners) else ()
    inputs = resolve_inputs(cfg, "steer-eval", ("base_model", "expert_model", *reward))
    return run(cfg, hydra_run_dir(), inputs["base_model"], inputs["expert_model"], inputs.get("reward_model"),
               start_afresh=cfg.overwrite)
