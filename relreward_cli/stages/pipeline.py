"""``relreward pipeline``: make-dataset -> train-diffusion (base, expert) -> extract (-> steer-eval with
``pipeline.steer=true``), in one command.

Each stage writes into a subfolder of the pipeline's run folder (``diffusion_base/``, ``diffusion_expert/``,
``extract/``, ``steer_eval/``) and logs to one W&B group. A stage whose finished artifact is there
(``model.pt``, ``reward.pt`` with its ``metrics.json``), whose ``provenance.json`` equals what this config
would make it from (its settings and the digests of its datasets and upstream models, see
:mod:`relreward_cli.provenance`) and whose files are as the stage sealed them is skipped; an interrupted one
resumes from its checkpoint; a stale one (other settings, regenerated data, a retrained upstream model, files
changed after it finished) is set aside and run again. So running a killed pipeline again finishes it without
redoing work, and a change reruns exactly the stages it makes stale.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from functools import partial
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from relreward_cli import families, provenance
from relreward_cli.diffusion.artifact import MODEL_FILE
from relreward_cli.reward.trainer import REWARD_FILE
from relreward_cli.stages import extract, steer_eval, train_diffusion
from relreward_cli.stages.common import (
    SETTINGS_BY_STAGE,
    apply_threads,
    check_settings_read,
    hydra_run_dir,
    torch_device,
)
from relreward_cli.stages.inputs import pipeline_folders
from relreward_cli.tracking import print_summary_table, write_json_atomic
from relreward_cli.training import resolve_device


def _finished(run_dir: Path, artifact: str, made_from: dict, evaluation: dict | None = None,
              steps: int | None = None) -> dict | None:
    """The stage's summary if its artifact and a readable ``metrics.json`` exist, it was made from ``made_from``
    (its provenance) and, when given, evaluated with ``evaluation`` (the summary's ``evaluation`` entry) after
    ``steps`` training steps; else None, and the stage runs (or resumes, extends its training, starts afresh when
    stale, or only evaluates again)."""
    metrics = run_dir / "metrics.json"
    if not ((run_dir / artifact).is_file() and metrics.is_file() and provenance.matches(run_dir, made_from)
            and provenance.intact(run_dir)):
        return None
    try:
        summary = json.loads(metrics.read_text())
    except (ValueError, UnicodeDecodeError):  # damaged: the stage writes it again
        return None
    if not isinstance(summary, dict) or (steps is not None and summary.get("steps") != steps):
        return None
    return summary if evaluation is None or summary.get("evaluation") == evaluation else None


def _run_stage(run_dir: Path, artifact: str, made_from: dict, stage, evaluation: dict | None = None,
               steps: int | None = None) -> dict:
    """Skip a finished stage of the same provenance (and evaluation and training steps) whose files are as it left
    them, else run ``stage()`` (which records what it was made from and seals what it wrote)."""
    metrics = _finished(run_dir, artifact, made_from, evaluation, steps)
    return stage() if metrics is None else metrics


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Run (or finish) every stage of the pipeline into ``run_dir``; returns the summary."""
    domain = families.of(cfg)
    domain.check_config(cfg)  # before the folder is touched
    resolve_device(cfg.device)  # a device this machine lacks, before any data are made
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    # The summary of an earlier attempt (perhaps of other settings) must not sit beside this config until this
    # attempt writes its own: an interrupted or refused run would read as finished. The stages keep their results.
    (run_dir / "metrics.json").unlink(missing_ok=True)
    group = cfg.logger.group or f"pipeline-{cfg.name}"
    seconds: dict[str, float] = {}
    summary: dict = {}

    start = time.perf_counter()
    if generated := domain.generated_kinds(cfg):
        apply_threads(cfg)
        domain.make_datasets(cfg, generated, cfg.overwrite)
    seconds["make-dataset"] = time.perf_counter() - start

    if domain.pretrained_models:  # nothing to train: extract from what make-dataset recorded of the two models
        start = time.perf_counter()
        summary |= domain.summary_for_pipeline(domain.extract_pretrained(cfg, run_dir / "extract", group, True))
        seconds["extract"] = time.perf_counter() - start
        return _finish(cfg, run_dir, domain, summary, seconds)

    folders = pipeline_folders(run_dir)
    models = {kind: folders[f"{kind}_model"] for kind in ("base", "expert")}
    device = torch_device(cfg)
    for kind, stage_dir in models.items():
        start = time.perf_counter()
        metrics = _run_stage(stage_dir, MODEL_FILE, train_diffusion.made_from(cfg, kind, device),
                             partial(train_diffusion.run, cfg, stage_dir, kind, group, start_afresh=True),
                             steps=cfg.train.n_steps)
        seconds[f"train-diffusion[{kind}]"] = time.perf_counter() - start
        summary |= {f"{kind}/{key}": value for key, value in domain.summary_for_pipeline(metrics).items()}
        summary[f"{kind}/final_loss"] = metrics["final_loss"]

    stage_dir, start = folders["reward_model"], time.perf_counter()
    metrics = _run_stage(stage_dir, REWARD_FILE, extract.made_from(cfg, models["base"], models["expert"], device),
                         partial(extract.run, cfg, stage_dir, models["base"], models["expert"], group,
                                 start_afresh=True), extract.evaluation_settings(cfg), steps=cfg.extract.n_steps)
    seconds["extract"] = time.perf_counter() - start
    summary |= domain.summary_for_pipeline(metrics)

    if cfg.pipeline.steer:
        reward_dir, stage_dir, start = stage_dir, run_dir / "steer_eval", time.perf_counter()
        metrics = _run_stage(stage_dir, "metrics.json",
                             steer_eval.made_from(cfg, models["base"], models["expert"], reward_dir),
                             partial(steer_eval.run, cfg, stage_dir, models["base"], models["expert"],
                                     reward_dir, group, start_afresh=True))
        seconds["steer-eval"] = time.perf_counter() - start
        summary |= domain.summary_for_pipeline(metrics)
    return _finish(cfg, run_dir, domain, summary, seconds)


def _finish(cfg: DictConfig, run_dir: Path, domain: families.EnvFamily, summary: dict,
            seconds: dict[str, float]) -> dict:
    """Add the stage times to the summary, write it to ``metrics.json``, print it and the env's headline."""
    summary |= {f"seconds/{stage}": value for stage, value in seconds.items()}
    summary["seconds/total"] = sum(seconds.values())
    write_json_atomic(run_dir / "metrics.json", summary)
    print_summary_table(f"pipeline {cfg.env.name} (seed {cfg.seed}) -> {run_dir}", summary)
    if headline := domain.headline(summary):
        print(headline)
    return summary


def check_settings(cfg: DictConfig, given: Collection[str] | None = None) -> None:
    """Refuse settings given on the command line (or ``given``, keys) that this stage does not read."""
    if not cfg.pipeline.steer:
        check_settings_read(cfg, "pipeline", tuple(key for key in SETTINGS_BY_STAGE if key != "steer"), given,
                            "The pipeline runs steer-eval only with pipeline.steer=true.")


def main(cfg: DictConfig) -> dict:
    check_settings(cfg)
    return run(cfg, hydra_run_dir())
