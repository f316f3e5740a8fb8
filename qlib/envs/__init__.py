"""Offline task environments behind one protocol (see :mod:`qlib.envs.base`)."""
from __future__ import annotations

from typing import Any

from qlib.envs.base import ActionSpace, Environment, EpisodeOverError, StepResult

ENV_NAMES = ("webshop", "hotpotqa")


def make(name: str, config: Any = None, **overrides: Any) -> Environment:
    """Build environment ``name`` (``webshop`` or ``hotpotqa``).

    ``config`` is a :class:`qlib.config.Config` (default: the ``cpu`` profile); ``overrides`` are
    keyword settings of the environment (for example ``max_steps=5``).
    """
    from qlib.config import load_config

    config = config or load_config()
    kwargs = {"max_steps": config.env(name).max_steps, **overrides}
    if name == "webshop":
        from qlib.envs.webshop import WebShopEnv

        return WebShopEnv(**kwargs)
    from qlib.envs.hotpotqa import HotPotQAEnv

    return HotPotQAEnv(**kwargs)


__all__ = ["ActionSpace", "Environment", "EpisodeOverError", "StepResult", "make", "ENV_NAMES"]
