"""``python -m qlib bench --only envs``: search latency and reset/step/snapshot costs of both envs."""
from __future__ import annotations

from typing import Any

GOALS_MS = {"webshop": 3.0, "hotpotqa": 5.0}


def bench_envs(n_queries: int = 1000) -> dict[str, Any]:
    """Flat dict: ``<env>.<measure>`` plus whether each p50/p95 meets its latency goal."""
    from qlib.envs.hotpotqa.bench import bench_search as hotpot_search
    from qlib.envs.webshop.bench import bench_search as webshop_search

    report: dict[str, Any] = {}
    for name, bench in (("webshop", webshop_search), ("hotpotqa", hotpot_search)):
        result = bench(n_queries=n_queries)
        report.update({f"{name}.{key}": value for key, value in result.items()})
        p95 = next((v for k, v in result.items() if "p95" in k), None)
        if p95 is not None:
            report[f"{name}.p95_within_goal"] = bool(p95 <= GOALS_MS[name])
    return report
