"""Stage 4: run an agent over a task split with a selection method (paper Eq. 10, Algorithm 2, Tables 2–4).

Methods (same policy, seeds and step limit for all):

* ``greedy`` — one sample per step at temperature 0;
* ``sampled`` — one sample per step at ``config.policy.temperature`` (1.0; the official "simple" agent);
* ``bon`` — Best-of-N: up to ``n`` independent ``sampled`` trajectories, keep the best environment
  reward. It reads the environment's reward, so it is an **oracle** baseline, not a single-trial agent;
  it stops early once a trajectory reaches reward 1 (which cannot be beaten);
* ``q`` — ``n`` candidates per step, execute the one with the highest Q-value-model score;
* ``qnet`` — the same loop with the Q*Agent QNet scorer (only the label differs);
* ``random_pick`` — ``n`` candidates, a seeded uniform pick (control for ``q``);
* ``logprob_pick`` — ``n`` candidates, the highest policy log-probability (control; it is the *sum*
  over the turn's tokens, so it favours short turns).

Candidates are never executed before choosing (the official "beam" stepped all of them); only the
chosen action touches the environment. Selection methods first deduplicate candidates by their
canonical text (first occurrence kept, ``count`` recorded), so the Q model scores each distinct turn once
and ``random_pick`` is uniform over *distinct* candidates.

Seeding: the policy seed of a step is derived from ``(config.seed, env, task, step, trajectory)`` and
never from the method. With a policy that is deterministic given its seed, ``q``, ``qnet``,
``random_pick`` and ``logprob_pick`` therefore see the *same candidate set* whenever they are in the
same state (always at step 0, and later as long as their picks agree), and ``sampled`` is exactly
``bon``'s first trajectory; this makes the paired comparisons of :mod:`qlib.stats` sharper.

Errors: an exception during one episode (endpoint down, a scorer crash) is logged and written as a
row with an ``error`` field and no reward; such rows are not results (not returned, not summarised)
and the episode is retried on the next run. :class:`FatalEvalError` (a misconfiguration) stops the run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from qlib.agent.base import Candidate, ContextOverflowError, Message, Policy
from qlib.config import Config, load_config, parse_overrides
from qlib.envs.base import Environment, check_split

log = logging.getLogger(__name__)

METHODS = ("greedy", "sampled", "bon", "q", "qnet", "random_pick", "logprob_pick")
SELECTION = ("q", "qnet", "random_pick", "logprob_pick")  # n candidates per step, one picked
SCORED = ("q", "qnet")  # need a Q model
SINGLE = ("greedy", "sampled")  # always n = 1
RESULT_KEY = ("env", "split", "task_id", "method", "n", "seed", "prompt", "temperature")
FINGERPRINT = ("policy", "max_steps")  # must match between a file's rows and a resumed run

Render = Callable[..., list[Message]]
History = list[tuple[str, str]]


class QScorer(Protocol):
    """What :func:`qlib.qmodel.load_q_model` returns."""

    scored_tokens: int

    def score(self, messages: list[Message], candidates: list[str]) -> list[float]: ...


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
    q_model: QScorer | None = None


# --------------------------------------------------------------------------- seeds and selection


def derive_seed(base: int, *parts: object) -> int:
    """A stable 31-bit seed from ``base`` and ``parts`` (sha256; independent of PYTHONHASHSEED)."""
    text = ":".join(str(p) for p in (base, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


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

    The policy sees ``render(..., icl=True)``; the Q model sees the same history with ``icl=False``.
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
        messages = runner.render(runner.env_name, obs0, history, variant=runner.variant, icl=True)
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

    index, scores = pick(runner, method, unique, render_q, pick_seed)
    return unique[index], {"chosen": index, "candidates": candidate_records(unique, counts, scores)}


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


# --------------------------------------------------------------------------- JSONL rows


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All parseable rows of ``path`` (results and error rows); an unreadable line is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping an unreadable (partially written?) line", path, number)
    return rows


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """The result rows of ``path`` (error rows dropped) — what :func:`qlib.stats.summarise` takes."""
    return [r for r in read_rows(path) if is_result(r)]


def is_result(row: dict[str, Any]) -> bool:
    return "error" not in row and row.get("reward") is not None


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in RESULT_KEY)


def end_with_newline(path: Path) -> None:
    """Terminate a partially written last line so the next appended row starts on its own line."""
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as handle:
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row and flush it to disk (a crash never loses finished episodes)."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def check_fingerprint(done: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Refuse to resume into rows produced by a different policy/prompt/step limit/Q model."""
    for row in done:
        keys = FINGERPRINT + (("qmodel",) if row.get("method") in SCORED else ())
        diff = {k: (row.get(k), meta[k]) for k in keys if row.get(k) != meta[k]}
        if diff:
            raise FatalEvalError(f"the output file holds rows of another configuration {diff}; "
                                 "use another --out")


