"""Trained diffusion models as files: build from a spec, train, save and load (with their normalizer).

A finished ``train-diffusion`` run folder holds ``model.pt``: the EMA weights, the :class:`DiffusionSpec`
(shapes, architecture, schedule), the normalizer and where the data came from. Every consumer
(``extract``, planning) loads it with :func:`load_diffusion_model`; :func:`check_compatible` refuses a
base/expert pair that does not live in one space before any work is done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from relreward_cli.data.normalizer import Normalizer
from relreward_cli.data.pairs import SegmentPair
from relreward_cli.diffusion.ema import EMA
from relreward_cli.diffusion.gaussian import GaussianDiffusion
from relreward_cli.diffusion.schedule import NoiseSchedule
from relreward_cli.errors import UserError
from relreward_cli.models.networks import networks
from relreward_cli.training import TrainResult, artifact_file, flat_adam, load_checkpoint, save_checkpoint, train_loop

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class DiffusionSpec:
    """Everything needed to rebuild a diffusion model of samples ``(horizon, transition_dim)``.

    ``transition_dim = obs_dim + act_dim`` with actions first when ``use_actions``, else ``obs_dim``. Image
    models (``network="image"``) read images of ``horizon`` rows and ``obs_dim`` columns.
    """

    horizon: int
    obs_dim: int
    act_dim: int
    use_actions: bool
    dim: int
    dim_mults: tuple[int, ...]
    n_steps: int
    schedule: str = "cosine"
    clip_denoised: bool = True
    prediction: str = "eps"
    network: str = "temporal"  # the denoiser's architecture (relreward_cli.models.networks)

    @property
    def transition_dim(self) -> int:
        return self.obs_dim + self.act_dim if self.use_actions else self.obs_dim

    @property
    def action_dim(self) -> int:
        """Offset of the observation block in a transition."""
        return self.act_dim if self.use_actions else 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionSpec:
        return cls(**{**data, "dim_mults": tuple(data["dim_mults"])})


def normalize_observations(spec: DiffusionSpec, normalizer: Normalizer, observations: np.ndarray) -> np.ndarray:
    """Raw observations ``(N, obs_dim)`` -> the observation block ``(N, obs_dim)`` of normalized transitions
    (what inpainting writes into a segment)."""
    rows = np.zeros((len(observations), spec.transition_dim), np.float32)
    rows[:, spec.action_dim:] = observations
    return normalizer.normalize(rows)[:, spec.action_dim:]


def build_diffusion(spec: DiffusionSpec) -> GaussianDiffusion:
    """A freshly initialized :class:`GaussianDiffusion` with the spec's denoiser (a temporal or an image U-Net)."""
    denoiser, _ = networks(spec.network)
    unet = denoiser(spec.horizon, spec.transition_dim, spec.dim, spec.dim_mults)
    return GaussianDiffusion(unet, NoiseSchedule(spec.n_steps, spec.schedule), spec.horizon,
                             spec.transition_dim, spec.action_dim, spec.clip_denoised, spec.prediction)


@dataclass
class TrainedDiffusion:
    """A loaded ``model.pt``: the model (EMA weights, eval mode), its spec, normalizer and data info."""

    diffusion: GaussianDiffusion
    spec: DiffusionSpec
    normalizer: Normalizer
    info: dict[str, Any]
    path: Path

    @property
    def schedule(self) -> NoiseSchedule:
        return self.diffusion.schedule


def model_file(path: Path) -> Path:
    """The ``model.pt`` of a ``train-diffusion`` run folder, or ``path`` itself when it names a file."""
    return artifact_file(path, MODEL_FILE)


def load_diffusion_model(path: Path, device: str | torch.device = "cpu") -> TrainedDiffusion:
    """Load a finished diffusion model from a run folder or a ``model.pt``."""
    file = model_file(path)
    if not file.is_file():
        raise UserError(f"No trained diffusion model at {file}. Pass the run folder of a finished training (a "
                        "train-diffusion run, or a pipeline's diffusion_base/ or diffusion_expert/) or its model.pt.")
    payload = load_checkpoint(file, kind="diffusion-model", map_location=device)
    spec = DiffusionSpec.from_dict(payload["spec"])
    diffusion = build_diffusion(spec).to(device)
    diffusion.load_state_dict(payload["weights"])
    diffusion.eval().requires_grad_(False)
    return TrainedDiffusion(diffusion, spec, Normalizer.from_state_dict(payload["normalizer"]),
                            payload["info"], file)


class ModelSpace(Protocol):
    """What fixes the space a model lives in (:class:`TrainedDiffusion` and the reward's ``TrainedReward``)."""

    spec: DiffusionSpec
    normalizer: Normalizer
    schedule: NoiseSchedule
    path: Path


