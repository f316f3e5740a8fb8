"""Policy factory and what every backend shares: seeds, stop strings, parsing into :class:`Candidate`.

``make_policy(config.policy, env_name)`` builds the backend named by ``config.backend``:

* ``llamacpp`` — the embedded SmolLM2 GGUF in-process (:mod:`qlib.agent.llamacpp_backend`);
* ``hf`` — transformers / PyTorch (:mod:`qlib.agent.hf_backend`);
* ``openai`` — any OpenAI-compatible endpoint (:mod:`qlib.agent.openai_backend`).

Log-probabilities (``Candidate.logprob``) are, in every backend, the sum over the generated tokens of
``log p(token | context)`` under the model's own next-token distribution (temperature 1, no top-p, no
grammar mask) — the quantity an ``logprob_pick`` baseline compares; the end-of-turn token and the
tokens of a stop string are not counted.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Sequence

import numpy as np

from qlib.agent.base import Candidate, Policy

if TYPE_CHECKING:
    from qlib.config import PolicyConfig

BACKENDS = ("llamacpp", "hf", "openai")


def make_policy(config: "PolicyConfig", env_name: str | None = None, **kwargs) -> Policy:
    """The policy of ``config.backend`` (``env_name`` is passed to the parser and picks the layout).

    Extra keyword arguments go to the backend's constructor (e.g. ``model=``/``tokenizer=`` for hf,
    ``backoff=`` for openai).
    """
    if config.backend == "llamacpp":
        from qlib.agent.llamacpp_backend import LlamaCppPolicy

        return LlamaCppPolicy(config, env_name, **kwargs)
    if config.backend == "hf":
        from qlib.agent.hf_backend import HFPolicy

        return HFPolicy(config, env_name, **kwargs)
    if config.backend == "openai":
        from qlib.agent.openai_backend import OpenAIPolicy

        return OpenAIPolicy(config, env_name, **kwargs)
    raise ValueError(f"unknown policy backend {config.backend!r}; expected one of {', '.join(BACKENDS)}")


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
