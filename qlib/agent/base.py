"""The policy protocol: chat messages of the current state in, n candidate assistant turns out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from qlib.envs.base import ActionSpace

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


class ContextOverflowError(ValueError):
    """The prompt (plus the generation budget) does not fit the policy's context window.

    Search and evaluation treat it like the step limit (as ETO does): the trajectory ends there,
    with the depth-limit reward in MCTS and reward 0 in evaluation.
    """


@dataclass(frozen=True)
class Candidate:
    """One sampled assistant turn.

    ``text`` is the canonical turn (``Thought: ... Action: Verb[arg]``, rebuilt by the parser, the
    form stored in histories, preference pairs and scored by Q models); ``raw`` is what the model
    wrote; ``action`` is the
    env-ready action string from the one parser (``qlib.agent.parse``), or the raw action text when
    it could not be parsed (``valid`` False) so the environment answers with its invalid-action
    observation; ``logprob`` is the sum log-probability of the sampled tokens under the policy when
    the backend can give it.
    """

    text: str
    thought: str
    action: str
    valid: bool
    logprob: float | None = None
    n_tokens: int = 0
    prompt_tokens: int = 0
    raw: str = ""


@runtime_checkable
class Policy(Protocol):
    def propose(
        self,
        messages: list[Message],
        n: int,
        *,
        temperature: float | None = None,
        action_space: ActionSpace | None = None,
        seed: int | None = None,
    ) -> list[Candidate]:
        """Return ``n`` candidates for the next assistant turn (``temperature`` None = config value;
        ``action_space`` given = constrain the Action line to it when the backend supports that)."""
        ...
