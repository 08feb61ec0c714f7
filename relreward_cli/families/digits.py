"""Digits: the paper's image experiment, offline on a laptop. scikit-learn's 8x8 handwritten digits (shipped with
the package, no download); the base model learns every digit, the expert only a subset (the analogue of a "safe"
model that avoids some content). The reward is evaluated on held-out test images (does it separate the expert's
digits from the rest?) and steering by the content of guided samples, labelled by a classifier trained on the
training digits.

An image is a ``(8, 8)`` sample (rows x columns) in raw pixel units [0, 16], normalized to [-1, 1] by the fixed
pixel range (not fitted), so base and expert share one space whatever their classes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from relreward_cli.data.digits import (
    PIXEL_MAX,
    DigitsSplit,
    ImageSamples,
    classify,
    digits_data_file,
    fit_digit_classifier,
    load_digits_split,
    split_problems,
)
from relreward_cli.data.normalizer import Normalizer
from relreward_cli.data.pairs import SegmentPair
from relreward_cli.data.segments import TransitionLayout
from relreward_cli.diffusion.artifact import TrainedDiffusion
from relreward_cli.errors import UserError
from relreward_cli.families.base import EnvFamily
from relreward_cli.planning.evaluation import planner_settings
from relreward_cli.planning.guidance import RewardGuide
from relreward_cli.planning.scores import mean_and_sem
from relreward_cli.plots import plot_class_rewards, plot_class_shares, plot_image_grid
from relreward_cli.reward.classification import auroc, class_means, heldout_accuracy
from relreward_cli.reward.evaluate import noised_reward
from relreward_cli.reward.trainer import TrainedReward
from relreward_cli.tracking import RunTracker

SOURCE_PREFIX = "digits:"
CLASSES = np.arange(10)
IMAGE_SIZE = 8


def digit_classes(source: str) -> tuple[int, ...]:
    """The digits a source ``digits:<digits>`` names, one character each (``digits:01``: the zeros and ones; no
    commas, which Hydra's command line would read as a list)."""
    classes = source.removeprefix(SOURCE_PREFIX) if source.startswith(SOURCE_PREFIX) else ""
    if not classes or not classes.isdigit():
        raise UserError(f"Data source {source!r}: the digits env reads sources written digits:<digits>, one "
                        "character per digit, e.g. env.expert_data=digits:01 (the expert's digits: zeros and ones) "
                        "and env.base_data=digits:0123456789.")
    return tuple(sorted({int(c) for c in classes}))


def pixel_normalizer() -> Normalizer:
    """[0, 16] pixels -> [-1, 1], the same for every column (an image's ``transition_dim``)."""
    half = np.full(IMAGE_SIZE, PIXEL_MAX / 2)
    return Normalizer("limits", half, half)


@functools.lru_cache(maxsize=4)
def digits_split(test_fraction: float, seed: int) -> DigitsSplit:
    return load_digits_split(test_fraction, seed)


@functools.lru_cache(maxsize=4)
def digit_classifier(test_fraction: float, seed: int):
    """The classifier trained on the split's training digits, and its test accuracy."""
    split = digits_split(test_fraction, seed)
    classifier = fit_digit_classifier(split.train_images, split.train_labels, seed)
    accuracy = float((classify(classifier, split.test_images) == split.test_labels).mean())
    return classifier, accuracy


class DigitsFamily(EnvFamily):
    name = "digits"
    network = "image"

    # --- data ---------------------------------------------------------------------------------------------------
    def split(self, cfg: DictConfig) -> DigitsSplit:
        return digits_split(float(cfg.env.test_fraction), int(cfg.env.split_seed))

    def expert_classes(self, cfg: DictConfig) -> tuple[int, ...]:
        return digit_classes(cfg.env.expert_data)

    def check_config(self, cfg: DictConfig) -> None:
        base, expert = digit_classes(cfg.env.base_data), digit_classes(cfg.env.expert_data)
        if not set(expert) < set(base):
            raise UserError(f"env.expert_data={cfg.env.expert_data} must name fewer digits than, and only digits of, "
                            f"env.base_data={cfg.env.base_data}: the expert learns a subset of what the base learns.")
        if problems := split_problems(cfg.env.test_fraction, cfg.env.split_seed):
            raise UserError("The digits' split settings cannot work; nothing was run:\n  "
                            + "\n  ".join(f"env.{problem}" for problem in problems))
        if cfg.horizon != IMAGE_SIZE or cfg.use_actions:
            raise UserError(f"horizon={cfg.horizon}, use_actions={cfg.use_actions}: a digit is {IMAGE_SIZE} rows of "
                            f"{IMAGE_SIZE} pixels, so env=digits needs horizon={IMAGE_SIZE} and use_actions=false "
                            "(its env config sets both; remove the override).")

    def generated_kinds(self, cfg: DictConfig) -> tuple[str, ...]:
        return ()

    def make_datasets(self, cfg: DictConfig, kinds: tuple[str, ...], overwrite: bool) -> dict[str, dict]:
        """Nothing to write: scikit-learn ships the digits. Reports the split's sizes."""
        self.check_config(cfg)
        split = self.split(cfg)
        return {kind: {"id": cfg.env[f"{kind}_data"], "images": int(np.isin(split.train_labels, classes).sum()),
                       "seconds": 0.0, "status": "shipped with scikit-learn"}
                for kind, classes in (("base", digit_classes(cfg.env.base_data)),
                                      ("expert", self.expert_classes(cfg)))}

    def data_settings(self, cfg: DictConfig) -> dict:
        return {"test_fraction": float(cfg.env.test_fraction), "split_seed": int(cfg.env.split_seed)}

    def dataset_inputs(self, cfg: DictConfig) -> dict[str, Path]:
        return {"digits_data": digits_data_file()}

    def load_data(self, cfg: DictConfig, model: TrainedDiffusion | None = None) -> SegmentPair:
        sources = model.info["sources"] if model else {"base": cfg.env.base_data, "expert": cfg.env.expert_data}
        normalizer = model.normalizer if model else pixel_normalizer()
        split = self.split(cfg)
        samples = {}
        for kind, source in sources.items():
            keep = np.isin(split.train_labels, digit_classes(source))
            samples[kind] = ImageSamples(normalizer.normalize(split.train_images[keep]), split.train_labels[keep])
        return SegmentPair(samples["base"], samples["expert"], normalizer, TransitionLayout(IMAGE_SIZE, 0),
                           IMAGE_SIZE, 0, dict(sources))

    # --- diagnostics --------------------------------------------------------------------------------------------
    def model_diagnostics(self, cfg: DictConfig, model: TrainedDiffusion, tracker: RunTracker, kind: str,
                          n_samples: int = 200) -> dict:
        """Samples of the model labelled by the digit classifier: each class's share, the expert's classes' share,
        and a grid of samples."""
        generator = torch.Generator(model.diffusion.device).manual_seed(cfg.seed)
        x = model.diffusion.sample(n_samples, sampler=cfg.train.sampler, generator=generator).x
        images = model.normalizer.unnormalize(x.cpu().numpy())
        classifier, accuracy = digit_classifier(float(cfg.env.test_fraction), int(cfg.env.split_seed))
        labels = classify(classifier, images)
        shares = np.bincount(labels, minlength=10) / len(labels)
        path = plot_image_grid({f"{kind} samples": images[:cfg.train.n_plot_samples]},
                               tracker.plots_dir / "samples.png", f"{kind} model: {cfg.train.sampler} samples")
        tracker.log_image("samples", path)
        return {"samples/expert_share": float(np.isin(labels, self.expert_classes(cfg)).mean()),
                **{f"samples/share_{c}": float(shares[c]) for c in CLASSES}, "classifier/test_accuracy": accuracy}

    def reward_diagnostics(self, cfg: DictConfig, reward: TrainedReward, data: SegmentPair,
                           tracker: RunTracker) -> dict:
        """On held-out test images: AUROC and held-out accuracy (a one-feature logistic regression fit on half,
        scored on the other half) of the reward separating the expert's digits from the rest, at every diffusion
        time of ``extract.eval_t`` and, as the headline, at ``extract.report_t`` (fixed in the config); the mean
        reward per digit; the test images of highest and lowest reward."""
        ec, split, expert = cfg.extract, self.split(cfg), self.expert_classes(cfg)
        x0 = torch.as_tensor(reward.normalizer.normalize(split.test_images), dtype=torch.float32)
        positive = np.isin(split.test_labels, expert)
        metrics, values = {}, {}
        for t in sorted({*ec.eval_t, ec.report_t}):
            values[t] = noised_reward(reward, x0, t, ec.eval_noise_samples, cfg.seed)
            metrics[f"auroc/t{t}"] = auroc(values[t], positive)
            metrics[f"accuracy/t{t}"] = heldout_accuracy(values[t], positive, cfg.seed)
        t = ec.report_t
        metrics |= {"headline/auroc": metrics[f"auroc/t{t}"], "headline/accuracy": metrics[f"accuracy/t{t}"],
                    "report_t": t}
        classes, means, sems = class_means(values[t], split.test_labels)
        paths = {"class_rewards": plot_class_rewards(
            classes, means, sems, set(expert), tracker.plots_dir / "class_rewards.png",
            f"mean reward of test images per digit (t={t}); AUROC {metrics['headline/auroc']:.3f}")}
        order = np.argsort(values[t])
        ends = {"highest reward": order[::-1][:10], "lowest reward": order[:10]}
        paths["reward_extremes"] = plot_image_grid(
            {name: split.test_images[rows] for name, rows in ends.items()}, tracker.plots_dir / "reward_extremes.png",
            f"test images of highest and lowest reward (t={t})",
            {name: [f"{values[t][i]:.2f}" for i in rows] for name, rows in ends.items()})
        for key, path in paths.items():
            tracker.log_image(key, path)
        return metrics | {f"reward_mean/digit_{c}": float(m) for c, m in zip(classes, means, strict=True)} | {
            f"{key}_plot": str(path) for key, path in paths.items()}

    # --- steering -----------------------------------------------------------------------------------------------
    def evaluate_steering(self, cfg: DictConfig, base: TrainedDiffusion, expert: TrainedDiffusion,
                          guide: RewardGuide | None, tracker: RunTracker) -> dict:
        """``steer.n_episodes`` samples per seed of ``steer.seeds`` from each planner (one image per sample; the
        ranked ones keep the best of ``steer.n_plans`` by reward), labelled by the digit classifier: the share of
        the expert's digits (mean ± binomial s.e. over all samples), per seed, and each digit's share."""
        sc, expert_digits = cfg.steer, self.expert_classes(cfg)
        classifier, accuracy = digit_classifier(float(cfg.env.test_fraction), int(cfg.env.split_seed))
        planners = {name: planner for name, planner in planner_settings(base, expert, guide, sc.n_plans).items()
                    if name in sc.planners}
        images, labels, metrics = {}, {}, {}
        for name, (model, planner_guide, n_plans) in planners.items():
            per_seed = [self._sample(cfg, model, planner_guide, n_plans, seed) for seed in sc.seeds]
            images[name] = np.concatenate(per_seed)
            labels[name] = classify(classifier, images[name])
            in_expert = np.isin(labels[name], expert_digits)
            share, sem = mean_and_sem(in_expert.astype(float))
            metrics |= {f"{name}/expert_share": share, f"{name}/expert_share_sem": sem,
                        f"{name}/expert_share_per_seed": in_expert.reshape(len(per_seed), -1).mean(axis=1).tolist(),
                        f"{name}/samples": len(in_expert),
                        **{f"{name}/share_{c}": float((labels[name] == c).mean()) for c in CLASSES}}
        if "base" in planners:
            for name in planners:
                base_share = metrics["base/expert_share"]
                metrics[f"{name}/expert_share_vs_base"] = (metrics[f"{name}/expert_share"] / base_share
                                                           if base_share else float("inf"))
        metrics["classifier/test_accuracy"] = accuracy
        shares = {name: np.bincount(found, minlength=10) / len(found) for name, found in labels.items()}
        paths = {"class_shares": plot_class_shares(CLASSES, shares, set(expert_digits),
                                                   tracker.plots_dir / "class_shares.png",
                                                   f"digits sampled by each planner (scale {sc.scale})"),
                 "samples": plot_image_grid({name: found[:12] for name, found in images.items()},
                                            tracker.plots_dir / "samples.png", "first samples of each planner")}
        for key, path in paths.items():
            tracker.log_image(key, path)
        _print_shares(f"steer-eval {cfg.env.name}: expert digits {list(expert_digits)} (scale {sc.scale}, "
                      f"{sc.sampler}); classifier test accuracy {accuracy:.3f}", planners, metrics)
        return metrics | {f"{key}_plot": str(path) for key, path in paths.items()}

    @torch.no_grad()
    def _sample(self, cfg: DictConfig, model: TrainedDiffusion, guide: RewardGuide | None, n_plans: int,
                seed: int) -> np.ndarray:
        """``steer.n_episodes`` images ``(N, 8, 8)`` in pixel units, each the best by reward of ``n_plans``."""
        sc, n = cfg.steer, cfg.steer.n_episodes
        generator = torch.Generator(model.diffusion.device).manual_seed(seed)
        x = model.diffusion.sample(n * n_plans, sampler=sc.sampler, n_sample_steps=sc.n_sample_steps, eta=sc.eta,
                                   generator=generator, guide=guide).x
        if guide is not None and n_plans > 1:
            best = guide.plan_reward(x).view(n, n_plans).argmax(dim=1)
            x = x.view(n, n_plans, *x.shape[1:])[torch.arange(n, device=x.device), best]
        return model.normalizer.unnormalize(x.cpu().numpy())

    def summary_for_pipeline(self, metrics: dict) -> dict:
        kept = ("report_t", "classifier/test_accuracy", "samples/expert_share")
        return {key: value for key, value in metrics.items()
                if key in kept or key.startswith("headline/") or key.endswith("/expert_share")}

    def headline(self, summary: dict) -> str | None:
        if "headline/auroc" not in summary:
            return None
        line = (f"Held-out test digits: the reward separates the expert's digits from the rest with AUROC "
                f"{summary['headline/auroc']:.3f} (accuracy {summary['headline/accuracy']:.3f}) at "
                f"t={summary['report_t']}.")
        if "guided/expert_share" in summary and "base/expert_share" in summary:
            line += (f"\nSteering: expert-digit share of base samples {summary['base/expert_share']:.1%} unguided, "
                     f"{summary['guided/expert_share']:.1%} guided.")
        return line


def _print_shares(title: str, planners: dict, metrics: dict) -> None:
    table = Table(title=title, caption="share of the expert's digits among the samples: mean ± s.e. over samples")
    for column in ("planner", "expert share", "per seed", "vs base", "samples"):
        table.add_column(column, justify="left" if column == "planner" else "right")
    for name in planners:
        per_seed = " / ".join(f"{v:.0%}" for v in metrics[f"{name}/expert_share_per_seed"])
        ratio = metrics.get(f"{name}/expert_share_vs_base")
        table.add_row(name, f"{metrics[f'{name}/expert_share']:.1%} ± {metrics[f'{name}/expert_share_sem']:.1%}",
                      per_seed, "-" if ratio is None else f"{ratio:.2f}x", str(metrics[f"{name}/samples"]))
    Console().print(table)


FAMILY = DigitsFamily
