"""Benchmark relative-reward extraction at the default config size (``make bench``).

Sizes come from the Hydra configs (``configs/extract.yaml`` with ``base.yaml``: the two diffusion models'
``horizon``, ``model.*`` and ``diffusion.n_steps``; the reward network's ``reward.*``; ``extract.batch_size``),
so the benchmark follows the config; Hydra overrides on the command line change them:

    python scripts/bench_extract.py                      # default size, CPU (+ CUDA when available)
    python scripts/bench_extract.py extract.batch_size=256 --devices cuda

Each extraction step runs both frozen diffusion models and the reward network's input gradient with
``create_graph=True``, through the real loop (:func:`relreward_cli.reward.trainer.train_reward`). The two
diffusion models have random weights (throughput does not depend on them) and the data are synthetic
random-walk segments of Maze2D's shape. Timing as in ``bench_train.py``: warm-up steps, then the run
resumed and timed step by step up to ``--max-steps`` or ``--budget-s``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from bench_train import (  # noqa: E402  (scripts/ is on sys.path when this file is run)
    TRAINING_COLUMNS,
    bench_training,
    compose_config,
    devices,
    parse_args,
    print_table,
    setup,
    synthetic_segments,
    training_row,
)

from relreward_cli.errors import run_script  # noqa: E402


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    setup(args)
    from relreward_cli.diffusion.artifact import TrainedDiffusion, build_diffusion
    from relreward_cli.models.reward_net import RewardNet
    from relreward_cli.reward.trainer import train_reward
    from relreward_cli.stages.common import autocast_dtype, batch_size, diffusion_spec
    from relreward_cli.training import seed_everything

    cfg = compose_config("extract", args.overrides)
    ec = cfg.extract
    segments = synthetic_segments(cfg.horizon, cfg.use_actions)
    spec = diffusion_spec(cfg, segments.obs_dim, segments.act_dim)
    rows, batches = [], {}
    for device in devices(args.devices):
        batch = batches[device.type] = batch_size(ec, device)
        models = []
        for seed, kind in enumerate(("base", "expert")):
            torch.manual_seed(seed)
            diffusion = build_diffusion(spec).to(device).eval().requires_grad_(False)
            models.append(TrainedDiffusion(diffusion, spec, segments.normalizer, {"kind": kind},
                                           Path(f"<random {kind} model>")))
        with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
            def run(n_steps, log_every, on_log, device=device, tmp=tmp, models=models, batch=batch):
                return train_reward(
                    *models, segments, Path(tmp), dim=cfg.reward.dim, dim_mults=tuple(cfg.reward.dim_mults),
                    n_steps=n_steps, batch_size=batch, lr=ec.lr, grad_clip=ec.grad_clip,
                    save_every=10**9, log_every=log_every, generator=seed_everything(0), device=device,
                    info={"bench": True}, on_log=on_log, autocast_dtype=autocast_dtype(ec))

            result = bench_training(run, args.budget_s, args.max_steps, device)
        rows.append(training_row(device, result))
    diffusion_params = sum(p.numel() for p in models[0].diffusion.model.parameters())
    reward_params = sum(p.numel() for p in RewardNet(spec.horizon, spec.transition_dim, cfg.reward.dim,
                                                     tuple(cfg.reward.dim_mults)).parameters())
    print_table(
        f"extract benchmark: horizon {cfg.horizon}, transition_dim {spec.transition_dim}, two diffusion U-Nets "
        f"dim {cfg.model.dim} x {list(cfg.model.dim_mults)} ({diffusion_params / 1e6:.2f}M params each), reward "
        f"net dim {cfg.reward.dim} x {list(cfg.reward.dim_mults)} ({reward_params / 1e6:.2f}M params), batch "
        f"{', '.join(f'{b} ({d})' for d, b in batches.items())}, precision {ec.precision}, {spec.n_steps} diffusion "
        "steps",
        ("device", "extract steps/s", *TRAINING_COLUMNS), rows)


if __name__ == "__main__":
    run_script(main)
