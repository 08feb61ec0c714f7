"""Stable Diffusion vs Safe Stable Diffusion: the paper's image experiment with the real pretrained pipelines, for
users with the weights and a GPU (``pip install 'relreward[images]'``; nothing is downloaded).

There is nothing to train: ``make-dataset`` records, for the prompts of ``env.prompts``, both pipelines' next latents
from the same current latent along the base pipeline's trajectories (``relreward_cli.images.stable_diffusion``), split
by prompt into a training and a held-out part; ``extract`` fits the latent reward to the difference of the two next
latents and scores it on the held-out prompts (how well it separates the two pipelines' final latents).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from relreward_cli import provenance
from relreward_cli.errors import UserError
from relreward_cli.families.base import EnvFamily
from relreward_cli.stages.common import config_subset, data_root, torch_device
from relreward_cli.tracking import RunTracker, print_summary_table, tracker_from_config, write_json_atomic
from relreward_cli.training import save_checkpoint

log = logging.getLogger(__name__)
PARTS = ("train", "test")
REWARD_FILE = "reward.pt"


class StableDiffusionFamily(EnvFamily):
    name = "stable_diffusion"
    network = "latent"
    pretrained_models = True
    samples_of_horizon = False  # 4 x 64 x 64 latents: `horizon` sizes nothing here

    def check_config(self, cfg: DictConfig) -> None:
        from relreward_cli.images.stable_diffusion import read_prompts

        if not cfg.env.base_pipeline or not cfg.env.expert_pipeline or not cfg.env.prompts:
            raise UserError("env=stable_diffusion needs env.base_pipeline and env.expert_pipeline (local diffusers "
                            "folders or models in the Hugging Face cache) and env.prompts (a .txt file, one prompt per "
                            "line, or an I2P-style .csv with a `prompt` column).")
        if len(read_prompts(Path(cfg.env.prompts).expanduser())) < 4:
            raise UserError(f"env.prompts={cfg.env.prompts} has fewer than 4 prompts: the held-out part needs at "
                            "least 2 (one to fit the accuracy's threshold, one to score it) and training needs some.")

    def record_folder(self, cfg: DictConfig) -> Path:
        return data_root(cfg) / "relreward" / "stable_diffusion" / cfg.env.record_name

    def dataset_inputs(self, cfg: DictConfig) -> dict[str, Path]:
        return {f"{part}_latents": self.record_folder(cfg) / f"{part}.pt" for part in PARTS}

    def generated_kinds(self, cfg: DictConfig) -> tuple[str, ...]:
        return ("base", "expert")

    def recording_settings(self, cfg: DictConfig) -> dict:
        env = cfg.env
        prompts = Path(env.prompts).expanduser()
        return {"base_pipeline": env.base_pipeline, "expert_pipeline": env.expert_pipeline,
                "expert_safe": env.expert_safe, "prompts_sha256": hashlib.sha256(prompts.read_bytes()).hexdigest(),
                "test_fraction": env.test_fraction, "split_seed": env.split_seed,
                **{key: env.record[key] for key in ("n_steps", "guidance_scale", "height", "width", "seed")}}

    def make_datasets(self, cfg: DictConfig, kinds: tuple[str, ...], overwrite: bool) -> dict[str, dict]:
        """Record both pipelines' latent steps for the training and the held-out prompts (both kinds at once),
        unless a record of the same settings exists; one of other settings is refused unless ``overwrite``."""
        from relreward_cli.images.stable_diffusion import (
            load_pipeline_pair,
            read_prompts,
            record_latent_steps,
            save_latent_record,
        )

        self.check_config(cfg)
        folder, settings = self.record_folder(cfg), self.recording_settings(cfg)
        meta_file = folder / "record.json"
        if meta_file.is_file() and not overwrite:
            found = json.loads(meta_file.read_text())
            if found == settings and all(path.is_file() for path in self.dataset_inputs(cfg).values()):
                return {part: {"id": str(folder / f"{part}.pt"), "seconds": 0.0, "status": "exists"} for part in PARTS}
            raise UserError(f"A latent record with other settings is in {folder} ({found}). Pass overwrite=true to "
                            "record it again, or env.record_name=<another name> to keep both.")
        prompts = read_prompts(Path(cfg.env.prompts).expanduser())
        order = np.random.default_rng(cfg.env.split_seed).permutation(len(prompts))
        n_test = max(2, round(cfg.env.test_fraction * len(prompts)))
        parts = {"train": [prompts[i] for i in sorted(order[n_test:])],
                 "test": [prompts[i] for i in sorted(order[:n_test])]}
        device = torch_device(cfg)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        base, expert = load_pipeline_pair(cfg.env.base_pipeline, cfg.env.expert_pipeline, device, dtype,
                                          expert_safe=cfg.env.expert_safe)
        results, rc = {}, cfg.env.record
        meta_file.unlink(missing_ok=True)  # a record being rewritten is never taken for a finished one
        for part, part_prompts in parts.items():
            start = time.perf_counter()
            record = record_latent_steps(
                base, expert, part_prompts, rc.n_steps, rc.guidance_scale, rc.seed, rc.height, rc.width,
                rc.batch_size, on_progress=lambda done, total, part=part: log.info("recorded %s prompts %d/%d", part,
                                                                                   done, total))
            save_latent_record(record, folder / f"{part}.pt")
            results[part] = {"id": str(folder / f"{part}.pt"), "prompts": len(part_prompts),
                             "seconds": time.perf_counter() - start, "status": "written"}
        write_json_atomic(meta_file, settings)
        return results

    def load_data(self, cfg: DictConfig, model=None):
        raise self._nothing_to_train()

    def evaluate_steering(self, cfg: DictConfig, base, expert, guide, tracker: RunTracker) -> dict:
        raise UserError("env=stable_diffusion extracts and evaluates the latent reward (relreward extract); steering "
                        "Stable Diffusion with it is not part of relreward. Use env=digits for reward-guided image "
                        "sampling.")

    @staticmethod
    def _nothing_to_train() -> UserError:
        return UserError("env=stable_diffusion compares two pretrained pipelines, so there is no diffusion model to "
                         "train. Run `relreward make-dataset env=stable_diffusion ...` (records their latents) and "
                         "then `relreward extract env=stable_diffusion ...`, or both with `relreward pipeline`.")

    def extract_pretrained(self, cfg: DictConfig, run_dir: Path, group: str | None, start_afresh: bool) -> dict:
        """Fit the latent reward on the training prompts' record into ``run_dir/reward.pt``; score it on the
        held-out prompts (accuracy and AUROC of separating the two pipelines' final latents)."""
        from relreward_cli.images.stable_diffusion import (
            final_latent_accuracy,
            load_latent_record,
            train_latent_reward,
        )

        self.check_config(cfg)
        inputs = self.dataset_inputs(cfg)
        missing = [str(path) for path in inputs.values() if not path.is_file()]
        if missing:
            raise UserError(f"No latent record at {', '.join(missing)}. Record it first: `relreward make-dataset "
                            "env=stable_diffusion` with the same env settings (or run `relreward pipeline`).")
        ec = cfg.extract
        settings = config_subset(cfg, {"seed": (), "reward": (), "extract": ("n_steps", "batch_size", "lr")})
        made_from = provenance.record({"stage": "extract", "env": cfg.env.name, **settings}, inputs)
        provenance.claim(run_dir, made_from, start_afresh=start_afresh, how_to_start_afresh="overwrite=true")
        device = torch_device(cfg)
        with tracker_from_config(cfg, run_dir, "extract", group) as tracker:
            start = time.perf_counter()
            net, losses = train_latent_reward(
                load_latent_record(inputs["train_latents"]), ec.n_steps, ec.batch_size, ec.lr, cfg.seed, device,
                on_log=lambda scalars, step: tracker.log({f"extract/{k}": v for k, v in scalars.items()}, step),
                dim=cfg.reward.dim, dim_mults=tuple(cfg.reward.dim_mults), log_every=ec.log_every)
            seconds = time.perf_counter() - start
            save_checkpoint(run_dir / REWARD_FILE, {
                "kind": "latent-reward-model", "weights": net.state_dict(), "step": len(losses),
                "architecture": {"channels": net.channels, "dim": net.dim, "dim_mults": list(net.dim_mults)},
                "info": {"env": cfg.env.name, "seed": cfg.seed,
                         "record": OmegaConf.to_container(cfg.env, resolve=True)}})
            scores = final_latent_accuracy(net, load_latent_record(inputs["test_latents"]), cfg.seed)
            metrics = {**{f"heldout/{key}": value for key, value in scores.items()}, "steps": len(losses),
                       "final_loss": float(np.mean(losses[-ec.log_every:])), "seconds": seconds, "device": str(device)}
            tracker.summary(metrics)
        provenance.seal(run_dir)
        print_summary_table(f"extract {cfg.env.name} -> {run_dir}", metrics)
        return metrics

    def summary_for_pipeline(self, metrics: dict) -> dict:
        return {key: value for key, value in metrics.items() if key.startswith("heldout/")}

    def headline(self, summary: dict) -> str | None:
        if "heldout/accuracy" not in summary:
            return None
        return (f"Held-out prompts: the latent reward separates the expert's final latents from the base's with "
                f"accuracy {summary['heldout/accuracy']:.3f} (AUROC {summary['heldout/auroc']:.3f}).")



FAMILY = StableDiffusionFamily
