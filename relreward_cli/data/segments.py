"""Fixed-length trajectory segments cut within episodes: what the diffusion models and the reward see.

Step t of an episode is the row [a_t, s_t] (Diffuser's layout: actions first) or s_t alone without actions; a
final observation s_T that has no action (Minari episodes) is dropped. Windows of `horizon` steps start at
every step that leaves a full window inside the episode. An episode shorter than `horizon` gives one window,
padded at the end by repeating its last row's observation with zero actions (raw units, before
normalization): the agent rests where the data left it, and padded observations stay inside the range the
normalizer was fitted on, unlike Diffuser's zero padding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from relreward_cli.data.sources import Episode
from relreward_cli.errors import UserError

if TYPE_CHECKING:
    from relreward_cli.data.normalizer import Normalizer


class TransitionLayout(NamedTuple):
    """Widths along a segment's last axis: observations occupy [action_dim, transition_dim)."""

    transition_dim: int
    action_dim: int  # 0 when actions are left out


def transition_layout(obs_dim: int, act_dim: int, use_actions: bool) -> TransitionLayout:
    return TransitionLayout(obs_dim + act_dim, act_dim) if use_actions else TransitionLayout(obs_dim, 0)


def episode_transitions(episodes: list[Episode], use_actions: bool) -> list[np.ndarray]:
    """One raw (T, transition_dim) float32 array per episode; all episodes must share their widths."""
    if not episodes:
        raise UserError("No episodes to cut segments from; check the dataset source.")
    widths = {(episode.observations.shape[1], episode.actions.shape[1]) for episode in episodes}
    if len(widths) > 1:
        raise UserError(
            f"Episodes disagree on (observation, action) widths {sorted(widths)}: base and expert data must "
            "come from the same environment."
        )
    return [
        np.concatenate([episode.actions, episode.observations[: len(episode)]], axis=-1)
        if use_actions else episode.observations[: len(episode)]
        for episode in episodes
    ]


class SegmentDataset(Dataset):
    """Normalized segments (horizon, transition_dim) float32, stored once as one stacked tensor.

    `dataset[i]` is window i; `sample(batch_size, generator)` draws (batch_size, horizon, transition_dim)
    windows uniformly with replacement by fancy indexing.
    """

    def __init__(self, episodes: list[Episode], horizon: int, use_actions: bool, normalizer: Normalizer):
        transitions_per_episode = episode_transitions(episodes, use_actions)
        self.horizon, self.use_actions = horizon, use_actions
        obs_dim, act_dim = episodes[0].observations.shape[1], episodes[0].actions.shape[1]
        self.layout = transition_layout(obs_dim, act_dim, use_actions)
        chunks, starts, offset = [], [], 0
        for transitions in transitions_per_episode:
            padding = np.repeat(transitions[-1:], max(horizon - len(transitions), 0), axis=0)
            padding[:, : self.layout.action_dim] = 0.0
            chunk = np.concatenate([transitions, padding])
            chunks.append(chunk)
            starts.append(offset + np.arange(len(chunk) - horizon + 1))
            offset += len(chunk)
        self.data = torch.as_tensor(normalizer.normalize(np.concatenate(chunks)), dtype=torch.float32)
        self.starts = torch.as_tensor(np.concatenate(starts))
        self.window = torch.arange(horizon)

    def to(self, device: torch.device | str) -> SegmentDataset:
        """Move the stacked data to `device` (sampling then gathers there)."""
        self.data, self.starts = self.data.to(device), self.starts.to(device)
        self.window = self.window.to(device)
        return self

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[self.starts[index] + self.window]

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch_size, horizon, transition_dim) windows; `generator` (a CPU one) makes draws reproducible."""
        index = torch.randint(len(self.starts), (batch_size,), generator=generator).to(self.starts.device)
        return self.data[self.starts[index, None] + self.window]
