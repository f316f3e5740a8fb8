"""The Q-value model protocol (light: no torch), shared by evaluation and every Q model."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from qlib.agent.base import Message


@runtime_checkable
class QModel(Protocol):
    """What acting needs: Q of n candidate turns after a chat history.

    ``scored_tokens`` counts the tokens scored so far (cost bookkeeping of episode rows)."""

    scored_tokens: int

    def score(self, messages: Sequence[Message], candidates: Sequence[str]) -> list[float]: ...
