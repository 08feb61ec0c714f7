"""D4RL-normalized scores `100 * (R - R_random) / (R_expert - R_random)` and mean / standard error helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from minari import get_normalized_score

from relreward_cli.data.sources import open_minari, split_source

# Published D4RL reference returns (random, expert) per task (d4rl/infos.py REF_MIN_SCORE / REF_MAX_SCORE).
D4RL_REFERENCE_RETURNS: dict[str, tuple[float, float]] = {
    "maze2d-open": (0.01, 20.66),
    "maze2d-umaze": (23.85, 161.86),
    "maze2d-medium": (13.13, 277.39),
    "maze2d-large": (6.7, 273.99),
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}


def normalized_score(returns: np.ndarray | float, random: float, expert: float) -> np.ndarray:
    """`100 * (R - R_random) / (R_expert - R_random)`, elementwise over `returns`."""
    return 100.0 * (np.asarray(returns, dtype=np.float64) - random) / (expert - random)


def mean_and_sem(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean (`std(ddof=1) / sqrt(n)`, 0 for a single value)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(sem)


@dataclass(frozen=True)
class ScoreNormalizer:
    """Maps episode returns to normalized scores; `origin` says where the reference returns come from."""

    score: Callable[[np.ndarray], np.ndarray]
    origin: str


def score_normalizer(d4rl_task: str | None, data_source: str | None = None,
                     root: Path | None = None) -> ScoreNormalizer | None:
    """Minari's `get_normalized_score` (x 100) when `data_source` is a Minari dataset carrying
    `ref_min_score` / `ref_max_score`, else the published D4RL returns of `d4rl_task`, else None."""
    if data_source is not None and split_source(data_source)[0] in ("minari", "generated"):
        kind, dataset_id = split_source(data_source)
        dataset = open_minari(kind, dataset_id, root)
        metadata = dataset.storage.metadata
        if metadata.get("ref_min_score") is not None and metadata.get("ref_max_score") is not None:
            return ScoreNormalizer(lambda returns: 100.0 * get_normalized_score(dataset, np.asarray(returns)),
                                   f"Minari {dataset_id} ref_min_score / ref_max_score")
    if d4rl_task in D4RL_REFERENCE_RETURNS:
        random, expert = D4RL_REFERENCE_RETURNS[d4rl_task]
        return ScoreNormalizer(lambda returns: normalized_score(returns, random, expert),
                               f"D4RL {d4rl_task} (random {random}, expert {expert})")
    return None
