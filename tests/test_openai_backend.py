"""openai backend: retries/backoff/timeouts against a fault-injecting server, key hygiene, and a real
llama-cpp-python server (grammar-constrained, n topped up by single requests)."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/llama_cpp load libgomp (see llamacpp_backend)

import logging
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer  # noqa: E402

from qlib.agent.backends import make_policy  # noqa: E402
from qlib.agent.candidates import allowed  # noqa: E402
from qlib.agent.openai_backend import EndpointError  # noqa: E402
from qlib.config import PolicyConfig  # noqa: E402
from qlib.envs.base import ActionSpace  # noqa: E402

KEY_ENV = "QLIB_TEST_OPENAI_KEY"
SECRET = "sk-qlib-TEST-5ecret-do-not-log-9f8e7d"
MESSAGES = [{"role": "user", "content": "Find red shoes."}]
START = ActionSpace({"search": None})


@pytest.fixture()
def secret(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def policy(base_url: str, **overrides):
    config = PolicyConfig(backend="openai", base_url=base_url, model="fake", api_key_env=KEY_ENV,
                          max_retries=overrides.pop("max_retries", 3), request_timeout=overrides.pop("timeout", 5.0),
                          **overrides)
    return make_policy(config, "webshop", backoff=0.01, max_backoff=0.05)


def assert_no_secret(caplog, *texts: str) -> None:
    for record in caplog.records:
        assert SECRET not in record.getMessage(), record.getMessage()
    for text in texts:
        assert SECRET not in text


def test_429_then_500_then_success_loses_nothing(secret, caplog):
    caplog.set_level(logging.DEBUG)
    with FaultServer([429, 500, "ok"]) as srv:
        cands = policy(srv.base_url).propose(MESSAGES, 3, action_space=START, seed=0)
        assert len(srv.requests) == 3
        assert srv.requests[-1]["headers"]["authorization"] == f"Bearer {secret}"  # the key is sent...
    assert len(cands) == 3 and all(c.valid and c.action == "search[red shoes]" for c in cands)
    assert all(c.logprob == pytest.approx(-6.0) and c.n_tokens == 12 and c.prompt_tokens == 42 for c in cands)
    assert any("HTTP 429" in r.getMessage() for r in caplog.records)
    assert_no_secret(caplog)  # ...but never logged


@pytest.mark.parametrize("fault", ["garbage", "empty", 503])
def test_malformed_bodies_and_5xx_are_retried(secret, caplog, fault):
    caplog.set_level(logging.DEBUG)
    with FaultServer([fault, fault, "ok"]) as srv:
        cands = policy(srv.base_url).propose(MESSAGES, 2, action_space=START, seed=0)
    assert len(cands) == 2 and all(c.valid for c in cands)
    assert_no_secret(caplog)


def test_timeouts_are_retried_then_succeed(secret, caplog):
    caplog.set_level(logging.DEBUG)
    with FaultServer([("sleep", 1.0), "ok"]) as srv:
        start = time.monotonic()
        cands = policy(srv.base_url, timeout=0.3).propose(MESSAGES, 2, action_space=START, seed=0)
    assert len(cands) == 2 and time.monotonic() - start < 3.0
    assert any("timeout" in r.getMessage() for r in caplog.records)
    assert_no_secret(caplog)


def test_permanent_failure_raises_a_clear_error_after_the_last_retry(secret, caplog):
    caplog.set_level(logging.DEBUG)
    with FaultServer([500]) as srv:
        with pytest.raises(EndpointError) as info:
            policy(srv.base_url, max_retries=2).propose(MESSAGES, 2, action_space=START, seed=0)
        assert len(srv.requests) == 3
    message = str(info.value)
    assert srv.base_url in message and "'fake'" in message and "3 attempt" in message and "HTTP 500" in message
    assert_no_secret(caplog, message, repr(info.value), str(info.value.__cause__))


def test_permanent_timeouts_name_the_timeout(secret):
    with FaultServer([("sleep", 0.5)]) as srv:
        with pytest.raises(EndpointError, match="failed after 2 attempt.*timeout"):
            policy(srv.base_url, max_retries=1, timeout=0.2).propose(MESSAGES, 1, seed=0)


def test_client_errors_are_not_retried(secret):
    with FaultServer([401]) as srv:
        with pytest.raises(EndpointError, match="1 attempt.*HTTP 401"):
            policy(srv.base_url).propose(MESSAGES, 1, seed=0)
        assert len(srv.requests) == 1


def test_servers_ignoring_n_are_topped_up_with_distinct_seeds(secret):
    with FaultServer(["ok"], one_choice=True) as srv:
        pol = policy(srv.base_url, concurrency=2)
        assert len(pol.propose(MESSAGES, 4, seed=5)) == 4
        assert pol.n_supported is False
        assert len(pol.propose(MESSAGES, 3, seed=6)) == 3  # remembered: no n>1 request any more
    seeds = [r["body"]["seed"] for r in srv.requests]
    assert len(srv.requests) == 4 + 3 and len(set(seeds)) == len(seeds)
    assert all(r["body"]["n"] == 1 for r in srv.requests[4:])


def test_rejected_guided_decoding_falls_back_once_to_free_text(secret, caplog):
    caplog.set_level(logging.WARNING)
    with FaultServer([("reject", "structured_outputs")]) as srv:
        pol = policy(srv.base_url)
        assert len(pol.propose(MESSAGES, 2, action_space=START, seed=0)) == 2
        assert len(pol.propose(MESSAGES, 2, action_space=START, seed=1)) == 2
    bodies = [r["body"] for r in srv.requests]
    assert "grammar" in bodies[0] and "structured_outputs" in bodies[0]
    assert all("grammar" not in b for b in bodies[1:]) and len(bodies) == 3
    assert sum("rejected guided-decoding" in r.getMessage() for r in caplog.records) == 1


def test_unset_key_uses_a_placeholder(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FaultServer(["ok"]) as srv:
        policy(srv.base_url).propose(MESSAGES, 1, seed=0)
    assert srv.requests[0]["headers"]["authorization"] == "Bearer sk-no-key-required"


# ---------------------------------------------------------------- a real llama-cpp-python server

@pytest.fixture(scope="module")
def llama_server():
    pytest.importorskip("llama_cpp.server")
    from qlib.agent.serve import start_server

    with start_server(n_ctx=2048, timeout=120) as server:
        yield server


@pytest.mark.slow
def test_real_llama_cpp_server_returns_n_parsed_grammar_constrained_candidates(llama_server):
    space = ActionSpace({"click": ("< Prev", "Next >", "6.76 fl oz (pack of 1)", 'say "hi"', "café ☕")})
    config = PolicyConfig(backend="openai", base_url=llama_server.base_url, max_tokens=64)
    pol = make_policy(config, "webshop")
    messages = [{"role": "user", "content": "Shop. Reply 'Thought: ...' then 'Action: click[...]'. "
                                            "Page: [< Prev] [Next >] [6.76 fl oz (pack of 1)]"}]
    cands = pol.propose(messages, 3, temperature=1.0, action_space=space, seed=0)
    assert len(cands) == 3
    for c in cands:
        assert c.valid and allowed(c, space), c.raw  # the server's GBNF engine enforced our grammar
        assert c.logprob is not None and c.logprob < 0 and c.n_tokens > 0 and c.prompt_tokens > 0
