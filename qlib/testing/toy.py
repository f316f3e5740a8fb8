"""A tiny deterministic "doors" environment implementing the qlib protocol, for tests and demos.

The agent must open ``length`` doors in a row with ``go[a]``, ``go[b]`` or ``go[c]``. Door ``i`` of
task ``t`` opens with letter ``"a"`` when ``(t + i)`` is even and ``"b"`` otherwise (so the optimal
path is known: :meth:`ToyEnv.solution`). Per step:

* the right letter opens the door (``"Door k opened."``); opening the last one ends the episode with
  reward 1;
* a wrong ``a``/``b`` does nothing (``"The door is locked."``, reward 0, not done);
* a wrong ``c`` is a dead end: ``"You fell into a pit."``, done with reward 0;
* anything else is invalid (``info["invalid"] = True``), not done;
* every step counts; the step reaching ``max_steps`` without a terminal ends the episode with reward 0
  and ``info["truncated"] = True``; a step after ``done`` raises :class:`EpisodeOverError`.

Task ids: train ``0..n_train-1``, valid ``100..``, test ``200..``. The state is an immutable value,
so it is its own snapshot. :class:`ToyPolicy` (a seeded random policy returning
:class:`~qlib.agent.base.Candidate` objects) and :class:`RightDoorScorer` (an oracle Q model) complete
the kit. The environment registers as ``toy`` through the same registry entry as WebShop and HotPotQA (prompt files in ``qlib/testing/prompts/``),
so search, pairs and evaluation run on it with no special case.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from qlib.agent.base import Candidate, Message
from qlib.envs.base import ActionSpace, EpisodeOverError, StepResult, check_split
from qlib.envs.registry import EnvSpec, register

LETTERS = ("a", "b", "c")
ACTION_SPACE = ActionSpace(verbs={"go": LETTERS})
_ACTION = re.compile(r"^go\[(.*)\]$")
SPLIT_OFFSETS = {"train": 0, "valid": 100, "test": 200}


@dataclass(frozen=True)
class ToyState:
    """The whole episode state (immutable, hence its own snapshot)."""

    task_id: int
    position: int = 0  # doors opened so far
    steps: int = 0
    done: bool = False
    truncated: bool = False


class ToyEnv:
    """Open ``length`` doors in at most ``max_steps`` steps (see the module docstring)."""

    name = "toy"

    def __init__(self, max_steps: int = 4, length: int = 2, n_tasks: Sequence[int] = (8, 4, 4)):
        if max_steps < 1 or length < 1:
            raise ValueError("max_steps and length must be >= 1")
        self.max_steps = int(max_steps)
        self.length = int(length)
        self.n_tasks = dict(zip(("train", "valid", "test"), n_tasks))
        self._state: ToyState | None = None

    def task_ids(self, split: str) -> list[int]:
        check_split(split)
        return [SPLIT_OFFSETS[split] + i for i in range(self.n_tasks[split])]

    def solution(self, task_id: int) -> list[str]:
        """The optimal action sequence of ``task_id``."""
        return [f"go[{'a' if (task_id + i) % 2 == 0 else 'b'}]" for i in range(self.length)]

    def reset(self, task_id: int) -> str:
        self._state = ToyState(task_id=int(task_id))
        return f"Task {task_id}: open {self.length} doors with go[a], go[b] or go[c]."

    def step(self, action: str) -> StepResult:
        state = self.snapshot()
        if state.done:
            raise EpisodeOverError(f"toy episode of task {state.task_id} is over")
        observation, reward, state, invalid = self._transition(replace(state, steps=state.steps + 1), action)
        if not state.done and state.steps >= self.max_steps:
            state = replace(state, done=True, truncated=True)
        self._state = state
        info: dict[str, Any] = {"invalid": invalid, "truncated": state.truncated, "steps": state.steps}
        return StepResult(observation, reward, state.done, info)

    def _transition(self, state: ToyState, action: str) -> tuple[str, float, ToyState, bool]:
        """(observation, reward, new state, invalid) of one action."""
        match = _ACTION.match(action.strip()) if isinstance(action, str) else None
        letter = match.group(1).strip().lower() if match else ""
        if letter not in LETTERS:
            return f"Invalid action: {action}", 0.0, state, True
        right = "a" if (state.task_id + state.position) % 2 == 0 else "b"
        if letter == right:
            state = replace(state, position=state.position + 1)
            if state.position == self.length:
                return "You opened the last door. Reward = 1", 1.0, replace(state, done=True), False
            return f"Door {state.position} opened.", 0.0, state, False
        if letter == "c":
            return "You fell into a pit.", 0.0, replace(state, done=True), False
        return "The door is locked.", 0.0, state, False

    def snapshot(self) -> ToyState:
        if self._state is None:
            raise RuntimeError("ToyEnv has no episode yet: call reset(task_id) first")
        return self._state

    def restore(self, snapshot: ToyState) -> None:
        if not isinstance(snapshot, ToyState):
            raise TypeError(f"expected a ToyState, got {type(snapshot).__name__}")
        self._state = snapshot

    def valid_actions(self) -> ActionSpace:
        return ACTION_SPACE


def toy_candidate(letter: str, n_tokens: int = 8) -> Candidate:
    """The canonical candidate for ``go[letter]`` (an unknown letter gives an unparsed one)."""
    action = f"go[{letter}]"
    return Candidate(
        text=f"Thought: I try door {letter}.\nAction: {action}",
        thought=f"I try door {letter}.",
        action=action,
        valid=letter in LETTERS,
        n_tokens=n_tokens,
        raw=f"Thought: I try door {letter}.\nAction: {action}",
    )


class ToyPolicy:
    """Seeded random policy: each candidate draws a letter with ``weights`` from ``random.Random(seed)``.

    Deterministic given ``seed`` (``seed=None`` draws from an unseeded generator). Thread-safe.
    """

    thread_safe = True

    def __init__(self, weights: Mapping[str, float] | None = None, n_tokens: int = 8):
        self.weights = dict(weights or {letter: 1.0 for letter in LETTERS})
        self.n_tokens = n_tokens

    def propose(
        self,
        messages: list[Message],
        n: int,
        *,
        temperature: float | None = None,
        action_space: ActionSpace | None = None,
        seed: int | None = None,
    ) -> list[Candidate]:
        rng = random.Random(seed)
        letters, weights = zip(*sorted(self.weights.items()))
        return [toy_candidate(rng.choices(letters, weights)[0], self.n_tokens) for _ in range(n)]



class RightDoorScorer:
    """An oracle Q model: Q = 1 for the candidate that opens the next door (read from the Q model's messages)."""

    scored_tokens = 0

    def score(self, messages: list[Message], candidates: Sequence[str]) -> list[float]:
        first = next(i for i, m in enumerate(messages) if m["content"].startswith("Task "))
        task = int(messages[first]["content"].split()[1].rstrip(":"))
        position = sum(m["content"].endswith("opened.") for m in messages[first:] if m["role"] == "user")
        right = "a" if (task + position) % 2 == 0 else "b"
        self.scored_tokens += len(candidates)
        return [float(c.endswith(f"go[{right}]")) for c in candidates]

SPEC = register(EnvSpec(
    name="toy",
    factory=ToyEnv,
    verbs=("go",),
    action_separator="\nAction: ",
    observation_prefix="Observation: ",
    prompt_package="qlib.testing",
    settings={"max_steps": 4, "depth_limit_reward": -1.0, "train_tasks": 8, "valid_tasks": 4, "test_tasks": 4},
    expert=lambda env, task_id: env.solution(task_id),
    testing=True,
))