# --------------------------------------------------------------------------- the driver


def select_tasks(env: Environment, env_name: str, split: str, config: Config, limit: int | None) -> list[int]:
    """``env.task_ids(split)[:limit]``; default limit: the config's ``<split>_tasks`` of the environment."""
    ids = list(env.task_ids(split))
    if limit is None:
        try:
            limit = getattr(config.env(env_name), f"{split}_tasks")
        except ValueError:  # an environment without config settings (e.g. the toy env): all tasks
            limit = len(ids)
    return ids[:limit]


def default_render() -> Render:
    from qlib.agent.prompts import render_messages

    return render_messages


def method_n(method: str, n: int | None, config: Config) -> int:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    k = 1 if method in SINGLE else int(n or config.eval.n_candidates)
    if k < 1:
        raise ValueError(f"n must be >= 1, got {k}")
    return k


def evaluate(
    env_name: str,
    split: str,
    method: str,
    *,
    config: Config,
    policy: Policy | None = None,
    q_model: QScorer | None = None,
    n: int | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    env: Environment | None = None,
    render: Render | None = None,
    qmodel_name: str | None = None,
) -> list[dict[str, Any]]:
    """Run ``method`` over the first tasks of ``split``; return one result row per finished episode.

    Rows already in ``out`` for the same (env, split, task_id, method, n, seed) are reused, new rows
    are appended per episode; episodes that raised are written as ``error`` rows and left out of the
    returned list (retried next time). ``qmodel_name`` labels the rows (default: ``q_model.path``).
    """
    check_split(split)
    k = method_n(method, n, config)
    if method in SCORED and q_model is None:
        raise ValueError(f"method {method!r} needs a q_model")
    if env is None:
        from qlib.envs import make

        env = make(env_name, config)
    if policy is None:
        from qlib.agent.backends import make_policy

        policy = make_policy(config.policy, env_name)
    runner = Runner(env_name, env, policy, render or default_render(), config.policy.prompt,
                    config.policy.temperature, config.seed, q_model if method in SCORED else None)
    qname = (qmodel_name or str(getattr(q_model, "path", "")) or None) if method in SCORED else None
    meta = row_meta(env_name, split, method, k, config, env.max_steps, qname)
    tasks = select_tasks(env, env_name, split, config, limit)
    done = resume(out, meta, tasks)
    todo = [t for t in tasks if t not in done]
    log.info("%s/%s %s n=%d: %d tasks, %d already done",
             env_name, split, method, k, len(tasks), len(tasks) - len(todo))
    failed = run_tasks(runner, todo, meta, done, out)
    if failed:
        log.warning("%d episode(s) failed (error rows written); run again to retry them", failed)
    return [done[t] for t in tasks if t in done]


def row_meta(env_name: str, split: str, method: str, n: int, config: Config, max_steps: int,
             qmodel: str | None) -> dict[str, Any]:
    """The fields every row of this run starts with (its resume key and configuration fingerprint)."""
    return {"env": env_name, "split": split, "method": method, "n": n, "seed": config.seed,
            "policy": config.policy.model, "prompt": config.policy.prompt,
            "temperature": 0.0 if method == "greedy" else config.policy.temperature, "max_steps": max_steps,
            "qmodel": qmodel}


def resume(out: str | Path | None, meta: dict[str, Any], tasks: list[int]) -> dict[int, dict[str, Any]]:
    """Finished rows of ``out`` for this run's tasks, keyed by task id (checks the configuration)."""
    if out is None:
        return {}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    end_with_newline(path)
    wanted = {row_key({**meta, "task_id": t}): t for t in tasks}
    done = {wanted[row_key(r)]: r for r in load_results(path) if row_key(r) in wanted}
    check_fingerprint(list(done.values()), meta)
    return done


