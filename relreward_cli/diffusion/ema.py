"""Exponential moving average of a model's weights."""

import copy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from relreward_cli.training import contiguous_span, flatten_parameters


class EMA:
    """A frozen copy `model` whose parameters track `decay * ema + (1 - decay) * online`.

    The first `update_after_step` calls of `update` copy the online weights instead (the average starts
    once training has moved away from the initialization). Buffers are always copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.995, update_after_step: int = 0):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.update_after_step, self.step = decay, update_after_step, 0
        self._flat = flatten_parameters(self.model, with_grad=False).data  # the copy's weights, one tensor
        self._params, self._buffers = list(self.model.parameters()), list(self.model.buffers())
        self._lerp = get_ema_multi_avg_fn(decay)  # torch's multi-tensor EMA: one fused lerp over all weights
        self._online: tuple[nn.Module, torch.Tensor | None] | None = None  # the online model and its flat span

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the online `model`'s current weights into the average: one kernel over all of them when they are
        one flat tensor (:func:`relreward_cli.training.flatten_parameters`, looked for at the model's first update,
        not at every step), one per tensor otherwise."""
        self.step += 1
        if self._online is None or self._online[0] is not model:
            self._online = (model, contiguous_span(list(model.parameters())))
        online = self._online[1]
        if online is not None:
            ema_params, params = [self._flat], [online]
        else:
            ema_params, params = self._params, list(model.parameters())
        if self.step <= self.update_after_step:
            torch._foreach_copy_(ema_params, params)
        else:
            self._lerp(ema_params, params, self.step)
        for ema_buffer, buffer in zip(self._buffers, model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "step": self.step, "decay": self.decay,
                "update_after_step": self.update_after_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.step, self.decay = state["step"], state["decay"]
        self._lerp = get_ema_multi_avg_fn(self.decay)
        self.update_after_step = state["update_after_step"]
