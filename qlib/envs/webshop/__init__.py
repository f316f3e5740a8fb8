"""Offline WebShop (1k catalogue, synthetic goals) as a pure-Python text environment.

See ``shared/specs/webshop.md``. Modules: ``catalogue`` (products, hidden prices), ``goals``,
``analysis`` + ``search`` (BM25), ``normalize`` + ``reward``, ``session`` + ``pages`` + ``env``,
``oracle`` (scripted ceiling agent) and ``bench`` (latency numbers).
"""
from qlib.envs.webshop.env import WebShopEnv, parse_action
from qlib.envs.webshop.goals import Goal, human_goals, synthetic_goals
from qlib.envs.webshop.session import Session

__all__ = ["WebShopEnv", "Goal", "Session", "parse_action", "synthetic_goals", "human_goals"]
