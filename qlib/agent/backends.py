"""The policy factory.

``make_policy(config.policy, env_name)`` builds the backend named by ``config.backend``:

* ``llamacpp`` — the embedded SmolLM2 GGUF in-process (:mod:`qlib.agent.llamacpp_backend`);
* ``hf`` — transformers / PyTorch (:mod:`qlib.agent.hf_backend`);
* ``openai`` — any OpenAI-compatible endpoint (:mod:`qlib.agent.openai_backend`).

What the backends share (seeds, stop strings, parsing into :class:`Candidate`) is in
:mod:`qlib.agent.candidates`, so the backends never import this factory.

Log-probabilities (``Candidate.logprob``) are, in every backend, the sum over the generated tokens of
``log p(token | context)`` under the model's own next-token distribution (temperature 1, no top-p, no
grammar mask) — the quantity an ``logprob_pick`` baseline compares; the end-of-turn token and the
tokens of a stop string are not counted.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from qlib.agent.base import Policy

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
