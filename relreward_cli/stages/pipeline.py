"""``relreward pipeline``: make-dataset -> train-diffusion (base, expert) -> extract, in one command.

Each stage writes into a subfolder of the pipeline's run folder (``diffusion_base/``, ``diffusion_expert/``,
``extract/``) and logs to one W&B group. A stage whose finished artifact is there (``model.pt``,
``reward.pt`` with its ``metrics.json``) is skipped and an interrupted one resumes from its checkpoint, so
running a killed pipeline again finishes it without redoing work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from relreward_cli.data.sources import split_source
from relreward_cli.diffusion.artifact import MODEL_FILE
from relreward_cli.reward.trainer import REWARD_FILE
from relreward_cli.stages import extract, make_dataset, train_diffusion
from relreward_cli.stages.common import hydra_run_dir
from relreward_cli.tracking import print_summary_table, write_json_atomic


def _finished(run_dir: Path, artifact: str) -> dict | None:
    """The stage's summary if its artifact and ``metrics.json`` exist, else None."""
    metrics = run_dir / "metrics.json"
    if (run_dir / artifact).is_file() and metrics.is_file():
        return json.loads(metrics.read_text())
    return None


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Run (or finish) every stage of the pipeline into ``run_dir``; returns the summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    group = cfg.logger.group or f"pipeline-{cfg.name}"
    seconds: dict[str, float] = {}
    summary: dict = {}

    start = time.perf_counter()
    generated = [kind for kind in ("base", "expert") if split_source(cfg.env[f"{kind}_data"])[0] == "generated"]
    if generated:
        make_dataset.make_datasets(cfg, tuple(generated), cfg.overwrite)
    seconds["make-dataset"] = time.perf_counter() - start

    for kind in ("base", "expert"):
        stage_dir, start = run_dir / f"diffusion_{kind}", time.perf_counter()
        metrics = _finished(stage_dir, MODEL_FILE) or train_diffusion.run(cfg, stage_dir, kind, group)
        seconds[f"train-diffusion[{kind}]"] = time.perf_counter() - start
        summary |= {f"{kind}/{key}": metrics[key] for key in metrics if key.startswith("plans/")}
        summary[f"{kind}/final_loss"] = metrics["final_loss"]

    stage_dir, start = run_dir / "extract", time.perf_counter()
    metrics = _finished(stage_dir, REWARD_FILE) or extract.run(
        cfg, stage_dir, run_dir / "diffusion_base", run_dir / "diffusion_expert", group)
    seconds["extract"] = time.perf_counter() - start
    summary |= {key: value for key, value in metrics.items() if key.startswith("pearson/") or key == "heatmap"}
    summary |= {f"seconds/{stage}": value for stage, value in seconds.items()}
    summary["seconds/total"] = sum(seconds.values())
    write_json_atomic(run_dir / "metrics.json", summary)
    print_summary_table(f"pipeline {cfg.env.name} (seed {cfg.seed}) -> {run_dir}", summary)
    return summary


def main(cfg: DictConfig) -> dict:
    return run(cfg, hydra_run_dir())
