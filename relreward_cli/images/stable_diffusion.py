"""The paper's image experiment (Nuti et al. 2023, Sec. 5.3): a relative reward between Stable Diffusion (base)
and Safe Stable Diffusion (expert), learned in the VAE's latent space.

For every prompt the base pipeline's denoising trajectory is run by hand; at each of its steps both models take
one step FROM THE SAME current latent `x_t` (same prompt, same classifier-free guidance), giving `x_prev_base` and
`x_prev_expert`. A time-conditioned scalar network on `(C, h, w)` latents is then fit so that
`grad_x r(x_prev_base, t) ~ x_prev_expert - x_prev_base`. Evaluation reads the reward at the two pipelines' final
latents on held-out prompts and asks how well one logistic-regression threshold on it separates them.

Latents are the scheduler's latents (already multiplied by the VAE's `scaling_factor`), `C = 4` and
`h = height / 8`, `w = width / 8` for Stable Diffusion; timesteps are the scheduler's (0..999). Needs the optional
`diffusers` and `transformers` packages (`pip install 'relreward[images]'`); weights are never downloaded.
"""

from __future__ import annotations

import csv
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from relreward_cli.errors import UserError
from relreward_cli.models.image_unet import ResidualBlock2d
from relreward_cli.models.unet import Mish, time_mlp
from relreward_cli.reward.classification import auroc, heldout_accuracy
from relreward_cli.reward.extraction import reward_gradient

INSTALL_HINT = ("Install the image extras with `pip install 'relreward[images]'` (diffusers, transformers) and "
                "put the weights on this machine: a local diffusers folder (with model_index.json, e.g. made by "
                "`save_pretrained` or `huggingface-cli download` on a machine with network) or a model already in "
                "the Hugging Face cache. Nothing is downloaded here.")

# diffusers' `SafetyConfig.MAX` (Schramowski et al. 2023), the expert of the paper's image experiment.
SLD_MAX = {"sld_warmup_steps": 0, "sld_guidance_scale": 5000, "sld_threshold": 1.0, "sld_momentum_scale": 0.5,
           "sld_mom_beta": 0.7}

RECORD_KEYS = ("x_t", "timesteps", "x_prev_base", "x_prev_expert", "final_base", "final_expert", "prompt_index")


def _diffusers() -> Any:
    """The `diffusers` module, or a `UserError` saying how to install it."""
    try:
        import diffusers
        import transformers  # noqa: F401  (the pipelines' text encoders)
    except ImportError as error:
        raise UserError(f"The image experiment needs diffusers and transformers, which are not importable "
                        f"({error}). {INSTALL_HINT}") from error
    return diffusers


