"""A reference for an extracted reward: a classifier of expert vs base segments, scored as `relreward extract`
scores the reward.

The relative reward at diffusion time t is `log p_expert,t(x_t) - log p_base,t(x_t)` up to a constant per t (the
integral of the score difference). A classifier trained with the logistic loss on noised segments of the two
datasets, conditioned on t, estimates the same log-ratio directly from the labelled data (its logit, up to the log
of the class prior), with no diffusion model in between. Scored with the env's own diagnostics it tells what the
datasets allow:
- held-out accuracy: a classifier trained for it is (near) the best a reward of that network shape can reach, so a
  learned reward close to it has lost little in extraction, and a target above it asks more than the data hold;
- map correlations (Maze2D): how far the exact log-ratio follows the distance to the goal. A learned reward can
  beat it there (the diffusion models smooth what the classifier does not), so it is a reference, not a bound.

    python scripts/classifier_reference.py runs/pipeline/maze2d_umaze-r3c1-s0 [--steps 3000] [--dim N] [--threads 1]
        [--out DIR]

RUN is a pipeline folder (or an extract folder with its config.yaml next to or above it). Writes
RUN/classifier_reference/metrics.json and plots (DIR/ with --out), and prints the learned reward's figures beside
the classifier's per t.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from relreward_cli import families, provenance
from relreward_cli.errors import UserError, at_least, run_script
from relreward_cli.models.networks import reward_network
from relreward_cli.reward.extraction import noised_batch
from relreward_cli.reward.trainer import REWARD_FILE, TrainedReward, load_reward_model
from relreward_cli.tracking import tracker_from_config
from relreward_cli.training import adam, load_checkpoint, seed_everything

COMPARED = {"pearson": "resting", "binned_pearson": "binned", "accuracy": "accuracy"}  # Maze2D's views, by key


def find_run(path: Path) -> tuple[Path, Path]:
    """(config.yaml, extract folder) of a pipeline folder or an extract folder."""
    extract_dir = path / "extract" if (path / "extract" / "reward.pt").is_file() else path
    for folder in (extract_dir, extract_dir.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml", extract_dir
    raise UserError(f"No config.yaml in {extract_dir} or its parent: pass a pipeline or extract run folder.")


def train_classifier(reward: TrainedReward, architecture: dict, data, n_steps: int, batch_size: int, lr: float,
                     seed: int) -> torch.nn.Module:
    """A network of the reward's own shape (``architecture`` as saved in ``reward.pt``) trained to tell noised
    expert segments (label 1) from noised base segments (label 0), at diffusion steps drawn uniformly, with a
    balanced batch; returns it in eval mode."""
    architecture = dict(architecture)
    cls = reward_network(reward.spec.network, architecture.pop("kind", "default"))
    generator = seed_everything(seed)  # first: the network's initial weights come from the seeded global RNG
    net = cls(reward.spec.horizon, reward.spec.transition_dim, **architecture)
    optimizer = adam(net.parameters(), lr)
    half = batch_size // 2
    labels = torch.cat([torch.zeros(half), torch.ones(half)])
    for step in range(1, n_steps + 1):
        x0 = torch.cat([data.base.sample(half, generator), data.expert.sample(half, generator)])
        x_t, t = noised_batch(x0, reward.schedule, generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x_t, t).reshape(-1), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 500 == 0 or step == n_steps:
            logging.info("classifier step %d/%d: logistic loss %.4f", step, n_steps, loss.item())
    return net.eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a pipeline folder or an extract folder")
    parser.add_argument("--steps", type=at_least(1), default=3000, help="classifier training steps")
    parser.add_argument("--batch-size", type=at_least(2), default=128, help="half base, half expert segments")
    parser.add_argument("--lr", type=at_least(1e-12, float), default=1e-3)
    parser.add_argument("--threads", type=at_least(1), default=None)
    parser.add_argument("--dim", type=at_least(1), default=None,
                        help="the classifier's base width (default: the reward network's own, so that the reference "
                             "has its shape; a wider one tells whether that shape limits what it reaches)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the classifier's metrics and plots (default: RUN/classifier_reference; "
                             "another one keeps a reference made with other settings)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
    settings |= {"dim": args.dim} if args.dim else {}  # a reference of the reward's own shape records none
    config_file, extract_dir = find_run(args.run)
    provenance.check_output(extract_dir / REWARD_FILE, "relreward extract")
    out = args.out or extract_dir.parent / "classifier_reference"
    if (out / "metrics.json").is_file():
        earlier = json.loads((out / "metrics.json").read_text()).get("classifier/settings")
        if earlier != settings:
            made = f"with {earlier}" if earlier else "before its settings were recorded"
            raise UserError(f"{out} holds a classifier reference made {made}; this one asks for {settings}. Pass "
                            "--out <another folder> to keep both, or delete it first.")
    cfg = OmegaConf.load(config_file)
    cfg.logger.mode = "disabled"
    learned = json.loads((extract_dir / "metrics.json").read_text())
    reward = load_reward_model(extract_dir)
    architecture = load_checkpoint(extract_dir / REWARD_FILE, kind="reward-model")["architecture"]
    architecture |= {"dim": args.dim} if args.dim else {}
    domain = families.of(cfg)
    data = domain.load_data(cfg, reward)
    net = train_classifier(reward, architecture, data, args.steps, args.batch_size, args.lr, cfg.seed)
    reference = replace(reward, net=net, path=out)
    with tracker_from_config(cfg, out, "classifier-reference") as tracker:
        metrics = domain.reward_diagnostics(cfg, reference, data, tracker) | {"classifier/settings": settings}
        tracker.summary(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))

    t_values = sorted({int(key.rsplit("/t", 1)[1]) for key in metrics if key.startswith("pearson/t")})
    table = Table(title=f"{extract_dir}: learned reward vs the classifier (report t = {cfg.extract.report_t})")
    table.add_column("t", justify="right")
    for label in COMPARED.values():
        table.add_column(f"{label}, learned", justify="right")
        table.add_column(f"{label}, classifier", justify="right")
    for t in t_values:
        cells = [f"{source.get(f'{name}/t{t}', float('nan')):.3f}"
                 for name in COMPARED for source in (learned, metrics)]
        table.add_row(str(t), *cells)
    Console().print(table)


if __name__ == "__main__":
    run_script(main)
