"""Preference pairs and Q*Agent targets from trees (qlib.pairs)."""
from __future__ import annotations

import argparse
import json

import pytest

from qlib import pairs
from qlib.config import load_config
from qlib.agent.prompts import render_messages
from qlib.testing.toy import ToyEnv, ToyPolicy
from qlib.mcts import search_task
from qlib.tree import write_tree

TASK = "Task 0: open doors."


def node(id, parent, depth, action, *, q, N=1, terminal=False, truncated=False, reward=0.0, rollout=False):
    return {
        "id": id, "parent": parent, "children": [], "depth": depth, "thought": f"t{id}", "action": action,
        "text": f"Thought: t{id}\nAction: {action}", "observation": f"obs{id}", "reward": reward, "N": N,
        "V": 0.0 if q is None else q, "q": q, "terminal": terminal, "truncated": truncated,
        "invalid": False, "parsed": True, "count": 1, "is_rollout": rollout, "iteration": 1,
    }


def hand_tree(task_id=0):
    """root ─ 1 go[a] (q .6) ─ 4 go[b] terminal 1 / 5 go[c] terminal 0 / 8 go[b] rollout terminal 1
            ├ 2 go[b] (q -.5) ─ 6 go[a] rollout, truncated (q -.5)
            ├ 3 go[c] (q .9)  ─ 9 go[a] rollout terminal .9
            └ 7 go[x] never visited (q null)"""
    nodes = [
        node(0, None, 0, "", q=None, N=9),
        node(1, 0, 1, "go[a]", q=0.6), node(2, 0, 1, "go[b]", q=-0.5), node(3, 0, 1, "go[c]", q=0.9),
        node(4, 1, 2, "go[b]", q=1.0, terminal=True, reward=1.0),
        node(5, 1, 2, "go[c]", q=0.0, terminal=True),
        node(6, 2, 2, "go[a]", q=-0.5, terminal=True, truncated=True, rollout=True),
        node(7, 0, 1, "go[x]", q=None, N=0),
        node(8, 1, 2, "go[b]", q=1.0, terminal=True, reward=1.0, rollout=True),
        node(9, 3, 2, "go[a]", q=0.9, terminal=True, reward=0.9, rollout=True),
    ]
    for n in nodes[1:]:
        nodes[n["parent"]]["children"].append(n["id"])
    return {"schema_version": 1, "env": "toy", "task_id": task_id, "task_observation": TASK, "root": 0,
            "nodes": nodes, "best_path": [0, 1, 4], "best_reward": 1.0, "stats": {},
            "settings": {"prompt_variant": "react"}, "config": None}


@pytest.fixture()
def tree_dir(tmp_path):
    folder = tmp_path / "trees"
    write_tree(hand_tree(), folder)
    return folder


def text(i):
    return [{"role": "assistant", "content": hand_tree()["nodes"][i]["text"]}]


def prompt(history):
    return render_messages("toy", TASK, history, icl=False)


def summary(rows):
    return [(r["depth"], r["chosen_id"], r["rejected_id"], r["q_chosen"], r["q_rejected"]) for r in rows]


def test_step_pairs_paper(tree_dir):
    rows = pairs.build_pairs(tree_dir, "step", load_config())
    # depth 0: path action 1 (.6) vs lowest sibling 2 (-.5); 7 has no estimate
    # depth 1: path action 4 (1.0) vs 5 (0.0); the rollout 8 repeats the chosen action -> not a rival
    assert summary(rows) == [(0, 1, 2, 0.6, -0.5), (1, 4, 5, 1.0, 0.0)]
    assert rows[0]["prompt"] == prompt([]) and rows[1]["prompt"] == prompt([(text(1)[0]["content"], "obs1")])
    assert rows[0]["chosen"] == text(1) and rows[0]["rejected"] == text(2)
    assert rows[1]["chosen"] == text(4) and rows[1]["rejected"] == text(5)
    assert all(r["level"] == "step" and r["variant"] == "paper" and r["tree_file"] == "toy_0.json" for r in rows)
    assert all(r["env"] == "toy" and r["task_id"] == 0 for r in rows)


