"""Benchmark diffusion training and plan sampling at the default config size (``make bench``).

The sizes come from the Hydra configs (``configs/train_diffusion.yaml`` with ``base.yaml``: ``horizon``,
``model.dim``, ``model.dim_mults``, ``train.batch_size``, ``diffusion.n_steps``), so the benchmark follows
the config; Hydra overrides on the command line change them:

    python scripts/bench_train.py                        # default size, CPU (+ CUDA when available)
    python scripts/bench_train.py horizon=64 train.batch_size=256 --devices cuda

Data are synthetic random-walk segments of Maze2D's shape (no dataset needed). Training runs through the
real loop (:func:`relreward_cli.diffusion.artifact.train_diffusion`): two warm-up steps, then the same run
resumed and timed step by step for ``--max-steps`` steps (fewer on a slow or busy CPU, to stay within
``--budget-s``); steps/s is over the timed steps, and the median step time shows what a quiet machine gets.
"vs plain loop" divides that by the steps/s of the simplest loop on the same denoiser and batch (random
inputs, MSE, backward, default Adam: :func:`plain_loop_steps_per_s`), timed the same way right after, so the
loop's overhead shows as a ratio that does not depend on the machine. Peak memory is the process's peak RSS
on CPU and ``torch.cuda.max_memory_allocated`` on CUDA. Sampling
latency (random weights: the cost does not depend on them) is the median of a few batches of 64 plans.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from relreward_cli.errors import UserError, at_least, run_script  # noqa: E402
from relreward_cli.training import resolve_device  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OBS_DIM, ACT_DIM = 4, 2  # PointMaze: (x, y, vx, vy), (ax, ay)
PLAN_BATCH = 64


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--devices", default="auto",
                        help="comma-separated devices (cpu,cuda); auto: cpu, plus cuda when available")
    parser.add_argument("--budget-s", type=at_least(0.1, float), default=20.0,
                        help="seconds of timed training steps per device at most (ends the timing early)")
    parser.add_argument("--max-steps", type=at_least(2), default=40, help="timed steps at most")
    parser.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. horizon=64")
    return parser.parse_args()


def compose_config(config_name: str, overrides: list[str]):
    """The stage's config as the CLI would compose it (``relreward <stage> <overrides>``), and checked as the CLI
    checks it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from relreward_cli.cli import CONFIG_DIR
    from relreward_cli.config_schema import check_config

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        try:
            cfg = compose(config_name, overrides=overrides)
        except HydraException as err:
            raise UserError(f"The overrides {overrides} cannot be composed: {err}") from None
    check_config(cfg)
    return cfg


def setup(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}; {os.cpu_count()} CPU cores, load average {load} (other work on the machine "
          "slows the CPU figures)", flush=True)


def devices(option: str) -> list[torch.device]:
    if option == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    return [resolve_device(name) for name in option.split(",")]


def synthetic_segments(horizon: int, use_actions: bool, seed: int = 0, n_episodes: int = 20, length: int = 200):
    """A :class:`SegmentPair` of random-walk episodes shaped like Maze2D data."""
    from relreward_cli.data.normalizer import fit_transition_normalizer
    from relreward_cli.data.pairs import SegmentPair
    from relreward_cli.data.segments import SegmentDataset
    from relreward_cli.data.sources import Episode

    rng = np.random.default_rng(seed)

    def episodes(drift: float):
        return [Episode(np.cumsum(rng.normal(drift, 0.1, (length + 1, OBS_DIM)), axis=0),
                        rng.uniform(-1, 1, (length, ACT_DIM)), np.zeros(length), np.zeros(length, bool),
                        np.eye(1, length, length - 1, dtype=bool)[0]) for _ in range(n_episodes)]

    data = {"base": episodes(0.0), "expert": episodes(0.02)}
    normalizer = fit_transition_normalizer(list(data.values()), use_actions)
    base, expert = (SegmentDataset(data[kind], horizon, use_actions, normalizer) for kind in ("base", "expert"))
    return SegmentPair(base, expert, normalizer, base.layout, OBS_DIM, ACT_DIM,
                       {"base": "synthetic:base", "expert": "synthetic:expert"})


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _BudgetSpent(Exception):
    """Raised from the training loop's ``on_log`` hook to end a timed run early."""


