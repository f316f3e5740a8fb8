"""Offline WebShop (1k catalogue, synthetic goals) as a pure-Python text environment.

See ``shared/specs/webshop.md``. Modules: ``spec`` (registry entry), ``catalogue`` (products, hidden
prices), ``goals``, ``analysis`` + ``search`` (BM25), ``normalize`` + ``reward``, ``session`` +
``pages`` + ``env``, ``oracle`` (scripted expert) and ``bench`` (latency numbers). Names are imported
lazily, so reading the registry entry loads no data.
"""
import importlib

_EXPORTS = {"WebShopEnv": "env", "parse_action": "env", "Goal": "goals", "human_goals": "goals",
            "synthetic_goals": "goals", "Session": "session"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
