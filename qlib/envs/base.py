"""The one environment protocol shared by WebShop, HotPotQA and the test toy environment.

Search, collection and evaluation only ever talk to this interface:

* ``task_ids(split)`` — the task ids of ``train`` / ``valid`` / ``test``;
* ``reset(task_id) -> observation`` — start an episode;
* ``step(action_text) -> StepResult`` — ``(observation, reward, done, info)``; malformed actions never
  raise: they give the environment's invalid-action observation with ``info["invalid"] = True``;
  the step that reaches ``max_steps`` without a terminal ends the episode with reward 0 and
  ``info["truncated"] = True``; a step after ``done`` raises :class:`EpisodeOverError`;
* ``snapshot()`` / ``restore(snapshot)`` — an immutable value capturing the whole episode state;
  restore + the same action gives the same observation, reward and done;
* ``valid_actions()`` — an :class:`ActionSpace` for constrained decoding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

SPLITS = ("train", "valid", "test")


class EpisodeOverError(RuntimeError):
    """``step`` was called after the episode ended (finish / buy / step limit)."""


class StepResult(NamedTuple):
    observation: str
    reward: float
    done: bool
    info: dict[str, Any]


@dataclass(frozen=True)
class ActionSpace:
    """What the agent may do now.

    ``verbs`` maps each verb, spelled as the prompt shows it (``search``/``click`` for WebShop,
    ``Search``/``Lookup``/``Finish`` for HotPotQA), to ``None`` for a free-text argument or to the
    tuple of allowed arguments (WebShop's current clickables, as displayed on the page).
    """

    verbs: dict[str, tuple[str, ...] | None] = field(default_factory=dict)

    def allows(self, verb: str, argument: str) -> bool:
        """True if ``verb[argument]`` is in this space (verb and choices compared case-insensitively)."""
        for name, choices in self.verbs.items():
            if name.lower() == verb.lower():
                if choices is None:
                    return bool(argument.strip())
                return argument.strip().lower() in {c.lower() for c in choices}
        return False

    def describe(self) -> str:
        """Human-readable listing, e.g. for prompts that show the available actions."""
        parts = []
        for name, choices in self.verbs.items():
            parts.append(f"{name}[...]" if choices is None else ", ".join(f"{name}[{c}]" for c in choices))
        return "; ".join(parts)


@runtime_checkable
class Environment(Protocol):
    name: str
    max_steps: int

    def task_ids(self, split: str) -> list[int]: ...

    def reset(self, task_id: int) -> str: ...

    def step(self, action: str) -> StepResult: ...

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...

    def valid_actions(self) -> ActionSpace: ...


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split