def test_step_pairs_margin(tree_dir):
    assert summary(pairs.build_pairs(tree_dir, "step", load_config(), margin=1.05)) == [(0, 1, 2, 0.6, -0.5)]
    assert pairs.build_pairs(tree_dir, "step", load_config(), margin=1.2) == []


def test_step_pairs_official_variant(tree_dir):
    config = load_config(None, {"pairs.variant": "official"})
    rows = pairs.build_pairs(tree_dir, "step", config)
    # depth 0: max-Q sibling 3 (.9) vs min 2; depth 1: 4 and 8 tie at 1.0 -> earlier (4) vs 5
    assert summary(rows) == [(0, 3, 2, 0.9, -0.5), (1, 4, 5, 1.0, 0.0)]
    assert rows[0]["chosen"] == text(3) and rows[0]["variant"] == "official"


def test_no_pair_when_rejected_is_not_worse(tmp_path):
    tree = hand_tree()
    tree["nodes"][2]["q"] = tree["nodes"][3]["q"] = 0.6  # siblings as good as the path action
    tree["nodes"][5]["q"] = 1.0
    write_tree(tree, tmp_path)
    assert pairs.build_pairs(tmp_path, "step", load_config()) == []


def test_a_gap_of_rounding_noise_is_a_tie_not_a_pair(tmp_path):
    tree = hand_tree()
    # 13/28 as two running means reach it: equal values whose floats differ in the last bit
    tree["nodes"][1]["q"], tree["nodes"][2]["q"] = 0.4642857142857143, 0.46428571428571425
    tree["nodes"][3]["q"] = 0.3
    write_tree(tree, tmp_path)
    assert tree["nodes"][1]["q"] > tree["nodes"][2]["q"]
    # depth 0: 1 vs its lowest sibling 3 (2 ties with it and is not lower); no pair of 1 against 2
    assert summary(pairs.build_pairs(tmp_path, "step", load_config()))[0] == (0, 1, 3, 0.4642857142857143, 0.3)
    tree["nodes"][3]["q"] = 0.6
    write_tree(tree, tmp_path)
    assert [r["depth"] for r in pairs.build_pairs(tmp_path, "step", load_config())] == [1]


def test_trajectory_pairs(tree_dir):
    rows = pairs.build_pairs(tree_dir, "trajectory", load_config())
    assert summary(rows) == [(0, 4, 6, 1.0, -0.5)]  # best 4 (path 0-1-4) vs worst 6 (truncated, path 0-2-6)
    row = rows[0]
    assert row["prompt"] == prompt([])
    assert row["chosen"] == [
        {"role": "assistant", "content": text(1)[0]["content"]},
        {"role": "user", "content": "Observation: obs1"},
        {"role": "assistant", "content": text(4)[0]["content"]},
    ]
    assert row["rejected"] == [
        {"role": "assistant", "content": text(2)[0]["content"]},
        {"role": "user", "content": "Observation: obs2"},
        {"role": "assistant", "content": text(6)[0]["content"]},
    ]
    assert row["level"] == "trajectory"


def test_qnet_bellman_targets(tree_dir):
    rows = pairs.build_pairs(tree_dir, "qnet", load_config())
    # gamma .9: terminals keep their q; 1 = .9 * max(1, 0, 1); 2 = .9 * -.5; 3 = .9 * .9; 7 has no value
    raw = {1: 0.9, 2: -0.45, 3: 0.81, 4: 1.0, 5: 0.0, 6: -0.5, 8: 1.0, 9: 0.9}
    assert {r["node_id"]: r["q_raw"] for r in rows} == pytest.approx(raw)
    assert {r["node_id"]: r["q"] for r in rows} == pytest.approx({k: (v + 0.5) / 1.5 for k, v in raw.items()})
    by_id = {r["node_id"]: r for r in rows}
    assert by_id[4]["prompt"] == prompt([(text(1)[0]["content"], "obs1")]) and by_id[4]["completion"] == text(4)
    assert by_id[1]["prompt"] == prompt([]) and by_id[1]["depth"] == 0 and by_id[9]["is_rollout"]
    half = pairs.build_pairs(tree_dir, "qnet", load_config(), gamma=0.5)
    assert {r["node_id"]: r["q_raw"] for r in half}[3] == pytest.approx(0.45)


