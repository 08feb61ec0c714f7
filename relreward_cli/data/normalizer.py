"""Per-dimension normalizers, fitted on the union of base and expert data so that both diffusion models and
the reward share one space, and saved with every checkpoint."""

from __future__ import annotations

import numpy as np
import torch

from relreward_cli.data.segments import episode_transitions
from relreward_cli.data.sources import Episode
from relreward_cli.errors import UserError

KINDS = ("limits", "gaussian")


class Normalizer:
    """Per-dimension affine map x -> (x - shift) / scale over the last axis, for numpy arrays and tensors.

    kind="limits": Diffuser's LimitsNormalizer, each dimension's [min, max] -> [-1, 1];
    kind="gaussian": zero mean, unit standard deviation. Constant dimensions get scale 1.
    """

    def __init__(self, kind: str, shift: np.ndarray, scale: np.ndarray):
        if kind not in KINDS:
            raise UserError(f"Unknown normalizer kind '{kind}'. Choose one of: {', '.join(KINDS)}.")
        self.kind = kind
        self.shift, self.scale = np.asarray(shift, dtype=np.float64), np.asarray(scale, dtype=np.float64)

    @classmethod
    def fit(cls, data: np.ndarray, kind: str = "limits") -> Normalizer:
        """Fit on data (N, D)."""
        data = np.asarray(data, dtype=np.float64)
        if data.ndim != 2 or len(data) == 0:
            raise UserError(f"A normalizer is fitted on a non-empty (N, D) array; got shape {data.shape}.")
        if kind == "limits":
            low, high = data.min(axis=0), data.max(axis=0)
            shift, scale = (high + low) / 2, (high - low) / 2
        else:
            shift, scale = data.mean(axis=0), data.std(axis=0)
        return cls(kind, shift, np.where(scale > 0, scale, 1.0))

    @property
    def dim(self) -> int:
        return len(self.shift)

    def parameters_like(self, x: np.ndarray | torch.Tensor) -> tuple:
        if x.shape[-1] != self.dim:
            raise UserError(
                f"This normalizer was fitted on {self.dim} dimensions but got data of shape "
                f"{tuple(x.shape)}; normalize data of the space the checkpoint was trained on."
            )
        if isinstance(x, torch.Tensor):
            return tuple(torch.as_tensor(p, dtype=x.dtype, device=x.device) for p in (self.shift, self.scale))
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
        return self.shift.astype(dtype), self.scale.astype(dtype)

    def normalize(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        shift, scale = self.parameters_like(x)
        return (x - shift) / scale

    def unnormalize(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        shift, scale = self.parameters_like(x)
        return x * scale + shift

    def state_dict(self) -> dict:
        """Plain lists and a string: safe for `torch.load(weights_only=True)` and JSON."""
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict) -> Normalizer:
        return cls(state["kind"], state["shift"], state["scale"])

    def matches(self, other: Normalizer, rtol: float = 1e-6) -> bool:
        """Same kind and (to `rtol`) the same per-dimension parameters: refuse to mix models otherwise."""
        return (self.kind == other.kind and self.dim == other.dim
                and np.allclose(self.shift, other.shift, rtol=rtol, atol=0)
                and np.allclose(self.scale, other.scale, rtol=rtol, atol=0))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Normalizer) and self.matches(other, rtol=0)

    def __repr__(self) -> str:
        return f"Normalizer(kind={self.kind!r}, dim={self.dim})"


def fit_transition_normalizer(
    episode_lists: list[list[Episode]], use_actions: bool, kind: str = "limits"
) -> Normalizer:
    """Fit on the transitions ([a_t, s_t] rows, see `segments`) of all episodes of all lists (e.g. base and
    expert) together."""
    episodes = [episode for episodes in episode_lists for episode in episodes]
    return Normalizer.fit(np.concatenate(episode_transitions(episodes, use_actions)), kind)
