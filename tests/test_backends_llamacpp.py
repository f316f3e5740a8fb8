"""llamacpp backend on the real SmolLM2 GGUF: valid constrained actions, seeds, KV reuse, logprobs."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/llama_cpp load libgomp (see llamacpp_backend)

import math

import pytest

pytest.importorskip("llama_cpp")

from qlib.agent.backends import make_policy  # noqa: E402
from qlib.agent.candidates import allowed  # noqa: E402
from qlib.config import PolicyConfig  # noqa: E402
from qlib.envs.base import ActionSpace  # noqa: E402

pytestmark = pytest.mark.slow

WEBSHOP = ActionSpace({"click": ("< Prev", "Next >", "6.76 fl oz (pack of 1)", "Buy Now", "B07XYZ123", "café ☕")})
HOTPOT = ActionSpace({"Search": None, "Lookup": None, "Finish": None})
SHOP = [
    {"role": "user", "content": "You are shopping. Answer with 'Thought: ...' and then 'Action: click[...]'."},
    {"role": "assistant", "content": "OK"},
    {"role": "user", "content": "Instruction: a 6.76 fl oz bottle under 100 dollars.\n[< Prev] [Next >] "
                                "[B07XYZ123] L'eau d'issey 6.76 fl oz $64.98"},
]


@pytest.fixture(scope="module")
def pol():
    return make_policy(PolicyConfig(backend="llamacpp", max_tokens=48, n_ctx=1024), "webshop")


@pytest.mark.parametrize(("env", "space"), [("webshop", WEBSHOP), ("hotpotqa", HOTPOT)])
def test_constrained_samples_are_valid_and_allowed(pol, env, space):
    pol.env_name = env
    cands = pol.propose(SHOP, 4, temperature=1.0, action_space=space, seed=0)
    assert len(cands) == 4
    for c in cands:
        assert c.valid and allowed(c, space), c.raw
        assert 0 < c.n_tokens <= 48 and c.prompt_tokens > 0
        assert c.logprob is not None and math.isfinite(c.logprob) and c.logprob < 0
    pol.env_name = "webshop"


def test_seeds_reproduce_and_differ(pol):
    a = pol.propose(SHOP, 3, temperature=1.0, action_space=WEBSHOP, seed=11)
    b = pol.propose(SHOP, 3, temperature=1.0, action_space=WEBSHOP, seed=11)
    assert [c.raw for c in a] == [c.raw for c in b]
    assert len({c.raw for c in a}) > 1


def test_prompt_cache_is_reused_across_samples_and_steps(pol):
    pol.propose(SHOP, 1, temperature=1.0, action_space=WEBSHOP, seed=1)
    before = dict(pol.counters)
    pol.propose(SHOP, 3, temperature=1.0, action_space=WEBSHOP, seed=2)  # same prompt: only the last token
    assert pol.counters["prompt_evaluated"] - before["prompt_evaluated"] == 1
    longer = SHOP + [{"role": "assistant", "content": "Thought: ok\nAction: click[Next >]"},
                     {"role": "user", "content": "Observation:\n[< Prev] [Buy Now]"}]
    new_tokens = len(pol.tokenize(pol.render(longer))) - len(pol.tokenize(pol.render(SHOP)))
    before = dict(pol.counters)
    pol.propose(longer, 2, temperature=1.0, action_space=WEBSHOP, seed=3)  # next step: only the new turn
    assert pol.counters["prompt_evaluated"] - before["prompt_evaluated"] <= new_tokens + 1


def test_greedy_matches_llama_cpp_and_logprob_matches_its_scores(pol):
    """Batched decoding reproduces llama-cpp-python's own greedy completion and token logprobs."""
    from llama_cpp import Llama

    from qlib.provision import gguf_path

    pol.config.constrain_actions = False
    try:
        cand = pol.propose(SHOP, 1, temperature=0.0, seed=0)
    finally:
        pol.config.constrain_actions = True
    ref = Llama(model_path=str(gguf_path()), n_ctx=1024, logits_all=True, verbose=False)
    prompt = pol.tokenize(pol.render(SHOP))
    out = ref.create_completion(prompt, max_tokens=48, temperature=0.0, logprobs=1, stop=pol.config.stop)
    choice = out["choices"][0]
    assert cand[0].raw == choice["text"]
    assert cand[0].logprob == pytest.approx(sum(choice["logprobs"]["token_logprobs"]), abs=0.05)


PER_THREAD_SCRIPT = r"""
import json, sys, threading
from qlib.agent.backends import make_policy
from qlib.config import PolicyConfig
from qlib.envs.base import ActionSpace
from qlib.workers import PolicyPerThread

space = ActionSpace({"click": ("Buy Now", "< Prev")})
messages = json.loads(sys.argv[1])
shared = PolicyPerThread(lambda: make_policy(PolicyConfig(backend="llamacpp", max_tokens=16, n_ctx=512, n_threads=1),
                                             "webshop"))
out = {}
threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, shared.propose(messages, 2, temperature=1.0,
                                                                                action_space=space, seed=3)))
           for k in range(2)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"same": [c.text for c in out[0]] == [c.text for c in out[1]]}), flush=True)
"""


def test_two_worker_models_load_at_once_and_keep_the_process_output():
    """Worker threads each load their own model (qlib.workers.PolicyPerThread): same seed, same candidates, and
    the process's stdout still works afterwards (llama.cpp's silenced loading swaps descriptor 1)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PER_THREAD_SCRIPT, json.dumps(SHOP)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"same": True}
