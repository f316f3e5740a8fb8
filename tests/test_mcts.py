"""MCTS with step-level Q annotation (qlib.mcts) on the toy environment."""
from __future__ import annotations

import json
import math

import pytest

from qlib.agent.base import Candidate
from qlib.config import load_config
from qlib.envs.base import Environment
from qlib.envs.registry import get_spec
from qlib.agent.prompts import render_messages
from qlib.testing.toy import ToyEnv, ToyPolicy, toy_candidate
from qlib.mcts import Node, SearchSettings, TreeSearch, search_task, select_child, task_seed, uct
from qlib.seeding import derive_seed
from qlib.tree import best_terminal, path_ids, strip_volatile, worst_terminal, write_tree

NODE_KEYS = {
    "id", "parent", "children", "depth", "thought", "action", "text", "observation", "reward", "N",
    "V", "q", "terminal", "truncated", "invalid", "parsed", "count", "is_rollout", "iteration",
}


class ScriptedPolicy:
    """Returns the k-th scripted list of letters on the k-th call and records every call."""

    def __init__(self, script: list[list[str]]):
        self.script = script
        self.calls: list[dict] = []

    def propose(self, messages, n, *, temperature=None, action_space=None, seed=None) -> list[Candidate]:
        letters = self.script[len(self.calls)]
        self.calls.append({"messages": messages, "n": n, "temperature": temperature,
                           "action_space": action_space, "seed": seed})
        assert len(letters) == n
        return [toy_candidate(letter) for letter in letters]


def run_scripted(script, *, iterations, max_steps=4, depth_limit_reward=-0.5, seed=5, **options):
    policy = ScriptedPolicy(script)
    settings = SearchSettings(iterations=iterations, n_candidates=2, eta=2.0, temperature=0.7,
                              early_stop=False, depth_limit_reward=depth_limit_reward, **options)
    search = TreeSearch(ToyEnv(max_steps=max_steps), policy, env_name="toy", settings=settings,
                        seed=seed, render=render_messages)
    return search.run(0), policy


def stats_of(tree):
    return {n["id"]: (n["N"], pytest.approx(n["V"]), n["q"]) for n in tree["nodes"]}


def test_hand_computed_backpropagation():
    # task 0 opens with a then b. Calls: expand root, rollout A, expand B, expand A.
    tree, policy = run_scripted([["a", "b"], ["b"], ["c", "c"], ["b", "a"]], iterations=3)
    nodes = tree["nodes"]
    assert [n["action"] for n in nodes] == ["", "go[a]", "go[b]", "go[b]", "go[c]", "go[b]", "go[a]"]
    assert [n["parent"] for n in nodes] == [None, 0, 0, 1, 2, 1, 1]
    assert [n["is_rollout"] for n in nodes] == [False, False, False, True, False, False, False]
    # iter 1: expand root -> A(1), B(2); roll out A -> R(3) reward 1; backprop 1 through R, A, root
    # iter 2: B unvisited -> expand B -> C(4) (two identical candidates merged); C terminal -> r = 0
    # iter 3: UCT(A) = 1 + sqrt(2 ln 2) > UCT(B) = 0 + sqrt(2 ln 2); A has only a rollout child, so
    #         it is expanded -> A1(5) reaches the goal (r = 1), A2(6) locked; A1 evaluated
    assert stats_of(tree) == {
        0: (3, pytest.approx(2 / 3), None),
        1: (2, pytest.approx(1.0), 1.0),
        2: (1, pytest.approx(0.0), 0.0),
        3: (1, pytest.approx(1.0), 1.0),
        4: (1, pytest.approx(0.0), 0.0),
        5: (1, pytest.approx(1.0), 1.0),
        6: (0, pytest.approx(0.0), None),
    }
    assert nodes[4]["count"] == 2 and nodes[4]["terminal"] and nodes[4]["observation"] == "You fell into a pit."
    assert nodes[0]["children"] == [1, 2] and nodes[1]["children"] == [3, 5, 6]
    stats = tree["stats"]
    assert stats["iterations"] == 3 and stats["llm_calls"] == 4 and stats["tokens"] == 7 * 8
    assert stats["n_rollout_nodes"] == 1 and stats["n_terminal"] == 3 and not stats["early_stopped"]
    # best terminal: R(3) and A1(5) tie on reward and length -> the earlier found
    assert tree["best_path"] == [0, 1, 3] and tree["best_reward"] == 1.0


