"""Stage 1: collect MCTS trees over a task list (``python -m qlib collect``).

:func:`collect` runs :func:`qlib.mcts.search_task` on every task of a split and writes one tree file
per task (schema in :mod:`qlib.mcts`) into ``out_dir``:

* **resume**: a task whose tree file exists is skipped; files are written atomically when a task
  finishes, and temp files left by a killed run are removed at start (only those whose writer
  process is gone), so a killed-and-restarted collection gives the same trees as an uninterrupted one;
* **tasks**: ``env.task_ids(split)``, the first ``limit`` of them (default: the config's
  ``{split}_tasks`` count for WebShop/HotPotQA, all for other envs) from the config's ``train_start`` on
  for the train split, then shard ``i/k`` takes ``tasks[i::k]``;
* **workers**: tasks run in ``workers`` threads (default ``config.mcts.workers``), each with its own
  environment and, for the local backends, its own model with a share of ``policy.n_threads``
  (:class:`qlib.workers.PolicyPerThread`); a given policy without a true ``thread_safe`` attribute is shared behind a lock;
* **failures**: an exception in a task is logged and the task retried ``retries`` times; a task that
  still fails is appended to ``{out_dir}/failures.jsonl`` (and retried by the next run, as it has no
  tree). ``KeyboardInterrupt`` and other non-``Exception`` errors stop the collection: pending tasks
  are cancelled and the searches still running in other threads stop before their next iteration,
  without writing a tree.

Each task's search seed depends only on ``config.seed``, the env name and the task id, so trees do
not depend on the worker count, the shard or the order of tasks.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from qlib import mcts
from qlib.envs.base import Environment
from qlib.envs.registry import env_names
from qlib.io import append_jsonl, read_jsonl, remove_stale_temp_files
from qlib.tree import tree_path, write_tree
from qlib.workers import shareable, worker_policy

logger = logging.getLogger(__name__)

FAILURES_FILE = "failures.jsonl"
DEFAULT_RETRIES = 2


@dataclass
class TaskOutcome:
    task_id: Any
    tree: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0


def default_env_factory(env_name: str, config: Any) -> Callable[[], Environment]:
    """``qlib.envs.make(env_name, config)`` (the registry's constructor with the config's step limit)."""
    from qlib.envs import make

    return lambda: make(env_name, config)


class MismatchedTreesError(RuntimeError):
    """Tree files in the output folder that another configuration produced (or that cannot be read)."""


#: what must agree between a finished tree and the run that would resume next to it
RUN_KEYS = ("seed", "policy.model", "policy.icl", "policy.prompt", "policy.max_tokens", "policy.top_p")


def run_identity(settings: dict[str, Any], config: dict[str, Any] | None, agent: str | None = None) -> dict[str, Any]:
    """The search settings, :data:`RUN_KEYS` and behaviour-cloned agent (:func:`qlib.export.agent_identity`;
    None for other models) of a tree, or of the run about to start."""
    identity = {**settings, "agent": agent}
    for key in RUN_KEYS:
        value: Any = config or {}
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        identity[key] = value
    return identity


def tree_agent(config: Any, env_name: str) -> str | None:
    """The identity of the behaviour-cloned agent searching (None for any other policy or config)."""
    from qlib.export import agent_identity

    policy = getattr(config, "policy", None)
    return agent_identity(policy, env_name) if policy is not None else None


def check_finished_trees(out: Path, env_name: str, done: Sequence[Any], expected: dict[str, Any]) -> None:
    """Refuse to resume next to trees of another configuration (or unreadable ones): one folder, one run."""
    for task_id in done:
        path = tree_path(out, env_name, task_id)
        try:
            tree = json.loads(path.read_text(encoding="utf-8"))
            found = run_identity(tree["settings"], tree.get("config"), tree.get("agent"))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise MismatchedTreesError(f"{path} is not a readable tree file ({type(err).__name__}: {err}); "
                                       "delete it to collect that task again") from None
        diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise MismatchedTreesError(f"{path} was collected with other settings ({shown}); collect into "
                                       "another folder or delete the old trees")


def select_tasks(
    all_tasks: Sequence[Any], limit: int | None, shard: tuple[int, int] | None
) -> list[Any]:
    """The first ``limit`` tasks, then shard ``i/k``'s share ``tasks[i::k]``."""
    tasks = list(all_tasks)[: limit if limit is not None else None]
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard {index}/{count}: need 0 <= i < k")
        tasks = tasks[index::count]
    return tasks


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/k"`` → ``(i, k)``."""
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise ValueError(f"--shard expects i/k (e.g. 0/4), got {text!r}") from err
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= i < k")
    return index, count