def bench_training(run, budget_s: float, max_steps: int, device: torch.device, warmup: int = 2) -> dict:
    """Time the real training loop: ``run(n_steps, log_every, on_log)`` trains (resuming) to ``n_steps``.

    ``warmup`` steps first (cold start: allocator, kernels), then the run resumes with a hook after every
    step that stamps the time and stops it at ``max_steps`` timed steps or once ``budget_s`` is spent.
    Returns steps/s over the timed steps, the median step time, the step count and the peak memory (MB).
    """
    run(warmup, 10**9, None)
    stamps: list[float] = []

    def on_log(_scalars, _step):
        synchronize(device)
        stamps.append(time.perf_counter())
        if stamps[-1] - stamps[0] > budget_s:
            raise _BudgetSpent

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(_BudgetSpent):
        run(warmup + max_steps + 1, 1, on_log)
    steps = np.diff(stamps)  # the first stamp starts the clock
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()
    return {"steps_per_s": len(steps) / steps.sum(), "median_step_ms": float(np.median(steps)) * 1000,
            "steps": len(steps), "peak_mb": peak}


def training_row(device: torch.device, result: dict, plain_steps_per_s: float | None = None) -> tuple:
    """The table cells of a :func:`bench_training` result: device, steps/s, ratio to the plain loop (when
    timed), median step, steps, peak memory."""
    memory = "peak RSS" if device.type == "cpu" else "max allocated"
    ratio = f"{result['steps_per_s'] / plain_steps_per_s:.2f}x" if plain_steps_per_s else "-"
    return (describe(device), result["steps_per_s"], ratio, f"{result['median_step_ms']:.0f} ms", result["steps"],
            f"{result['peak_mb']:.0f} MB ({memory})")


TRAINING_COLUMNS = ("vs plain loop", "median step", "timed steps", "peak memory")


