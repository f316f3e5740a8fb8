import ast
import json
import re

import nbformat
import pandas as pd
import pytest

from qlib import workbook
from qlib.workbook import paper, report

MAX_LOGIC_LINES = 12  # per code cell of a notebook, the parameters cell excepted


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.setenv("QLIB_RUNS", str(tmp_path / "runs"))
    return workbook.run_paths("smoke")


def test_smoke_results_never_land_in_committed_folders(paths, tmp_path):
    assert paths.results == tmp_path / "runs" / "smoke" / "results"
    assert paths.figures.is_dir() and paths.results.is_dir()
    assert workbook.run_paths("cpu", create=False).results == workbook.REPO_ROOT / "results"


def test_layout_of_every_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("QLIB_RUNS", str(tmp_path / "runs"))
    paths = workbook.run_paths("paper", create=False)
    assert not (tmp_path / "runs").exists()  # create=False only computes paths
    runs = tmp_path / "runs" / "paper"
    assert paths.trees("e", "valid", "_ood") == runs / "trees" / "e_valid_ood"
    assert paths.pairs("e", "step", "valid") == runs / "pairs" / "e_valid_step.jsonl"
    assert paths.qmodel("e", "step") == runs / "qmodels" / "e_step"
    assert paths.episodes("cli_test", "e") == runs / "episodes" / "cli_test_e.jsonl"
    assert paths.episode_set("pair_subset", "e", pairs=12) == runs / "episodes" / "fig5a_12_e.jsonl"
    assert paths.create().runs.is_dir()


def test_save_table_and_figure_write_files_and_manifest(paths):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame({"method": ["q", "greedy"], "reward": [0.5, 0.25]})
    csv = workbook.save_table(frame, "demo", paths, seed=7, notebook="99_demo", caption="a demo", paper="Table 9: 1.0")
    assert pd.read_csv(csv).equals(frame)
    assert "| q " in (paths.results / "demo.md").read_text()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    png = workbook.save_figure(fig, "demo_fig", paths, seed=7, notebook="99_demo")
    assert png.read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((paths.results / "manifest.json").read_text())
    assert manifest["demo"]["seed"] == 7 and manifest["demo"]["profile"] == "smoke"
    assert manifest["demo"]["commit"] and manifest["demo_fig"]["kind"] == "figure"
    readme = workbook.write_results_readme("smoke").read_text()
    assert "demo: a demo" in readme and "Table 9: 1.0" in readme and "demo_fig" in readme


def test_setup_returns_the_profiles_config_and_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QLIB_RUNS", str(tmp_path / "runs"))
    wb = workbook.setup("smoke", {"mcts.iterations": 3}, notebook="99_demo")
    assert wb.config.profile == "smoke" and wb.config.mcts.iterations == 3
    assert wb.paths == workbook.run_paths("smoke") and wb.paths.results.is_dir()
    assert "99_demo: profile=smoke seed=0" in capsys.readouterr().out
    wb.save_table(pd.DataFrame({"a": [1]}), "demo", caption="bound")
    entry = json.loads((wb.paths.results / "manifest.json").read_text())["demo"]
    assert (entry["notebook"], entry["seed"], entry["caption"]) == ("99_demo", 0, "bound")
    # what a table was made with travels with it: the overrides into the manifest and the results README
    assert entry["overrides"] == {"mcts.iterations": 3}
    assert "| smoke + `mcts.iterations=3` |" in workbook.write_results_readme("smoke").read_text()


def test_workbook_runner_passes_set_overrides_to_every_notebook(monkeypatch):
    from qlib.workbook import runner

    calls = []
    monkeypatch.setattr(runner, "run_notebook", lambda nb, profile, parameters=None: calls.append(
        (nb.stem, profile, parameters)) or 0.0)
    assert runner.main(["--profile", "cpu", "--only", "04_evaluate", "--set", "eval.reuse_only=true",
                        "--no-report"]) == 0
    assert calls == [("04_evaluate", "cpu", {"overrides": {"eval.reuse_only": "true"}})]
    assert runner.main(["--only", "04_evaluate", "--set", "eval.reuse_only", "--no-report"]) == 2


def test_cumulative_compute_accumulates_over_executions(paths):
    first = report.record_timing(paths, "01_collect_mcts", 100.04)
    second = report.record_timing(paths, "01_collect_mcts", 5.0)
    assert (first["wall_s"], first["cumulative_s"], first["executions"]) == (100.0, 100.0, 1)
    assert (second["wall_s"], second["cumulative_s"], second["executions"]) == (5.0, 105.0, 2)
    timings = json.loads((paths.results / "timings.json").read_text())
    assert timings["01_collect_mcts"]["cumulative_s"] == 105.0
    readme = workbook.write_results_readme("smoke").read_text()
    assert "| 01_collect_mcts | smoke | 2 | 105.0 s | 5.0 s |" in readme


