"""Offline task environments behind one protocol (:mod:`qlib.envs.base`) and one registry
(:mod:`qlib.envs.registry`): ``make("webshop")`` builds an environment with the paper's settings."""
from __future__ import annotations

from qlib.envs.base import ActionSpace, Environment, EpisodeOverError, StepResult
from qlib.envs.registry import EnvSpec, env_names, get_spec, make, register

__all__ = ["ActionSpace", "EnvSpec", "Environment", "EpisodeOverError", "StepResult", "env_names", "get_spec",
           "make", "register"]
