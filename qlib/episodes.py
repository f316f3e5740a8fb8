"""The episode loop of stage 4: one agent, one task, one selection method (paper Eq. 10, Algorithm 2).

Methods (same policy, seeds and step limit for all):

* ``greedy`` — one sample per step at temperature 0;
* ``sampled`` — one sample per step at ``config.policy.temperature`` (1.0; the official "simple" agent);
* ``bon`` — Best-of-N: up to ``n`` independent ``sampled`` trajectories, keep the best environment
  reward. It reads the environment's reward, so it is an **oracle** baseline, not a single-trial agent;
  it stops early once a trajectory reaches reward 1 (which cannot be beaten);
* ``q`` — ``n`` candidates per step, execute the one with the highest Q-value-model score;
* ``qnet`` — the same loop with the Q*Agent QNet scorer (only the label differs);
* ``qnet_lookahead`` — QLASS-faithful selection (a labelled variant): each distinct candidate is stepped in
  the environment from a snapshot, the state it reaches (the candidate's turn and the observation it got)
  is scored by the QNet (``score_completions`` of [assistant turn, observation]) and the environment is
  restored; only the chosen action then counts as the episode's step. With ``eval.lookahead_peek_reward``
  (off by default; rows labelled ``+peek``) a candidate whose look-ahead ends the episode is scored by the
  environment's true reward instead, as QLASS does — an oracle peek at test time;
* ``random_pick`` — ``n`` candidates, a seeded uniform pick (control for ``q``);
* ``logprob_pick`` — ``n`` candidates, the highest policy log-probability (control; it is the *sum*
  over the turn's tokens, so it favours short turns).

Candidates are never executed before choosing (the official "beam" stepped all of them), except the
look-ahead steps of ``qnet_lookahead``, which are undone; only the chosen action counts. Selection methods first deduplicate candidates by their
canonical text (first occurrence kept, ``count`` recorded), so the Q model scores each distinct turn once
and ``random_pick`` is uniform over *distinct* candidates.

Seeding: the policy seed of a step is derived from ``(config.seed, env, task, step, trajectory)`` and
never from the method. With a policy that is deterministic given its seed, ``q``, ``qnet``,
``random_pick`` and ``logprob_pick`` therefore see the *same candidate set* whenever they are in the
same state (always at step 0, and later as long as their picks agree), and ``sampled`` is exactly
``bon``'s first trajectory; this makes the paired comparisons of :mod:`qlib.stats` sharper.

The resumable store of episode rows is :mod:`qlib.episode_store`; the driver over a task split and
the CLI are :mod:`qlib.evaluate`.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Callable

from qlib.agent.base import Candidate, ContextOverflowError, Message, Policy
from qlib.envs.base import Environment
from qlib.qmodel.protocol import QModel
from qlib.seeding import derive_seed

log = logging.getLogger(__name__)

METHODS = ("greedy", "sampled", "bon", "q", "qnet", "random_pick", "logprob_pick", "qnet_lookahead")
SELECTION = ("q", "qnet", "random_pick", "logprob_pick", "qnet_lookahead")  # n candidates per step, one picked
SCORED = ("q", "qnet", "qnet_lookahead")  # need a Q model
SINGLE = ("greedy", "sampled")  # always n = 1

Render = Callable[..., list[Message]]
History = list[tuple[str, str]]


class FatalEvalError(RuntimeError):
    """A misconfiguration that would fail every episode; stops the run instead of being recorded."""


@dataclass
class Runner:
    """Everything an episode needs besides the task."""

    env_name: str
    env: Environment
    policy: Policy
    render: Render
    variant: str
    temperature: float
    seed: int
    q_model: QModel | None = None
    icl: bool = True  # in-context examples in the policy's prompt (config.policy.icl)
    peek_reward: bool = False  # qnet_lookahead: score episode-ending candidates by the true reward (oracle)


# --------------------------------------------------------------------------- seeds and selection


def step_seed(base: int, env_name: str, task_id: int, step: int, trajectory: int = 0) -> int:
    """The policy seed at ``step`` of ``task_id``; method-independent by design (see module doc)."""
    return derive_seed(base, env_name, task_id, step, trajectory)


def dedupe(candidates: list[Candidate]) -> tuple[list[Candidate], list[int]]:
    """Distinct candidates by canonical ``text`` (first occurrence kept) and how often each occurred."""
    index: dict[str, int] = {}
    unique: list[Candidate] = []
    counts: list[int] = []
    for cand in candidates:
        if cand.text in index:
            counts[index[cand.text]] += 1
        else:
            index[cand.text] = len(unique)
            unique.append(cand)
            counts.append(1)
    return unique, counts


def argmax(values: list[float]) -> int:
    """Index of the first maximum; NaN counts as -inf."""
    clean = [-math.inf if v is None or math.isnan(v) else v for v in values]
    return max(range(len(clean)), key=clean.__getitem__)


def pick(
    runner: Runner, method: str, unique: list[Candidate], messages_q: Callable[[], list[Message]],
    pick_seed: int,
) -> tuple[int, list[float] | None]:
    """Index of the chosen candidate and the Q scores (``q``/``qnet`` only)."""
    if method in SCORED and len(unique) > 1:  # a single distinct candidate needs no scoring
        assert runner.q_model is not None
        scores = [float(s) for s in runner.q_model.score(messages_q(), [c.text for c in unique])]
        if len(scores) != len(unique):
            raise RuntimeError(f"Q model returned {len(scores)} scores for {len(unique)} candidates")
        return argmax(scores), scores
    if method == "logprob_pick":
        if all(c.logprob is None for c in unique):
            raise FatalEvalError("logprob_pick needs a policy backend that returns log-probabilities")
        return argmax([-math.inf if c.logprob is None else c.logprob for c in unique]), None
    return random.Random(pick_seed).randrange(len(unique)), None


# --------------------------------------------------------------------------- episodes


def run_episode(runner: Runner, task_id: int, method: str, n: int, trajectory: int = 0) -> dict[str, Any]:
    """One episode; returns the outcome reward (of the done step), steps, truncated, tokens, step records.

    The policy sees ``render(..., icl=runner.icl)``; the Q model sees the same history with ``icl=False``.
    """
    env, obs0 = runner.env, runner.env.reset(task_id)
    history: History = []
    records: list[dict[str, Any]] = []
    tokens = prompt_tokens = 0
    done, reward, truncated, overflow = False, 0.0, False, False
    while not done:
        t = len(history)
        if t >= env.max_steps:
            raise RuntimeError(f"environment did not end the episode at its step limit {env.max_steps}")
        messages = runner.render(runner.env_name, obs0, history, variant=runner.variant, icl=runner.icl)
        try:
            candidates = runner.policy.propose(
                messages, n if method in SELECTION else 1,
                temperature=0.0 if method == "greedy" else runner.temperature,
                action_space=env.valid_actions(), seed=step_seed(runner.seed, runner.env_name, task_id, t, trajectory),
            )
        except ContextOverflowError as err:  # as ETO: the episode ends there with no reward
            log.warning("task %s step %d: %s; episode ends with reward 0", task_id, t, err)
            reward, truncated, overflow = 0.0, True, True
            break
        if not candidates:
            raise RuntimeError("policy returned no candidates")
        tokens += sum(c.n_tokens for c in candidates)
        prompt_tokens += max(c.prompt_tokens for c in candidates)
        chosen, extra = candidates[0], {}
        if method in SELECTION:
            pick_seed = derive_seed(runner.seed, runner.env_name, task_id, t, trajectory, "pick")
            chosen, extra = choose(runner, method, candidates, obs0, list(history), pick_seed)
        result = env.step(chosen.action)  # only the chosen candidate ever touches the environment
        history.append((chosen.text, result.observation))
        done, reward = result.done, float(result.reward)
        truncated = bool(result.info.get("truncated", False))
        records.append(step_record(chosen, result, extra))
    return {
        "reward": reward, "steps": len(records), "truncated": truncated, "context_overflow": overflow,
        "tokens_generated": tokens, "prompt_tokens": prompt_tokens, "trajectory": records,
    }


def choose(
    runner: Runner, method: str, candidates: list[Candidate], obs0: str, history: History, pick_seed: int
) -> tuple[Candidate, dict[str, Any]]:
    """Deduplicate, pick one candidate; return it and the step's ``chosen``/``candidates`` record."""
    unique, counts = dedupe(candidates)

    def render_q() -> list[Message]:  # only rendered when a Q model scores
        return runner.render(runner.env_name, obs0, history, variant=runner.variant, icl=False)

    if method == "qnet_lookahead" and len(unique) > 1:
        scores, ends = lookahead_scores(runner, unique, obs0, history)
        records = [dict(r, ends=e) for r, e in zip(candidate_records(unique, counts, scores), ends)]
        return unique[argmax(scores)], {"chosen": argmax(scores), "candidates": records}
    index, scores = pick(runner, method, unique, render_q, pick_seed)
    return unique[index], {"chosen": index, "candidates": candidate_records(unique, counts, scores)}


