"""The resumable store of episode rows: one JSONL file, one row per finished episode.

A row is keyed by ``RESULT_KEY`` (env, split, task, method, n, seed, prompt, icl, temperature); a resumed
run reuses the rows of its key and refuses a file whose rows were produced under another
configuration (``FINGERPRINT``: policy, the behaviour-cloned agent's identity, step limit, and the Q model
for scored methods). Rows are
appended and fsynced one at a time (:func:`qlib.io.append_jsonl`), so a crash never loses a finished
episode; an ``error`` row (an episode that raised) is not a result and is retried on the next run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from qlib.episodes import SCORED, FatalEvalError
from qlib.io import read_jsonl

RESULT_KEY = ("env", "split", "task_id", "method", "n", "seed", "prompt", "icl", "temperature")
FINGERPRINT = ("policy", "agent", "max_steps")  # must match between a file's rows and a resumed run
ANY = "*"  # a fingerprint value of a run that only reads (eval.reuse_only) and cannot know it: matches any row's


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All parseable rows of ``path`` (results and error rows); an unreadable line is skipped with a warning."""
    path = Path(path)
    return list(read_jsonl(path, tolerant=True)) if path.exists() else []


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """The result rows of ``path`` (error rows dropped) — what :func:`qlib.stats.summarise` takes."""
    return [r for r in read_rows(path) if is_result(r)]


def is_result(row: dict[str, Any]) -> bool:
    return "error" not in row and row.get("reward") is not None


def row_key(row: dict[str, Any]) -> tuple:
    return tuple(row.get(k) for k in RESULT_KEY)


def fingerprint_diff(row: dict[str, Any], meta: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fingerprint fields where ``row`` differs from the run ``meta``: {key: (row's, run's)}."""
    keys = FINGERPRINT + (("qmodel",) if row.get("method") in SCORED else ())
    return {k: (row.get(k), meta[k]) for k in keys if meta[k] != ANY and row.get(k) != meta[k]}


def shared_rows(sources: list[Path], meta: dict[str, Any], tasks: list[int]) -> dict[int, dict[str, Any]]:
    """Finished rows of this exact run (same key and fingerprint) in other episode files, keyed by task id:
    the same episode another notebook already ran (e.g. notebook 00's greedy cloned agent is Table 2's
    ``greedy``). A copy is marked ``copied_from`` (its compute is counted once, in its source)."""
    found: dict[int, dict[str, Any]] = {}
    wanted = {row_key({**meta, "task_id": t}): t for t in tasks}
    for source in sources:
        for row in load_results(source):
            task = wanted.get(row_key(row))
            if task is not None and task not in found and not fingerprint_diff(row, meta):
                found[task] = {**row, "copied_from": row.get("copied_from") or Path(source).name}
    return found


def check_fingerprint(done: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Refuse to resume into rows produced by a different policy/prompt/step limit/Q model."""
    for row in done:
        diff = fingerprint_diff(row, meta)
        if diff:
            raise FatalEvalError(f"the output file holds rows of another configuration {diff}; "
                                 "use another --out")


def resume(out: str | Path | None, meta: dict[str, Any], tasks: list[int]) -> dict[int, dict[str, Any]]:
    """Finished rows of ``out`` for this run's tasks, keyed by task id (checks the configuration)."""
    if out is None:
        return {}
    path = Path(out)  # rows are appended by qlib.io.append_jsonl, which mends a cut-off last line
    wanted = {row_key({**meta, "task_id": t}): t for t in tasks}
    done = {wanted[row_key(r)]: r for r in load_results(path) if row_key(r) in wanted}
    check_fingerprint(list(done.values()), meta)
    return done
