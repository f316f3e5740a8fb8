"""qlib.experiments analysis helpers: answer F1 of HotPotQA episodes, learned Q against MCTS values."""
from __future__ import annotations

import json

import pytest

from qlib import experiments as ex
from qlib.envs.hotpotqa.env import HotPotQAEnv


def hotpot_row(task_id, actions, done=True):
    steps = [{"action": a, "done": False} for a in actions]
    if steps:
        steps[-1]["done"] = done
    return {"env": "hotpotqa", "split": "test", "task_id": task_id, "method": "q", "n": 5, "reward": 0.0,
            "success": False, "trajectory": steps}


def test_answer_f1_scores_the_final_finish_against_the_gold_answer():
    env = HotPotQAEnv()
    gold = env.tasks[7].answer
    rows = ex.add_answer_f1([
        hotpot_row(7, ["search[x]", f"finish[{gold}]"]),
        hotpot_row(7, ["search[x]", "finish[certainly not the answer qqq]"]),
        hotpot_row(7, ["search[x]", "lookup[y]"], done=False),  # step limit, no answer
        {"env": "hotpotqa", "task_id": 7, "error": "boom"},
        {"env": "webshop", "task_id": 1, "reward": 0.5, "trajectory": []},
    ])
    assert [r.get("f1") for r in rows] == [1.0, 0.0, 0.0, None, None]
    assert gold == "Bodyguard"  # one token: a longer answer containing it gets partial credit
    partial = ex.add_answer_f1([hotpot_row(7, ["finish[the Bodyguard film]"])])[0]["f1"]
    assert partial == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))  # precision 1/2 ('the' is dropped), recall 1


class LengthScorer:
    """Q = number of characters of the candidate; records its calls."""

    def __init__(self):
        self.calls = []

    def score(self, messages, candidates):
        self.calls.append(len(candidates))
        return [float(len(c)) for c in candidates]


def test_tree_actions_are_scored_per_prompt_and_ranked_against_mcts(tmp_path):
    prompt_a = [{"role": "user", "content": "task A"}]
    prompt_b = [{"role": "user", "content": "task B"}]
    texts = ["a", "bbb", "cc", "dddd"]
    rows = [{"prompt": p, "completion": [{"role": "assistant", "content": t}], "q_raw": float(len(t)),
             "task_id": 1, "depth": 0} for p, t in zip([prompt_a, prompt_a, prompt_b, prompt_b], texts)]
    file = tmp_path / "qnet.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scorer = LengthScorer()
    frame = ex.q_values_of_tree_actions(scorer, file, "webshop")
    assert scorer.calls == [2, 2] and frame["q"].tolist() == [1.0, 3.0, 2.0, 4.0]
    agreement = ex.rank_agreement(frame)
    assert agreement.loc[0, "spearman_rho"] == pytest.approx(1.0) and agreement.loc[0, "actions"] == 4
    flipped = ex.rank_agreement(frame.assign(q_mcts=-frame.q_mcts))
    assert flipped.loc[0, "spearman_rho"] == pytest.approx(-1.0)
    assert ex.q_values_of_tree_actions(scorer, tmp_path / "missing.jsonl", "webshop").empty
    assert ex.q_values_of_tree_actions(scorer, file, "webshop", max_actions=1).shape[0] == 1
