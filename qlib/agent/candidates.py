"""What every policy backend shares: decorrelated seeds, stop strings, and parsing a raw assistant
turn into a :class:`~qlib.agent.base.Candidate` with the one parser (:mod:`qlib.agent.parse`)."""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np

from qlib.agent.base import Candidate


def sample_seeds(seed: int | None, n: int, rng: random.Random) -> list[int]:
    """``n`` decorrelated 31-bit seeds: from ``seed`` when given (reproducible), else from ``rng``."""
    if seed is None:
        return [rng.randrange(2**31 - 1) for _ in range(n)]
    return [int(s) & 0x7FFFFFFF for s in np.random.SeedSequence(int(seed)).generate_state(n)]


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop or () if s and s in text]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def make_candidate(
    raw: str, env_name: str | None, *, logprob: float | None = None, n_tokens: int = 0, prompt_tokens: int = 0
) -> Candidate:
    """Parse one raw assistant turn into a :class:`Candidate` (the one parser decides validity)."""
    from qlib.agent.parse import parse_turn

    parsed = parse_turn(raw, env_name)
    return Candidate(
        text=parsed.text,
        thought=parsed.thought,
        action=parsed.action,
        valid=parsed.valid,
        logprob=logprob,
        n_tokens=n_tokens,
        prompt_tokens=prompt_tokens,
        raw=raw,
    )


def allowed(candidate: Candidate, space) -> bool:
    """True if ``candidate`` parsed to a valid action that ``space`` (an ActionSpace) allows."""
    if not candidate.valid or "[" not in candidate.action:
        return False
    verb, _, rest = candidate.action.partition("[")
    return space.allows(verb, rest[:-1] if rest.endswith("]") else rest)