def lookahead_scores(runner: Runner, unique: list[Candidate], obs0: str, history: History
                     ) -> tuple[list[float], list[bool]]:
    """QLASS: the QNet value of the state each candidate reaches (stepped from a snapshot, then undone), or
    its true reward when it ends the episode and ``runner.peek_reward``; and whether it ends the episode."""
    env, scorer = runner.env, runner.q_model
    if not hasattr(scorer, "score_completions"):
        raise FatalEvalError("qnet_lookahead needs a Q model with score_completions (the QNet or a DPO Q model)")
    before = runner.render(runner.env_name, obs0, history, variant=runner.variant, icl=False)
    snapshot = env.snapshot()
    reached, peeked, ends = [], [], []
    for cand in unique:
        try:
            result = env.step(cand.action)
        finally:
            env.restore(snapshot)
        after = runner.render(runner.env_name, obs0, [*history, (cand.text, result.observation)],
                              variant=runner.variant, icl=False)
        reached.append(after[len(before):])  # [assistant turn, observation]
        ends.append(bool(result.done))
        peeked.append(float(result.reward) if runner.peek_reward and result.done else None)
    todo = [i for i, p in enumerate(peeked) if p is None]
    values = scorer.score_completions(before, [reached[i] for i in todo]) if todo else []
    scores = list(peeked)
    for i, value in zip(todo, values):
        scores[i] = float(value)
    return scores, ends


