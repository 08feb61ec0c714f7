"""Denoiser and reward architectures by the kind of sample they read (a family's ``network``)."""

from __future__ import annotations

from torch import nn

from relreward_cli.errors import UserError
from relreward_cli.models.image_unet import ImageRewardNet, ImageUnet
from relreward_cli.models.reward_net import RewardNet, StepRewardNet
from relreward_cli.models.unet import TemporalUnet

# network -> (denoiser, reward net); both built as cls(horizon, transition_dim, dim, dim_mults) and reading
# samples (B, horizon, transition_dim): trajectory segments (temporal) or images of horizon rows (image).
NETWORKS: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "temporal": (TemporalUnet, RewardNet),
    "image": (ImageUnet, ImageRewardNet),
}


# reward.architecture -> the reward net replacing the network's own (segment networks only).
REWARD_ARCHITECTURES: dict[str, type[nn.Module]] = {"per_step": StepRewardNet}


def reward_network(network: str, architecture: str = "default") -> type[nn.Module]:
    """The reward net class: the network's own (``default``) or one of ``REWARD_ARCHITECTURES``."""
    if architecture == "default":
        return networks(network)[1]
    if architecture not in REWARD_ARCHITECTURES or network != "temporal":
        raise UserError(f"reward.architecture={architecture!r} with {network} samples: choose default or, for "
                        f"trajectory segments, one of {', '.join(REWARD_ARCHITECTURES)}.")
    return REWARD_ARCHITECTURES[architecture]


def networks(name: str) -> tuple[type[nn.Module], type[nn.Module]]:
    """The (denoiser, reward net) classes of the architecture ``name``."""
    if name not in NETWORKS:
        raise UserError(f"Unknown network {name!r}; known: {', '.join(NETWORKS)}.")
    return NETWORKS[name]
