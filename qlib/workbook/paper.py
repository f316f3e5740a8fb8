"""The paper's numbers (Zhai et al. 2409.09345), looked up in the environment registry.

Each environment's :class:`qlib.envs.registry.EnvSpec` holds, in ``paper``, the numbers the paper reports
on it, keyed by experiment: ``table2`` (method -> reward), ``table2_transfer`` (policy -> (alone, with Q)),
``table3`` ((level, n) -> reward), ``table4`` (prompting strategy -> reward), ``fig4a`` (``ind`` ->
preference accuracy), ``fig5a`` (a finding in words). This module only reads them: one number
(:func:`paper_number`), a long table for merging into ours (:func:`paper_rows`, :func:`paper_table2`)
and the one-line note saved beside a table (:func:`paper_note`).
"""
from __future__ import annotations

from typing import Any

#: how each experiment is cited, and the setting behind the paper's numbers
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "table2": ("Table 2", "Phi-3-mini agent, Phi-1.5 Q model"),
    "table2_transfer": ("Table 2", "Q model guiding another policy: alone → with Q"),
    "table3": ("Table 3", "mean reward per preference-data level and candidates n"),
    "table4": ("Table 4", "GPT-4o-mini agent"),
    "fig4a": ("Fig. 4a", "in-distribution preference accuracy"),
    "fig5a": ("Fig. 5a", "reward vs step-level training pairs"),
    "fig5b": ("Fig. 5b", "preference data vs MCTS iterations"),
}

#: what the paper reports in words (no per-environment number)
FINDINGS: dict[str, str] = {
    "fig4a": "train ≈ 1; OOD slightly below IND",
    "fig5b": "both grow with m; pairs grow faster than successes",
}


def paper_number(experiment: str, env: str, key: Any = None) -> Any:
    """The paper's value of ``key`` in ``experiment`` on ``env`` (the whole entry without ``key``); None if absent."""
    from qlib.envs.registry import get_spec

    entry = get_spec(env).paper.get(experiment)
    if key is None or entry is None:
        return entry
    return entry.get(key) if isinstance(entry, dict) else None


def paper_rows(experiment: str) -> list[dict[str, Any]]:
    """``{"env", "key", "paper"}`` for every number the paper reports in ``experiment``."""
    from qlib.envs.registry import envs_with_paper

    rows = []
    for env in envs_with_paper(experiment):
        entry = paper_number(experiment, env)
        items = entry.items() if isinstance(entry, dict) else [(None, entry)]
        rows += [{"env": env, "key": key, "paper": value} for key, value in items]
    return rows


def paper_table2() -> dict[str, list[Any]]:
    """Table 2 as DataFrame columns ``env``, ``method``, ``paper`` (merge on env and method)."""
    rows = paper_rows("table2")
    return {"env": [r["env"] for r in rows], "method": [r["key"] for r in rows], "paper": [r["paper"] for r in rows]}


def paper_note(experiment: str) -> str:
    """The one-line citation saved with our table, e.g. ``Table 4 (GPT-4o-mini agent): <env> react 0.31, ...``."""
    label, setting = EXPERIMENTS[experiment]
    by_env: dict[str, list[str]] = {}
    for row in paper_rows(experiment):
        by_env.setdefault(row["env"], []).append(format_value(row["key"], row["paper"]))
    parts = [f"{env} " + ", ".join(values) for env, values in by_env.items()]
    if experiment in FINDINGS:
        parts.append(FINDINGS[experiment])
    return f"{label} ({setting}): " + "; ".join(parts)


def format_value(key: Any, value: Any) -> str:
    """``q 0.61``, ``step 5 0.61``, ``gpt-4o-mini 0.31→0.44`` or a finding in words."""
    name = " ".join(map(str, key)) if isinstance(key, tuple) else ("" if key is None else str(key))
    shown = "→".join(f"{v:.2f}" for v in value) if isinstance(value, tuple) else (
        f"{value:.2f}" if isinstance(value, float) else str(value))
    return f"{name} {shown}".strip()