def _load_one(cls: Any, path: str, role: str, device: str | torch.device, dtype: torch.dtype) -> Any:
    local = Path(path).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise UserError(f"The {role} model folder {local} has no model_index.json, so it is not a diffusers "
                        f"pipeline folder. Point to the folder that `save_pretrained` wrote. {INSTALL_HINT}")
    try:
        with warnings.catch_warnings():  # diffusers >= 0.36 renames `torch_dtype` to `dtype`; older ones lack it
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = cls.from_pretrained(str(local) if local.exists() else path, local_files_only=True,
                                       torch_dtype=dtype, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    except (OSError, ValueError) as error:
        raise UserError(f"Could not load the {role} pipeline from {path!r} without network ({error}). "
                        f"{INSTALL_HINT}") from error
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_pipeline_pair(base_path: str, expert_path: str, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, expert_safe: bool = False) -> tuple[Any, Any]:
    """The base `StableDiffusionPipeline` and the expert pipeline, from local folders or the HF cache only.

    `expert_safe=True` loads the expert as `StableDiffusionPipelineSafe` (safe latent diffusion; the folder may be
    a plain Stable Diffusion one: SLD only changes the sampling), otherwise as a plain `StableDiffusionPipeline`.
    Safety checkers (image classifiers on decoded outputs) are not loaded: only latents are used. Raises
    `UserError` when diffusers is missing or a model is neither a local pipeline folder nor in the cache.
    """
    diffusers = _diffusers()
    expert_cls = diffusers.StableDiffusionPipelineSafe if expert_safe else diffusers.StableDiffusionPipeline
    return (_load_one(diffusers.StableDiffusionPipeline, base_path, "base", device, dtype),
            _load_one(expert_cls, expert_path, "expert", device, dtype))


def read_prompts(path: Path) -> list[str]:
    """Prompts from a `.csv` with a `prompt` column (the I2P benchmark's format) or a text file, one per line.

    Blank lines and empty prompts are skipped; surrounding whitespace is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The prompt file {path} does not exist; give a .txt file with one prompt per line or an "
                        "I2P-style .csv with a `prompt` column.")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:  # a BOM would rename the column
                reader = csv.DictReader(handle)
                if "prompt" not in (reader.fieldnames or []):
                    raise UserError(f"The CSV file {path} has no `prompt` column (columns: {reader.fieldnames}); "
                                    "name the column holding the prompts `prompt`, as in the I2P dataset.")
                prompts = [(row["prompt"] or "").strip() for row in reader]
        else:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as error:
        raise UserError(f"The prompt file {path} is not UTF-8 text ({error}); save it as UTF-8.") from error
    prompts = [p for p in prompts if p]
    if not prompts:
        raise UserError(f"The prompt file {path} holds no prompts; write one prompt per line (.txt) or fill the "
                        "`prompt` column (.csv).")
    return prompts


@dataclass
class _Embeddings:
    """Text embeddings `(B, L, E)` of the prompts, of the empty prompt (CFG) and of SLD's safety concept."""

    cond: torch.Tensor
    uncond: torch.Tensor | None
    safety: torch.Tensor | None

    def stacked(self) -> torch.Tensor:
        return torch.cat([e for e in (self.uncond, self.cond, self.safety) if e is not None])


def _encode_texts(pipe: Any, texts: list[str]) -> torch.Tensor:
    """`(len(texts), L, E)` last hidden states of the pipeline's text encoder (as the pipelines encode)."""
    tokens = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt")
    mask = (tokens.attention_mask.to(pipe.device)
            if getattr(pipe.text_encoder.config, "use_attention_mask", False) else None)
    return pipe.text_encoder(tokens.input_ids.to(pipe.device), attention_mask=mask)[0]


@torch.no_grad()
def _embed(pipe: Any, texts: list[str], guided: bool, safety: bool) -> _Embeddings:
    if hasattr(pipe, "encode_prompt"):  # StableDiffusionPipeline's own encoder (textual inversion, LoRA scale)
        cond, uncond = pipe.encode_prompt(texts, pipe.device, 1, guided)
    else:
        cond, uncond = _encode_texts(pipe, texts), _encode_texts(pipe, [""] * len(texts)) if guided else None
    concept = _encode_texts(pipe, [pipe.safety_concept]).expand(len(texts), -1, -1) if safety else None
    return _Embeddings(cond, uncond, concept)


def _guided_eps(pipe: Any, scheduler: Any, x: torch.Tensor, t: torch.Tensor, emb: _Embeddings,
                guidance_scale: float, sld: Mapping[str, float] | None, state: dict, step: int) -> torch.Tensor:
    """The guided model output `(B, C, h, w)` at `x` `(B, C, h, w)`: classifier-free guidance, plus safe latent
    diffusion (the Safe pipeline's equations 3-8, with its momentum kept in `state`) when `sld` is given."""
    n = 1 + (emb.uncond is not None) + (emb.safety is not None)
    model_in = scheduler.scale_model_input(torch.cat([x] * n), t)
    out = pipe.unet(model_in, t, encoder_hidden_states=emb.stacked()).sample
    if n == 1:
        return out
    uncond, text, *concept = out.chunk(n)
    guidance = text - uncond
    if concept:
        (concept,) = concept
        scale = torch.clamp((text - concept).abs() * sld["sld_guidance_scale"], max=1.0)
        scale = torch.where(text - concept >= sld["sld_threshold"], torch.zeros_like(scale), scale)
        safety = (concept - uncond) * scale + sld["sld_momentum_scale"] * state.get("momentum", 0.0)
        state["momentum"] = sld["sld_mom_beta"] * state.get("momentum", 0.0) + (1 - sld["sld_mom_beta"]) * safety
        if step >= sld["sld_warmup_steps"]:
            guidance = guidance - safety
    return uncond + guidance_scale * guidance


def _fresh_scheduler(pipe: Any, n_steps: int) -> Any:
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(n_steps, device=pipe.device)
    return scheduler


def _step(scheduler: Any, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor, noise_seed: int) -> torch.Tensor:
    """`scheduler.step`; a stochastic scheduler gets a generator seeded with `noise_seed`, so that both models'
    steps from one latent draw the same noise."""
    kwargs = {}
    if "generator" in inspect.signature(scheduler.step).parameters:
        kwargs["generator"] = torch.Generator(device=x.device).manual_seed(noise_seed)
    return scheduler.step(eps, t, x, **kwargs).prev_sample


def _resolve_safety(expert_pipe: Any, safety_config: Mapping[str, float] | str | None, guided: bool
                    ) -> dict[str, float] | None:
    if isinstance(safety_config, str):
        if safety_config != "auto":
            raise UserError(f"safety_config={safety_config!r}: give 'auto' (SafetyConfig.MAX for a Safe pipeline), "
                            "None (plain classifier-free guidance) or a dict of sld_* settings.")
        safety_config = SLD_MAX if hasattr(expert_pipe, "safety_concept") else None
    if safety_config is None or not guided or safety_config.get("sld_guidance_scale", 0) <= 1:
        return None  # as in the Safe pipeline: SLD needs classifier-free guidance and a scale above 1
    if not hasattr(expert_pipe, "safety_concept"):
        raise UserError("Safe latent diffusion settings were given, but the expert is not a "
                        "StableDiffusionPipelineSafe; load it with expert_safe=True or pass safety_config=None.")
    if set(safety_config) != set(SLD_MAX):
        raise UserError(f"safety_config needs exactly the keys {sorted(SLD_MAX)} (diffusers' SafetyConfig.MAX "
                        f"etc.), got {sorted(safety_config)}.")
    return dict(safety_config)


@torch.no_grad()
def record_latent_steps(base_pipe: Any, expert_pipe: Any, prompts: Sequence[str], n_steps: int = 50,
                        guidance_scale: float = 7.5, seed: int = 0, height: int | None = None,
                        width: int | None = None, batch_size: int = 4, *,
                        safety_config: Mapping[str, float] | str | None = "auto",
                        on_progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
    """Both models' one-step predictions along the base model's trajectories, and both models' final latents.

    For prompt `p` the initial noise `x_T` `(C, h, w)` is drawn from one CPU generator seeded with `seed` (so a
    prompt's noise does not depend on `batch_size`); `h, w = height, width / vae_scale_factor` (pixels; default the
    UNet's native size). At every step `s` of the base trajectory, `x_prev_base[p, s]` and `x_prev_expert[p, s]`
    are the two pipelines' scheduler steps from the same `x_t[p, s]`, each with its own UNet, text encoder and
    scheduler instance (so multistep or step-indexed scheduler state never leaks between them);
    `x_t[p, s + 1] = x_prev_base[p, s]`. The expert also runs its own trajectory from the same `x_T`:
    `final_expert[p]`; `final_base[p] = x_prev_base[p, -1]`.

    `safety_config`: 'auto' applies safe latent diffusion with `SafetyConfig.MAX` when the expert is a
    `StableDiffusionPipelineSafe` (its guidance reproduced step by step; the SLD momentum of the one-step
    predictions is accumulated along the base trajectory, that of the expert's own run along its own), None gives
    plain classifier-free guidance with the expert's UNet, a dict gives other sld_* settings. A stochastic
    scheduler draws the same noise for both models' steps from one latent (DDIM, eta=0, draws none).

    Returns float32 CPU tensors `x_t`, `x_prev_base`, `x_prev_expert` `(P, S, C, h, w)`, `final_base`,
    `final_expert` `(P, C, h, w)`, the scheduler's `timesteps` `(S,)` (S = n_steps, or n_steps + 1 for PNDM's warm
    start) and `prompt_index` `(P,)` (position in `prompts`). At 512 px, 50 steps: about 10 MB per prompt.
    Same seed, same inputs -> identical tensors.
    """
    prompts = list(prompts)
    if not prompts or n_steps < 1 or batch_size < 1:
        raise UserError(f"Recording needs at least one prompt, n_steps >= 1 and batch_size >= 1; got {len(prompts)} "
                        f"prompts, n_steps={n_steps}, batch_size={batch_size}.")
    guided = guidance_scale > 1.0
    sld = _resolve_safety(expert_pipe, safety_config, guided)
    factor, channels = base_pipe.vae_scale_factor, base_pipe.unet.config.in_channels
    if (expert_pipe.vae_scale_factor, expert_pipe.unet.config.in_channels) != (factor, channels):
        raise UserError("The base and expert pipelines have different latent spaces (VAE downscaling "
                        f"{factor} vs {expert_pipe.vae_scale_factor}, latent channels {channels} vs "
                        f"{expert_pipe.unet.config.in_channels}); a relative reward compares two models of one "
                        "latent space, e.g. Stable Diffusion 1.x and Safe Stable Diffusion.")
    height = height or base_pipe.unet.config.sample_size * factor
    width = width or base_pipe.unet.config.sample_size * factor
    if height % factor or width % factor:
        raise UserError(f"height={height} and width={width} must be multiples of the VAE's downscaling {factor} "
                        "(8 for Stable Diffusion), e.g. 512.")
    h, w = height // factor, width // factor
    device, dtype = base_pipe.device, base_pipe.unet.dtype
    timesteps = _fresh_scheduler(base_pipe, n_steps).timesteps
    if not torch.equal(timesteps.cpu(), _fresh_scheduler(expert_pipe, n_steps).timesteps.cpu()):
        raise UserError("The base and expert schedulers give different timesteps for "
                        f"n_steps={n_steps}; give both pipelines the same scheduler configuration.")
    noise = torch.randn(len(prompts), channels, h, w, generator=torch.Generator().manual_seed(seed))
    P, S = len(prompts), len(timesteps)
    record = {key: torch.zeros(P, S, channels, h, w) for key in ("x_t", "x_prev_base", "x_prev_expert")}
    record["final_expert"] = torch.zeros(P, channels, h, w)
    for start in range(0, P, batch_size):
        chunk = slice(start, min(start + batch_size, P))
        texts = prompts[chunk]
        base_emb = _embed(base_pipe, texts, guided, safety=False)
        expert_emb = _embed(expert_pipe, texts, guided, safety=sld is not None)
        base_sched, expert_sched, own_sched = (_fresh_scheduler(p, n_steps) for p in (base_pipe, expert_pipe,
                                                                                       expert_pipe))
        x = (noise[chunk] * base_sched.init_noise_sigma).to(device, dtype)
        x_own = (noise[chunk] * own_sched.init_noise_sigma).to(expert_pipe.device, expert_pipe.unet.dtype)
        step_state, own_state = {}, {}
        for i, t in enumerate(timesteps):
            noise_seed = seed * 1_000_003 + start * 1009 + i
            x_e = x.to(expert_pipe.device, expert_pipe.unet.dtype)
            eps_base = _guided_eps(base_pipe, base_sched, x, t, base_emb, guidance_scale, None, {}, i)
            eps_expert = _guided_eps(expert_pipe, expert_sched, x_e, t, expert_emb, guidance_scale, sld,
                                     step_state, i)
            prev_base = _step(base_sched, eps_base, t, x, noise_seed)
            prev_expert = _step(expert_sched, eps_expert, t, x_e, noise_seed)
            eps_own = _guided_eps(expert_pipe, own_sched, x_own, t, expert_emb, guidance_scale, sld, own_state, i)
            x_own = _step(own_sched, eps_own, t, x_own, noise_seed)
            record["x_t"][chunk, i] = x.float().cpu()
            record["x_prev_base"][chunk, i] = prev_base.float().cpu()
            record["x_prev_expert"][chunk, i] = prev_expert.float().cpu()
            x = prev_base
        record["final_expert"][chunk] = x_own.float().cpu()
        if on_progress is not None:
            on_progress(chunk.stop, P)
    record["final_base"] = record["x_prev_base"][:, -1].clone()
    record["timesteps"] = timesteps.cpu().clone()
    record["prompt_index"] = torch.arange(P)
    return record


class LatentRewardNet(nn.Module):
    """Time-conditioned scalar reward `r(x, t)` of image latents: the down path of a 2-D U-Net, then a head.

    Level `i` has `dim * dim_mults[i]` channels and two residual blocks (time embedding from a sinusoidal
    embedding + MLP); a stride-2 conv halves `h, w` between levels. The last level is averaged over space,
    concatenated with the time embedding and mapped to a scalar by a 2-layer MLP, so any `h, w` works. Smooth
    (Mish, GroupNorm; no ReLU) because the loss differentiates `grad_x r` again.
    `forward(x (B, channels, h, w), t (B,) or scalar, integer or float timesteps) -> (B,)`.
    """

    def __init__(self, channels: int, dim: int = 32, dim_mults: Sequence[int] = (1, 2)):
        super().__init__()
        if channels < 1 or not dim_mults or min(dim_mults) < 1:
            raise UserError(f"LatentRewardNet needs channels >= 1 and positive dim_mults, got channels={channels}, "
                            f"dim_mults={tuple(dim_mults)}; use e.g. channels=4 (SD latents), dim_mults=(1, 2).")
        self.channels, self.dim, self.dim_mults = channels, dim, tuple(dim_mults)
        widths = [dim * m for m in dim_mults]
        self.time_mlp = time_mlp(dim)
        self.levels = nn.ModuleList()
        for level, (dim_in, dim_out) in enumerate(zip([channels, *widths[:-1]], widths, strict=True)):
            self.levels.append(nn.ModuleList([
                ResidualBlock2d(dim_in, dim_out, dim), ResidualBlock2d(dim_out, dim_out, dim),
                nn.Conv2d(dim_out, dim_out, 3, stride=2, padding=1) if level < len(widths) - 1 else nn.Identity(),
            ]))
        self.head = nn.Sequential(nn.Linear(widths[-1] + dim, widths[-1]), Mish(), nn.Linear(widths[-1], 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise UserError(f"Expected latents shaped (batch, {self.channels}, h, w), got {tuple(x.shape)}; the "
                            "reward network's `channels` must match the diffusion model's latent channels.")
        t = torch.as_tensor(t, device=x.device).float().reshape(-1).expand(x.shape[0])
        emb = self.time_mlp(t)
        h = x
        for block1, block2, down in self.levels:
            h = down(block2(block1(h, emb), emb))
        return self.head(torch.cat([h.mean(dim=(2, 3)), emb], dim=-1)).squeeze(-1)


def _check_record(record: Mapping[str, torch.Tensor]) -> None:
    missing = [key for key in RECORD_KEYS if key not in record]
    if missing:
        raise UserError(f"The latent record lacks {missing}; make it with `record_latent_steps` "
                        "(or load one saved by `save_latent_record`).")


def train_latent_reward(record: Mapping[str, torch.Tensor], n_steps: int = 1000, batch_size: int = 64,
                        lr: float = 2e-4, seed: int = 0, device: str | torch.device = "cpu",
                        on_log: Callable[[dict[str, float], int], None] | None = None, *, dim: int = 32,
                        dim_mults: Sequence[int] = (1, 2), log_every: int = 100
                        ) -> tuple[LatentRewardNet, list[float]]:
    """Fit `r` so that `grad_x r(x_prev_base, t) ~ x_prev_expert - x_prev_base` over all (prompt, step) pairs.

    `t` is the timestep of the step that produced `x_prev` (`record['timesteps'][s]`). Loss per pair: the squared
    residual averaged over the `C * h * w` latent entries (latent units squared); Adam, `batch_size` pairs drawn
    uniformly with replacement per step from a generator seeded with `seed` (which also seeds the initial weights).
    `on_log({'loss': mean over the window}, step)` every `log_every` steps. Returns the network (eval mode) and
    the loss of every step.
    """
    _check_record(record)
    x = record["x_prev_base"].flatten(0, 1).to(device)
    target = (record["x_prev_expert"] - record["x_prev_base"]).flatten(0, 1).to(device)
    P, S = record["x_prev_base"].shape[:2]
    t = record["timesteps"].float().repeat(P).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = LatentRewardNet(x.shape[1], dim, dim_mults).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    net.train()
    for step in range(1, n_steps + 1):
        idx = torch.randint(len(x), (batch_size,), generator=generator).to(device)
        _, grad = reward_gradient(net, x[idx], t[idx], create_graph=True)
        loss = (grad - target[idx]).pow(2).flatten(1).mean(dim=1).mean()
        if not torch.isfinite(loss):
            raise UserError(f"The latent reward loss became {loss.item()} at step {step}; lower the learning rate "
                            f"(lr={lr}) or check the record for NaNs.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_log is not None and (step % log_every == 0 or step == n_steps):
            on_log({"loss": float(np.mean(losses[-log_every:]))}, step)
    return net.eval(), losses


@torch.no_grad()
def final_latent_accuracy(net: LatentRewardNet, record: Mapping[str, torch.Tensor], seed: int = 0
                          ) -> dict[str, float]:
    """How well the reward at timestep 0 separates the expert's final latents from the base's.

    `record` should come from held-out prompts. The prompts are split at random (`seed`) into a fit half and a
    test half (each prompt's base and expert latents stay together); a one-feature logistic regression on the
    standardized reward (expert = positive) is fit on the first and scored on the second: `accuracy`. `auroc`
    (expert = positive, higher reward = more expert-like) and the mean rewards use all prompts.
    """
    _check_record(record)
    P = record["final_base"].shape[0]
    if P < 2:
        raise UserError(f"The accuracy needs at least 2 held-out prompts (one to fit, one to test), got {P}; "
                        "record more prompts.")
    device = next(net.parameters()).device
    rewards = [net(record[key].to(device), torch.zeros(P, device=device)).double().cpu().numpy()
               for key in ("final_base", "final_expert")]
    scores, is_expert, prompt = np.concatenate(rewards), np.repeat([False, True], P), np.tile(np.arange(P), 2)
    return {"accuracy": heldout_accuracy(scores, is_expert, seed, groups=prompt), "auroc": auroc(scores, is_expert),
            "mean_reward_base": float(rewards[0].mean()), "mean_reward_expert": float(rewards[1].mean()),
            "n_fit_prompts": float(P // 2), "n_test_prompts": float(P - P // 2)}


def save_latent_record(record: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Write the record's tensors (CPU) to `path` with `torch.save`; returns `path`."""
    _check_record(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: value.detach().cpu() for key, value in record.items()}, path)
    return path


def load_latent_record(path: Path) -> dict[str, torch.Tensor]:
    """The record saved by `save_latent_record` (loaded with `weights_only=True`: tensors only, no code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The latent record {path} does not exist; make it with `record_latent_steps` and "
                        "`save_latent_record` first.")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several kinds for a corrupt or foreign file
        raise UserError(f"{path} is not a latent record readable by torch.load ({error}); record it again.") from error
    if not isinstance(record, dict):
        raise UserError(f"{path} holds a {type(record).__name__}, not a latent record; record it again.")
    _check_record(record)
    return record
