"""``python -m qlib bench``: speed goals as printed ratios (the last line is one JSON object).

All benchmark code lives in this package, one module per stage: ``envs`` (search latency of every
registered environment), ``policy`` (constrained decoding, n-vs-1 cost), ``mcts`` (trees per hour),
``qmodel`` (shared-prefix scoring, DPO seconds per pair), ``q_precision`` (the released Q model in fp32 vs
bf16 on recorded steps: speed and argmax agreement), ``clone`` (the behaviour-cloned agent's GGUF vs
the base GGUF, decode tokens/s), ``workers`` (1 worker x all threads vs 1 thread per worker: MCTS and
episodes)."""
from __future__ import annotations

import argparse
import importlib
import json
import time
from typing import Any, Callable

#: benchmark name -> "module:function" returning a flat dict of measurements
BENCHES: dict[str, str] = {
    "envs": "qlib.bench.envs:bench_envs",
    "policy": "qlib.bench.policy:bench_policy",
    "mcts": "qlib.bench.mcts:bench_mcts",
    "qmodel": "qlib.bench.qmodel:bench_qmodel",
    "q_precision": "qlib.bench.qmodel:bench_q_precision",
    "clone": "qlib.bench.clone:bench_clone",
    "workers": "qlib.bench.workers:bench_workers",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only these (repeatable)")


def resolve(spec: str) -> Callable[[], dict[str, Any]]:
    module_name, function_name = spec.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def run(args: argparse.Namespace) -> int:
    names = args.only or list(BENCHES)
    report: dict[str, Any] = {}
    for name in names:
        started = time.perf_counter()
        print(f"== bench {name}", flush=True)
        try:
            result = resolve(BENCHES[name])()
        except Exception as err:  # a missing stage or backend must not hide the other results
            result = {"error": f"{type(err).__name__}: {err}"}
        result["wall_s"] = round(time.perf_counter() - started, 2)
        for key, value in result.items():
            print(f"{name}.{key} = {value}", flush=True)
        report[name] = result
    print(json.dumps(report if len(names) > 1 else report[names[0]], sort_keys=True))
    return 0
