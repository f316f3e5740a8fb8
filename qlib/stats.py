"""Statistics over evaluation rows: mean reward and success rate with bootstrap CIs, paired differences.

Rows are the dicts of :mod:`qlib.evaluate` (error rows are ignored). Replicate rows of one task
(e.g. several seeds in one file) are first averaged per task, so the task is the resampling unit.
CIs are percentile bootstraps (``scipy.stats.bootstrap``, seeded, so results are reproducible); a
sample with a single value or all-equal values gets the degenerate interval ``[x, x]``.
Paired differences resample the per-task difference vector over the tasks both methods finished,
which removes the between-task variance that unpaired CIs carry.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

ORACLE_METHODS = ("bon",)  # read the environment's reward: not single-trial agents
TASK_KEY = ["env", "split", "method", "n", "task_id"]


def mean_ci(
    values: Iterable[float], *, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean and its percentile-bootstrap CI; NaNs for an empty sample."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):
        return mean, mean, mean
    from scipy.stats import bootstrap

    res = bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=confidence,
                    method="percentile", rng=np.random.default_rng(seed))
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


EXTRA_METRICS = ("f1",)  # optional per-episode metrics, summarised when rows carry them


def per_task(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One line per (env, split, method, n, task_id): mean ``reward``, ``success`` (and ``f1``) over replicates."""
    results = [r for r in rows if "error" not in r and r.get("reward") is not None]
    if not results:
        return pd.DataFrame(columns=TASK_KEY + ["reward", "success"])
    frame = pd.DataFrame(
        [{**{k: r.get(k) for k in TASK_KEY}, "reward": float(r["reward"]), "success": float(bool(r["success"])),
          **{m: float(r[m]) for m in EXTRA_METRICS if r.get(m) is not None}}
         for r in results]
    )
    frame["split"] = frame["split"].fillna("")
    metrics = ["reward", "success"] + [m for m in EXTRA_METRICS if m in frame]
    return frame.groupby(TASK_KEY, sort=False, as_index=False)[metrics].mean()


