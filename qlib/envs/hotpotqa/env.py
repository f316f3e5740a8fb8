"""The offline HotPotQA ReAct environment (spec §2, §4, §6), clean version.

Env-level actions are ``search[X]``, ``lookup[X]``, ``finish[X]`` and ``think[X]`` with a lower-case
verb (the agent layer normalises the LLM's ``Search[...]`` per §3). Differences from the original,
all from spec §0.2: the state is an immutable :class:`HotPotState` (snapshot = the value itself),
reward is non-zero only on the finish step, steps after the episode ended raise
:class:`EpisodeOverError`, and the env enforces the step limit itself (every step counts; the step
that reaches ``max_steps`` without a finish ends the episode with reward 0, ``truncated=True``).
``search[]`` (an empty entity) is treated as invalid; ``lookup[]`` and ``finish[]`` are valid (§4.4, §4.5).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any

from qlib.envs.base import ActionSpace, EpisodeOverError, StepResult
from qlib.envs.hotpotqa.metrics import exact_match_score, f1_score
from qlib.envs.hotpotqa.tasks import HotPotTask, load_tasks, split_task_ids
from qlib.envs.hotpotqa.wiki import WikiCorpus, load_corpus, normalize_query, split_sentences

VERBS = ("search", "lookup", "finish", "think")
NO_MORE_RESULTS = "No more results.\n"
NICE_THOUGHT = "Nice thought."
ACTION_SPACE = ActionSpace(verbs={"Search": None, "Lookup": None, "Finish": None})


@dataclass(frozen=True)
class HotPotState:
    """The whole episode state (spec §2.1); immutable, so it is its own snapshot."""

    question_idx: int
    page: str | None = None  # text of the last successfully found page
    lookup_keyword: str | None = None
    lookup_list: tuple[str, ...] | None = None
    lookup_cnt: int | None = None
    answer: str | None = None
    steps: int = 0
    done: bool = False
    truncated: bool = False


def parse_action(text: str) -> tuple[str, str] | None:
    """``verb[arg]`` → ``(verb, arg)`` for the four env verbs (case-sensitive), else None."""
    for verb in VERBS:
        if text.startswith(verb + "[") and text.endswith("]"):
            return verb, text[len(verb) + 1 : -1]
    return None


def lookup(state: HotPotState, keyword: str) -> tuple[str, HotPotState]:
    """ReAct's lookup cursor (§4.4): a new keyword rebuilds the match list; each call advances it."""
    if keyword != state.lookup_keyword:
        pieces = split_sentences(state.page) if state.page is not None else ()
        matches = tuple(p for p in pieces if keyword.lower() in p.lower())
        state = replace(state, lookup_keyword=keyword, lookup_list=matches, lookup_cnt=0)
    assert state.lookup_list is not None and state.lookup_cnt is not None
    if state.lookup_cnt >= len(state.lookup_list):
        return NO_MORE_RESULTS, state
    cnt = state.lookup_cnt
    observation = f"(Result {cnt + 1} / {len(state.lookup_list)}) {state.lookup_list[cnt]}"
    return observation, replace(state, lookup_cnt=cnt + 1)


class HotPotQAEnv:
    """Offline ReAct Wikipedia environment over the bundle's HotPotQA dev questions.

    Task ids index the shuffled question pool of :mod:`qlib.envs.hotpotqa.tasks`
    (test 0–99, valid 100–199, train 200–1199). The corpus and tasks are cached per process,
    so constructing more envs is cheap.
    """

    name = "hotpotqa"

    def __init__(self, max_steps: int = 7):
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps!r}")
        self.max_steps = int(max_steps)
        self.corpus: WikiCorpus = load_corpus()
        self.tasks: tuple[HotPotTask, ...] = load_tasks()
        self._state: HotPotState | None = None

    # ------------------------------------------------------------ protocol
    def task_ids(self, split: str) -> list[int]:
        return split_task_ids(split)

    def reset(self, task_id: int) -> str:
        idx = operator.index(task_id)
        if not 0 <= idx < len(self.tasks):
            raise IndexError(f"HotPotQA task id {task_id!r} out of range 0..{len(self.tasks) - 1}")
        self._state = HotPotState(question_idx=idx)
        return f"Question: {self.tasks[idx].question}"

    def step(self, action: str) -> StepResult:
        state = self._live_state()
        text = action.strip() if isinstance(action, str) else ""
        observation, state, invalid = self._transition(replace(state, steps=state.steps + 1), text)
        if not state.done and state.steps >= self.max_steps:
            state = replace(state, done=True, truncated=True)
        self._state = state
        return self._result(observation, state, invalid)

    def snapshot(self) -> HotPotState:
        """The current state (an immutable value; later steps never change it)."""
        if self._state is None:
            raise RuntimeError("HotPotQAEnv has no episode yet: call reset(task_id) first")
        return self._state

    def restore(self, snapshot: HotPotState) -> None:
        if not isinstance(snapshot, HotPotState):
            raise TypeError(f"expected a HotPotState snapshot, got {type(snapshot).__name__}")
        if not 0 <= snapshot.question_idx < len(self.tasks):
            raise IndexError(f"snapshot task id {snapshot.question_idx} out of range")
        self._state = snapshot

    def valid_actions(self) -> ActionSpace:
        return ACTION_SPACE

    # ------------------------------------------------------------ helpers
    @property
    def task(self) -> HotPotTask:
        return self.tasks[self.snapshot().question_idx]

    def _live_state(self) -> HotPotState:
        state = self.snapshot()
        if state.done:
            how = "hit the step limit" if state.truncated else f"finished with answer {state.answer!r}"
            raise EpisodeOverError(
                f"HotPotQA episode (task {state.question_idx}) is over: it {how} after {state.steps} steps; "
                "call reset() or restore() first"
            )
        return state

    def _transition(self, state: HotPotState, text: str) -> tuple[str, HotPotState, bool]:
        """(observation, new state, invalid) for one stripped action string."""
        parsed = parse_action(text)
        verb, arg = parsed if parsed else ("", "")
        if verb == "search" and normalize_query(arg):
            found = self.corpus.search(arg)
            if found.title is not None:
                state = replace(state, page=self.corpus.pages[found.title], lookup_keyword=None,
                                lookup_list=None, lookup_cnt=None)
            return found.observation, state, False
        if verb == "lookup":
            return (*lookup(state, arg), False)
        if verb == "finish":
            em = int(exact_match_score(arg, self.tasks[state.question_idx].answer))
            return f"Episode finished, reward = {em}\n", replace(state, answer=arg, done=True), False
        if verb == "think":
            return NICE_THOUGHT, state, False
        return f"Invalid action: {text}", state, True

    def _result(self, observation: str, state: HotPotState, invalid: bool) -> StepResult:
        task = self.tasks[state.question_idx]
        info: dict[str, Any] = {
            "invalid": invalid,
            "steps": state.steps,
            "truncated": state.truncated,
            "answer": state.answer,
            "question": task.question,
            "hotpot_split": "dev",
        }
        reward = 0.0
        if state.done:
            em, f1 = 0, 0.0
            if not state.truncated:
                em = int(exact_match_score(state.answer or "", task.answer))
                f1 = f1_score(state.answer or "", task.answer)[0]
            reward = float(em)
            info.update(gt_answer=task.answer, question_idx=state.question_idx, reward=reward, em=em, f1=f1)
        return StepResult(observation, reward, state.done, info)