def test_policy_sees_history_action_space_seed_and_temperature():
    tree, policy = run_scripted([["a", "b"], ["b"], ["c", "c"], ["b", "a"]], iterations=3, seed=5)
    first, rollout = policy.calls[0], policy.calls[1]
    assert first["messages"] == render_messages("toy", tree["task_observation"], [], icl=True)
    assert first["n"] == 2 and rollout["n"] == 1
    assert rollout["messages"][-2:] == [
        {"role": "assistant", "content": toy_candidate("a").text},
        {"role": "user", "content": "Observation: Door 1 opened."},
    ]
    assert all(call["temperature"] == 0.7 for call in policy.calls)
    assert all(call["action_space"] == ToyEnv().valid_actions() for call in policy.calls)
    assert [call["seed"] for call in policy.calls] == [derive_seed(5, k) for k in range(4)]


def test_depth_limit_reward_and_terminal_reselection():
    # max_steps 3: roll out A with two locked doors -> truncated -> depth-limit reward -0.5;
    # afterwards the pit child C is selected again and re-evaluated without policy calls (the
    # official behaviour, kept as the option select_terminals; see test_mcts_paper for the default).
    tree, policy = run_scripted([["a", "c"], ["a"], ["a"]], iterations=4, max_steps=3,
                                select_terminals=True, backup_expansion_terminals=False)
    nodes = tree["nodes"]
    assert [n["action"] for n in nodes] == ["", "go[a]", "go[c]", "go[a]", "go[a]"]
    assert nodes[4]["truncated"] and nodes[4]["terminal"] and nodes[4]["reward"] == 0.0
    assert nodes[4]["q"] == -0.5 and nodes[2]["q"] == 0.0
    # root N=2: UCT(A) = -0.5 + sqrt(2 ln 2) < UCT(C) = sqrt(2 ln 2); N=3: -0.5 + sqrt(2 ln 3) < sqrt(ln 3)
    assert stats_of(tree) == {
        0: (4, pytest.approx(-0.5 / 4), None),
        1: (1, pytest.approx(-0.5), -0.5),
        2: (3, pytest.approx(0.0), 0.0),
        3: (1, pytest.approx(-0.5), -0.5),
        4: (1, pytest.approx(-0.5), -0.5),
    }
    assert len(policy.calls) == 3 and tree["stats"]["iterations"] == 4
    # best terminal: the genuine episode end (reward 0) beats the truncated one; worst is the truncated one
    assert tree["best_path"] == [0, 2] and best_terminal(nodes)["id"] == 2 and worst_terminal(nodes)["id"] == 4


def make_children(values: list[tuple[int, float]], parent_visits: int) -> Node:
    parent = Node(id=0, parent=None, depth=0, N=parent_visits)
    for i, (n, v) in enumerate(values, start=1):
        parent.children.append(Node(id=i, parent=parent, depth=1, N=n, V=v))
    return parent


def test_uct_picks_the_child_the_formula_says():
    parent = make_children([(3, 0.5), (5, 0.6), (2, 0.1)], parent_visits=10)
    expected = [v + math.sqrt(2.0 * math.log(10) / n) for n, v in [(3, 0.5), (5, 0.6), (2, 0.1)]]
    assert [uct(c, 10, 2.0) for c in parent.children] == pytest.approx(expected)
    # 1.739, 1.560, 1.617: neither the highest-V child (2) nor the least visited one (3)
    assert select_child(parent, 2.0).id == 1 + max(range(3), key=expected.__getitem__) == 1
    assert select_child(parent, 8.0).id == 3  # more exploration: the least visited child
    assert select_child(parent, 0.0).id == 2  # no exploration: highest V
    parent.children.append(Node(id=4, parent=parent, depth=1, is_rollout=True))  # never selected
    assert select_child(parent, 0.0).id == 2
    parent.children += [Node(id=5, parent=parent, depth=1), Node(id=6, parent=parent, depth=1)]
    assert select_child(parent, 2.0).id == 5  # unvisited first, earliest first
    tie = make_children([(2, 0.3), (2, 0.3)], parent_visits=4)
    assert select_child(tie, 2.0).id == 1


