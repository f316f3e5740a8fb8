"""``python -m qlib bench --only envs``: search latency of every registered environment."""
from __future__ import annotations

from typing import Any

from qlib.envs.registry import env_names, get_spec


def bench_envs(n_queries: int = 1000) -> dict[str, Any]:
    """Flat dict: ``<env>.<measure>`` plus whether each p95 meets the environment's latency goal."""
    report: dict[str, Any] = {}
    for name in env_names():
        spec = get_spec(name)
        if spec.search_bench is None:
            continue
        result = spec.run_search_bench(n_queries)
        report.update({f"{name}.{key}": value for key, value in result.items()})
        p95 = next((v for k, v in result.items() if "p95" in k), None)
        if p95 is not None and spec.search_goal_ms is not None:
            report[f"{name}.p95_within_goal"] = bool(p95 <= spec.search_goal_ms)
    return report