def run_tasks(runner: Runner, todo: list[int], meta: dict[str, Any], done: dict[int, dict], out: Any) -> int:
    """Run the remaining episodes with a progress bar; returns how many failed."""
    from tqdm.auto import tqdm

    failed = 0
    bar = tqdm(todo, desc=f"{meta['env']}/{meta['method']}", unit="ep")
    for task_id in bar:
        row = run_task(runner, task_id, meta)
        if out is not None:
            append_row(Path(out), row)
        if is_result(row):
            done[task_id] = row
        else:
            failed += 1
        rewards = [r["reward"] for r in done.values()]
        bar.set_postfix(reward=f"{sum(rewards) / max(len(rewards), 1):.3f}", errors=failed, refresh=False)
    return failed


def run_task(runner: Runner, task_id: int, meta: dict[str, Any]) -> dict[str, Any]:
    """One result row, or an error row when the episode raised (FatalEvalError propagates)."""
    scorer = runner.q_model
    q_before = getattr(scorer, "scored_tokens", 0) if scorer is not None else 0
    start = time.perf_counter()
    try:
        if meta["method"] == "bon":
            episode = run_best_of_n(runner, task_id, meta["n"])
        else:
            episode = run_episode(runner, task_id, meta["method"], meta["n"])
    except FatalEvalError:
        raise
    except Exception as err:  # noqa: BLE001 — one bad episode must not end the run
        log.exception("%s task %s (%s) failed", meta["env"], task_id, meta["method"])
        return {**meta, "task_id": task_id, "reward": None, "success": None,
                "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=5),
                "wall_s": round(time.perf_counter() - start, 3)}
    q_tokens = (getattr(scorer, "scored_tokens", 0) - q_before) if scorer is not None else 0
    trajectory = episode.pop("trajectory")  # keep the long field last in the row
    return {**meta, "task_id": task_id, **episode, "success": is_success(episode["reward"]),
            "q_tokens": q_tokens, "wall_s": round(time.perf_counter() - start, 3), "trajectory": trajectory}


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, choices=("webshop", "hotpotqa"))
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--method", required=True, nargs="+", choices=METHODS, metavar="M",
                        help=f"one or more of: {', '.join(METHODS)} (bon is an oracle baseline)")
    parser.add_argument("--qmodel", default=None, help="Q-value model directory (needed by q / qnet)")
    parser.add_argument("--n", type=int, default=None,
                        help="candidates per step / BoN trajectories (default: eval.n_candidates)")
    parser.add_argument("--limit", type=int, default=None, help="first K tasks (default: <env>.<split>_tasks)")
    parser.add_argument("--out", default=None,
                        help="resumable JSONL results file (default: runs/eval/<env>_<split>.jsonl)")


def run(args: argparse.Namespace) -> int:
    """``python -m qlib evaluate``: run each ``--method`` in turn, then print the summary tables."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.profile, parse_overrides(args.set))
    methods = list(dict.fromkeys(args.method))
    scored = any(m in SCORED for m in methods)
    if scored and not args.qmodel:
        print("error: --qmodel is required for methods q / qnet", file=sys.stderr)
        return 2
    from qlib.agent.backends import make_policy
    from qlib.envs import make

    env = make(args.env, config)
    policy = make_policy(config.policy, args.env)
    q_model = load_scorer(args.qmodel) if scored else None
    out = args.out or f"runs/eval/{args.env}_{args.split}.jsonl"
    rows, expected = [], 0
    for method in methods:
        expected += len(select_tasks(env, args.env, args.split, config, args.limit))
        rows += evaluate(args.env, args.split, method, config=config, policy=policy, q_model=q_model,
                         n=args.n, limit=args.limit, out=out, env=env,
                         qmodel_name=os.path.normpath(args.qmodel) if args.qmodel else None)
    print_summary(rows, methods, config)
    print(f"results: {out} ({len(rows)}/{expected} episodes)")
    return 0 if len(rows) == expected else 1


def load_scorer(path: str) -> QScorer:
    from qlib.qmodel import load_q_model

    return load_q_model(path)


def print_summary(rows: list[dict[str, Any]], methods: list[str], config: Config) -> None:
    """The summary table, plus paired differences against q / qnet when several methods ran."""
    from qlib import stats

    kw = {"resamples": config.eval.bootstrap_resamples, "seed": config.seed}
    print(stats.format_table(stats.summarise(rows, **kw)))
    baseline = next((m for m in SCORED if m in methods), None)
    if baseline and len(methods) > 1:
        print(stats.format_table(stats.paired_differences(rows, baseline=baseline, **kw)))