def test_mcts_reaches_reward_one_and_stops_early():
    config = load_config("smoke", {"mcts.iterations": 30, "mcts.n_candidates": 3})
    env = ToyEnv(max_steps=6, length=3)
    for task_id in range(4):
        tree = search_task(env, ToyPolicy(), task_id, config=config)
        assert tree["best_reward"] == 1.0 and tree["stats"]["early_stopped"]
        assert tree["stats"]["iterations"] < 30
        best = tree["nodes"][tree["best_path"][-1]]
        assert best["terminal"] and best["reward"] == 1.0


def replay(env: Environment, task_id: int, actions: list[str]):
    env.reset(task_id)
    return [env.step(a) for a in actions]


def test_every_node_matches_a_fresh_replay_of_its_path():
    config = load_config("smoke", {"mcts.iterations": 20, "mcts.n_candidates": 3, "mcts.early_stop": False})
    env = ToyEnv(max_steps=5, length=3)
    tree = search_task(env, ToyPolicy(), 1, config=config)
    nodes = tree["nodes"]
    assert len(nodes) > 20 and any(n["truncated"] for n in nodes) and any(n["reward"] == 1 for n in nodes)
    for node in nodes[1:]:
        path = path_ids(nodes, node["id"])
        results = replay(ToyEnv(max_steps=5, length=3), 1, [nodes[i]["action"] for i in path[1:]])
        obs, reward, done, info = results[-1]
        assert (obs, reward, done or node["truncated"]) == (node["observation"], node["reward"], node["terminal"])
        assert info["truncated"] == node["truncated"]
        assert node["depth"] == len(path) - 1


def test_same_seed_same_tree_and_seeds_matter():
    config = load_config("smoke", {"mcts.iterations": 10, "mcts.n_candidates": 3, "mcts.early_stop": False})
    env = ToyEnv(max_steps=5, length=3)
    a = search_task(env, ToyPolicy(), 2, config=config)
    b = search_task(ToyEnv(max_steps=5, length=3), ToyPolicy(), 2, config=config)
    assert json.dumps(strip_volatile(a), sort_keys=True) == json.dumps(strip_volatile(b), sort_keys=True)
    assert a["stats"]["seed"] == task_seed(config.seed, "toy", 2)
    other = load_config("smoke", {"mcts.iterations": 10, "mcts.n_candidates": 3, "mcts.early_stop": False, "seed": 1})
    c = search_task(env, ToyPolicy(), 2, config=other)
    assert strip_volatile(c)["nodes"] != strip_volatile(a)["nodes"]


def test_tree_file_schema(tmp_path):
    config = load_config("smoke", {"mcts.iterations": 8, "mcts.n_candidates": 3, "mcts.early_stop": False})
    tree = search_task(ToyEnv(max_steps=5, length=3), ToyPolicy(), 3, config=config)
    path = write_tree(tree, tmp_path)
    assert path.name == "toy_3.json" and [p.name for p in tmp_path.iterdir()] == ["toy_3.json"]
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(tree))
    assert {"schema_version", "env", "task_id", "task_observation", "root", "nodes", "best_path",
            "best_reward", "stats", "settings", "config"} <= set(loaded)
    assert all(set(n) == NODE_KEYS for n in loaded["nodes"])
    assert [n["id"] for n in loaded["nodes"]] == list(range(len(loaded["nodes"])))
    assert loaded["settings"]["depth_limit_reward"] == get_spec("toy").settings["depth_limit_reward"]
    assert loaded["config"]["mcts"]["iterations"] == 8
    assert {"iterations", "llm_calls", "tokens", "seconds", "best_reward", "seed"} <= set(loaded["stats"])
    best = loaded["nodes"][loaded["best_path"][-1]]
    assert loaded["best_path"][0] == 0 and best["terminal"] and best["reward"] == loaded["best_reward"]
    for node in loaded["nodes"]:
        for child in node["children"]:
            assert loaded["nodes"][child]["parent"] == node["id"]
        if node["is_rollout"]:
            assert not any(not loaded["nodes"][c]["is_rollout"] for c in node["children"])


