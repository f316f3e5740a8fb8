"""Issue 13: MCTS and pairs behave as the paper means them, each old behaviour kept as a named option.

Each test builds a small toy tree whose outcome is known by construction (task 0 of the toy env: door
``i`` opens with ``a`` when ``i`` is even, else ``b``; ``c`` is a pit)."""
from __future__ import annotations

import pytest

from qlib.config import load_config, with_overrides
from qlib.mcts import search_task
from qlib.pairs import _TreeView, best_path, step_pairs, successful
from qlib.testing.toy import ToyEnv, ToyPolicy, toy_candidate
from qlib.tree import best_terminal, tree_at_iteration

LEGACY_SEARCH = {"mcts.backup_expansion_terminals": False, "mcts.select_terminals": True}


class Scripted:
    """Expansions get ``expand`` (letters), rollouts ``rollout`` (one letter)."""

    thread_safe = True

    def __init__(self, expand, rollout):
        self.expand, self.rollout = expand, rollout

    def propose(self, messages, n, **kwargs):
        return [toy_candidate(x) for x in self.expand] if n > 1 else [toy_candidate(self.rollout)]


def search(policy, overrides=None, env=None, task=0):
    config = load_config("smoke", {"mcts.iterations": 6, "mcts.n_candidates": 2, **(overrides or {})})
    return search_task(env or ToyEnv(max_steps=4, length=1), policy, task, config=config)


def node(tree, action, parent=0):
    return next(n for n in tree["nodes"] if n["parent"] == parent and n["action"] == action)


def test_a_success_found_while_expanding_is_backed_up_once():
    policy = Scripted(expand=["b", "a"], rollout="c")  # go[b] is rolled out into the pit; go[a] succeeds
    tree = search(policy)
    success = node(tree, "go[a]")
    assert success["terminal"] and success["reward"] == 1.0 and success["N"] == 1
    root = tree["nodes"][0]
    assert root["N"] == 2 and root["V"] == pytest.approx(0.5)  # rollout 0 and the success 1
    assert tree["stats"]["early_stopped"] and tree["stats"]["iterations"] == 1
    legacy = search(policy, LEGACY_SEARCH)
    assert node(legacy, "go[a]")["N"] == 0 and legacy["nodes"][0]["V"] == 0.0  # the official code's bug
    # the replay of the backup log rebuilds the same values
    assert tree_at_iteration(tree, 1)["nodes"][0]["V"] == pytest.approx(0.5)


def test_m_iterations_are_m_expansions_unless_the_tree_is_exhausted():
    env = ToyEnv(max_steps=5, length=3, n_tasks=(12, 2, 2))
    overrides = {"mcts.iterations": 10, "mcts.n_candidates": 3, "mcts.early_stop": False}
    wasted = 0
    for task in env.task_ids("train"):
        stats = search(ToyPolicy(), overrides, env, task)["stats"]
        assert stats["expansions"] == stats["iterations"]
        assert stats["iterations"] == 10 or stats["exhausted"]
        legacy = search(ToyPolicy(), {**overrides, **LEGACY_SEARCH}, env, task)["stats"]
        wasted += legacy["iterations"] - legacy["expansions"]
    assert wasted > 0  # re-selecting terminals spent iterations without expanding


def test_a_tree_without_a_positive_terminal_gives_no_pairs_unless_asked():
    tree = search(Scripted(expand=["c", "b"], rollout="b"), env=ToyEnv(max_steps=2, length=1))
    best = best_terminal(tree["nodes"])
    assert best is not None and best["q"] <= 0 and not successful(best)
    view = _TreeView(tree, "t.json", None)
    assert step_pairs(view) == []
    rows = step_pairs(view, from_unsuccessful_trees=True)
    assert rows and all(r["q_chosen"] > r["q_rejected"] for r in rows)


def test_the_best_path_consists_of_tree_nodes():
    # door 0 opens with a, door 1 with b: the rollout from go[a] succeeds
    tree = search(Scripted(expand=["a", "c"], rollout="b"), env=ToyEnv(max_steps=4, length=2))
    nodes = tree["nodes"]
    best = best_terminal(nodes)
    assert best["is_rollout"] and best["reward"] == 1.0  # the success was found by a rollout
    path = best_path(nodes, best)
    assert path and all(not nodes[i]["is_rollout"] for i in path)
    rows = step_pairs(_TreeView(tree, "t.json", None))
    assert rows and all(not nodes[r["chosen_id"]]["is_rollout"] for r in rows)
    with_rollouts = best_path(nodes, best, rollout_best_path=True)
    assert nodes[with_rollouts[-1]]["is_rollout"] and with_rollouts[: len(path)] == path


def test_the_paper_profile_trains_dpo_as_table_5():
    dpo = load_config("paper").dpo
    assert (dpo.beta, dpo.learning_rate, dpo.warmup_ratio, dpo.batch_size) == (0.1, 1e-5, 0.1, 16)
    assert (dpo.max_length, dpo.epochs, dpo.lr_scheduler) == (4096, 1, "constant_with_warmup")
    paper = load_config("paper")
    assert paper.mcts.backup_expansion_terminals and not paper.mcts.select_terminals
    assert not paper.pairs.from_unsuccessful_trees and not paper.pairs.rollout_best_path
    assert with_overrides(paper, {"pairs.from_unsuccessful_trees": True}).pairs.from_unsuccessful_trees
