"""One training loop for every network here (diffusion models and reward networks).

It owns what must be right everywhere: atomic checkpoints every ``save_every`` steps and at the end,
resuming a killed run from its last checkpoint (weights, EMA, optimizer, step and every RNG state,
so an interrupted run ends with the same weights as an uninterrupted one), a stop with the step
number when the loss stops being finite, a progress bar and throughput logging.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from relreward_cli.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "relreward-checkpoint-v1"


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data sampling seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def use_deterministic_cuda() -> None:
    """One seed, one set of numbers on a GPU too: cuDNN's deterministic convolution algorithms without autotuning,
    and torch's deterministic kernels (cuBLAS reads its fixed workspace size from the environment at its first
    call, so this runs before any CUDA work). An op with no deterministic CUDA kernel warns rather than fails."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} was asked for but no CUDA GPU is visible; use device=cpu or device=auto.")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"device={device} is not a device torch knows; use auto, cpu, cuda or cuda:N.") from None


def flatten_parameters(module: torch.nn.Module, with_grad: bool = True) -> torch.nn.Parameter:
    """Lay ``module``'s parameters out one after another in one flat tensor, make each parameter a view of its
    slice (and, ``with_grad``, each gradient a view of the same slice of one flat gradient), and return the flat
    tensor as one parameter. An optimizer given it, a gradient scaling or an EMA then runs as one kernel over all
    weights instead of one per tensor; each weight's arithmetic is the same, so the weights trained are bitwise
    those of the separate parameters (tested). The gradients are kept between steps (zeroed, never set to None):
    backward accumulates into them in place."""
    params = list(module.parameters())
    if with_grad and not all(p.requires_grad for p in params):
        raise ValueError("flatten_parameters(with_grad=True) would train the module's frozen weights too")
    flat = torch.nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]),
                              requires_grad=any(p.requires_grad for p in params))
    if with_grad:
        flat.grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        p.data = flat.data[offset:offset + p.numel()].view_as(p)
        if with_grad:
            p.grad = flat.grad[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def contiguous_span(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The 1-D tensor of which ``tensors`` are consecutive slices (contiguous views laid one after another in one
    storage, as :func:`flatten_parameters` leaves a module's parameters and gradients), or None."""
    if not tensors:
        return None
    first = tensors[0]
    start = offset = first.storage_offset()
    storage = first.untyped_storage()
    for tensor in tensors:
        if (tensor.dtype != first.dtype or not tensor.is_contiguous() or tensor.storage_offset() != offset
                or tensor.untyped_storage().data_ptr() != storage.data_ptr()):
            return None
        offset += tensor.numel()
    return first.new_empty(0).set_(storage, start, (offset - start,))


def adam(params, lr: float, optimizer_class: type[torch.optim.Adam] = torch.optim.Adam) -> torch.optim.Optimizer:
    """Adam with torch's fused kernel (one pass over all weights; measured 12% more training steps/s on one CPU
    thread at the demo size), or the default implementation where the fused one is not available."""
    params = list(params)
    try:
        return optimizer_class(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
        return optimizer_class(params, lr=lr)


class _KeptGradAdam(torch.optim.Adam):
    """Adam whose ``zero_grad`` zeroes the gradients in place whatever ``set_to_none`` says (a module's gradients are
    views of them: :func:`flat_adam`)."""

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - the views must stay
        super().zero_grad(set_to_none=False)


def flat_adam(module: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """:func:`adam` over ``module``'s weights flattened into one parameter (:func:`flatten_parameters`): the step
    runs as one kernel over one tensor instead of over each, with bitwise the same weights, provided every weight
    gets a gradient at every step (a weight backward leaves without one, such as a reward's output bias under the
    input-gradient loss, would take part in the gradient's norm as a zero and round it otherwise)."""
    return adam([flatten_parameters(module)], lr, _KeptGradAdam)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, also from a checkpoint written before the weights were flattened into
    one parameter (one state per weight tensor, in the module's order): those states are joined into the flat
    one, which continues the run exactly."""
    groups, saved = optimizer.param_groups, state["param_groups"]
    separate = len(groups) == len(saved) == 1 and len(groups[0]["params"]) == 1 < len(saved[0]["params"])
    if separate:
        if not all(index in state["state"] for index in saved[0]["params"]):
            raise UserError("The checkpoint's optimizer has weights it never updated, which one flat parameter cannot "
                            "continue exactly. Start this training afresh (overwrite=true).")
        per_tensor = [state["state"][index] for index in saved[0]["params"]]
        joined = {key: per_tensor[0][key] if key == "step" else torch.cat([s[key].reshape(-1) for s in per_tensor])
                  for key in (per_tensor[0] if per_tensor else ())}
        state = {"state": {0: joined} if joined else {}, "param_groups": [{**saved[0], "params": [0]}]}
    optimizer.load_state_dict(state)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file and an atomic rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
        os.replace(tmp, path)
    except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
        if "inline_container" not in str(err) and "PytorchStreamWriter" not in str(err):
            raise
        code = errno.ENOSPC if shutil.disk_usage(path.parent).free < 64 * 2**20 else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


def artifact_file(path: Path, name: str) -> Path:
    """The file a stage's artifact is read from: ``path`` itself when it is a file (or names one not made yet, with a
    suffix), else ``path/name`` (``path`` a run folder, made or not)."""
    path = Path(path)
    return path / name if path.is_dir() or not (path.suffix or path.is_file()) else path


def load_checkpoint(path: Path, kind: str | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, refusing files that are not ours.

    Args:
        kind: when given, the checkpoint's ``kind`` entry (``"diffusion"``, ``"reward"``) must match.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No checkpoint at {path}. Check the path, or run the stage that writes it first.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise UserError(f"{path} could not be read as a relreward checkpoint ({err}). Check that the path names a "
                        "stage's model (its run folder, or the model.pt / reward.pt in it); if it does, the file is "
                        "damaged: delete it and run the stage that writes it again.") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a relreward checkpoint (no '{CHECKPOINT_FORMAT}' marker). Pass a file "
                        "written by `relreward train-diffusion` or `relreward extract`.")
    if kind is not None and payload.get("kind") != kind:
        raise UserError(f"{path} holds a '{payload.get('kind')}' checkpoint where a '{kind}' one is needed; "
                        "check which run folder you passed.")
    return payload


def steps_done(checkpoint_path: Path) -> int | None:
    """The optimizer steps a run's checkpoint holds (None without a checkpoint)."""
    path = Path(checkpoint_path)
    return int(load_checkpoint(path)["step"]) if path.is_file() else None


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "data": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`_rng_state` saved. RNG states are CPU byte tensors whatever device the checkpoint was
    loaded onto (``map_location`` moves every tensor of it)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["data"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class TrainResult:
    step: int
    final_loss: float
    steps_per_s: float
    resumed_from: int
    peak_memory_mb: float


def train_loop(
    *,
    model: torch.nn.Module,
    loss_fn: Callable[[], tuple[torch.Tensor, dict[str, float]]],
    optimizer: torch.optim.Optimizer,
    n_steps: int,
    checkpoint_path: Path,
    generator: torch.Generator,
    extra: dict[str, Any],
    kind: str,
    ema: Any | None = None,
    save_every: int = 1000,
    log_every: int = 100,
    grad_clip: float | None = 1.0,
    on_log: Callable[[dict[str, float], int], None] | None = None,
    on_resume: Callable[[int], None] | None = None,
    description: str = "train",
    autocast_dtype: torch.dtype | None = None,
) -> TrainResult:
    """Run ``n_steps`` optimizer steps of ``loss_fn``, resuming from ``checkpoint_path`` if it exists.

    Args:
        model: the trained module (its ``state_dict`` is checkpointed).
        loss_fn: draws its own batch (from ``generator``) and returns ``(loss, scalars to log)``.
        generator: the data-sampling generator; its state is checkpointed with all the others.
        extra: saved into every checkpoint as is (config, normalizer, shapes), for the loaders.
        kind: checkpoint kind (``"diffusion"`` or ``"reward"``), checked when loading.
        ema: an object with ``update(model)`` and ``state_dict()/load_state_dict()`` (optional).
        on_log: called with ``(averaged scalars, step)`` every ``log_every`` steps and at the end.
        on_resume: called with the checkpoint's step when the loop resumes from one (before any ``on_log``), so
            that what an earlier attempt logged after its last checkpoint can be dropped.
        autocast_dtype: run ``loss_fn`` under ``torch.autocast`` with this dtype (``torch.bfloat16``), or in full
            precision (None). The weights, the optimizer and the EMA stay float32.
    Raises:
        NonFiniteLossError: the loss was NaN/inf; nothing is saved after the last good checkpoint.
    """
    device = next(model.parameters()).device
    step = 0
    # What a finished run reports when it is resumed with no step left to take: its checkpoint's figures.
    loss_value, recorded_rate = float("nan"), float("nan")
    if Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, kind=kind, map_location=device)
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"], generator)
        step = state["step"]
        loss_value, recorded_rate = state.get("final_loss", loss_value), state.get("steps_per_s", recorded_rate)
        log.info("Resuming %s from %s at step %d", description, checkpoint_path, step)
        if on_resume is not None:
            on_resume(step)
    resumed_from = last_saved = step
    start, start_step = time.perf_counter(), step

    def steps_per_s() -> float:
        """This attempt's rate, or the checkpoint's when it took no step."""
        return (step - start_step) / max(time.perf_counter() - start, 1e-9) if step > start_step else recorded_rate

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, {
            "kind": kind, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "rng": _rng_state(generator),
            "final_loss": loss_value, "steps_per_s": steps_per_s(), **extra,
        })

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # Losses stay on the device until a log or checkpoint step: reading one per step would make a GPU wait for
    # every step to finish. They are checked then, before anything is saved, so a non-finite loss is still
    # reported with its step and never reaches a checkpoint.
    window: dict[str, list[torch.Tensor | float]] = {}
    losses: list[torch.Tensor] = []

    def check_finite() -> None:
        nonlocal loss_value
        if not losses:
            return
        values = torch.stack(losses).float().cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            first = int(bad[0])
            saved = f"{checkpoint_path} (step {last_saved})" if last_saved else "none yet"
            raise NonFiniteLossError(
                f"The {description} loss became {values[first].item()} at step {step - len(losses) + first + 1}; "
                f"the run stopped there. Last good checkpoint: {saved}. Lower the learning rate or check the data "
                "for NaNs, then run the same command again to resume from that checkpoint.")
        loss_value = float(values[-1])
        losses.clear()

    optimized = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    with tqdm(total=n_steps, initial=step, desc=description, dynamic_ncols=True, mininterval=1.0) as bar:
        while step < n_steps:
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss, scalars = loss_fn()
            losses.append(loss.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:  # the norm over the module's gradients, the scaling over the optimizer's (one kernel)
                total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
                torch.nn.utils.clip_grads_with_norm_(optimized, grad_clip, total)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            step += 1
            bar.update(1)
            for key, value in {"loss": losses[-1], **scalars}.items():
                window.setdefault(key, []).append(value)
            if step % log_every == 0 or step == n_steps:
                check_finite()
                averaged = {key: _mean(values) for key, values in window.items()}
                averaged = {key: value for key, value in averaged.items() if np.isfinite(value) or key == "loss"}
                averaged["steps_per_s"] = steps_per_s()
                bar.set_postfix(loss=f"{averaged['loss']:.4f}")
                if on_log is not None:
                    on_log(averaged, step)
                window.clear()
            if step % save_every == 0 or step == n_steps:
                check_finite()
                checkpoint()
                last_saved = step
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _cpu_peak_rss_mb()
    return TrainResult(step=step, final_loss=loss_value, steps_per_s=steps_per_s(), resumed_from=resumed_from,
                       peak_memory_mb=peak)


def _mean(values: list[torch.Tensor | float]) -> float:
    """Mean of one logged scalar over a window, read off the device once; NaN entries (e.g. a loss band no sample
    of a batch fell in) are left out."""
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).float()
    return float(torch.nanmean(stacked.cpu()))


def _cpu_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
