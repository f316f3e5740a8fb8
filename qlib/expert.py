"""Expert demonstrations for behaviour cloning (stage 0): scripted-expert trajectories of train tasks.

Each environment's registry entry names a *demonstrator* (``EnvSpec.demonstrator``) that reads the hidden
goal and returns the expert's ``(thought, action)`` turns. This module, written once for every
environment, plays those turns in a fresh episode, keeps the trajectories that reach reward 1, and renders
each one with the agent's own renderer (:func:`qlib.agent.prompts.render_conversation`, without in-context
examples — the cloned agent is run without them), so a demonstration is exactly a live episode's chat.

One JSONL row per demonstration, in trl's conversational format::

    {"env": "webshop", "split": "train", "task_id": 1500, "reward": 1.0, "steps": 5, "mistake": false,
     "thoughts": true, "actions": ["search[...]", ...], "messages": [{"role": "user", "content": ...}, ...]}

and a manifest ``<file>.manifest.json`` (tasks, rewards, skipped tasks, token counts, settings, seed).
Only the train split is ever used: :func:`write_demos` refuses any other.
"""
from __future__ import annotations

import json
import random
import statistics
from pathlib import Path
from typing import Any, Iterator, Sequence

from qlib.agent.parse import parse_turn
from qlib.agent.prompts import render_conversation
from qlib.envs.registry import get_spec, make
from qlib.io import atomic_write_text, write_jsonl
from qlib.qmodel.format import render, tokenize
from qlib.seeding import derive_seed

SPLIT = "train"


def play(env_name: str, env: Any, task_id: int, turns: Sequence[tuple[str, str]], *, thoughts: bool = True,
         variant: str = "react") -> dict[str, Any]:
    """Play the expert's ``turns`` from ``env.reset(task_id)``; the row of the trajectory (see module doc).

    Every turn is written in the canonical layout (``Thought: …`` + the env's separator + the action), so
    it parses back to the same action; an invalid turn is a bug in the demonstrator (ValueError)."""
    separator = get_spec(env_name).action_separator
    obs0 = env.reset(task_id)
    history: list[tuple[str, str]] = []
    actions: list[str] = []
    reward, done = 0.0, False
    for thought, action in turns:
        parsed = parse_turn(f"Thought: {thought if thoughts else ''}{separator}{action}", env_name)
        if not parsed.valid:
            raise ValueError(f"{env_name} task {task_id}: the expert's turn {action!r} does not parse")
        result = env.step(parsed.action)
        history.append((parsed.text, result.observation))
        actions.append(parsed.action)
        reward, done = float(result.reward), result.done
        if done:
            break
    if not history:
        raise ValueError(f"{env_name} task {task_id}: the expert has no turns")
    messages = render_conversation(env_name, obs0, history[:-1], history[-1][0], variant=variant, icl=False)
    return {"env": env_name, "split": SPLIT, "task_id": task_id, "reward": reward, "steps": len(history),
            "done": done, "thoughts": thoughts, "actions": actions, "messages": messages}


def demonstrations(env_name: str, n: int, *, seed: int = 0, thoughts: bool = True, mistake_rate: float = 0.0,
                   max_steps: int | None = None, variant: str = "react") -> Iterator[dict[str, Any]]:
    """Rows of the first ``n`` train tasks whose expert trajectory reaches reward 1, in task order.

    A task the expert cannot solve within the step limit is yielded with ``"skipped": reason`` instead
    (so the manifest can count it). ``mistake_rate``: the share of demonstrations (drawn per task from
    ``seed``) with one injected mistake and its recovery."""
    spec = get_spec(env_name)
    env = make(env_name, **({"max_steps": max_steps} if max_steps else {}))
    kept = 0
    for task_id in env.task_ids(SPLIT):
        if kept >= n:
            return
        task_seed = derive_seed(seed, env_name, task_id, "demo")
        rng = random.Random(task_seed)
        mistake = rng.random() < mistake_rate
        turns = spec.demonstration(env, task_id, rng, mistake=mistake)
        if not turns:
            yield {"task_id": task_id, "skipped": "no readable search finds the target"}
            continue
        if mistake:  # injected only where the step limit leaves room for the recovery (the rng picks words, not steps)
            mistake = len(turns) > len(spec.demonstration(env, task_id, random.Random(task_seed), mistake=False))
        row = play(env_name, env, task_id, turns, thoughts=thoughts, variant=variant)
        row["mistake"] = mistake
        if row["reward"] < 1.0:
            yield {"task_id": task_id, "skipped": f"expert reward {row['reward']:.3f} < 1"}
            continue
        kept += 1
        yield row


def write_demos(path: str | Path, env_name: str, n: int, *, seed: int = 0, thoughts: bool = True,
                mistake_rate: float = 0.0, max_steps: int | None = None, tokenizer: Any = None,
                split: str = SPLIT) -> dict[str, Any]:
    """Write ``n`` demonstrations of ``env_name`` to ``path`` (JSONL) and its manifest; return the manifest.

    ``tokenizer`` (default: the embedded model's) counts the tokens of each rendered demonstration."""
    if split != SPLIT:
        raise ValueError(f"expert demonstrations come from the {SPLIT!r} split only, not {split!r}")
    from tqdm.auto import tqdm

    rows, skipped = [], []
    bar = tqdm(total=n, desc=f"{env_name} demos", unit="demo")
    for row in demonstrations(env_name, n, seed=seed, thoughts=thoughts, mistake_rate=mistake_rate,
                              max_steps=max_steps):
        if "skipped" in row:
            skipped.append(row)
            continue
        rows.append(row)
        bar.update(1)
    bar.close()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(rows, path)
    manifest = demo_manifest(rows, skipped, tokenizer, env_name=env_name, seed=seed, thoughts=thoughts,
                             mistake_rate=mistake_rate, max_steps=max_steps, requested=n)
    atomic_write_text(manifest_path(path), json.dumps(manifest, indent=2) + "\n")
    return manifest


def manifest_path(path: str | Path) -> Path:
    """``demos.jsonl`` -> ``demos.manifest.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".manifest.json")


def demo_manifest(rows: list[dict[str, Any]], skipped: list[dict[str, Any]], tokenizer: Any = None,
                  **settings: Any) -> dict[str, Any]:
    """Tasks, rewards, skipped tasks, turn and token counts of a demonstration set."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        from qlib.provision import smollm2_dir

        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    tokens = [len(tokenize(tokenizer, render(tokenizer, r["messages"], generation_prompt=False))) for r in rows]
    turn_tokens = [len(tokenize(tokenizer, m["content"])) for r in rows for m in r["messages"][3:]
                   if m["role"] == "assistant"]
    return {
        **settings, "split": SPLIT, "n": len(rows), "task_ids": [r["task_id"] for r in rows],
        "rewards": [r["reward"] for r in rows], "mistakes": sum(bool(r.get("mistake")) for r in rows),
        "skipped": [{"task_id": s["task_id"], "reason": s["skipped"]} for s in skipped],
        "steps_mean": statistics.fmean(r["steps"] for r in rows) if rows else 0.0,
        "tokens": {"total": sum(tokens), "mean": statistics.fmean(tokens) if tokens else 0.0,
                   "max": max(tokens, default=0)},
        "turn_tokens": {"mean": statistics.fmean(turn_tokens) if turn_tokens else 0.0,
                        "max": max(turn_tokens, default=0)},
    }
