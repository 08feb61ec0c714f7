"""What the stages need of a family of environments, as one interface: data, model diagnostics, reward
evaluation and steering evaluation.

A family is chosen by the env config's ``family`` key (:func:`relreward_cli.families.family_of`). The stages
(``relreward_cli.stages``) call these methods and hold no family-specific code; adding a family is one module
implementing :class:`EnvFamily` plus one env YAML under ``configs/env/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from omegaconf import DictConfig

if TYPE_CHECKING:
    from relreward_cli.data.pairs import SegmentPair
    from relreward_cli.diffusion.artifact import TrainedDiffusion
    from relreward_cli.planning.guidance import RewardGuide
    from relreward_cli.reward.trainer import TrainedReward
    from relreward_cli.tracking import RunTracker


class EnvFamily(ABC):
    """One family of environments (Maze2D, locomotion, images, ...).

    ``network`` names the denoiser and reward architecture its samples need (``temporal``: 1-D convolutions
    over the steps of a trajectory segment; ``image``: 2-D convolutions over an image). Samples are always
    ``(horizon, transition_dim)`` arrays: segment steps x transition entries, or image rows x columns.
    """

    name: str = ""
    network: str = "temporal"
    pretrained_models: bool = False  # compares two given models: nothing to train, its own extraction
    samples_of_horizon: bool = True  # samples are `horizon` rows, so the networks built from config halve it
    env_settings_by_stage: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    """Env settings (keys or sections under ``env``, e.g. ``evaluate``) that only some stages read, with those stages;
    every stage reads the others. A stage given one it does not read refuses it (``relreward pipeline`` runs them
    all), since the value would not act."""

    def stages_reading(self, key: str) -> tuple[str, ...] | None:
        """The stages that read the env setting ``key`` (``env.generate.seed``): those of the most specific entry of
        :attr:`env_settings_by_stage` it falls under, or None (every stage) where none does."""
        parts = key.removeprefix("env.").split(".")
        for n in range(len(parts), 0, -1):
            if (stages := self.env_settings_by_stage.get(".".join(parts[:n]))) is not None:
                return stages
        return None

    def check_config(self, cfg: DictConfig) -> None:
        """Refuse (``UserError``) a config this family cannot run, before any work. Default: none to refuse."""
        return None

    @abstractmethod
    def generated_kinds(self, cfg: DictConfig) -> tuple[str, ...]:
        """Which of ``base``, ``expert`` this config's ``make_datasets`` writes (the pipeline makes them first)."""

    @abstractmethod
    def make_datasets(self, cfg: DictConfig, kinds: tuple[str, ...], overwrite: bool) -> dict[str, dict]:
        """Write the datasets of ``kinds`` unless identical ones exist; per dataset: id, size, seconds, status."""

    def data_settings(self, cfg: DictConfig) -> dict:
        """Settings beyond the dataset files that decide which samples a model trains on and a reward is evaluated on
        (e.g. a train / test split), for the provenance of both. Default: none."""
        return {}

    @abstractmethod
    def dataset_inputs(self, cfg: DictConfig) -> dict[str, Path]:
        """The files the base and expert data are read from, whose digests a run's provenance records."""

    @abstractmethod
    def load_data(self, cfg: DictConfig, model: TrainedDiffusion | None = None) -> SegmentPair:
        """Base and expert training samples in one normalized space: the config's data and sizes, with the
        normalizer fitted on both; or, given a trained ``model``, the data it was trained on (its recorded
        sources) in its space (its normalizer, horizon, layout). Refuses data that do not fit the environment."""

    def model_diagnostics(self, cfg: DictConfig, model: TrainedDiffusion, tracker: RunTracker, kind: str) -> dict:
        """Metrics and plots of a trained diffusion model's samples. Default: none."""
        return {}

    def reward_diagnostics(self, cfg: DictConfig, reward: TrainedReward, data: SegmentPair,
                           tracker: RunTracker) -> dict:
        """Metrics and plots of an extracted reward against what is known of the task. Default: none."""
        return {}

    def evaluation_settings(self, cfg: DictConfig) -> dict:
        """The settings of :meth:`reward_diagnostics` beyond ``extract``'s evaluation keys (e.g. which fresh
        episodes it draws), recorded with a reward's metrics so that other settings evaluate it again. Default:
        none."""
        return {}

    @abstractmethod
    def evaluate_steering(self, cfg: DictConfig, base: TrainedDiffusion, expert: TrainedDiffusion,
                          guide: RewardGuide | None, tracker: RunTracker) -> dict:
        """Sample or plan with the base model unsteered and steered by ``guide`` (and with the expert model), as
        ``cfg.steer`` says; measure the outcome, log plots to ``tracker``; print a table. Returns the metrics."""

    def summary_for_pipeline(self, metrics: dict) -> dict:
        """The extract and steer-eval metrics that ``relreward pipeline`` keeps in its summary. Default: none."""
        return {}

    def extract_pretrained(self, cfg: DictConfig, run_dir: Path, group: str | None, start_afresh: bool) -> dict:
        """The extraction of a family of ``pretrained_models`` (from what ``make_datasets`` recorded of them), into
        ``run_dir``; returns the summary metrics."""
        raise NotImplementedError(f"{type(self).__name__} trains its own models; the extract stage extracts it.")

    def headline(self, summary: dict) -> str | None:
        """One sentence for the end of ``relreward pipeline`` (the result a user looks for), or None."""
        return None
