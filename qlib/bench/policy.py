"""Policy benchmark: valid-action rates with/without constraints, n=5 vs n=1 cost, tokens/s per backend.

``bench_policy(n_tasks=20)`` runs the embedded model (llamacpp, T=1.0, n=5) on the first step of the
first ``n_tasks`` WebShop and HotPotQA test tasks and returns a flat dict:

* ``{env}_valid_constrained`` / ``{env}_valid_free`` — share of candidates that parse to a valid
  action the step's ActionSpace allows, with ``constrain_actions`` on / off;
* ``{env}_cost_ratio_n5_n1`` — wall time of one n=5 step over one n=1 step, both from the same KV
  state (the previous task's prompt cached, so the shared instruction + examples are reused; mean of
  5 tasks); ``..._cold`` — the same from an empty cache (whole prompt evaluated; 3 tasks);
* ``llamacpp_tokens_per_s`` / ``hf_tokens_per_s`` — generated tokens per wall second of constrained
  n=5 steps (prompt evaluation included), hf on ``hf_tasks`` tasks per env.
"""
from __future__ import annotations

import time
from typing import Any

from tqdm import tqdm

from qlib.agent.backends import make_policy
from qlib.agent.candidates import allowed
from qlib.agent.prompts import render_messages
from qlib.envs.registry import env_names



def _first_steps(env_name: str, n_tasks: int) -> list[tuple[list[dict], Any]]:
    """(messages, action space) of the first step of the first ``n_tasks`` test tasks."""
    from qlib import envs

    env = envs.make(env_name)
    steps = []
    for task in env.task_ids("test")[:n_tasks]:
        observation = env.reset(task)
        steps.append((render_messages(env_name, observation, []), env.valid_actions()))
    return steps


def _run(policy: Any, env_name: str, steps: list, n: int, *, constrain: bool, desc: str) -> dict[str, float]:
    """Valid share, generated tokens and wall seconds of ``n`` samples on each step."""
    policy.config.constrain_actions = constrain
    policy.env_name = env_name
    good = total = tokens = 0
    start = time.perf_counter()
    for i, (messages, space) in enumerate(tqdm(steps, desc=desc, leave=False)):
        cands = policy.propose(messages, n, temperature=1.0, action_space=space, seed=i)
        good += sum(allowed(c, space) for c in cands)
        total += len(cands)
        tokens += sum(c.n_tokens for c in cands)
    return {"valid": good / max(total, 1), "tokens": tokens, "seconds": time.perf_counter() - start}


COLD = [{"role": "user", "content": "-"}]  # a prompt that shares nothing with the tasks'


def _cost_ratio(policy: Any, env_name: str, steps: list, n: int, *, cold: bool = False) -> float:
    """Mean over tasks of time(n samples) / time(1 sample), each from the same KV state: the previous
    task's prompt cached (instruction + examples reused), or ``cold`` (nothing reusable)."""
    policy.config.constrain_actions = True
    policy.env_name = env_name
    ratios = []
    for i in tqdm(range(1, len(steps)), desc=f"{env_name} n={n} vs 1{' cold' if cold else ''}", leave=False):
        (messages, space), (previous, _) = steps[i], steps[i - 1]
        times = []
        for k in (1, n):
            policy.warm(COLD if cold else previous)
            start = time.perf_counter()
            policy.propose(messages, k, temperature=1.0, action_space=space, seed=i)
            times.append(time.perf_counter() - start)
        ratios.append(times[1] / times[0])
    return sum(ratios) / max(len(ratios), 1)


def bench_policy(n_tasks: int = 20, *, n: int = 5, hf_tasks: int = 3, config: Any = None,
                 progress: bool = True) -> dict[str, float]:
    """Run the benchmark (see module doc) and return a flat dict of numbers."""
    from qlib.config import load_config

    base = (config or load_config()).policy.model_copy(update={"temperature": 1.0})
    say = print if progress else (lambda *a, **k: None)
    results: dict[str, float] = {"n_tasks": n_tasks, "n": n, "max_tokens": base.max_tokens}
    llama = make_policy(base.model_copy(update={"backend": "llamacpp"}))
    gen_tokens = gen_seconds = 0.0
    for env_name in env_names():
        steps = _first_steps(env_name, n_tasks)
        on = _run(llama, env_name, steps, n, constrain=True, desc=f"{env_name} constrained")
        off = _run(llama, env_name, steps, n, constrain=False, desc=f"{env_name} free")
        results[f"{env_name}_valid_constrained"] = on["valid"]
        results[f"{env_name}_valid_free"] = off["valid"]
        results[f"{env_name}_cost_ratio_n{n}_n1"] = _cost_ratio(llama, env_name, steps[:6], n)
        results[f"{env_name}_cost_ratio_n{n}_n1_cold"] = _cost_ratio(llama, env_name, steps[:4], n, cold=True)
        gen_tokens += on["tokens"]
        gen_seconds += on["seconds"]
        say(f"[policy] {env_name}: valid {on['valid']:.1%} constrained / {off['valid']:.1%} free, n={n}/n=1 "
            f"cost x{results[f'{env_name}_cost_ratio_n{n}_n1']:.2f} (cold x{results[f'{env_name}_cost_ratio_n{n}_n1_cold']:.2f})")
    results["llamacpp_tokens_per_s"] = gen_tokens / max(gen_seconds, 1e-9)
    say(f"[policy] llamacpp: {results['llamacpp_tokens_per_s']:.1f} generated tokens/s (n={n}, constrained)")
    if hf_tasks:
        hf = make_policy(base.model_copy(update={"backend": "hf"}))
        tokens = seconds = 0.0
        for env_name in env_names():
            run = _run(hf, env_name, _first_steps(env_name, hf_tasks), n, constrain=True, desc=f"hf {env_name}")
            tokens, seconds = tokens + run["tokens"], seconds + run["seconds"]
            results[f"hf_{env_name}_valid_constrained"] = run["valid"]
        results["hf_tokens_per_s"] = tokens / max(seconds, 1e-9)
        say(f"[policy] hf: {results['hf_tokens_per_s']:.1f} generated tokens/s (n={n}, constrained)")
    return results


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(bench_policy(int(sys.argv[1]) if len(sys.argv) > 1 else 20), indent=2))
