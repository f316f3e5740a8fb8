"""ReAct prompts (ETO / paper chat format) for the policy and the Q model: data files + one renderer.

The message list (roles strictly alternating, see ``shared/specs`` webshop §9.1, hotpotqa §7)::

    user       instruction (verbatim from qlib/prompts/<env>/instruction[_reflection].txt)
    assistant  OK
    ...        in-context examples (only with icl=True): user task, assistant turn, user observation, ...
    user       the task observation (WebShop: the raw start page; HotPotQA: "Question: ...")
    assistant  turn 1 (canonical text from qlib.agent.parse)
    user       Observation 1 (prefixed by format_observation)
    ...        ends with a user message, ready for generation

``icl=False`` (the Q model's prompt) drops exactly the example turns and nothing else, so training
and scoring prompts are identical by construction. :func:`render_conversation` appends the assistant
turn taken at that state: the form of a whole trajectory for fine-tuning and trajectory-level pairs. In-context examples are rendered by the same code
as live episodes, so their observations carry the same prefixes (WebShop's first example turn is the
bare start page, like the live task; the original ETO file prefixes it with ``Observation:``).
Where every example comes from is documented in ``qlib/prompts/README.md``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator, Sequence

from qlib.agent.base import Message
from qlib.envs.registry import get_spec

VARIANTS = ("react", "reflection")
INSTRUCTION_FILES = {"react": "instruction.txt", "reflection": "instruction_reflection.txt"}
ICL_FILES = {"react": "icl_react.json", "reflection": "icl_reflection.json"}


@dataclass(frozen=True)
class IclStep:
    """One example step: the canonical assistant turn and the raw env observation (None after the last)."""

    turn: str
    observation: str | None = None


@dataclass(frozen=True)
class IclExample:
    """One in-context episode: task observation, steps, and (reflection variant) a closing reflection."""

    task: str
    steps: tuple[IclStep, ...]
    reflection: str | None = None
    source: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class PromptSpec:
    """Instruction text and in-context examples of one (env, variant)."""

    env_name: str
    variant: str
    instruction: str
    examples: tuple[IclExample, ...]

    def icl_messages(self) -> list[Message]:
        """The example turns, user first and assistant last (so they sit between "OK" and the task)."""
        messages: list[Message] = []
        for example in self.examples:
            messages.append(_msg("user", example.task))
            for step in example.steps:
                messages.append(_msg("assistant", step.turn))
                if step.observation is not None:
                    messages.append(_msg("user", format_observation(self.env_name, step.observation)))
            if example.reflection is not None:
                messages.append(_msg("assistant", example.reflection))
        return messages


# ------------------------------------------------------------------ public API

def render_messages(
    env_name: str,
    task_observation: str,
    history: Sequence[tuple[str, str]],
    *,
    variant: str = "react",
    icl: bool = True,
) -> list[Message]:
    """Chat messages of the current state; ``history`` = (canonical assistant turn, raw observation) pairs."""
    spec = load_prompt(env_name, variant)
    messages = [_msg("user", spec.instruction), _msg("assistant", "OK")]
    if icl:
        messages += spec.icl_messages()
    messages.append(_msg("user", task_observation))
    for turn, observation in history:
        messages.append(_msg("assistant", turn))
        messages.append(_msg("user", format_observation(env_name, observation)))
    return messages


def recorded_prompts(
    env_name: str, task_observation: str, trajectory: Sequence[dict], *, variant: str = "react"
) -> Iterator[tuple[dict, list[Message]]]:
    """Each step of a recorded episode (``text``, ``observation``) with the prompt a Q model saw before it
    (no few-shot examples): the inputs to re-score an episode's actions offline."""
    history: list[tuple[str, str]] = []
    for step in trajectory:
        yield step, render_messages(env_name, task_observation, history, variant=variant, icl=False)
        history.append((step["text"], step["observation"]))


def render_conversation(
    env_name: str,
    task_observation: str,
    history: Sequence[tuple[str, str]],
    final_turn: str,
    *,
    variant: str = "react",
    icl: bool = False,
) -> list[Message]:
    """A whole trajectory for training: the prompt of ``history`` plus the assistant turn taken there.

    ``render_conversation(...)[:-1] == render_messages(...)`` for the same arguments, so training
    conversations, live prompts and Q-model prompts can never drift apart."""
    return render_messages(env_name, task_observation, history, variant=variant, icl=icl) + [
        _msg("assistant", final_turn)
    ]


def format_observation(env_name: str, observation: str) -> str:
    """The user turn of one env observation: ``Observation:\\n<page>`` (WebShop) / ``Observation: <obs>`` (HotPotQA)."""
    return get_spec(env_name).observation_prefix + observation


@lru_cache(maxsize=None)
def load_prompt(env_name: str, variant: str = "react") -> PromptSpec:
    """Instruction text and examples of ``(env_name, variant)`` from the environment's prompt folder."""
    folder = get_spec(env_name).prompt_dir()
    _check(variant, VARIANTS, "variant")
    instruction = folder.joinpath(INSTRUCTION_FILES[variant]).read_text(encoding="utf-8").rstrip("\n")
    data = json.loads(folder.joinpath(ICL_FILES[variant]).read_text(encoding="utf-8"))
    examples = tuple(_example(raw) for raw in data["examples"])
    spec = PromptSpec(env_name, variant, instruction, examples)
    _check_alternation(spec.icl_messages(), f"{env_name}/{ICL_FILES[variant]}")
    return spec


# ------------------------------------------------------------------ helpers

def _msg(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def _check(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")
    return value


def _example(raw: dict[str, Any]) -> IclExample:
    steps = tuple(IclStep(s["turn"], s.get("observation")) for s in raw["steps"])
    return IclExample(raw["task"], steps, raw.get("reflection"), dict(raw.get("source", {})))


def _check_alternation(messages: list[Message], where: str) -> None:
    """Examples must start with a user turn, alternate strictly and end with an assistant turn."""
    for i, message in enumerate(messages):
        if message["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError(f"{where}: message {i} breaks the user/assistant alternation")
    if messages and messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the examples must end with an assistant turn")
