"""hf backend on a tiny random Llama (real SmolLM2 BPE tokenizer): constrained turns are always valid."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/llama_cpp load libgomp (see llamacpp_backend)

import math

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from qlib.agent.backends import make_policy
from qlib.agent.candidates import allowed
from qlib.config import PolicyConfig
from qlib.envs.base import ActionSpace
from qlib.provision import smollm2_dir

WEBSHOP = ActionSpace({"click": ("< Prev", "Next >", "6.76 fl oz (pack of 1)", "Buy Now", "B07XYZ123",
                                 'say "hi"', "café ☕", "Back to Search")})
HOTPOT = ActionSpace({"Search": None, "Lookup": None, "Finish": None})
MESSAGES = [{"role": "user", "content": "Instruction: buy a 6.76 fl oz bottle.\n[< Prev] [Next >] [Buy Now]"}]


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised 2-layer Llama over SmolLM2's real 49k byte-level BPE vocabulary."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), bos_token_id=None,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval(), tokenizer


def policy(tiny, env: str, **overrides):
    model, tokenizer = tiny
    config = PolicyConfig(backend="hf", max_tokens=overrides.pop("max_tokens", 96), **overrides)
    return make_policy(config, env, model=model, tokenizer=tokenizer)


@pytest.mark.parametrize(("env", "space"), [("webshop", WEBSHOP), ("hotpotqa", HOTPOT)])
def test_constrained_random_model_always_gives_valid_allowed_actions(tiny, env, space):
    pol = policy(tiny, env)
    cands = pol.propose(MESSAGES, 20, temperature=1.0, action_space=space, seed=0)
    assert len(cands) == 20
    for c in cands:
        assert c.valid and allowed(c, space), c.raw
        assert 0 < c.n_tokens <= 96 and c.prompt_tokens > 0
        assert c.logprob is not None and math.isfinite(c.logprob) and c.logprob < 0
    assert len({c.raw for c in cands}) > 1  # really sampled


def test_tight_budget_still_finishes_the_action(tiny):
    pol = policy(tiny, "webshop", max_tokens=40)
    for c in pol.propose(MESSAGES, 5, temperature=1.0, action_space=WEBSHOP, seed=1):
        assert c.valid and allowed(c, WEBSHOP) and c.n_tokens <= 40, c.raw


def test_seeded_sampling_is_reproducible(tiny):
    pol = policy(tiny, "hotpotqa")
    a = pol.propose(MESSAGES, 3, temperature=1.0, action_space=HOTPOT, seed=7)
    b = pol.propose(MESSAGES, 3, temperature=1.0, action_space=HOTPOT, seed=7)
    assert [c.raw for c in a] == [c.raw for c in b]
    assert [c.logprob for c in a] == pytest.approx([c.logprob for c in b])


def test_logprob_is_the_models_teacher_forced_logprob(tiny):
    """logprob = sum of the raw log-softmax (T=1, no mask) of the sampled tokens, recomputed here."""
    from qlib.agent.grammar import ActionGrammar

    model, tokenizer = tiny
    pol = policy(tiny, "webshop")
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    grammar = ActionGrammar.from_space(WEBSHOP, "webshop")
    (seq, logits), = pol._generate(ids, 1, 1.0, grammar, seed=3)
    cand = pol._candidate(seq, logits, ids.shape[1], constrained=True)
    tokens = seq[: cand.n_tokens]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.cat([ids[0], tokens]).view(1, -1)).logits[0, ids.shape[1] - 1 : -1], -1)
    assert cand.logprob == pytest.approx(float(logp.gather(1, tokens.view(-1, 1)).sum()), rel=1e-4)


def test_unconstrained_cuts_at_stop_strings(tiny):
    pol = policy(tiny, "webshop", constrain_actions=False, max_tokens=24, stop=["e"])
    for c in pol.propose(MESSAGES, 4, temperature=1.0, action_space=WEBSHOP, seed=2):
        assert "e" not in c.raw and c.n_tokens <= 24
