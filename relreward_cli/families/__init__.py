"""Environment families by name: the one registry the stages choose from (an env config's ``family`` key).

The registry is this package: the family ``<name>`` is the module ``relreward_cli.families.<name>``, whose ``FAMILY``
is its :class:`EnvFamily` class. Adding a family is that module plus an env YAML under ``configs/env/`` naming it;
a family's module (and its heavy dependencies) is imported only when an env of it is chosen.
"""

from __future__ import annotations

import importlib
import pkgutil

from omegaconf import DictConfig

from relreward_cli.errors import UserError
from relreward_cli.families.base import EnvFamily


def known_families() -> list[str]:
    """The names of the families in this package (its modules that define ``FAMILY``)."""
    names = [info.name for info in pkgutil.iter_modules(__path__)]
    return [name for name in names if hasattr(importlib.import_module(f"{__name__}.{name}"), "FAMILY")]


def family_named(name: str) -> EnvFamily:
    """The family called ``name``."""
    module = None
    if name.isidentifier() and any(info.name == name for info in pkgutil.iter_modules(__path__)):
        module = importlib.import_module(f"{__name__}.{name}")
    if module is None or not hasattr(module, "FAMILY"):
        raise UserError(f"env.family={name!r} is not a known environment family. Known: "
                        f"{', '.join(known_families())}. A new family is a module relreward_cli/families/<name>.py "
                        "whose FAMILY implements relreward_cli.families.base.EnvFamily, plus an env YAML under "
                        "configs/env/ with family: <name>.")
    return module.FAMILY()


def of(cfg: DictConfig) -> EnvFamily:
    """The family of a config's env (its ``env.family``)."""
    return family_named(cfg.env.family)


__all__ = ["EnvFamily", "family_named", "known_families", "of"]
