"""Ablation grids are notebook parameters: growing one in the lab runs only the missing episodes (resume)."""
from __future__ import annotations

import ast

import nbformat
import pytest

from qlib import experiments as ex
from qlib.config import load_config
from qlib.testing.toy_run import ActionScorer, LogprobToyPolicy
from qlib.workbook import NOTEBOOK_DIR
from qlib.workbook.layout import RunPaths


def parameters(name: str) -> dict:
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {t.id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body for t in node.targets}


def test_the_ablation_grids_are_papermill_parameters():
    assert {"candidates", "ablation_tasks"} <= parameters("05_ablation_candidates").keys()
    assert {"fractions", "iterations", "ablation_tasks"} <= parameters("06_ablation_data").keys()
    sources = {name: "".join(c.source for c in nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4).cells)
               for name in ("05_ablation_candidates", "06_ablation_data")}
    assert "candidates_grid(wb.config, wb.paths, candidates, env=env, tasks=ablation_tasks)" in sources["05_ablation_candidates"]
    assert "pairs_ablation(wb.config, wb.paths, fractions, env=data_env, tasks=ablation_tasks)" in sources["06_ablation_data"]
    assert "iteration_curves(wb.config, wb.paths, iterations)" in sources["06_ablation_data"]


@pytest.fixture
def toy_recipes(monkeypatch):
    """The recipes with the toy policy and a stand-in Q model, counting the episodes actually played."""
    from qlib import evaluate
    from qlib.agent import backends

    played = []
    real = evaluate.run_task
    monkeypatch.setattr(backends, "make_policy", lambda *args, **kwargs: LogprobToyPolicy())
    monkeypatch.setattr(ex, "load_q", lambda paths, env, name: ActionScorer())
    monkeypatch.setattr(evaluate, "run_task", lambda runner, task_id, meta: played.append((meta["n"], task_id))
                        or real(runner, task_id, meta))
    return played


def test_growing_the_candidates_grid_or_the_task_count_runs_only_the_new_episodes(tmp_path, toy_recipes):
    paths = RunPaths("smoke", tmp_path / "runs", tmp_path / "results", tmp_path / "figures")
    config = load_config("smoke")
    first = ex.candidates_grid(config, paths, [1, 3], env="toy", tasks=2)
    assert sorted(toy_recipes) == sorted([(n, t) for n in (1, 3) for t in (200, 201)] * 2)  # step + trajectory
    toy_recipes.clear()
    again = ex.candidates_grid(config, paths, [1, 3], env="toy", tasks=2)
    assert toy_recipes == [] and again.equals(first)  # re-running costs nothing
    table = ex.candidates_grid(config, paths, [1, 3, 5], env="toy", tasks=3)
    new = [(5, 200), (5, 201), (5, 202), (1, 202), (3, 202)]
    assert sorted(toy_recipes) == sorted(new * 2)  # only the new n and the new task, for both Q models
    assert list(table.n) == [1, 3, 5, 1, 3, 5] and set(table.tasks) == {3}
