"""Training a reward network on the score difference of two frozen diffusion models, and its files.

A finished ``extract`` run folder holds ``reward.pt``: the reward network's weights, its architecture,
the shared normalizer and the diffusion spec of the pair it was extracted from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relreward_cli.data.normalizer import Normalizer
from relreward_cli.data.pairs import SegmentPair
from relreward_cli.diffusion.artifact import DiffusionSpec, TrainedDiffusion, check_compatible
from relreward_cli.diffusion.ema import EMA
from relreward_cli.diffusion.gaussian import apply_conditioning
from relreward_cli.diffusion.schedule import NoiseSchedule
from relreward_cli.errors import UserError
from relreward_cli.models.networks import reward_network
from relreward_cli.reward.extraction import TARGETS, extraction_loss, loss_by_t_band, noised_batch
from relreward_cli.training import TrainResult, adam, artifact_file, load_checkpoint, save_checkpoint, train_loop

REWARD_FILE = "reward.pt"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainedReward:
    """A loaded ``reward.pt``: the network (eval mode), the diffusion spec and normalizer of its space."""

    net: nn.Module  # RewardNet or ImageRewardNet: forward(x (B, H, D), t (B,)) -> (B,)
    spec: DiffusionSpec
    normalizer: Normalizer
    schedule: NoiseSchedule
    info: dict[str, Any]
    path: Path
    target: str = "score"  # what its gradient was fitted to (`reward.extraction.TARGETS`)
    architecture: dict[str, Any] = field(default_factory=dict)  # what it was built with: kind, dim, dim_mults


def reward_file(path: Path) -> Path:
    """The ``reward.pt`` of an ``extract`` run folder, or ``path`` itself when it names a file."""
    return artifact_file(path, REWARD_FILE)


def load_reward_model(path: Path, device: str | torch.device = "cpu") -> TrainedReward:
    """Load a finished reward network from an ``extract`` run folder or a ``reward.pt``."""
    file = reward_file(path)
    if not file.is_file():
        raise UserError(f"No extracted reward at {file}. Pass the run folder of a finished extraction (an extract "
                        "run, or a pipeline's extract/) or its reward.pt.")
    payload = load_checkpoint(file, kind="reward-model", map_location=device)
    spec = DiffusionSpec.from_dict(payload["spec"])
    architecture = {"kind": "default", **payload["architecture"]}  # rewards saved before `kind` were the default
    sizes = {key: value for key, value in architecture.items() if key != "kind"}
    net = reward_network(spec.network, architecture["kind"])(spec.horizon, spec.transition_dim, **sizes).to(device)
    net.load_state_dict(payload["weights"])
    net.eval().requires_grad_(False)
    return TrainedReward(net, spec, Normalizer.from_state_dict(payload["normalizer"]),
                         NoiseSchedule(spec.n_steps, spec.schedule), payload["info"], file,
                         payload.get("target", "score"), architecture)


def train_reward(base: TrainedDiffusion, expert: TrainedDiffusion, segments: SegmentPair, run_dir: Path, *,
                 dim: int, dim_mults: tuple[int, ...], n_steps: int, batch_size: int, lr: float,
                 grad_clip: float, save_every: int, log_every: int, generator: torch.Generator,
                 device: torch.device, info: dict[str, Any], sample_fraction: float = 0.0, sample_pool: int = 512,
                 target: str = "score", start_conditioned: float = 0.0, architecture: str = "default",
                 ema_decay: float = 0.0, ema_start: int = 0, on_log=None, on_resume=None,
                 autocast_dtype: torch.dtype | None = None) -> tuple[TrainedReward, TrainResult]:
    """Fit ``r_phi`` so that ``sigma_t grad_x r_phi(x_t, t) = -(eps_expert - eps_base)(x_t, t)`` (``target="score"``)
    or to the posterior-mean difference of the authors' code (``"posterior_mean"``; see ``reward.extraction``).
    ``architecture``: the reward net (``default``: the model network's own, e.g. Diffuser's value-function shape;
    ``per_step``: the mean of a per-step MLP, see ``relreward_cli.models.networks``).

    ``x_t`` are clean segments noised at uniform ``t``: a ``sample_fraction`` of each batch comes from a pool
    of ``sample_pool`` DDPM samples of each model (drawn once, seeded), the rest half from the base and half
    from the expert data. A ``start_conditioned`` share of each batch has its first state inpainted with its
    clean value, as planning's guidance sees ``x_t``; those entries are left out of the loss (guidance never moves
    them). With ``ema_decay`` > 0 the saved reward is the exponential moving average of the weights (the
    first ``ema_start`` steps copy them), else the last weights. Resumes from ``run_dir/checkpoint.pt``; writes
    ``run_dir/reward.pt`` atomically. ``on_log`` / ``on_resume`` / ``autocast_dtype``: see
    :func:`relreward_cli.training.train_loop`.
    """
    check_compatible(base, expert)
    if target not in TARGETS:
        raise UserError(f"extract.target={target!r}: choose one of {', '.join(TARGETS)}.")
    if not 0.0 <= start_conditioned <= 1.0:
        raise UserError(f"extract.start_conditioned={start_conditioned} must be a share of the batch in [0, 1].")
    run_dir = Path(run_dir)

    net = reward_network(base.spec.network, architecture)(base.spec.horizon, base.spec.transition_dim, dim=dim,
                                                            dim_mults=tuple(dim_mults)).to(device)
    optimizer = adam(net.parameters(), lr=lr)
    ema = EMA(net, ema_decay, ema_start) if ema_decay > 0 else None
    base_data, expert_data = segments.base.to(device), segments.expert.to(device)
    schedule = base.diffusion.schedule
    n_samples = round(batch_size * sample_fraction)
    half = (batch_size - n_samples) // 2
    action_dim = base.spec.action_dim
    conditioned = torch.arange(batch_size, device=device) < round(batch_size * start_conditioned)
    weights = torch.ones(batch_size, base.spec.horizon, base.spec.transition_dim, device=device)
    weights[conditioned, 0, action_dim:] = 0
    any_conditioned = bool(conditioned.any())
    pool = model_sample_pool(base, expert, sample_pool, seed=int(info.get("seed", 0))) if n_samples else None

    def loss_fn():
        parts = [base_data.sample(half, generator), expert_data.sample(batch_size - n_samples - half, generator)]
        if pool is not None:
            parts.append(pool[torch.randint(len(pool), (n_samples,), generator=generator).to(device)])
        x0 = torch.cat(parts)
        x_t, t = noised_batch(x0, schedule)
        if any_conditioned:
            inpainted = apply_conditioning(x_t, {0: x0[:, 0, action_dim:]}, action_dim)
            x_t = torch.where(conditioned[:, None, None], inpainted, x_t)
        loss, per_sample = extraction_loss(net, base.diffusion, expert.diffusion, x_t, t, target,
                                           weights if any_conditioned else None)
        return loss, loss_by_t_band(per_sample, t, schedule.n_steps)

    extra = {"spec": asdict(base.spec),
             "architecture": {"kind": architecture, "dim": dim, "dim_mults": tuple(dim_mults)},
             "sample_fraction": sample_fraction,
             "target": target, "start_conditioned": start_conditioned,
             "normalizer": base.normalizer.state_dict(),
             "info": {**info, "base_model": str(base.path), "expert_model": str(expert.path)}}
    result = train_loop(model=net, loss_fn=loss_fn, optimizer=optimizer, n_steps=n_steps,
                        checkpoint_path=run_dir / CHECKPOINT_FILE, generator=generator, extra=extra,
                        kind="reward", ema=ema, save_every=save_every, log_every=log_every, grad_clip=grad_clip,
                        on_log=on_log, on_resume=on_resume, autocast_dtype=autocast_dtype,
                        description="extract")
    weights = (ema.model if ema is not None else net).state_dict()
    save_checkpoint(run_dir / REWARD_FILE, {"kind": "reward-model", "weights": weights,
                                            "step": result.step, **extra})
    return load_reward_model(run_dir, device), result


@torch.no_grad()
def model_sample_pool(base: TrainedDiffusion, expert: TrainedDiffusion, size: int, seed: int) -> torch.Tensor:
    """``size`` unconditioned DDPM samples of each model, ``(2 * size, horizon, transition_dim)``, seeded."""
    generator = torch.Generator(base.diffusion.device).manual_seed(seed)
    return torch.cat([model.diffusion.sample(size, sampler="ddpm", generator=generator).x for model in (base, expert)])
