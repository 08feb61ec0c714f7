"""What does an extracted reward follow? Correlate it with the return and with each observation dimension (mean over
the segment) of dataset segments, per dataset.

    python scripts/reward_features.py runs/extract/quick-hopper-s0 [--data-dir data] [--t 0 5] [--segments 1024]

The datasets are the ones the reward's models were trained on (recorded in reward.pt). Prints one table per dataset
and t: Pearson correlation of the reward (read as in `relreward extract`, noise-averaged at diffusion time t) with
the segment return, the mean absolute action (models of actions), and every observation dimension's segment mean.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from relreward_cli import provenance
from relreward_cli.data.sources import load_episodes
from relreward_cli.errors import UserError, at_least, run_script
from relreward_cli.reward.evaluate import episode_windows, noised_reward, pearson
from relreward_cli.reward.trainer import load_reward_model, reward_file

TRAJECTORY_SOURCES = ("minari", "generated", "hdf5")


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("reward", type=Path, help="an extract run folder or reward.pt")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--t", type=at_least(0), nargs="+", default=[0], help="diffusion times to read it at")
    parser.add_argument("--segments", type=at_least(2), default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    provenance.check_output(reward_file(args.reward), "relreward extract")
    reward = load_reward_model(args.reward)
    spec, sources = reward.spec, reward.info["sources"]
    if max(args.t) >= reward.schedule.n_steps:
        raise UserError(f"--t {' '.join(map(str, args.t))}: the reward's models have {reward.schedule.n_steps} "
                        f"diffusion steps, so every t must be below {reward.schedule.n_steps}.")
    for kind in ("base", "expert"):
        if sources[kind].partition(":")[0] not in TRAJECTORY_SOURCES:
            raise UserError(f"The reward was extracted from {sources[kind]}, which is not a trajectory dataset: "
                            "this script reads segments of episodes (Maze2D, locomotion).")
    for kind in ("base", "expert"):
        raw, returns = episode_windows(load_episodes(sources[kind], args.data_dir), spec.horizon, spec.use_actions,
                                       args.segments, seed=0)
        x0 = torch.as_tensor(reward.normalizer.normalize(raw), dtype=torch.float32)
        observations, actions = raw[:, :, spec.action_dim:], raw[:, :, :spec.action_dim]  # no actions: state plans
        features = {"segment return": returns}
        if spec.action_dim:
            features["mean |action|"] = np.abs(actions).mean(axis=(1, 2))
        features |= {f"obs[{i}] (mean)": observations[:, :, i].mean(axis=1) for i in range(observations.shape[2])}
        for t in args.t:
            learned = noised_reward(reward, x0, t, 16, 0)
            table = Table(title=f"{kind} data ({sources[kind]}), reward at t={t}: Pearson with")
            table.add_column("feature")
            table.add_column("r", justify="right")
            table.add_column("feature mean", justify="right")
            for name, values in features.items():
                table.add_row(name, f"{pearson(learned, values):+.2f}", f"{values.mean():.3f}")
            Console().print(table)


if __name__ == "__main__":
    run_script(main)
