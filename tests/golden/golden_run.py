"""A small deterministic end-to-end run (trees -> pairs -> episodes) whose outputs are pinned by sha256.

Recorded before the architecture refactor (issue 11) so that the refactor can prove it changed no
behaviour: the same seed must give byte-identical trees, pair files and episode rows. No LLM is
involved: a seeded scripted policy picks among the environment's valid actions (free-text arguments
from words of the last observation) and a hash scorer plays the Q model, so the run takes seconds
and exercises the real environments, the prompt renderer, the parser, search, pairs and evaluation.

``python tests/golden/golden_run.py --record`` rewrites ``hashes.json``; the test compares.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
HASHES = HERE / "hashes.json"
ENVS = ("webshop", "hotpotqa", "toy")
METHODS = ("greedy", "sampled", "bon", "q", "random_pick", "logprob_pick")
_WORD = re.compile(r"[A-Za-z]{3,}")


class ScriptedPolicy:
    """Seeded random turns over the current action space (deterministic given ``seed``)."""

    thread_safe = True

    def __init__(self, env_name: str):
        self.env_name = env_name

    def propose(self, messages, n, *, temperature=None, action_space=None, seed=None):
        from qlib.agent.candidates import make_candidate

        rng = random.Random(seed if not temperature else seed)
        words = _WORD.findall(messages[-1]["content"])[:60] or ["nothing"]
        out = []
        for _ in range(n):
            verb, choices = rng.choice(sorted(action_space.verbs.items(), key=lambda kv: kv[0]))
            argument = rng.choice(sorted(choices)) if choices else " ".join(rng.sample(words, min(3, len(words))))
            raw = f"Thought: I pick {verb} number {rng.randrange(100)}.\nAction: {verb}[{argument}]"
            cand = make_candidate(raw, None if self.env_name == "toy" else self.env_name,
                                  logprob=-0.01 * len(raw), n_tokens=len(raw) // 4, prompt_tokens=7)
            out.append(cand)
        return out


class HashScorer:
    """A deterministic stand-in Q model: the score of a turn is a hash of the latest observation (the
    last prompt message) and the turn."""

    scored_tokens = 0
    path = "hash-scorer"

    def score(self, messages, candidates):
        key = json.dumps(messages[-1], sort_keys=True)
        return [int(hashlib.sha256((key + c).encode()).hexdigest()[:8], 16) / 2**32 for c in candidates]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


#: keys added to tree files after the recording (issue 13's options and counters): configuration and
#: bookkeeping, not behaviour, so they are left out of the comparison
LATER_SETTINGS = ("backup_expansion_terminals", "select_terminals", "icl")
LATER_ROW_FIELDS = ("wall_s", "icl", "agent")
LATER_STATS = ("expansions", "exhausted")
#: the options that keep the search and pairs as they were when the hashes were recorded
LEGACY = {"mcts.backup_expansion_terminals": False, "mcts.select_terminals": True,
          "pairs.from_unsuccessful_trees": True, "pairs.rollout_best_path": True,
          # the policy the profiles used before behaviour cloning (issue 12): the base model, few-shot prompt
          "policy.model": "smollm2-135m", "policy.icl": True}


def _tree_text(path: Path) -> str:
    tree = json.loads(path.read_text())
    tree["stats"].pop("seconds", None)
    for key in LATER_STATS:
        tree["stats"].pop(key, None)
    for key in LATER_SETTINGS:
        tree["settings"].pop(key, None)
    tree.pop("config", None)  # the config snapshot changes shape with the config library, not behaviour
    tree.pop("agent", None)  # the searching clone's identity: bookkeeping added after the recording
    return json.dumps(tree, sort_keys=True, ensure_ascii=False)


def _rows_text(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        for key in LATER_ROW_FIELDS:
            row.pop(key, None)
    return "\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows)


def run(out: Path) -> dict[str, str]:
    """Run the golden pipeline under ``out``; return {artifact name: sha256 of its canonical text}."""
    from qlib.collect import collect
    from qlib.config import load_config
    from qlib.testing.toy import ToyPolicy
    from qlib.evaluate import evaluate
    from qlib.pairs import build_pairs

    config = load_config("smoke", {
        "mcts.iterations": 4, "mcts.n_candidates": 3, "webshop.max_steps": 4, "hotpotqa.max_steps": 4,
        "webshop.train_tasks": 2, "hotpotqa.train_tasks": 2, "eval.n_candidates": 3, **LEGACY,
    })
    hashes: dict[str, str] = {}
    for env_name in ENVS:
        toy = env_name == "toy"
        policy = ToyPolicy() if toy else ScriptedPolicy(env_name)
        trees = out / "trees" / env_name
        collect(env_name, "train", config=config, out_dir=trees, limit=2 if toy else None, policy=policy)
        for path in sorted(trees.glob("*.json")):
            hashes[f"tree/{path.name}"] = _digest(_tree_text(path))
        for level in ("step", "trajectory", "qnet"):
            rows = build_pairs(trees, level, config)
            hashes[f"pairs/{env_name}_{level}"] = _digest(json.dumps(rows, sort_keys=True, ensure_ascii=False))
        episodes = out / "episodes" / f"{env_name}.jsonl"
        for method in METHODS[:-1] if toy else METHODS:  # the toy policy has no log-probabilities
            evaluate(env_name, "test", method, config=config, policy=policy, limit=2, out=episodes,
                     q_model=HashScorer() if method == "q" else None)
        hashes[f"episodes/{env_name}"] = _digest(_rows_text(episodes))
    return hashes


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        got = run(Path(tmp))
    if "--record" in sys.argv:
        HASHES.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    print(json.dumps(got, indent=1, sort_keys=True))
