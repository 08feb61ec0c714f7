"""Exponential moving average of a model's weights."""

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """A frozen copy `model` whose parameters track `decay * ema + (1 - decay) * online`.

    The first `update_after_step` calls of `update` copy the online weights instead (the average starts
    once training has moved away from the initialization). Buffers are always copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.995, update_after_step: int = 0):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.update_after_step, self.step = decay, update_after_step, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the online `model`'s current weights into the average."""
        self.step += 1
        copying = self.step <= self.update_after_step
        for ema_param, param in zip(self.model.parameters(), model.parameters(), strict=True):
            if copying:
                ema_param.copy_(param)
            else:
                ema_param.lerp_(param, 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "step": self.step, "decay": self.decay,
                "update_after_step": self.update_after_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.step, self.decay = state["step"], state["decay"]
        self.update_after_step = state["update_after_step"]