def collect(
    env_name: str,
    split: str,
    *,
    config: Any,
    out_dir: str | os.PathLike,
    limit: int | None = None,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
    policy: Any = None,
    env_factory: Callable[[], Environment] | None = None,
    render: mcts.Render | None = None,
    retries: int = DEFAULT_RETRIES,
) -> dict[str, Any]:
    """Collect one MCTS tree per task into ``out_dir``; returns a summary dict (see module docstring)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)
    make_env = env_factory or default_env_factory(env_name, config)
    first_env = make_env()
    tasks = select_tasks(config.default_tasks(env_name, split, first_env.task_ids(split), limit), None, shard)
    pending = [t for t in tasks if not tree_path(out, env_name, t).exists()]
    skipped = len(tasks) - len(pending)
    settings = asdict(mcts.search_settings(config, env_name, first_env))
    settings["max_depth"] = settings["max_depth"] or first_env.max_steps
    agent = tree_agent(config, env_name)
    check_finished_trees(out, env_name, [t for t in tasks if t not in pending],
                         run_identity(settings, config.to_dict(), agent))
    workers = max(1, workers or config.mcts.workers)
    logger.info("collect %s/%s: %d tasks, %d done already, %d workers -> %s",
                env_name, split, len(tasks), skipped, workers, out)
    summary: dict[str, Any] = {
        "env": env_name, "split": split, "out_dir": str(out), "tasks": len(tasks), "skipped": skipped,
        "done": 0, "failed": 0, "failed_tasks": [], "llm_calls": 0, "tokens": 0, "seconds": 0.0,
    }
    if not pending:
        return _finish(summary, [], 0.0)
    policy = policy if policy is not None else worker_policy(env_name, config, workers)
    if workers > 1:
        policy = shareable(policy)
    runner = _TaskRunner(env_name, split, config, out, policy, make_env, render, retries, first_env, agent)
    start = time.perf_counter()
    rewards: list[float] = []
    bar = tqdm(total=len(tasks), initial=skipped, desc=f"mcts {env_name}/{split}", unit="tree")
    try:
        for outcome in _run_all(runner, pending, workers):
            _account(summary, outcome, rewards)
            bar.update(1)
            if rewards:
                bar.set_postfix(best=f"{sum(rewards) / len(rewards):.2f}", failed=summary["failed"])
    finally:
        bar.close()
    return _finish(summary, rewards, time.perf_counter() - start)


def _account(summary: dict[str, Any], outcome: TaskOutcome, rewards: list[float]) -> None:
    if outcome.tree is None:
        summary["failed"] += 1
        summary["failed_tasks"].append(outcome.task_id)
        return
    stats = outcome.tree["stats"]
    summary["done"] += 1
    summary["llm_calls"] += stats["llm_calls"]
    summary["tokens"] += stats["tokens"]
    if outcome.tree["best_reward"] is not None:
        rewards.append(float(outcome.tree["best_reward"]))


def _finish(summary: dict[str, Any], rewards: list[float], seconds: float) -> dict[str, Any]:
    summary["seconds"] = round(seconds, 3)
    summary["trees_per_hour"] = round(3600 * summary["done"] / seconds, 2) if seconds > 0 else None
    summary["mean_best_reward"] = sum(rewards) / len(rewards) if rewards else None
    summary["success_rate"] = sum(r >= 1.0 for r in rewards) / len(rewards) if rewards else None
    return summary


def _run_all(runner: _TaskRunner, tasks: list[Any], workers: int) -> Iterator[TaskOutcome]:
    """Yield a :class:`TaskOutcome` per task (in completion order)."""
    if workers == 1:
        for task_id in tasks:
            yield runner(task_id)
        return
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mcts")
    try:
        futures: set[Future] = {executor.submit(runner, t) for t in tasks}
        while futures:
            done, futures = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()  # re-raises KeyboardInterrupt & co. from the worker
    finally:
        runner.stop.set()
        executor.shutdown(wait=True, cancel_futures=True)


class _TaskRunner:
    """Runs one task with retries in the calling thread, using that thread's own environment."""

    def __init__(
        self,
        env_name: str,
        split: str,
        config: Any,
        out: Path,
        policy: Any,
        make_env: Callable[[], Environment],
        render: mcts.Render | None,
        retries: int,
        first_env: Environment,
        agent: str | None = None,
    ):
        self.env_name, self.split, self.config, self.out, self.agent = env_name, split, config, out, agent
        self.policy, self.make_env, self.retries = policy, make_env, max(0, retries)
        self.render = render
        self.local = threading.local()
        self.spare = [first_env]
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def env(self) -> Environment:
        if not hasattr(self.local, "env"):
            with self.lock:
                self.local.env = self.spare.pop() if self.spare else self.make_env()
        return self.local.env

    def __call__(self, task_id: Any) -> TaskOutcome:
        outcome = TaskOutcome(task_id)
        for attempt in range(1, self.retries + 2):
            if self.stop.is_set():
                raise mcts.SearchCancelled(f"collection stopped before task {task_id}")
            outcome.attempts = attempt
            try:
                tree = mcts.search_task(self.env(), self.policy, task_id, config=self.config,
                                        env_name=self.env_name, render=self.render,
                                        should_stop=self.stop.is_set)
                tree["split"] = self.split
                tree["agent"] = self.agent
                write_tree(tree, self.out)
                outcome.tree, outcome.error = tree, None
                return outcome
            except Exception as err:  # noqa: BLE001 - any task error is retried, then recorded
                outcome.error = "".join(traceback.format_exception(err))
                logger.warning("task %s attempt %d/%d failed: %r", task_id, attempt, self.retries + 1, err)
        self._record_failure(outcome)
        return outcome

    def _record_failure(self, outcome: TaskOutcome) -> None:
        record = {
            "env": self.env_name, "split": self.split, "task_id": outcome.task_id,
            "attempts": outcome.attempts, "error": outcome.error,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        logger.error("task %s failed after %d attempts; recorded in %s",
                     outcome.task_id, outcome.attempts, self.out / FAILURES_FILE)
        with self.lock:
            append_jsonl(self.out / FAILURES_FILE, record)


def read_failures(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``{out_dir}/failures.jsonl`` (empty if none)."""
    path = Path(out_dir) / FAILURES_FILE
    return list(read_jsonl(path, tolerant=True)) if path.exists() else []


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``qlib collect`` (``--profile``/``--set`` come from the main CLI)."""
    parser.add_argument("--env", required=True, choices=env_names(), help="environment")
    parser.add_argument("--split", default="train", choices=("train", "valid", "test"), help="task split")
    parser.add_argument("--limit", type=int, default=None,
                        help="first K tasks of the split (default: the profile's task count)")
    parser.add_argument("--out", default=None, help="tree folder (default: runs/<profile>/trees/{env}_{split})")
    parser.add_argument("--workers", type=int, default=None, help="tasks in parallel (default: mcts.workers)")
    parser.add_argument("--shard", default=None, help="i/k: collect tasks[i::k] only")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries of a failing task")


def run(args: argparse.Namespace) -> int:
    """Run ``qlib collect``; prints the summary as JSON; exit code 1 if a task failed."""
    from qlib.config import load_config, parse_overrides

    config = load_config(getattr(args, "profile", None), parse_overrides(getattr(args, "set", None)))
    from qlib.workbook.layout import run_paths

    out = args.out or run_paths(config.profile, create=False).trees(args.env, args.split)
    summary = collect(
        args.env, args.split, config=config, out_dir=out, limit=args.limit, workers=args.workers,
        shard=parse_shard(args.shard), retries=getattr(args, "retries", DEFAULT_RETRIES),
    )
    print(json.dumps(summary, indent=2))
    return 1 if summary["failed"] else 0
