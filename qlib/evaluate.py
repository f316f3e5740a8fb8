"""Stage 4 driver: run an agent over a task split with a selection method (paper Tables 2–4), and
``python -m qlib evaluate``.

The methods and the episode loop are in :mod:`qlib.episodes` (read its docstring), the resumable row
store in :mod:`qlib.episode_store`.

Errors: an exception during one episode (endpoint down, a scorer crash) is logged and written as a
row with an ``error`` field and no reward; such rows are not results (not returned, not summarised)
and the episode is retried on the next run. :class:`FatalEvalError` (a misconfiguration) stops the run.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import queue
import re
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from qlib.agent.base import Policy
from qlib.agent.prompts import render_messages
from qlib.config import Config, load_config, parse_overrides
from qlib.envs.base import Environment, check_split
from qlib.envs.registry import env_names
from qlib.io import append_jsonl
from qlib.episode_store import ANY, is_result, resume, shared_rows
from qlib.episodes import (
    METHODS, SCORED, SINGLE, FatalEvalError, Render, Runner, is_success, run_best_of_n, run_episode,
)
from qlib.qmodel.protocol import QModel
from qlib.workers import SharedScorer, shareable, worker_policy

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the driver


def parse_task_spec(spec: str) -> list[int]:
    """Task ids from ``"0-49,70,90-99"`` (ids and inclusive ranges, comma-separated), in the given order,
    duplicates dropped; a malformed part or a reversed range is a :class:`ValueError`."""
    ids: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise ValueError(f"--tasks {spec!r}: {part!r} is neither a task id nor a range like 0-49")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise ValueError(f"--tasks {spec!r}: range {part!r} runs backwards")
        ids += range(first, last + 1)
    return list(dict.fromkeys(ids))


def task_spec_argument(spec: str) -> list[int]:
    """:func:`parse_task_spec` for argparse (its message, not argparse's generic one)."""
    try:
        return parse_task_spec(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def select_tasks(env: Environment, env_name: str, split: str, config: Config, limit: int | None,
                 tasks: Sequence[int] | None = None) -> list[int]:
    """``tasks`` (ids of ``split``, checked) when given, else the first ``limit`` ids of the split (default:
    the config's ``<split>_tasks`` of the environment, from its ``train_start`` on for the train split)."""
    ids = list(env.task_ids(split))
    if tasks is not None:
        if limit is not None:
            raise ValueError("give either a task limit or task ids, not both")
        known = set(ids)
        unknown = [t for t in tasks if t not in known]
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise ValueError(f"{len(unknown)} task id(s) not in {env_name}'s {split} split "
                             f"({len(ids)} tasks, ids {min(ids)}-{max(ids)}): {shown}")
        return list(tasks)
    return config.default_tasks(env_name, split, ids, limit)


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
    q_model: QModel | None = None,
    n: int | None = None,
    limit: int | None = None,
    tasks: Sequence[int] | None = None,
    out: str | Path | None = None,
    env: Environment | None = None,
    render: Render | None = None,
    qmodel_name: str | None = None,
    shared: Sequence[str | Path] = (),
    workers: int | None = None,
    env_factory: Callable[[], Environment] | None = None,
) -> list[dict[str, Any]]:
    """Run ``method`` over the first ``limit`` tasks of ``split`` (or the task ids ``tasks``); return one result
    row per finished episode.

    Rows already in ``out`` for the same (env, split, task_id, method, n, seed) are reused, new rows
    are appended per episode; episodes that raised are written as ``error`` rows and left out of the
    returned list (retried next time). ``qmodel_name`` labels the rows (default: ``q_model.path``).
    Rows of this exact run (key and fingerprint) in the episode files ``shared`` are copied into ``out``
    instead of being run again (:func:`qlib.episode_store.shared_rows`).

    ``workers`` (default ``eval.workers``) episodes run at once, each worker with its own environment from
    ``env_factory`` (default: the registry's; a given ``env`` without a factory means one worker), its own
    local model (:func:`qlib.workers.worker_policy`, when ``policy`` is not given) and the shared Q model
    (:class:`qlib.workers.SharedScorer`). An episode's seeds depend on its task only, so the rows do not
    depend on the number of workers (the file's row order does).
    """
    check_split(split)
    k = method_n(method, n, config)
    if method in SCORED and q_model is None:
        raise ValueError(f"method {method!r} needs a q_model")
    workers = max(1, workers or config.eval.workers)
    if env is None:
        if env_factory is None:
            from qlib.envs import make

            env_factory = functools.partial(make, env_name, config)
        env = env_factory()
    if env_factory is None:
        workers = 1  # no second environment to run in
    if policy is None and not config.eval.reuse_only:  # reuse_only runs no episode: no model to load
        policy = worker_policy(env_name, config, workers)
    runner = Runner(env_name, env, policy, render or render_messages, config.policy.prompt,
                    config.policy.temperature, config.seed, q_model if method in SCORED else None,
                    icl=config.policy.icl, peek_reward=peeks(method, config))
    qname = (qmodel_name or str(getattr(q_model, "path", "")) or None) if method in SCORED else None
    if peeks(method, config):  # the oracle peek is part of the scorer's label (no resuming across it)
        qname = f"{qname}+peek"
    meta = row_meta(env_name, split, method, k, config, env.max_steps, qname)
    tasks = select_tasks(env, env_name, split, config, limit, tasks)
    done = resume(out, meta, tasks)
    copies = shared_rows([Path(p) for p in shared], meta, [t for t in tasks if t not in done])
    for task_id, row in copies.items():
        if out is not None and not config.eval.reuse_only:  # reuse_only reads, it writes nothing
            append_jsonl(out, row)
        done[task_id] = row
    todo = [t for t in tasks if t not in done]
    log.info("%s/%s %s n=%d: %d tasks, %d already done",
             env_name, split, method, k, len(tasks), len(tasks) - len(todo))
    if todo and config.eval.reuse_only:
        log.warning("%s/%s %s n=%d: %d of %d tasks have no finished row and are left out (eval.reuse_only)",
                    env_name, split, method, k, len(todo), len(tasks))
        todo = []
    if todo and method in SCORED:
        from qlib.qmodel.api import LazyQModel

        if isinstance(q_model, LazyQModel):  # read it now: a missing base stops here, not as one error row per task
            q_model.model()
    failed = run_tasks(runner, todo, meta, done, out, workers, env_factory)
    if failed:
        log.warning("%d episode(s) failed (error rows written); run again to retry them", failed)
    return [done[t] for t in tasks if t in done]


def peeks(method: str, config: Config) -> bool:
    """Whether ``method`` reads the true reward of episode-ending look-ahead steps (``eval.lookahead_peek_reward``)."""
    return method == "qnet_lookahead" and config.eval.lookahead_peek_reward


def row_meta(env_name: str, split: str, method: str, n: int, config: Config, max_steps: int,
             qmodel: str | None) -> dict[str, Any]:
    """The fields every row of this run starts with (its resume key and configuration fingerprint).

    With ``eval.reuse_only`` (nothing runs) on a machine without the clone, whose identity is read from its
    folder, the agent is :data:`~qlib.episode_store.ANY`: the rows on disk are reported whichever clone made
    them (each was checked against its file's rows when it was written)."""
    from qlib.export import CloneNotFoundError, agent_identity, model_label

    try:
        agent = agent_identity(config.policy, env_name)
    except CloneNotFoundError:
        if not config.eval.reuse_only:
            raise
        agent = ANY
    return {"env": env_name, "split": split, "method": method, "n": n, "seed": config.seed,
            "policy": model_label(config.policy.model), "agent": agent,
            "prompt": config.policy.prompt, "icl": config.policy.icl,
            "temperature": 0.0 if method == "greedy" else config.policy.temperature, "max_steps": max_steps,
            "qmodel": qmodel}


def run_tasks(runner: Runner, todo: list[int], meta: dict[str, Any], done: dict[int, dict], out: Any,
              workers: int = 1, env_factory: Callable[[], Environment] | None = None) -> int:
    """Run the remaining episodes (in ``workers`` threads: :func:`episode_rows`) with a progress bar,
    appending each row to ``out`` as it finishes; returns how many failed."""
    from tqdm.auto import tqdm

    failed = 0
    workers = min(workers, len(todo))
    desc = f"{meta['env']}/{meta['method']}" + (f" x{workers}" if workers > 1 else "")
    with tqdm(total=len(todo), desc=desc, unit="ep") as bar:
        for row in episode_rows(runner, todo, meta, workers, env_factory):
            if out is not None:
                append_jsonl(out, row)
            if is_result(row):
                done[row["task_id"]] = row
            else:
                failed += 1
            bar.update(1)
            rewards = [r["reward"] for r in done.values()]
            bar.set_postfix(reward=f"{sum(rewards) / max(len(rewards), 1):.3f}", errors=failed, refresh=False)
    return failed


def episode_rows(runner: Runner, todo: list[int], meta: dict[str, Any], workers: int,
                 env_factory: Callable[[], Environment] | None) -> Iterator[dict[str, Any]]:
    """The rows of ``todo``'s episodes as they finish: one after another in this thread, or in ``workers``
    threads, each with its own :class:`Runner` (an environment from ``env_factory``) and the policy and Q
    model shared thread-safely."""
    if workers <= 1:
        for task_id in todo:
            yield run_task(runner, task_id, meta)
        return
    policy = shareable(runner.policy)
    scorer = runner.q_model
    if scorer is not None and not getattr(scorer, "thread_safe", False):
        scorer = SharedScorer(scorer)
    idle: queue.SimpleQueue[Runner] = queue.SimpleQueue()
    for i in range(workers):
        idle.put(dataclasses.replace(runner, env=runner.env if i == 0 else env_factory(), policy=policy,
                                     q_model=scorer))

    def one(task_id: int) -> dict[str, Any]:
        own = idle.get()
        try:
            return run_task(own, task_id, meta)
        finally:
            idle.put(own)

    torch_threads = torch_threads_per_worker(workers) if scorer is not None else contextlib.nullcontext()
    with torch_threads, ThreadPoolExecutor(workers, thread_name_prefix="episode") as pool:
        futures = [pool.submit(one, t) for t in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:  # an error or an abandoned loop: the episodes not started yet are not run
            for future in futures:
                future.cancel()


@contextlib.contextmanager
def torch_threads_per_worker(workers: int) -> Iterator[None]:
    """torch's intra-op threads divided between ``workers`` (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    parser.add_argument("--env", required=True, choices=env_names())
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--method", required=True, nargs="+", choices=METHODS, metavar="M",
                        help=f"one or more of: {', '.join(METHODS)} (bon is an oracle baseline)")
    parser.add_argument("--qmodel", default=None, help="Q-value model directory (needed by q / qnet / qnet_lookahead)")
    parser.add_argument("--n", type=int, default=None,
                        help="candidates per step / BoN trajectories (default: eval.n_candidates)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--limit", type=int, default=None, help="first K tasks (default: <env>.<split>_tasks)")
    chosen.add_argument("--tasks", type=task_spec_argument, default=None, metavar="IDS",
                        help="task ids of the split, comma-separated ids and inclusive ranges, e.g. 0-49,70,90-99 "
                             "(instead of --limit)")
    parser.add_argument("--out", default=None,
                        help="resumable JSONL results file (default: runs/<profile>/episodes/cli_<split>_<env>.jsonl)")


def run(args: argparse.Namespace) -> int:
    """``python -m qlib evaluate``: run each ``--method`` in turn, then print the summary tables."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = load_config(args.profile, parse_overrides(args.set))
    methods = list(dict.fromkeys(args.method))
    scored = any(m in SCORED for m in methods)
    if scored and not args.qmodel:
        print("error: --qmodel is required for methods q / qnet / qnet_lookahead", file=sys.stderr)
        return 2
    from qlib.envs import make

    env = make(args.env, config)
    try:
        select_tasks(env, args.env, args.split, config, args.limit, args.tasks)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    policy = worker_policy(args.env, config, config.eval.workers)
    q_model = load_scorer(args.qmodel) if scored else None
    from qlib.workbook.layout import run_paths

    out = args.out or run_paths(config.profile, create=False).episodes(f"cli_{args.split}", args.env)
    rows, expected = [], 0
    for method in methods:
        expected += len(select_tasks(env, args.env, args.split, config, args.limit, args.tasks))
        rows += evaluate(args.env, args.split, method, config=config, policy=policy, q_model=q_model,
                         n=args.n, limit=args.limit, tasks=args.tasks, out=out, env=env,
                         env_factory=functools.partial(make, args.env, config),
                         qmodel_name=os.path.normpath(args.qmodel) if args.qmodel else None)
    print_summary(rows, methods, config)
    print(f"results: {out} ({len(rows)}/{expected} episodes)")
    return 0 if len(rows) == expected else 1


def load_scorer(path: str) -> QModel:
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