def test_timings_of_another_profile_or_an_old_file(paths):
    timings_file = paths.results / "timings.json"
    timings_file.write_text(json.dumps({"a": {"wall_s": 4.6, "profile": "smoke", "commit": "x"},
                                        "b": {"wall_s": 9.0, "cumulative_s": 50.0, "executions": 3,
                                              "profile": "paper", "commit": "x"}}))
    assert report.record_timing(paths, "a", 1.0)["cumulative_s"] == 5.6  # the old entry counts once
    fresh = report.record_timing(paths, "b", 2.0)  # another profile's compute is not ours
    assert (fresh["cumulative_s"], fresh["executions"]) == (2.0, 1)


def test_paper_numbers_come_from_the_registry():
    assert paper.paper_number("table2", "webshop", "q") == 0.61
    assert paper.paper_number("table2", "hotpotqa", "greedy") == 0.20
    assert paper.paper_number("table2_transfer", "hotpotqa", "gpt-4o-mini") == (0.31, 0.44)
    assert paper.paper_number("table3", "webshop", ("trajectory", 5)) == 0.50
    assert paper.paper_number("table4", "hotpotqa", "react+q") == 0.46
    assert paper.paper_number("fig4a", "webshop", "ind") == 0.83
    assert paper.paper_number("table4", "webshop", "react") is None
    table2 = pd.DataFrame(paper.paper_table2())
    paper_of = table2.set_index(["env", "method"]).paper
    assert len(table2) == 14 and paper_of[("hotpotqa", "bon")] == 0.34
    assert (paper_of[("webshop", "eto")], paper_of[("hotpotqa", "agentevol")]) == (0.53, 0.23)
    note = paper.paper_note("table4")
    assert note.startswith("Table 4 (GPT-4o-mini agent): hotpotqa react 0.31") and "react+reflection+q 0.48" in note
    assert "0.48→0.60" in paper.paper_note("table2_transfer")
    assert "pairs grow faster" in paper.paper_note("fig5b")


def test_every_notebook_has_a_parameters_cell_with_profile():
    notebooks = workbook.notebooks()
    assert [nb.stem[:2] for nb in notebooks] == [f"{i:02d}" for i in range(0, 10)]
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "profile =" in tagged[0].source, path.name
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"


def code_cells(path):
    nb = nbformat.read(path, as_version=4)
    return [c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]


def logic_lines(source):
    return [line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("path", workbook.notebooks(), ids=lambda p: p.stem)
def test_notebooks_are_thin_and_compile(path):
    cells = code_cells(path)
    assert f'setup(profile, overrides, notebook="{path.stem}")' in cells[0].source
    for number, cell in enumerate(cells):
        lines = logic_lines(cell.source)
        assert len(lines) <= MAX_LOGIC_LINES, f"{path.name} code cell {number}: {len(lines)} lines of logic"
        source = "\n".join(line for line in cell.source.splitlines() if not re.match(r"\s*[%!]", line))
        compile(source, f"{path.name}[{number}]", "exec")


def test_notebooks_call_only_existing_library_names():
    """Every ``ex.<name>`` / ``wb.<name>`` a notebook uses exists (catches a renamed recipe before papermill)."""
    from qlib import experiments as ex

    for path in workbook.notebooks():
        for cell in code_cells(path):
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                    if node.value.id == "ex":
                        assert hasattr(ex, node.attr), f"{path.name}: ex.{node.attr}"
                    if node.value.id == "wb":
                        assert hasattr(workbook.Workbook, node.attr) or node.attr in ("config", "paths"), \
                            f"{path.name}: wb.{node.attr}"


def test_saved_names_and_captions_are_kept():
    """The tables and figures results/README.md and the README cite are still saved by the same notebook."""
    saved = {}
    for path in workbook.notebooks():
        for cell in code_cells(path):
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("save_table", "save_figure"):
                    saved.setdefault(node.args[1].value, path.stem)
    manifest = json.loads((workbook.REPO_ROOT / "results" / "manifest.json").read_text())
    # every committed artifact is still saved, by the same notebook (a new one appears at the notebook's next run)
    assert {name: entry["notebook"] for name, entry in manifest.items()}.items() <= saved.items()
    sources = "".join(c.source for p in workbook.notebooks() for c in code_cells(p))
    for entry in manifest.values():  # a caption that starts with the environment is an f-string
        assert entry["caption"].split(": ", 1)[-1] in sources, entry["caption"]


def test_no_environment_is_named_in_the_workbook_or_the_recipes():
    files = [*sorted((workbook.REPO_ROOT / "qlib" / "workbook").glob("*.py")),
             workbook.REPO_ROOT / "qlib" / "experiments.py"]
    for file in files:
        assert not re.search(r"webshop|hotpotqa", file.read_text(), re.IGNORECASE), file.name
