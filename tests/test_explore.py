"""The explorers (qlib.workbook.explore) on a small real run of the toy environment."""
from __future__ import annotations

import time
from html.parser import HTMLParser

import pytest

from qlib.testing.toy_run import toy_run
from qlib.tree import load_tree
from qlib.workbook import explore as xp
from qlib.workbook.layout import RunPaths


class Nodes(HTMLParser):
    """The ``details.qx-node`` elements of a tree view: id -> (classes, open, pair roles)."""

    def __init__(self, html: str):
        super().__init__()
        self.nodes: dict[int, dict] = {}
        self.tags = {"chosen": 0, "rejected": 0}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "details" and "qx-node" in classes:
            self.nodes[int(attrs["data-id"])] = {"classes": classes, "open": "open" in attrs,
                                                 "pair": set(attrs["data-pair"].split())}
        for role in self.tags:
            if tag == "span" and f"qx-{role}" in classes and "data-pair" in attrs:
                self.tags[role] += 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    paths = RunPaths("smoke", root / "runs", root / "results", root / "figures")
    return paths, toy_run(paths)


@pytest.fixture(scope="module")
def tree_with_pairs(run):
    paths, made = run
    tree_file = xp.find_tree(made["trees"], pairs=made["pairs"])
    rows = [r for r in xp.read_jsonl(made["pairs"]) if r["tree_file"] == tree_file.name]
    assert rows, "the toy run must give step pairs"
    return tree_file, load_tree(tree_file), rows


def test_tree_view_shows_every_node_the_best_path_and_the_pairs(run, tree_with_pairs):
    tree_file, tree, rows = tree_with_pairs
    view = xp.tree_view(tree_file, pairs=run[1]["pairs"])
    parsed = Nodes(view.html)
    assert sorted(parsed.nodes) == [n["id"] for n in tree["nodes"]]
    best = [i for i, n in parsed.nodes.items() if "qx-best" in n["classes"]]
    assert sorted(best) == sorted(tree["best_path"]) and len(tree["best_path"]) > 1
    assert all(parsed.nodes[i]["open"] for i in tree["best_path"])
    assert not any(n["open"] for i, n in parsed.nodes.items() if i not in tree["best_path"])  # the rest folded
    assert {i for i, n in parsed.nodes.items() if "chosen" in n["pair"]} == {r["chosen_id"] for r in rows}
    assert {i for i, n in parsed.nodes.items() if "rejected" in n["pair"]} == {r["rejected_id"] for r in rows}
    assert parsed.tags == {"chosen": len(rows), "rejected": len(rows)}
    assert f"{len(tree['nodes'])} nodes" in view.html and f"{len(rows)} pairs from this tree" in view.html
    assert "<script" not in view.html and "http" not in view.html  # self-contained


def test_tree_view_of_a_dict_marks_pairs_by_task_and_saves_a_page(tree_with_pairs, tmp_path):
    _, tree, rows = tree_with_pairs
    foreign = [{**rows[0], "task_id": tree["task_id"] + 1000}]
    assert Nodes(xp.tree_view(tree, pairs=rows + foreign).html).tags["chosen"] == len(rows)
    page = xp.tree_view(tree).save(tmp_path / "tree.html").read_text()
    assert page.startswith("<!doctype html>") and page.count('class="qx-node') == len(tree["nodes"])


def test_missing_artifacts_give_a_message_not_an_error(tmp_path):
    assert "notebook 01" in xp.tree_view(None).html
    assert "notebook 01" in xp.tree_view(tmp_path / "missing.json").html
    assert xp.find_tree(tmp_path / "no_trees") is None
    assert xp.pairs_table(None, None).empty
    assert xp.episode_rows(tmp_path / "none.jsonl") == [] and xp.pick_episode([]) is None
    assert "notebook 04" in xp.episode_view(None).html and "notebook 04" in xp.show_episode(None).html
    assert "notebook 04" in xp.q_explorer(xp.action_q(tmp_path)).html


def big_tree(width: int = 6, depth: int = 4) -> dict:
    """A synthetic tree of 1 + 6 + 36 + 216 + 1296 = 1555 nodes with long, HTML-like observations."""
    nodes = [{"id": 0, "parent": None, "children": [], "depth": 0, "thought": "", "action": "", "observation": "task",
              "reward": 0.0, "N": 1, "V": 0.0, "q": None, "terminal": False}]
    frontier = [0]
    for d in range(1, depth + 1):
        new = []
        for parent in frontier:
            for _ in range(width):
                node = {"id": len(nodes), "parent": parent, "children": [], "depth": d, "thought": "t",
                        "action": f"click[<b>{len(nodes)}</b>]", "observation": "<script>x</script>" * 200,
                        "reward": 0.0, "N": 1, "V": 0.5, "q": 0.5, "terminal": d == depth}
                nodes[parent]["children"].append(node["id"])
                nodes.append(node)
                new.append(node["id"])
        frontier = new
    return {"env": "synthetic", "task_id": 1, "root": 0, "nodes": nodes, "best_path": [0, 1, 7, 43, 259]}