def test_invalid_actions_are_nodes():
    class Garbage(ToyPolicy):
        def propose(self, messages, n, **kwargs):
            return [Candidate(text="Thought: hmm\nAction: fly[x]", thought="hmm", action="fly[x]", valid=False)] * n

    config = load_config("smoke", {"mcts.iterations": 2, "mcts.n_candidates": 3})
    tree = search_task(ToyEnv(max_steps=3), Garbage(), 0, config=config)
    child = tree["nodes"][1]
    assert child["invalid"] and not child["parsed"] and child["count"] == 3
    assert child["observation"].startswith("Invalid action")
    assert tree["best_reward"] == 0.0 and tree["nodes"][tree["best_path"][-1]]["truncated"]


def test_should_stop_cancels_the_search():
    from qlib.mcts import SearchCancelled

    config = load_config("smoke", {"mcts.iterations": 5})
    polls = []

    def stop_after_two():
        polls.append(1)
        return len(polls) > 2

    with pytest.raises(SearchCancelled):
        search_task(ToyEnv(), ToyPolicy(weights={"b": 1.0}), 0, config=config, should_stop=stop_after_two)
    assert len(polls) == 3


def test_tree_at_iteration_equals_a_shorter_run():
    from qlib.tree import tree_at_iteration

    long_config = load_config("smoke", {"mcts.iterations": 12, "mcts.n_candidates": 3, "mcts.early_stop": False})
    tree = search_task(ToyEnv(max_steps=5, length=3), ToyPolicy(), 3, config=long_config)
    assert sorted({b[0] for b in tree["backups"]}) == list(range(1, 13))
    same = tree_at_iteration(tree, 12)
    assert [n["N"] for n in same["nodes"]] == [n["N"] for n in tree["nodes"]]
    assert [n["V"] for n in same["nodes"]] == pytest.approx([n["V"] for n in tree["nodes"]])
    assert [n["q"] is None for n in same["nodes"]] == [n["q"] is None for n in tree["nodes"]]
    for k in (1, 4, 7):
        short_config = load_config("smoke", {"mcts.iterations": k, "mcts.n_candidates": 3, "mcts.early_stop": False})
        short = search_task(ToyEnv(max_steps=5, length=3), ToyPolicy(), 3, config=short_config)
        prefix = tree_at_iteration(tree, k)
        fields = ("id", "parent", "children", "action", "N", "terminal")
        assert [tuple(n[f] for f in fields) for n in prefix["nodes"]] == [tuple(n[f] for f in fields) for n in short["nodes"]]
        assert [n["V"] for n in prefix["nodes"]] == pytest.approx([n["V"] for n in short["nodes"]])
        assert prefix["best_path"] == short["best_path"]


class OverflowAfterDepth:
    """A toy policy whose prompt overflows the context below ``depth`` steps of history."""

    def __init__(self, depth):
        self.inner, self.depth = ToyPolicy(), depth

    def propose(self, messages, n, **kw):
        from qlib.agent.base import ContextOverflowError

        if sum(m["role"] == "user" and m["content"].startswith("Observation") for m in messages) >= self.depth:
            raise ContextOverflowError("prompt too long")
        return self.inner.propose(messages, n, **kw)


def test_context_overflow_is_a_truncated_terminal_with_the_depth_limit_reward():
    config = load_config("smoke", {"mcts.iterations": 6, "mcts.n_candidates": 3, "mcts.early_stop": False})
    tree = search_task(ToyEnv(max_steps=6, length=3), OverflowAfterDepth(1), 0, config=config)
    nodes = tree["nodes"]
    assert max(n["depth"] for n in nodes) == 1
    overflowed = [n for n in nodes if n["depth"] == 1 and n["truncated"] and n["terminal"]]
    assert overflowed and all(n["q"] == tree["settings"]["depth_limit_reward"] < 0 for n in overflowed)
    assert nodes[0]["N"] == len(tree["backups"]) and (tree["stats"]["iterations"] == 6 or tree["stats"]["exhausted"])
