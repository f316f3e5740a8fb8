"""Sharing a policy and a Q model between worker threads (MCTS collection, evaluation).

On a small CPU, two workers with one thread each do more than one worker with two threads: the 135M
model's decoding hardly gains from a second thread, and while one worker's model decodes, the other steps
its environment or samples (``make bench``, workers: on 2 cores the cloned WebShop agent searched 1.82x
the trees and ran 1.86x the episodes per hour, with the same trees and rewards). What each worker needs:

* **policy** — :func:`worker_policy`: local backends get one model per worker thread (:class:`PolicyPerThread`)
  with ``policy.n_threads // workers`` threads each; an endpoint is shared. A policy handed in that is not
  thread-safe is serialised (:class:`LockedPolicy`).
* **Q model** — :class:`SharedScorer`: one model, calls serialised by a lock (a LoRA Q model switches its
  adapter off for the reference pass, so two threads may not run it at once), but each thread keeps its own
  KV prefix cache (consecutive steps of *its* episode reuse their prompt) and its own count of scored tokens.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from qlib.agent.base import Candidate, Message


def default_policy(env_name: str, config: Any) -> Any:
    """``qlib.agent.backends.make_policy(config.policy, env_name)``."""
    from qlib.agent.backends import make_policy

    return make_policy(config.policy, env_name)


class LockedPolicy:
    """Serialises ``propose`` calls of a policy that is not thread-safe."""

    thread_safe = True

    def __init__(self, policy: Any):
        self.policy = policy
        self._lock = threading.Lock()

    def propose(self, messages: list[Message], n: int, **kwargs: Any) -> list[Candidate]:
        with self._lock:
            return self.policy.propose(messages, n, **kwargs)


#: model construction is serialised: llama-cpp-python silences a model's loading by pointing the process's
#: stdout/stderr descriptors at /dev/null and back; two loads at once restore each other's /dev/null, and the
#: process's output would be lost for good
_BUILD_LOCK = threading.Lock()


class PolicyPerThread:
    """One policy per worker thread, built by ``make`` on the thread's first call (one build at a time)."""

    thread_safe = True

    def __init__(self, make: Callable[[], Any]):
        self._make, self._local = make, threading.local()

    def propose(self, messages: list[Message], n: int, **kwargs: Any) -> list[Candidate]:
        if not hasattr(self._local, "policy"):
            with _BUILD_LOCK:
                self._local.policy = self._make()
        return self._local.policy.propose(messages, n, **kwargs)


def worker_policy(env_name: str, config: Any, workers: int) -> Any:
    """The policy of ``workers`` threads: the configured one (``workers == 1``, or an endpoint), else one local
    model per worker thread with ``policy.n_threads // workers`` CPU threads each."""
    if workers == 1 or config.policy.backend == "openai":
        return default_policy(env_name, config)
    from qlib.config import with_overrides

    share = with_overrides(config, {"policy.n_threads": max(1, config.policy.n_threads // workers)})
    return PolicyPerThread(lambda: default_policy(env_name, share))


def shareable(policy: Any) -> Any:
    """``policy`` itself when it declares ``thread_safe``, else behind a :class:`LockedPolicy`."""
    return policy if getattr(policy, "thread_safe", False) else LockedPolicy(policy)


class SharedScorer:
    """A Q model shared by worker threads: one call at a time, per-thread prefix caches and token counts.

    Every method of the model is reachable and runs under the lock; ``scored_tokens`` is the calling thread's
    own count (what :func:`qlib.evaluate.run_task` charges to its episode). The model's KV prefix cache
    (``caches`` of a DPO Q model, ``cache`` of a QNet) is swapped for the calling thread's before each call.
    """

    thread_safe = True

    def __init__(self, model: Any):
        self._model, self._lock, self._local = model, threading.Lock(), threading.local()

    @property
    def scored_tokens(self) -> int:
        return getattr(self._local, "scored_tokens", 0)

    def _enter(self) -> None:
        local, model = self._local, self._model
        if not hasattr(local, "caches"):
            from qlib.qmodel.scorer import PrefixCache  # torch: imported only where a Q model exists

            local.scored_tokens = 0
            local.caches = ({k: PrefixCache() for k in model.caches} if getattr(model, "caches", None) else None)
            local.cache = PrefixCache() if hasattr(model, "cache") else None
        if local.caches is not None:
            model.caches = local.caches
        if local.cache is not None:
            model.cache = local.cache

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)
        if not callable(value):
            return value

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._enter()
                before = getattr(self._model, "scored_tokens", 0)
                try:
                    return value(*args, **kwargs)
                finally:
                    self._local.scored_tokens += getattr(self._model, "scored_tokens", 0) - before

        return locked
