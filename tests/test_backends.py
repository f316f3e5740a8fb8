"""Shared backend helpers and the factory."""
from __future__ import annotations

import random

import pytest

from qlib.agent.backends import make_policy
from qlib.agent.candidates import allowed, cut_at_stop, make_candidate, sample_seeds
from qlib.config import PolicyConfig
from qlib.envs.base import ActionSpace


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="'llamacpp', 'hf' or 'openai'"):
        PolicyConfig(backend="vllm")  # the config refuses it first
    with pytest.raises(ValueError, match="unknown policy backend 'vllm'.*llamacpp, hf, openai"):
        make_policy(PolicyConfig.model_construct(backend="vllm"))  # an unvalidated config: the factory's guard


def test_openai_backend_needs_a_base_url():
    with pytest.raises(ValueError, match="policy.base_url"):
        make_policy(PolicyConfig(backend="openai", base_url=None))


def test_seeds_are_reproducible_decorrelated_and_31_bit():
    a, b = sample_seeds(1, 5, random.Random()), sample_seeds(1, 5, random.Random())
    assert a == b and len(set(a)) == 5 and all(0 <= s < 2**31 for s in a)
    assert set(sample_seeds(2, 5, random.Random())).isdisjoint(a)  # consecutive seeds share nothing
    assert len(set(sample_seeds(None, 5, random.Random(0)))) == 5


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("Thought: x\nObservation: y", ["Observation", "\nObservation"]) == ("Thought: x", True)
    assert cut_at_stop("abc", ["z"]) == ("abc", False)
    assert cut_at_stop("abc", None) == ("abc", False)


def test_candidates_use_the_one_parser_and_allowed_checks_the_space():
    cand = make_candidate("Thought: go\nAction: click[Next >]", "webshop", logprob=-1.0, n_tokens=9, prompt_tokens=30)
    assert cand.valid and cand.action == "click[Next >]" and cand.text == "Thought: go\nAction: click[Next >]"
    assert allowed(cand, ActionSpace({"click": ("Next >",)}))
    assert not allowed(cand, ActionSpace({"click": ("< Prev",)}))
    bad = make_candidate("I am not sure", "webshop")
    assert not bad.valid and not allowed(bad, ActionSpace({"search": None}))