def test_qnet_single_value_tree_is_clipped(tmp_path):
    tree = hand_tree()
    tree["nodes"] = tree["nodes"][:2]
    tree["nodes"][0]["children"] = [1]
    tree["nodes"][1].update(terminal=True, q=1.0, reward=1.0)
    write_tree(tree, tmp_path)
    rows = pairs.build_pairs(tmp_path, "qnet", load_config())
    assert [(r["q"], r["q_raw"]) for r in rows] == [(1.0, 1.0)]


def test_jsonl_loads_with_datasets_and_pandas(tree_dir, tmp_path):
    import datasets
    import pandas as pd

    for level, n_rows, columns in [("step", 2, {"prompt", "chosen", "rejected"}),
                                   ("trajectory", 1, {"prompt", "chosen", "rejected"}),
                                   ("qnet", 8, {"prompt", "completion", "q", "q_raw"})]:
        rows = pairs.build_pairs(tree_dir, level, load_config())
        path = pairs.write_jsonl(rows, tmp_path / f"{level}.jsonl")
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
        assert len(ds) == n_rows and columns <= set(ds.column_names)
        assert ds[0]["prompt"][0] == {"role": "user", "content": rows[0]["prompt"][0]["content"]}
        frame = pd.read_json(path, lines=True)
        assert len(frame) == n_rows and columns <= set(frame.columns)
        assert frame.iloc[0]["prompt"] == rows[0]["prompt"]
        for row in rows:  # trl conversational format: lists of role/content messages, completion from the assistant
            for key in columns & {"prompt", "chosen", "rejected", "completion"}:
                assert all(set(m) == {"role", "content"} for m in row[key])
            for key in columns & {"chosen", "rejected", "completion"}:
                assert row[key][0]["role"] == "assistant" and row[key][-1]["role"] == "assistant"


def test_pairs_from_real_mcts_trees(tmp_path):
    config = load_config("smoke", {"mcts.iterations": 15, "mcts.n_candidates": 3, "mcts.early_stop": False})
    env = ToyEnv(max_steps=5, length=3)
    for task_id in range(4):
        write_tree(search_task(env, ToyPolicy(), task_id, config=config), tmp_path)
    step = pairs.build_pairs(tmp_path, "step", config)
    assert step and all(r["q_chosen"] > r["q_rejected"] and r["chosen"] != r["rejected"] for r in step)
    assert [r["task_id"] for r in step] == sorted(r["task_id"] for r in step)
    traj = pairs.build_pairs(tmp_path, "trajectory", config)
    assert 1 <= len(traj) <= 4
    qnet = pairs.build_pairs(tmp_path, "qnet", config)
    assert qnet and all(0.0 <= r["q"] <= 1.0 for r in qnet)


def test_pairs_cli(tree_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    pairs.add_arguments(parser)
    args = parser.parse_args(["--trees", str(tree_dir), "--out", str(tmp_path / "p.jsonl"), "--level", "step"])
    args.profile, args.set = None, ["pairs.variant=official"]
    assert pairs.run(args) == 0
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert [json.loads(line)["chosen_id"] for line in lines] == [3, 4]
    assert json.loads(capsys.readouterr().out)["rows"] == 2


def test_iteration_curve_ends_at_the_full_trees_pairs(tmp_path):
    from qlib.experiments import iteration_curve

    config = load_config("smoke", {"mcts.iterations": 8, "mcts.n_candidates": 3, "mcts.early_stop": False})
    env = ToyEnv(max_steps=5, length=3)
    for task_id in range(3):
        write_tree(search_task(env, ToyPolicy(), task_id, config=config), tmp_path)
    curve = iteration_curve(tmp_path, config, [1, 4, 8])
    full = pairs.build_pairs(tmp_path, "step", config)
    assert curve.step_pairs.iloc[-1] == len(full)
    assert list(curve.trees) == [3, 3, 3]
    assert curve.successful_trajectories.is_monotonic_increasing
