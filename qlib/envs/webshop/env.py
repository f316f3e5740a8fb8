"""The offline WebShop text environment (spec §3, §6) behind :mod:`qlib.envs.base`'s protocol."""
from __future__ import annotations

import operator
import re
from dataclasses import replace
from typing import Any

from qlib.envs.base import ActionSpace, EpisodeOverError, StepResult
from qlib.envs.webshop.catalogue import hidden_prices, load_catalogue
from qlib.envs.webshop.goals import Goal, split_ids, synthetic_goals
from qlib.envs.webshop.pages import Clickable, clickables, render
from qlib.envs.webshop.reward import get_reward
from qlib.envs.webshop.search import default_engine
from qlib.envs.webshop.session import DONE, ITEM, RESULTS, START, SUB_PAGES, Session

_ACTION_RE = re.compile(r"(.+)\[(.+)\]")  # '.' stops at a newline: only the first line counts


def parse_action(action: Any) -> tuple[str, str] | None:
    """``(name, lower-cased argument)`` of ``name[argument]`` at the start of the first line, else None.

    The name runs to the last ``[`` that a ``]`` follows (with text between), the argument to the last
    ``]``; the verb stays case-sensitive, as in the original text env.
    """
    if not isinstance(action, str):
        return None
    match = _ACTION_RE.match(action)
    return (match.group(1), match.group(2).lower()) if match else None


class WebShopEnv:
    """WebShop over the 1k catalogue with the 6,910 synthetic goals; task id = goal index.

    Splits: test = goals 0-499, valid = 500-1499, train = 1500-6909. ``search[...]`` is accepted on
    every page (as in the original text env), but :meth:`valid_actions` offers it only on the start
    page, the one page with a search bar.
    """

    name = "webshop"

    def __init__(self, max_steps: int = 10, show_attrs: bool = False):
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = max_steps
        self.show_attrs = show_attrs
        self.catalogue = load_catalogue()
        self.goals: tuple[Goal, ...] = synthetic_goals()
        self.prices = hidden_prices()
        default_engine()  # build the shared index now rather than on the first search
        self._session: Session | None = None
        self._observation = ""

    # -- protocol -------------------------------------------------------------------------------
    def task_ids(self, split: str) -> list[int]:
        return split_ids(split, len(self.goals))

    def reset(self, task_id: int) -> str:
        index = operator.index(task_id)
        if not 0 <= index < len(self.goals):
            raise ValueError(f"WebShop task id {task_id} out of range 0..{len(self.goals) - 1}")
        self._set(Session(goal=self.goals[index]))
        return self._observation

    def step(self, action: str) -> StepResult:
        session = self._active()
        new, reward, extra = self._transition(session, parse_action(action))
        invalid = new is None
        new = session if new is None else new
        steps = session.steps + 1
        truncated = not new.done and steps >= self.max_steps
        self._set(replace(new, steps=steps, done=new.done or truncated, truncated=truncated))
        info = {"invalid": invalid, "steps": steps, "truncated": truncated, **extra}
        return StepResult(self._observation, reward, self._session.done, info)

    def snapshot(self) -> Session:
        if self._session is None:
            raise RuntimeError("no episode to snapshot: call reset(task_id) first")
        return self._session

    def restore(self, snapshot: Session) -> None:
        if not isinstance(snapshot, Session):
            raise TypeError(f"expected a WebShop Session snapshot, got {type(snapshot).__name__}")
        self._set(snapshot)

    def valid_actions(self) -> ActionSpace:
        session = self._session
        if session is None or session.done:
            return ActionSpace({})
        if session.page == START:
            return ActionSpace({"search": None})
        return ActionSpace({"click": tuple(c.label for c in self._clickables().values())})

    # -- helpers --------------------------------------------------------------------------------
    @property
    def goal(self) -> Goal:
        """The current episode's goal (hidden from the agent; for oracles and analysis)."""
        return self._active(allow_done=True).goal

    @property
    def observation(self) -> str:
        return self._observation

    def _set(self, session: Session) -> None:
        self._session = session
        self._observation = render(session, self.catalogue.by_asin, self.show_attrs)

    def _active(self, allow_done: bool = False) -> Session:
        if self._session is None:
            raise RuntimeError("no episode: call reset(task_id) first")
        if self._session.done and not allow_done:
            reason = "the step limit was reached" if self._session.truncated else "the product was bought"
            raise EpisodeOverError(f"WebShop episode is over ({reason}); call reset(task_id) to start another")
        return self._session

    def _clickables(self) -> dict[str, Clickable]:
        return clickables(self._session, self.catalogue.by_asin, self.show_attrs)

    def _transition(self, s: Session, parsed: tuple[str, str] | None) -> tuple[Session | None, float, dict]:
        """``(next session or None if invalid, reward, extra info)``."""
        if parsed is None:
            return None, 0.0, {}
        verb, arg = parsed
        if verb == "search":
            return replace(s, page=RESULTS, keywords=tuple(arg.split(" ")), page_num=1, asin=None, options=()), 0.0, {}
        target = self._clickables().get(arg) if verb == "click" and arg != "search" else None
        if target is None:
            return None, 0.0, {}
        if target.kind == "asin":
            return replace(s, page=ITEM, asin=target.target, options=(), visited=s.visited | {target.target}), 0.0, {}
        if target.kind == "option":
            return replace(s, page=ITEM, options=s.with_option(target.group, target.target)), 0.0, {}
        return self._press(s, target.target)

    def _press(self, s: Session, button: str) -> tuple[Session, float, dict]:
        if button == "back to search":
            return Session(goal=s.goal, steps=s.steps), 0.0, {}
        if button == "next >":
            return replace(s, page_num=s.page_num + 1, asin=None, options=()), 0.0, {}
        if button == "< prev" and s.page == RESULTS:
            return replace(s, page_num=s.page_num - 1, asin=None, options=()), 0.0, {}
        if button == "< prev" and s.page == ITEM:
            return replace(s, page=RESULTS, asin=None, options=()), 0.0, {}
        if button == "< prev":
            return replace(s, page=ITEM), 0.0, {}
        if button in SUB_PAGES:
            return replace(s, page=button), 0.0, {}
        return self._buy(s)

    def _buy(self, s: Session) -> tuple[Session, float, dict]:
        product = self.catalogue.by_asin[s.asin]
        options = s.options_dict()
        reward, details = get_reward(product, s.goal.as_dict(), self.prices[s.asin], options, verbose=True)
        reward = float(reward)
        extra = {"asin": s.asin, "options": options, "reward_details": details}
        return replace(s, page=DONE, done=True, reward=reward), reward, extra