def plain_loop_steps_per_s(denoiser: torch.nn.Module, shape: tuple[int, int, int], n_steps: int, lr: float,
                           device: torch.device, budget_s: float, max_steps: int, warmup: int = 2,
                           autocast_dtype: torch.dtype | None = None) -> tuple[float, float | None]:
    """Steps/s of the simplest training loop on the same denoiser, batch and precision: random `x_t`, MSE to
    random noise, backward, default Adam; no EMA, conditioning, clipping, logging or checkpoints. The ratio of the
    real loop's steps/s to this is the benchmark's machine-independent figure.

    Also returns, on the CPU, the share of the timed steps spent in the denoiser's forward pass, the loss and the
    backward pass (the rest is drawing the batch, zeroing the gradients and Adam); on CUDA, where timing it would
    need a synchronization inside the step, None. No loop around this denoiser can run more than ``1 / share``
    times the plain loop's steps/s."""
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=lr)
    generator = torch.Generator(device).manual_seed(0)
    stamps: list[float] = []
    network_s = 0.0
    for step in range(warmup + max_steps + 1):
        x_t = torch.randn(shape, generator=generator, device=device)
        t = torch.randint(0, n_steps, (shape[0],), generator=generator, device=device)
        noise = torch.randn(shape, generator=generator, device=device)
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            eps = denoiser(x_t, t)
        loss = torch.nn.functional.mse_loss(eps.float(), noise)
        loss.backward()
        network = time.perf_counter() - start
        optimizer.step()
        synchronize(device)
        if step > warmup:
            network_s += network
        if step >= warmup:
            stamps.append(time.perf_counter())
            if stamps[-1] - stamps[0] > budget_s:
                break
    elapsed = stamps[-1] - stamps[0]
    return (len(stamps) - 1) / elapsed, network_s / elapsed if device.type == "cpu" else None


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sampling_latency(diffusion, device: torch.device, sampler: str, n_sample_steps: int | None,
                     budget_s: float = 6.0, max_repeats: int = 5) -> float:
    """Median seconds to sample one batch of ``PLAN_BATCH`` plans (repeats while within ``budget_s``)."""
    times: list[float] = []
    while len(times) < max_repeats and (not times or sum(times) < budget_s):
        generator = torch.Generator(device).manual_seed(len(times))
        synchronize(device)
        start = time.perf_counter()
        diffusion.sample(PLAN_BATCH, sampler=sampler, n_sample_steps=n_sample_steps, generator=generator)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    cells = [tuple(str(c) for c in header)] + [tuple(f"{c:.4g}" if isinstance(c, float) else str(c) for c in row)
                                               for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            print(line)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n > 1 else ''})"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    setup(args)
    from relreward_cli.diffusion.artifact import build_diffusion, train_diffusion
    from relreward_cli.stages.common import autocast_dtype, batch_size, diffusion_spec
    from relreward_cli.training import seed_everything

    cfg = compose_config("train_diffusion", args.overrides)
    tc = cfg.train
    segments = synthetic_segments(cfg.horizon, cfg.use_actions)
    spec = diffusion_spec(cfg, segments.obs_dim, segments.act_dim)
    n, few = spec.n_steps, max(spec.n_steps // 4, 1)
    samplers = {f"ddpm ({n} steps)": ("ddpm", None), f"ddim ({n} steps)": ("ddim", None),
                f"ddim ({few} steps)": ("ddim", few)}
    rows, batches, shares = [], {}, {}
    for device in devices(args.devices):
        batch = batches[device.type] = batch_size(tc, device)
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            def run(n_steps, log_every, on_log, device=device, tmp=tmp, batch=batch):
                return train_diffusion(
                    spec, segments, "base", Path(tmp), n_steps=n_steps, batch_size=batch, lr=tc.lr,
                    ema_decay=tc.ema_decay, ema_start=tc.ema_start, grad_clip=tc.grad_clip,
                    save_every=10**9, log_every=log_every, generator=seed_everything(0), device=device,
                    info={"bench": True}, on_log=on_log, autocast_dtype=autocast_dtype(tc))

            train = bench_training(run, args.budget_s, args.max_steps, device)
        torch.manual_seed(0)
        plain, network_share = plain_loop_steps_per_s(
            build_diffusion(spec).model.to(device), (batch, spec.horizon, spec.transition_dim), spec.n_steps, tc.lr,
            device, args.budget_s, args.max_steps, autocast_dtype=autocast_dtype(tc))
        if network_share is not None:
            shares[describe(device)] = network_share
        torch.manual_seed(0)
        diffusion = build_diffusion(spec).to(device).eval()  # random weights: sampling cost does not depend on them
        with torch.no_grad():  # warm-up: same shapes, two steps
            diffusion.sample(PLAN_BATCH, sampler="ddim", n_sample_steps=2, generator=torch.Generator(device))
        latency = {name: sampling_latency(diffusion, device, *how) for name, how in samplers.items()}
        rows.append((*training_row(device, train, plain), *(f"{s * 1000:.0f} ms" for s in latency.values())))
    n_params = sum(p.numel() for p in diffusion.model.parameters())
    print_table(
        f"train-diffusion benchmark: horizon {cfg.horizon}, transition_dim {spec.transition_dim}, U-Net dim "
        f"{cfg.model.dim} x {list(cfg.model.dim_mults)} ({n_params / 1e6:.2f}M params), batch "
        f"{', '.join(f'{b} ({d})' for d, b in batches.items())}, precision {tc.precision}, {n} diffusion steps; "
        f"sampling latency for one batch of {PLAN_BATCH} plans (median)",
        ("device", "train steps/s", *TRAINING_COLUMNS, *latency), rows)
    for device, share in shares.items():
        print(f"{device}: the denoiser's forward and backward pass take {share:.0%} of the plain loop's step, so no "
              f"training loop around this network can run more than {1 / share:.2f}x the plain loop's steps/s")


if __name__ == "__main__":
    run_script(main)