def summarise(
    rows: Iterable[dict[str, Any]], *, resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """Per (env, split, method, n): tasks, mean reward and success rate with bootstrap CIs.

    ``oracle`` marks Best-of-N, which selects with the environment's reward. Rows that carry an extra
    metric (``f1``: HotPotQA answer F1, see :func:`qlib.experiments.add_row_metrics`) add its mean and CI.
    """
    tasks = per_task(rows)
    extras = [m for m in EXTRA_METRICS if m in tasks]
    lines = []
    for (env, split, method, n), group in tasks.groupby(["env", "split", "method", "n"], sort=False):
        group = group.sort_values("task_id", kind="stable")  # the CI of a set of tasks, whatever order they finished in
        line: dict[str, Any] = {"env": env, "split": split, "method": method, "n": int(n), "tasks": len(group)}
        for col in ("reward", "success", *extras):
            line[col], line[f"{col}_lo"], line[f"{col}_hi"] = mean_ci(
                group[col].dropna(), resamples=resamples, seed=seed, confidence=confidence)
        line["oracle"] = method in ORACLE_METHODS
        lines.append(line)
    columns = ["env", "split", "method", "n", "tasks", "reward", "reward_lo", "reward_hi",
               "success", "success_lo", "success_hi", "oracle"]
    columns[-1:-1] = [f"{m}{s}" for m in extras for s in ("", "_lo", "_hi")]
    return pd.DataFrame(lines, columns=columns)


def labels(tasks: pd.DataFrame) -> pd.Series:
    """``method``, or ``method@n`` where one env/split holds that method with several ``n``."""
    several = tasks.groupby(["env", "split", "method"])["n"].transform("nunique") > 1
    plain = tasks["method"].astype(str)
    return plain.where(~several, plain + "@" + tasks["n"].astype(str))


def resolve(name: str, available: Sequence[str]) -> str | None:
    """The label ``name`` refers to (exact, or a bare method with one ``n``); None if absent."""
    if name in available:
        return name
    matches = [a for a in available if a.split("@")[0] == name]
    if len(matches) > 1:
        raise ValueError(f"{name!r} is ambiguous ({', '.join(matches)}); name one, e.g. {matches[0]!r}")
    return matches[0] if matches else None


def paired_differences(
    rows: Iterable[dict[str, Any]],
    baseline: str = "q",
    others: Sequence[str] | None = None,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """``baseline − other`` in mean reward and success rate over the tasks both finished, with paired CIs.

    Methods are named by label (``q``, or ``q@5`` when a file holds ``q`` with several ``n``);
    ``others`` defaults to every other method of the same env/split.
    """
    tasks = per_task(rows)
    tasks["label"] = labels(tasks) if len(tasks) else pd.Series(dtype=str)
    lines = []
    for (env, split), group in tasks.groupby(["env", "split"], sort=False):
        available = list(dict.fromkeys(group["label"]))
        base = resolve(baseline, available)
        if base is None:
            continue
        wanted = [resolve(o, available) for o in others] if others is not None else available
        for other in [o for o in wanted if o is not None and o != base]:
            lines.append({"env": env, "split": split, "baseline": base, "other": other,
                          **paired_line(group, base, other, resamples, seed, confidence)})
    columns = ["env", "split", "baseline", "other", "tasks", "reward_diff", "reward_diff_lo",
               "reward_diff_hi", "success_diff", "success_diff_lo", "success_diff_hi"]
    columns += [f"{m}_diff{s}" for m in EXTRA_METRICS if m in tasks for s in ("", "_lo", "_hi")]
    return pd.DataFrame(lines, columns=columns)


def paired_line(group: pd.DataFrame, base: str, other: str, resamples: int, seed: int,
                confidence: float) -> dict[str, Any]:
    a = group[group["label"] == base].set_index("task_id")
    b = group[group["label"] == other].set_index("task_id")
    common = a.index.intersection(b.index).sort_values()  # task order: the CI does not depend on the file's order
    line: dict[str, Any] = {"tasks": len(common)}
    for col in ("reward", "success", *[m for m in EXTRA_METRICS if m in group]):
        diff = a.loc[common, col].to_numpy() - b.loc[common, col].to_numpy()
        diff = diff[~np.isnan(diff)]
        line[f"{col}_diff"], line[f"{col}_diff_lo"], line[f"{col}_diff_hi"] = mean_ci(
            diff, resamples=resamples, seed=seed, confidence=confidence)
    return line


def action_agreement(reference: Iterable[dict[str, Any]], other: Iterable[dict[str, Any]], *,
                     resamples: int = 10_000, seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """How alike two runs of one agent are over the tasks both finished (e.g. the released clone's greedy rows
    and a retrained twin's): ``tasks``, ``same_actions`` (tasks whose executed action sequences are identical),
    each run's mean reward with its CI, and ``reference − other`` with its paired CI. One row per task each."""
    ref = {r["task_id"]: r for r in reference if "error" not in r and r.get("reward") is not None}
    oth = {r["task_id"]: r for r in other if "error" not in r and r.get("reward") is not None}
    common = sorted(set(ref) & set(oth))

    def actions(row: dict[str, Any]) -> list[Any]:
        return [step.get("action") for step in row.get("trajectory", [])]

    line: dict[str, Any] = {"tasks": len(common), "same_actions": sum(actions(ref[t]) == actions(oth[t]) for t in common)}
    for name, rows in (("reference", ref), ("other", oth)):
        line[name], line[f"{name}_lo"], line[f"{name}_hi"] = mean_ci(
            [float(rows[t]["reward"]) for t in common], resamples=resamples, seed=seed, confidence=confidence)
    diff = [float(ref[t]["reward"]) - float(oth[t]["reward"]) for t in common]
    line["reward_diff"], line["reward_diff_lo"], line["reward_diff_hi"] = mean_ci(
        diff, resamples=resamples, seed=seed, confidence=confidence)
    return line


def format_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """Text table with ``mean [lo, hi]`` cells for every ``x``/``x_lo``/``x_hi`` column triple."""
    if frame.empty:
        return "(no results)"
    shown = frame.copy()
    for col in [c for c in frame.columns if f"{c}_lo" in frame.columns and f"{c}_hi" in frame.columns]:
        shown[col] = [f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
                      for m, lo, hi in zip(frame[col], frame[f"{col}_lo"], frame[f"{col}_hi"])]
        shown = shown.drop(columns=[f"{col}_lo", f"{col}_hi"])
    return shown.to_string(index=False)