def candidate_records(unique: list[Candidate], counts: list[int], scores: list[float] | None) -> list[dict]:
    return [
        {"text": c.text, "action": c.action, "valid": c.valid, "logprob": c.logprob, "count": k,
         "q": None if scores is None else scores[i]}
        for i, (c, k) in enumerate(zip(unique, counts))
    ]


def step_record(chosen: Candidate, result: Any, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "thought": chosen.thought, "action": chosen.action, "text": chosen.text, "valid": chosen.valid,
        "logprob": chosen.logprob, "observation": result.observation, "reward": float(result.reward),
        "done": bool(result.done), "invalid": bool(result.info.get("invalid", False)), **extra,
    }


def run_best_of_n(runner: Runner, task_id: int, n: int) -> dict[str, Any]:
    """Up to ``n`` sampled trajectories (trajectory j uses seeds of index j); the best reward wins."""
    runs: list[dict[str, Any]] = []
    for j in range(n):
        runs.append(run_episode(runner, task_id, "sampled", 1, trajectory=j))
        if is_success(runs[-1]["reward"]):
            break
    best = argmax([r["reward"] for r in runs])
    return {
        **runs[best],
        "tokens_generated": sum(r["tokens_generated"] for r in runs),
        "prompt_tokens": sum(r["prompt_tokens"] for r in runs),
        "bon_rewards": [r["reward"] for r in runs],
        "bon_best": best,
    }


def is_success(reward: float | None) -> bool:
    """Success = outcome reward 1 (up to float noise)."""
    return reward is not None and reward >= 1.0 - 1e-9