def test_tree_view_renders_trees_far_beyond_the_papers_size_quickly():
    tree = big_tree()
    start = time.perf_counter()
    html = xp.tree_view(tree, obs_chars=200).html
    assert time.perf_counter() - start < 2.0
    assert html.count('class="qx-node') == len(tree["nodes"]) == 1555
    assert "<script>" not in html and "&lt;b&gt;1&lt;/b&gt;" in html  # actions and observations escaped
    assert len(html) < 1_500_000  # observation excerpts keep an exported notebook small


def test_pairs_table_lists_the_trees_pairs(run, tree_with_pairs):
    tree_file, tree, rows = tree_with_pairs
    table = xp.pairs_table(tree_file, run[1]["pairs"])
    assert list(table.chosen_id) == [r["chosen_id"] for r in rows]
    assert list(table.chosen) == [tree["nodes"][r["chosen_id"]]["action"] for r in rows]


def test_episode_view_shows_every_candidate_its_scores_and_the_executed_one(run):
    rows = xp.episode_rows(run[1]["episodes"], method="q")
    row = xp.pick_episode(rows)
    assert xp.scored_steps(row) > 0
    html = xp.episode_view(row).html
    assert html.count('class="qx-step"') == len(row["trajectory"])
    assert html.count("data-cand=") == sum(len(s["candidates"]) for s in row["trajectory"])
    assert html.count('class="qx-picked"') == len(row["trajectory"])
    step = next(s for s in row["trajectory"] if len(s["candidates"]) > 1)
    for cand in step["candidates"]:
        assert xp._num(cand["q"], 4) in html and xp._num(cand["logprob"], 2) in html
    assert f"final reward {xp._num(row['reward'])}" in html
    assert xp.pick_episode(rows, row["task_id"])["task_id"] == row["task_id"]


def test_episode_view_of_a_method_without_candidates(run):
    row = xp.pick_episode(xp.episode_rows(run[1]["episodes"], method="sampled"))
    html = xp.episode_view(row).html
    assert html.count("data-cand=") == html.count('class="qx-picked"') == len(row["trajectory"])


def test_show_episode_is_a_slider_in_a_kernel_and_static_headless(run, monkeypatch):
    row = xp.pick_episode(xp.episode_rows(run[1]["episodes"], method="q"))
    box = xp.show_episode(row, interactive=True)
    header, slider, body = box.children
    assert slider.max == len(row["trajectory"]) and 'data-step="0"' in body.value
    slider.value = slider.max
    assert f'data-step="{slider.max - 1}"' in body.value
    rows = xp.episode_rows(run[1]["episodes"])
    chooser, header, slider, body = xp.show_episode(row, interactive=True, rows=rows).children
    assert len(chooser.options) == len(rows) and rows[chooser.value]["task_id"] == row["task_id"]
    other = next(k for k, r in enumerate(rows) if len(r["trajectory"]) != len(row["trajectory"]))
    slider.value = 2
    chooser.value = other
    assert slider.value == 1 and slider.max == len(rows[other]["trajectory"])
    assert f"task {rows[other]['task_id']} · {rows[other]['method']}" in header.value and 'data-step="0"' in body.value
    monkeypatch.setenv("QLIB_HEADLESS", "1")
    assert not xp.interactive_default() and isinstance(xp.show_episode(row), xp.View)


def test_q_explorer_from_the_stored_q_of_executed_actions(run):
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    frame = xp.action_q(run[1]["episodes"].parent)
    assert set(frame.method) == {"q n=3 [table2]"} and set(frame.split) == {"test"}
    q_rows = xp.episode_rows(run[1]["episodes"], method="q")
    assert len(frame) == sum(xp.scored_steps(r) for r in q_rows)
    extra = pd.DataFrame([{"env": "toy", "method": "sampled", "split": "test", "trajectory": "failed", "q": 0.1}])
    both = xp.action_q(run[1]["episodes"].parent, scored=extra)
    assert len(both) == len(frame) + 1 and "sampled" in set(both.method)
    static = xp.q_explorer(both, interactive=False)
    assert static.html.count("<img") == 2 and "data:image/png;base64," in static.html  # one per method
    widget = xp.q_explorer(both, interactive=True)
    assert [c.description for c in widget.children[:4]] == ["env", "method", "split", "bins"]


def test_default_env_is_one_with_pairs_else_with_trees(tmp_path):
    from qlib.envs.registry import env_names

    paths = RunPaths("smoke", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    first, last = env_names()[0], env_names()[-1]
    assert xp.default_env(paths) == first
    paths.trees(last, "train").mkdir(parents=True)
    assert xp.default_env(paths) == last
    paths.pairs(first, "step").parent.mkdir(parents=True)
    paths.pairs(first, "step").write_text("")  # no pairs: still the one with trees
    assert xp.default_env(paths) == last
    paths.trees(first, "train").mkdir(parents=True)
    paths.pairs(first, "step").write_text("{}\n")
    assert xp.default_env(paths) == first


@pytest.mark.parametrize("text, action, thought", [
    ("Thought: I try door a.\nAction: go[a]", "go[a]", "I try door a."),
    ("Thought 2: search it. Action 2: search[x]", "search[x]", "search it."),
    ("go[a]", "go[a]", ""),
])
def test_thought_column_strips_the_turn_labels(text, action, thought):
    assert xp.thought_of({"text": text, "action": action}) == thought
