"""Base and expert data of one environment, cut into segments in one shared normalized space."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from relreward_cli.data.normalizer import Normalizer, fit_transition_normalizer
from relreward_cli.data.segments import SegmentDataset, TransitionLayout
from relreward_cli.data.sources import Episode, load_episodes
from relreward_cli.errors import UserError


@dataclass
class SegmentPair:
    """Segments of the base and the expert data, normalized by one normalizer fitted on both."""

    base: SegmentDataset
    expert: SegmentDataset
    normalizer: Normalizer
    layout: TransitionLayout
    obs_dim: int
    act_dim: int
    sources: dict[str, str]
    episodes: dict[str, list[Episode]] = field(default_factory=dict)  # the raw episodes, by kind

    def __getitem__(self, kind: str) -> SegmentDataset:
        if kind not in ("base", "expert"):
            raise UserError(f"kind={kind!r}: a diffusion model is trained on 'base' or 'expert' data.")
        return getattr(self, kind)


def load_segment_pair(base_source: str, expert_source: str, root: Path | None, horizon: int,
                      use_actions: bool, normalizer_kind: str = "limits",
                      normalizer: Normalizer | None = None) -> SegmentPair:
    """Load both sources (see :func:`relreward_cli.data.sources.load_episodes`) and cut ``horizon``-step
    segments. The normalizer is fitted on base and expert transitions together unless one is given (as
    saved with a checkpoint)."""
    episodes = {"base": load_episodes(base_source, root), "expert": load_episodes(expert_source, root)}
    dims = {kind: (eps[0].observations.shape[1], eps[0].actions.shape[1]) for kind, eps in episodes.items()}
    if dims["base"] != dims["expert"]:
        raise UserError(f"Base data {base_source} has (observation, action) dims {dims['base']} but expert data "
                        f"{expert_source} has {dims['expert']}: both must come from the same environment.")
    if normalizer is None:
        normalizer = fit_transition_normalizer(list(episodes.values()), use_actions, normalizer_kind)
    segments = {kind: SegmentDataset(eps, horizon, use_actions, normalizer) for kind, eps in episodes.items()}
    obs_dim, act_dim = dims["base"]
    return SegmentPair(segments["base"], segments["expert"], normalizer, segments["base"].layout, obs_dim,
                       act_dim, {"base": base_source, "expert": expert_source}, episodes)
