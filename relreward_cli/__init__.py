"""relreward: extract relative reward functions from pairs of trajectory diffusion models."""

__version__ = "0.1.0"


def _drop_adroit_notice() -> None:
    """gymnasium-robotics prints a notice about its Adroit hand envs' rewards to stderr on every import (through
    farama-notifications); relreward uses none of them, so the notice is dropped before anything imports it."""
    try:
        from farama_notifications import notifications
    except ImportError:
        return
    notifications.pop("gymnasium_robotics", None)


_drop_adroit_notice()