def space_mismatches(a: ModelSpace, b: ModelSpace, names: tuple[str, str]) -> list[str]:
    """How two models' spaces differ (empty when they agree): shapes, noise schedule, normalizer."""
    problems = []
    for field in ("horizon", "obs_dim", "act_dim", "use_actions", "n_steps", "schedule", "network"):
        value_a, value_b = getattr(a.spec, field), getattr(b.spec, field)
        if value_a != value_b:
            problems.append(f"{field}: {names[0]} {value_a} vs {names[1]} {value_b}")
    if not a.schedule.matches(b.schedule):
        problems.append("noise schedules differ")
    if not a.normalizer.matches(b.normalizer):
        problems.append(f"normalizers differ (the {names[0]} and the {names[1]} were trained in different "
                        "normalized spaces)")
    return problems


def check_compatible(base: TrainedDiffusion, expert: TrainedDiffusion) -> None:
    """Refuse a base/expert pair whose scores cannot be subtracted: shapes, normalizer, schedule must agree."""
    problems = space_mismatches(base, expert, ("base", "expert"))
    if problems:
        raise UserError(
            f"The base model {base.path} and the expert model {expert.path} disagree: {'; '.join(problems)}. "
            "Their score difference is only defined in one shared space: train both with the same horizon, "
            "use_actions, diffusion settings and the same base+expert data pair (the normalizer is fitted on "
            "both), e.g. with `relreward pipeline`.")


def train_diffusion(spec: DiffusionSpec, segments: SegmentPair, kind: str, run_dir: Path, *, n_steps: int,
                    batch_size: int, lr: float, ema_decay: float, ema_start: int, grad_clip: float,
                    save_every: int, log_every: int, generator: torch.Generator, device: torch.device,
                    info: dict[str, Any], start_conditioned: float = 0.5, action_weight: float = 1.0,
                    on_log=None, on_resume=None, autocast_dtype: torch.dtype | None = None
                    ) -> tuple[TrainedDiffusion, TrainResult]:
    """Train a diffusion model on ``segments[kind]``, resuming from ``run_dir/checkpoint.pt``.

    A ``start_conditioned`` share of each batch is trained with its first state inpainted (as Diffuser does),
    so that planning from a given state continues from it; the rest unconditioned, so that the model's
    score is also that of whole segments, which reward extraction differentiates. ``action_weight``: see
    :meth:`GaussianDiffusion.loss`. ``on_log`` / ``on_resume`` / ``autocast_dtype``: see :func:`train_loop`.

    Writes ``run_dir/model.pt`` (EMA weights + spec + normalizer + ``info``) atomically at the end and
    returns it loaded, with the loop's :class:`TrainResult`.
    """
    run_dir = Path(run_dir)
    diffusion = build_diffusion(spec).to(device)
    data = segments[kind].to(device)
    ema = EMA(diffusion, ema_decay, ema_start)
    optimizer = flat_adam(diffusion, lr=lr)
    extra = {"spec": asdict(spec), "normalizer": segments.normalizer.state_dict(), "info": info}
    conditioned = torch.arange(batch_size, device=device) < round(batch_size * start_conditioned)
    parts = {name: rows for name, rows in (("start_conditioned", conditioned), ("unconditioned", ~conditioned))
             if rows.any()}

    def loss_fn() -> tuple[torch.Tensor, dict[str, float]]:
        x0 = data.sample(batch_size, generator)
        # Steps and noise drawn part by part, in the order of the earlier two-call loss, so that a seed trains
        # the same model as before; the denoiser then runs once on the whole batch.
        draws = [(torch.randint(0, spec.n_steps, (int(rows.sum()),), device=device),
                  torch.randn((int(rows.sum()), *x0.shape[1:]), device=device)) for rows in parts.values()]
        losses = diffusion.row_losses(x0, {0: x0[:, 0, spec.action_dim:]}, action_weight=action_weight,
                                      conditioned=conditioned, t=torch.cat([t for t, _ in draws]),
                                      noise=torch.cat([eps for _, eps in draws]))
        return losses.mean(), {f"loss_{name}": losses[rows].mean().detach() for name, rows in parts.items()}

    result = train_loop(
        model=diffusion, loss_fn=loss_fn,
        optimizer=optimizer, n_steps=n_steps, checkpoint_path=run_dir / CHECKPOINT_FILE, generator=generator,
        extra=extra, kind="diffusion", ema=ema, save_every=save_every, log_every=log_every,
        grad_clip=grad_clip, on_log=on_log, on_resume=on_resume, autocast_dtype=autocast_dtype,
        description=f"diffusion[{kind}]")
    save_checkpoint(run_dir / MODEL_FILE, {"kind": "diffusion-model", "weights": ema.model.state_dict(),
                                           "step": result.step, **extra})
    return load_diffusion_model(run_dir, device), result
