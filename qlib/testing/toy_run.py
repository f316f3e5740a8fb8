"""A tiny but real run of the toy environment in a profile's layout, for the explorer tests.

:func:`toy_run` writes MCTS trees (``trees/toy_train``), step pairs (``pairs/toy_train_step.jsonl``) and the
``test_methods`` episode file (``q``, ``random_pick`` and ``sampled`` rows; the ``q`` rows scored by
:class:`ActionScorer`) under ``paths.runs``, in about a second, so notebook 09 and the explorers can be
run on it with ``env="toy"``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from typing import Any

from qlib.testing.toy import ToyEnv, ToyPolicy

ENV = "toy"
OVERRIDES = {"mcts.iterations": 10, "mcts.n_candidates": 3, "mcts.early_stop": False, "seed": 3,
             "eval.n_candidates": 3}


class LogprobToyPolicy(ToyPolicy):
    """The toy policy with a log-probability per candidate (log of its letter's sampling weight)."""

    def propose(self, messages: Any, n: int, **kwargs: Any) -> list[Any]:
        total = sum(self.weights.values())
        return [replace(c, logprob=math.log(self.weights[c.action[3]] / total) - 0.1 * k)
                for k, c in enumerate(super().propose(messages, n, **kwargs))]


class ActionScorer:
    """A stand-in Q model that knows the toy's rule (:meth:`ToyEnv.solution`): the door's right letter scores
    high, a wrong ``a``/``b`` lower, the pit letter ``c`` lowest; a little less with every door still closed."""

    scored_tokens = 0

    def score(self, messages: Any, candidates: list[str]) -> list[float]:
        text = "\n".join(m["content"] for m in messages)
        task = int(re.findall(r"Task (\d+):", text)[-1])
        opened = len(re.findall(r"Door \d+ opened", text))
        right = "a" if (task + opened) % 2 == 0 else "b"
        values = {f"go[{right}]": 0.6 + 0.1 * opened, "go[c]": -0.4}
        return [values.get(c.rsplit("Action: ", 1)[-1], 0.1 + 0.05 * opened) for c in candidates]


def make_env() -> ToyEnv:
    return ToyEnv(max_steps=5, length=3, n_tasks=(3, 2, 3))


def toy_run(paths: Any) -> dict[str, Any]:
    """Trees, pairs and episodes of the toy environment under ``paths`` (a RunPaths); returns their paths."""
    from qlib import collect, pairs
    from qlib.config import load_config
    from qlib.evaluate import evaluate

    config = load_config("smoke", OVERRIDES)
    trees = paths.trees(ENV, "train")
    collect.collect(ENV, "train", config=config, out_dir=trees, policy=LogprobToyPolicy(), env_factory=make_env)
    pairs_file = paths.pairs(ENV, "step")
    pairs_file.parent.mkdir(parents=True, exist_ok=True)
    pairs_file.write_text("".join(json.dumps(r) + "\n" for r in pairs.build_pairs(trees, "step", config)))
    episodes = paths.episode_set("test_methods", ENV)
    episodes.parent.mkdir(parents=True, exist_ok=True)
    for method in ("q", "random_pick", "sampled"):
        evaluate(ENV, "test", method, config=config, policy=LogprobToyPolicy(), q_model=ActionScorer(),
                 env=make_env(), out=episodes, qmodel_name="toy-table")
    return {"trees": trees, "pairs": pairs_file, "episodes": episodes}
