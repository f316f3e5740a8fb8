"""Look inside a run: HTML views of one MCTS tree, one episode and the Q values of executed actions.

* :func:`tree_view` — one tree file as nested collapsible nodes (``<details>``): action, observation excerpt,
  visits N, value V, Q̂, step reward, terminal marks; the best trajectory highlighted and open; the nodes
  that became a chosen / rejected preference pair marked (pass the pairs JSONL).
* :func:`episode_view` — one episode row step by step: the distinct candidates with their Q values and
  policy log-probs, which one was executed, the observation that followed, the final reward;
  :func:`show_episode` is the same as a slider in JupyterLab (ipywidgets).
* :func:`q_explorer` — histograms of the Q of executed actions in successful vs failed episodes
  (Fig. 4b), with a choice of environment, method, split and bins in JupyterLab.

Every static view is a :class:`View`: self-contained HTML (inline style, no script, no network), so it survives
in executed notebooks and in an nbconvert HTML export; ``View.save(path)`` writes a standalone page. The
interactive versions are used when ipywidgets is importable and a kernel runs the notebook, except when
``QLIB_HEADLESS`` is set (the workbook runner sets it: papermill has no widget frontend).

Nothing here names an environment: trees, pairs and episodes are read through their schemas only.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

STYLE = """<style>
.qx{font:13px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1f2328;max-width:1100px}
.qx h3{margin:.2em 0 .3em;font-size:15px}.qx .qx-meta{color:#57606a;margin:.2em 0}
.qx code{font:12px/1.3 ui-monospace,SFMono-Regular,Menlo,monospace;background:#f3f4f6;padding:0 3px;border-radius:3px}
.qx details.qx-node{margin:1px 0 1px 14px;border-left:2px solid #d0d7de;padding-left:6px}
.qx details.qx-node.qx-root{margin-left:0}
.qx details.qx-node>summary{cursor:pointer;padding:1px 2px;border-radius:3px;white-space:nowrap;overflow:hidden;
 text-overflow:ellipsis}
.qx details.qx-node>summary:hover{background:#f6f8fa}
.qx .qx-best>summary{background:#fff8c5;font-weight:600}
.qx details.qx-best{border-left-color:#d4a72c}
.qx .qx-id{color:#8c959f;font-size:11px}.qx .qx-num{color:#57606a;font-size:12px}
.qx .qx-tag{display:inline-block;font-size:11px;border-radius:8px;padding:0 6px;margin-left:4px;font-weight:600}
.qx .qx-chosen{background:#dafbe1;color:#116329;border:1px solid #4ac26b}
.qx .qx-rejected{background:#ffebe9;color:#a40e26;border:1px solid #ff8182}
.qx .qx-term{background:#ddf4ff;color:#0550ae}.qx .qx-trunc{background:#fff1e5;color:#953800}
.qx .qx-roll{background:#eaeef2;color:#57606a}.qx .qx-inv{background:#ffebe9;color:#a40e26}
.qx .qx-body{margin:2px 0 4px 4px}.qx .qx-thought{color:#57606a;font-style:italic}
.qx pre.qx-obs{white-space:pre-wrap;margin:2px 0;padding:3px 6px;background:#f6f8fa;border-radius:4px;
 font:12px/1.35 ui-monospace,monospace;max-height:12em;overflow:auto}
.qx table.qx-cands{border-collapse:collapse;margin:3px 0}
.qx table.qx-cands td,.qx table.qx-cands th{border:1px solid #d0d7de;padding:2px 6px;text-align:left}
.qx table.qx-cands tr.qx-picked{background:#dafbe1;font-weight:600}
.qx .qx-step{margin:6px 0 10px;padding:4px 8px;border:1px solid #d0d7de;border-radius:6px}
.qx .qx-msg{padding:6px 10px;background:#fff8c5;border:1px solid #d4a72c;border-radius:6px}
</style>"""


class View:
    """Self-contained HTML shown by Jupyter (``_repr_html_``) and in an nbconvert HTML export."""

    def __init__(self, body: str, title: str = "qlib explorer"):
        self.html = f'{STYLE}<div class="qx">{body}</div>'
        self.title = title

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html

    def save(self, path: str | os.PathLike) -> Path:
        """Write a standalone HTML page (opens offline in any browser); return its path."""
        path = Path(path)
        path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(self.title)}</title></head>"
                        f"<body>{self.html}</body></html>", encoding="utf-8")
        return path


def message(text: str) -> View:
    """A view that only says why there is nothing to show (a missing artifact, an empty selection)."""
    return View(f'<div class="qx-msg">{_e(text)}</div>')


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def excerpt(text: str | None, limit: int) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut)."""
    text = text or ""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if value == value else "nan"
    return str(value)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a JSONL file ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ----------------------------------------------------------------------------- trees
def load_tree(tree: Mapping[str, Any] | str | os.PathLike) -> tuple[dict[str, Any], str | None]:
    """The tree dict and its file name (None for a dict given directly)."""
    if isinstance(tree, Mapping):
        return dict(tree), None
    from qlib.tree import load_tree as load

    return load(tree), Path(tree).name


def tree_pairs(tree: Mapping[str, Any], pairs: str | os.PathLike | Iterable[Mapping[str, Any]] | None,
               tree_file: str | None = None) -> list[dict[str, Any]]:
    """The pair rows (any level) that came from ``tree``: same ``tree_file`` if known, else same env and task."""
    rows = read_jsonl(pairs) if isinstance(pairs, (str, os.PathLike)) else list(pairs or [])

    def same(row: Mapping[str, Any]) -> bool:
        if tree_file is not None and row.get("tree_file") is not None:
            return row["tree_file"] == tree_file
        return row.get("task_id") == tree.get("task_id") and row.get("env", tree.get("env")) == tree.get("env")

    return [dict(r) for r in rows if same(r) and "chosen_id" in r]


def pair_marks(pairs: Sequence[Mapping[str, Any]]) -> dict[int, list[tuple[str, int, int]]]:
    """node id -> [(role "chosen"/"rejected", pair number, the other node's id)]."""
    marks: dict[int, list[tuple[str, int, int]]] = {}
    for k, row in enumerate(pairs):
        marks.setdefault(row["chosen_id"], []).append(("chosen", k, row["rejected_id"]))
        marks.setdefault(row["rejected_id"], []).append(("rejected", k, row["chosen_id"]))
    return marks


def _node_summary(node: Mapping[str, Any], marks: Sequence[tuple[str, int, int]], task: str) -> str:
    label = f"<code>{_e(node['action'])}</code>" if node["parent"] is not None else f"<b>root</b> · {_e(task)}"
    parts = [f'<span class="qx-id">#{node["id"]}</span>', label,
             f'<span class="qx-num">N={node["N"]} V={_num(node["V"])} Q̂={_num(node["q"])}'
             + (f' r={_num(node["reward"])}' if node["parent"] is not None else "") + "</span>"]
    if node.get("terminal"):
        parts.append('<span class="qx-tag qx-term">terminal</span>')
    if node.get("truncated"):
        parts.append('<span class="qx-tag qx-trunc">depth limit</span>')
    if node.get("is_rollout"):
        parts.append('<span class="qx-tag qx-roll">rollout</span>')
    if node.get("invalid"):
        parts.append('<span class="qx-tag qx-inv">invalid</span>')
    for role, k, other in marks:
        word = "✔ chosen" if role == "chosen" else "✘ rejected"
        parts.append(f'<span class="qx-tag qx-{role}" data-pair="{k}">{word} · pair {k} vs #{other}</span>')
    return " ".join(parts)


def tree_view(tree: Mapping[str, Any] | str | os.PathLike | None,
              pairs: str | os.PathLike | Iterable[Mapping[str, Any]] | None = None, *,
              obs_chars: int = 500) -> View:
    """One MCTS tree as collapsible nodes; the best trajectory highlighted and open, pair nodes marked.

    ``tree``: a tree file (``runs/<profile>/trees/…/<env>_<task>.json``) or its dict; ``pairs``: a pairs JSONL
    (or rows) whose rows of this tree mark their ``chosen_id`` / ``rejected_id`` nodes; ``obs_chars``: length
    of the observation excerpts. Each node is a ``<details class="qx-node" data-id=…>`` element, so the view
    needs no script; hundreds of nodes render at once.
    """
    if tree is None:
        return message("No tree to show: this run has no tree file for that task (notebook 01 writes them).")
    if not isinstance(tree, Mapping) and not Path(tree).is_file():
        return message(f"No tree file {tree}: notebook 01 writes the trees.")
    tree, tree_file = load_tree(tree)
    nodes = tree["nodes"]
    rows = tree_pairs(tree, pairs, tree_file)
    marks, best = pair_marks(rows), set(tree.get("best_path") or [])
    task = excerpt(tree.get("task_observation", ""), 100)
    children_html: dict[int, str] = {}
    for node in sorted(nodes, key=lambda n: -n["depth"]):  # deepest first: children are rendered before parents
        classes = ["qx-node"] + (["qx-root"] if node["parent"] is None else []) + (["qx-best"] if node["id"] in best else [])
        classes += [f"qx-pair-{role}" for role in sorted({m[0] for m in marks.get(node["id"], [])})]
        body = ""
        if node.get("thought"):
            body += f'<div class="qx-thought">{_e(excerpt(node["thought"], obs_chars))}</div>'
        body += f'<pre class="qx-obs">{_e(excerpt(node.get("observation", ""), obs_chars))}</pre>'
        body += "".join(children_html.pop(c, "") for c in node["children"])
        roles = " ".join(sorted({m[0] for m in marks.get(node["id"], [])}))
        children_html[node["id"]] = (
            f'<details class="{" ".join(classes)}" data-id="{node["id"]}" data-depth="{node["depth"]}"'
            f' data-pair="{roles}"{" open" if node["id"] in best or node["parent"] is None else ""}>'
            f'<summary>{_node_summary(node, marks.get(node["id"], []), task)}</summary>'
            f'<div class="qx-body">{body}</div></details>')
    path = tree.get("best_path") or []
    trajectory = " → ".join(f"<code>{_e(nodes[i]['action'])}</code>" for i in path[1:]) or "none (no terminal node)"
    stats = tree.get("stats") or {}
    header = (
        f'<h3>Tree {_e(tree_file or "")} · {_e(tree.get("env"))} {_e(tree.get("split", ""))} task {_e(tree.get("task_id"))}</h3>'
        f'<div class="qx-meta">{len(nodes)} nodes · {_e(stats.get("iterations", "?"))} iterations · '
        f'best reward {_num(tree.get("best_reward"))} · {len(rows)} pairs from this tree '
        f'(<span class="qx-tag qx-chosen">✔ chosen</span><span class="qx-tag qx-rejected">✘ rejected</span>)</div>'
        f'<div class="qx-meta">best trajectory (highlighted, open): {trajectory}</div>'
        '<div class="qx-meta">Click a node to fold or unfold it. N visits, V value, Q̂ the estimate of '
        'Q(parent, action), r the step\'s environment reward.</div>')
    root = tree.get("root", 0)
    return View(f'<div class="qx-tree" data-nodes="{len(nodes)}">{header}{children_html[root]}</div>',
                title=f"tree {tree_file or tree.get('task_id')}")


def pairs_table(tree: Mapping[str, Any] | str | os.PathLike | None,
                pairs: str | os.PathLike | Iterable[Mapping[str, Any]] | None) -> Any:
    """The pairs of one tree as a DataFrame: depth, node ids, actions and Q̂ of chosen and rejected."""
    import pandas as pd

    columns = ["level", "depth", "chosen_id", "chosen", "q_chosen", "rejected_id", "rejected", "q_rejected"]
    if tree is None or (not isinstance(tree, Mapping) and not Path(tree).is_file()):
        return pd.DataFrame(columns=columns)
    tree, tree_file = load_tree(tree)
    nodes = tree["nodes"]
    records = [{**row, "chosen": nodes[row["chosen_id"]]["action"], "rejected": nodes[row["rejected_id"]]["action"]}
               for row in tree_pairs(tree, pairs, tree_file)]
    return pd.DataFrame(records, columns=columns)


def default_env(paths: Any) -> str:
    """The first registered environment with step pairs in this run, else with train trees, else the first."""
    from qlib.envs.registry import env_names

    def rank(name: str) -> tuple[bool, bool]:
        pairs = paths.pairs(name, "step")
        return not (pairs.is_file() and pairs.stat().st_size > 0), not paths.trees(name, "train").is_dir()

    return min(env_names(), key=rank)  # min is stable: registration order among equals


def find_tree(trees_dir: str | os.PathLike, task_id: Any = None, *, pairs: str | os.PathLike | None = None) -> Path | None:
    """A tree file of ``trees_dir``: the task ``task_id``, else the first tree that produced a pair in ``pairs``,
    else the first tree with a terminal node; None when the folder has no tree."""
    files = sorted(Path(trees_dir).glob("*.json"), key=lambda p: (len(p.stem), p.stem))
    if task_id is not None:
        return next((f for f in files if f.stem.rsplit("_", 1)[-1] == str(task_id)), None)
    with_pairs = {r.get("tree_file") for r in read_jsonl(pairs)} if pairs is not None else set()
    return next((f for f in files if f.name in with_pairs), None) or next(iter(files), None)


# ----------------------------------------------------------------------------- episodes
def _candidates(step: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The step's distinct candidates and the executed one's index (one candidate for greedy/sampled rows)."""
    if step.get("candidates"):
        return list(step["candidates"]), int(step.get("chosen", 0))
    return [{k: step.get(k) for k in ("text", "action", "valid", "logprob")} | {"count": 1, "q": None}], 0


def thought_of(candidate: Mapping[str, Any]) -> str:
    """The thought of a candidate's canonical turn: its text before the action, without the turn's labels
    (``Thought: … Action:``, whatever the environment's separator)."""
    text, action = candidate.get("text") or "", candidate.get("action") or ""
    head = text[: text.rfind(action)] if action and action in text else candidate.get("thought") or ""
    head = re.sub(r"^\s*\w+(?: \d+)?:\s*", "", head)
    return re.sub(r"\s*\w+(?: \d+)?:\s*$", "", head).strip()


def step_html(row: Mapping[str, Any], t: int, *, obs_chars: int = 600) -> str:
    """Step ``t`` (0-based) of an episode row: candidates table, the executed one, what followed."""
    step = row["trajectory"][t]
    cands, picked = _candidates(step)
    lines = []
    for i, c in enumerate(cands):
        mark = "▶" if i == picked else ""
        lines.append(f'<tr class="{"qx-picked" if i == picked else ""}" data-cand="{i}"><td>{mark}</td>'
                     f'<td><code>{_e(c.get("action"))}</code></td><td>{_num(c.get("q"), 4)}</td>'
                     f'<td>{_num(c.get("logprob"), 2)}</td><td>{_num(c.get("count"))}</td>'
                     f'<td class="qx-thought">{_e(excerpt(thought_of(c), 160))}</td>'
                     f'<td>{"" if c.get("valid", True) else "unparsed"}</td></tr>')
    done = " · episode ends" if step.get("done") else ""
    return (f'<div class="qx-step" data-step="{t}"><b>Step {t + 1} of {len(row["trajectory"])}</b> · '
            f'{len(cands)} distinct candidate{"s" if len(cands) != 1 else ""}'
            '<table class="qx-cands"><tr><th></th><th>action</th><th>Q</th><th>log-prob</th><th>×</th><th>thought</th>'
            '<th></th></tr>' + "".join(lines) + "</table>"
            + f'<div>→ observation after ▶ (reward {_num(step.get("reward"))}{done}):</div>'
            f'<pre class="qx-obs">{_e(excerpt(step.get("observation"), obs_chars))}</pre></div>')


def episode_header(row: Mapping[str, Any]) -> str:
    qmodel = f" · Q model {_e(row['qmodel'])}" if row.get("qmodel") else ""
    outcome = "success" if row.get("success") else "failure"
    return (f'<h3>Episode · {_e(row.get("env"))} {_e(row.get("split"))} task {_e(row.get("task_id"))} · '
            f'{_e(row.get("method"))} n={_e(row.get("n"))}{qmodel}</h3>'
            f'<div class="qx-meta">final reward {_num(row.get("reward"))} ({outcome}) after {len(row["trajectory"])} '
            f'steps{" (step limit)" if row.get("truncated") else ""}. ▶ marks the executed candidate; Q is the '
            'Q model\'s score (– where no model scored: one distinct candidate, or a method without one), '
            'log-prob the policy\'s (– when the backend gives none), × how often it was sampled.</div>')


def episode_view(row: Mapping[str, Any] | None, *, obs_chars: int = 600) -> View:
    """Every step of one episode row as a static table (the headless form of :func:`show_episode`)."""
    if not row:
        return message("No episode to show: this run has no such episode row (notebook 04 writes them).")
    steps = "".join(step_html(row, t, obs_chars=obs_chars) for t in range(len(row["trajectory"])))
    return View(f'<div class="qx-episode">{episode_header(row)}{steps}</div>',
                title=f"episode {row.get('task_id')} {row.get('method')}")


def interactive_default() -> bool:
    """Widgets when ipywidgets is importable, a kernel runs us, and ``QLIB_HEADLESS`` is not set."""
    if os.environ.get("QLIB_HEADLESS"):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def show_episode(row: Mapping[str, Any] | None, *, interactive: bool | None = None, obs_chars: int = 600,
                 rows: Sequence[Mapping[str, Any]] = ()) -> Any:
    """In JupyterLab a step slider over one episode (ipywidgets), with a dropdown over ``rows`` (other episodes
    to switch to) when given; headless, :func:`episode_view` of ``row``."""
    if not row or not (interactive_default() if interactive is None else interactive):
        return episode_view(row, obs_chars=obs_chars)
    import ipywidgets as widgets

    choices = [dict(r) for r in rows] or [dict(row)]
    labels = [(f"task {r['task_id']} · {r['method']} · reward {_num(r.get('reward'))} · {scored_steps(r)} Q choices", k)
              for k, r in enumerate(choices)]
    start = next((k for k, r in enumerate(choices) if (r["task_id"], r["method"]) == (row["task_id"], row["method"])), 0)
    episode = widgets.Dropdown(options=labels, value=start, description="episode", layout={"width": "520px"})
    header, body = widgets.HTML(), widgets.HTML()
    slider = widgets.IntSlider(value=1, min=1, max=len(choices[start]["trajectory"]), description="step")

    def show(change: Any = None) -> None:
        body.value = View(step_html(choices[episode.value], slider.value - 1, obs_chars=obs_chars)).html

    def switch(change: Any = None) -> None:
        current = choices[episode.value]
        header.value = View(episode_header(current)).html
        slider.value, slider.max = 1, len(current["trajectory"])
        show()

    slider.observe(show, names="value")
    episode.observe(switch, names="value")
    switch()
    return widgets.VBox(([episode] if len(choices) > 1 else []) + [header, slider, body])


def episode_rows(path: str | os.PathLike, *, method: str | None = None) -> list[dict[str, Any]]:
    """Result rows (not error rows) of an episode file, optionally of one method."""
    return [r for r in read_jsonl(path)
            if r.get("trajectory") and not r.get("error") and (method is None or r["method"] == method)]


def scored_steps(row: Mapping[str, Any]) -> int:
    """Steps of a row at which a Q model scored more than one candidate."""
    return sum(1 for s in row["trajectory"] if sum(c.get("q") is not None for c in s.get("candidates") or []) > 1)


def pick_episode(rows: Sequence[Mapping[str, Any]], task_id: Any = None) -> dict[str, Any] | None:
    """The row of ``task_id``, else the one the Q model had most choices in (successes first)."""
    if task_id is not None:
        return next((dict(r) for r in rows if r["task_id"] == task_id), None)
    return dict(max(rows, key=lambda r: (scored_steps(r) > 0, bool(r.get("success")), scored_steps(r)), default={})) or None


# ----------------------------------------------------------------------------- Q values of executed actions
def executed_q(rows: Iterable[Mapping[str, Any]], label: str = "") -> list[dict[str, Any]]:
    """The stored Q of every executed action the Q model scored among several candidates, one record each."""
    records = []
    for row in rows:
        method = f"{row['method']} n={row.get('n')}" + (f" [{label}]" if label else "")
        outcome = "successful" if row.get("success") else "failed"
        for step in row["trajectory"]:
            cands = step.get("candidates") or []
            if len(cands) > 1 and cands[step.get("chosen", 0)].get("q") is not None:
                records.append({"env": row["env"], "method": method, "split": row["split"], "trajectory": outcome,
                                "q": float(cands[step["chosen"]]["q"])})
    return records


def action_q(episodes_dir: str | os.PathLike, scored: Any = None) -> Any:
    """Q of executed actions, columns env / method / split / trajectory / q, for :func:`q_explorer`.

    Reads the Q values stored in every episode file of ``episodes_dir`` (methods that scored candidates; the
    method label names the file, e.g. ``q n=5 [table2]``) and appends ``scored`` (a frame with those
    columns, e.g. notebook 07's Q of the ``sampled`` actions, scored after the fact)."""
    import pandas as pd

    records = []
    for path in sorted(Path(episodes_dir).glob("*.jsonl")):
        rows = episode_rows(path)
        tag = path.stem[: -len(rows[0]["env"]) - 1] if rows and path.stem.endswith("_" + rows[0]["env"]) else path.stem
        records += executed_q(rows, tag)
    frames = [pd.DataFrame(records, columns=["env", "method", "split", "trajectory", "q"])]
    if scored is not None and len(scored):
        frames.append(scored[["env", "method", "split", "trajectory", "q"]])
    return pd.concat(frames, ignore_index=True)


def q_histogram(frame: Any, *, env: str | None = None, method: str | None = None, split: str | None = None,
                bins: int = 20, ax: Any = None) -> Any:
    """Histogram (density) of Q for successful vs failed trajectories of one env / method / split."""
    import matplotlib.pyplot as plt

    sel = frame
    for column, value in (("env", env), ("method", method), ("split", split)):
        if value is not None:
            sel = sel[sel[column] == value]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    for outcome, color in (("successful", "tab:green"), ("failed", "tab:red")):
        values = sel[sel.trajectory == outcome].q
        if len(values):
            ax.hist(values, bins=bins, density=True, alpha=0.5, color=color, label=f"{outcome} ({len(values)})")
    ax.set(title=f"{env or 'all'} · {method or 'all methods'} · {split or 'all splits'}", xlabel="Q(u, τ, a)",
           ylabel="density")
    if len(sel):
        ax.legend()
    return ax.figure


def _figure_html(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="Q histogram" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def q_explorer(frame: Any, *, bins: int = 20, interactive: bool | None = None, max_static: int = 8) -> Any:
    """Fig. 4b's distributions with a choice of environment, method, split and bins (ipywidgets);
    headless, a static histogram per environment and method (the first ``max_static``), all splits."""
    if frame is None or not len(frame):
        return message("No Q values of executed actions yet: they come with the Q-guided episodes (notebook 04).")
    envs = sorted(frame.env.unique())
    if not (interactive_default() if interactive is None else interactive):
        groups = sorted(frame.groupby(["env", "method"]).groups)[:max_static]
        return View('<div class="qx-q"><h3>Q of executed actions, successful vs failed episodes</h3>'
                    + "".join(_figure_html(q_histogram(frame, env=e, method=m, bins=bins)) for e, m in groups) + "</div>")
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def options(column: str) -> list[tuple[str, Any]]:
        return [("all", None)] + [(str(v), v) for v in sorted(frame[column].unique())]

    def draw(env: str | None, method: str | None, split: str | None, bins: int) -> None:
        q_histogram(frame, env=env, method=method, split=split, bins=bins)
        plt.show()

    return widgets.interactive(draw, env=widgets.Dropdown(options=options("env"), value=envs[0]),
                               method=widgets.Dropdown(options=options("method")),
                               split=widgets.Dropdown(options=options("split")),
                               bins=widgets.IntSlider(value=bins, min=5, max=60, step=5))
