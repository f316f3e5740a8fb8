"""The ``openai`` policy backend: any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, OpenAI).

* **Key** — read from the environment variable named by ``policy.api_key_env`` at construction; never
  logged or written anywhere (a placeholder is sent to local servers when the variable is unset),
  and scrubbed from every error this module raises.
* **n** — one request with the API's ``n``; servers that answer fewer choices (llama.cpp's) are
  remembered and topped up with single-choice requests run ``policy.concurrency`` at a time, each
  with its own seed.
* **Retries** — the openai client sets the request timeout (``policy.request_timeout``) and does not
  retry itself; this module retries 408/409/429/5xx, timeouts, connection errors and malformed
  bodies (non-JSON, no choices) ``policy.max_retries`` times with exponential backoff and jitter
  (tenacity), then raises :class:`EndpointError` naming base_url, model, attempts and the last status.
* **Constrained actions** — the turn's grammar goes in ``extra_body``: ``grammar`` (GBNF, llama.cpp
  servers) and ``structured_outputs.regex`` (vLLM); ``guided="vllm-legacy"`` sends vLLM's older
  ``guided_regex``. The thought is bounded to ``2 * max_tokens`` characters there, since a server
  cannot end a thought early when the token budget runs low (the in-process backends can). A server that rejects these fields (400/422) is noted once, logged, and asked
  again without them (free text, still parsed and validated). The same fallback applies to
  ``logprobs``.
"""
from __future__ import annotations

import logging
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
from openai import OpenAI
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from qlib.agent.candidates import make_candidate, sample_seeds
from qlib.agent.base import Candidate, Message
from qlib.agent.grammar import ActionGrammar
from qlib.envs.base import ActionSpace

log = logging.getLogger(__name__)
NO_KEY = "sk-no-key-required"  # placeholder for local servers when the key variable is unset
GUIDED_MODES = ("auto", "vllm-legacy", "none")
THOUGHT_CHARS_PER_TOKEN = 2  # guided thoughts are bounded to 2 x max_tokens characters


class EndpointError(RuntimeError):
    """The endpoint still failed after the last retry (the message names base_url, model, attempts)."""


class MalformedResponse(RuntimeError):
    """A 200 answer that is not a chat completion (non-JSON body, no choices)."""


def _retryable(err: BaseException) -> bool:
    if isinstance(err, (openai.APITimeoutError, openai.APIConnectionError, MalformedResponse)):
        return True
    return isinstance(err, openai.APIStatusError) and (err.status_code in (408, 409, 429) or err.status_code >= 500)


class OpenAIPolicy:
    """:class:`qlib.agent.base.Policy` over an OpenAI-compatible ``/v1/chat/completions`` endpoint."""

    def __init__(self, config: Any, env_name: str | None = None, *, backoff: float = 0.5,
                 max_backoff: float = 8.0, guided: str = "auto"):
        if not config.base_url:
            raise ValueError("policy.backend=openai needs policy.base_url (e.g. http://127.0.0.1:8080/v1)")
        if guided not in GUIDED_MODES:
            raise ValueError(f"guided must be one of {GUIDED_MODES}, got {guided!r}")
        self.config = config
        self.env_name = env_name
        self.backoff, self.max_backoff = backoff, max_backoff
        key = os.environ.get(config.api_key_env) or ""
        self._secret = key
        self.client = OpenAI(base_url=config.base_url, api_key=key or NO_KEY,
                             timeout=config.request_timeout, max_retries=0)
        self.guided = guided if guided != "none" else None
        self.n_supported: bool | None = None  # None = not seen yet
        self.logprobs_supported = True
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.concurrency), thread_name_prefix="qlib-openai")
        self._rng = random.Random()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ Policy
    def propose(
        self,
        messages: list[Message],
        n: int,
        *,
        temperature: float | None = None,
        action_space: ActionSpace | None = None,
        seed: int | None = None,
    ) -> list[Candidate]:
        temperature = self.config.temperature if temperature is None else temperature
        grammar = ActionGrammar.from_space(action_space, self.env_name) if self.config.constrain_actions else None
        seeds = sample_seeds(seed, n, self._rng)
        choices: list[tuple[Any, int]] = []  # (choice, prompt tokens)
        if self.n_supported is not False:
            choices = self._choices(messages, n, temperature, grammar, seeds[0])
            if len(choices) < n and n > 1:
                if self.n_supported is None:
                    log.info("endpoint %s answered %d of n=%d choices; topping up with single requests",
                             self.config.base_url, len(choices), n)
                self.n_supported = False
            elif n > 1:
                self.n_supported = True
        missing = seeds[len(choices) : n]
        for extra in self._pool.map(lambda s: self._choices(messages, 1, temperature, grammar, s)[:1], missing):
            choices += extra
        return [self._candidate(choice, prompt_tokens) for choice, prompt_tokens in choices[:n]]

    # ------------------------------------------------------------------ requests
    def _choices(self, messages: list[Message], n: int, temperature: float, grammar: ActionGrammar | None,
                 seed: int) -> list[tuple[Any, int]]:
        """One chat-completion request (with retries and field fallbacks) → its choices."""
        while True:
            kwargs = self._kwargs(messages, n, temperature, grammar, seed)
            try:
                response = self._with_retries(kwargs)
            except EndpointError as err:
                if self._drop_rejected_field(err, kwargs):
                    continue
                raise
            usage = getattr(response, "usage", None)
            prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
            return [(choice, prompt_tokens) for choice in response.choices]

    def _kwargs(self, messages: list[Message], n: int, temperature: float, grammar: ActionGrammar | None,
                seed: int) -> dict[str, Any]:
        cfg = self.config
        kwargs: dict[str, Any] = dict(
            model=cfg.model, messages=messages, n=n, temperature=temperature, top_p=cfg.top_p,
            max_tokens=cfg.max_tokens, seed=seed,
        )
        if cfg.stop:
            kwargs["stop"] = list(cfg.stop)[:4]  # the API accepts at most 4
        if self.logprobs_supported:
            kwargs.update(logprobs=True, top_logprobs=1)  # llama.cpp's server needs top_logprobs too
        if grammar is not None and self.guided:
            bound = THOUGHT_CHARS_PER_TOKEN * cfg.max_tokens  # a server cannot cut a long thought short
            regex = grammar.regex(max_thought=bound)
            extra = {"guided_regex": regex} if self.guided == "vllm-legacy" else {
                "grammar": grammar.gbnf(max_thought=bound), "structured_outputs": {"regex": regex}}
            kwargs["extra_body"] = extra
        return kwargs

    def _drop_rejected_field(self, err: EndpointError, kwargs: dict[str, Any]) -> bool:
        """After a 400/422, stop sending guided-decoding fields, then logprobs; True = ask again."""
        status = getattr(err.__cause__, "status_code", None)
        if status not in (400, 422):
            return False
        with self._lock:
            if "extra_body" in kwargs and self.guided:
                log.warning("endpoint %s rejected guided-decoding fields (%s); sampling free text from now on",
                            self.config.base_url, ", ".join(kwargs["extra_body"]))
                self.guided = None
                return True
            if kwargs.get("logprobs") and self.logprobs_supported:
                log.warning("endpoint %s rejected logprobs; candidates will have logprob=None", self.config.base_url)
                self.logprobs_supported = False
                return True
        return False

    def _with_retries(self, kwargs: dict[str, Any]) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=wait_exponential_jitter(multiplier=self.backoff, max=self.max_backoff, jitter=self.backoff),
            retry=retry_if_exception(_retryable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(self._call, kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised as one clear error
            attempts = retrying.statistics.get("attempt_number", 1)
            raise EndpointError(self._scrub(
                f"OpenAI-compatible endpoint {self.config.base_url} (model {self.config.model!r}) failed after "
                f"{attempts} attempt(s); last status: {_status(err)}: {_short(err)}"
            )) from err

    def _call(self, kwargs: dict[str, Any]) -> Any:
        response = self.client.chat.completions.create(**kwargs)
        if isinstance(response, str) or not getattr(response, "choices", None):
            body = response if isinstance(response, str) else "no choices"
            raise MalformedResponse(f"malformed response body: {body[:80]!r}")
        return response

    def _log_retry(self, state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(self._scrub(
            f"endpoint {self.config.base_url} (model {self.config.model!r}): {_status(err)} on attempt "
            f"{state.attempt_number}/{self.config.max_retries + 1}; retrying in {delay:.2f}s"
        ))

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    # ------------------------------------------------------------------ candidates
    def _candidate(self, choice: Any, prompt_tokens: int) -> Candidate:
        raw = (choice.message.content or "") if choice.message else ""
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        logprob = float(sum(t.logprob for t in content)) if content else None
        n_tokens = len(content) if content else 0
        return make_candidate(raw, self.env_name, logprob=logprob, n_tokens=n_tokens, prompt_tokens=prompt_tokens)


def _status(err: BaseException | None) -> str:
    if isinstance(err, openai.APIStatusError):
        return f"HTTP {err.status_code}"
    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection error"
    return type(err).__name__ if err else "unknown"


def _short(err: BaseException) -> str:
    text = str(err).replace("\n", " ")
    return text[:200] + ("…" if len(text) > 200 else "")
