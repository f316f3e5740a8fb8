import json

import nbformat
import pandas as pd
import pytest

from qlib import workbook


@pytest.fixture
def paths(tmp_path, monkeypatch):
    monkeypatch.setenv("QLIB_RUNS", str(tmp_path / "runs"))
    return workbook.run_paths("smoke")


def test_smoke_results_never_land_in_committed_folders(paths, tmp_path):
    assert paths.results == tmp_path / "runs" / "smoke" / "results"
    assert paths.figures.is_dir() and paths.results.is_dir()
    assert workbook.run_paths("cpu").results == workbook.REPO_ROOT / "results"


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


def test_every_notebook_has_a_parameters_cell_with_profile():
    notebooks = workbook.notebooks()
    assert [nb.stem[:2] for nb in notebooks] == [f"{i:02d}" for i in range(1, 9)]
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "profile =" in tagged[0].source, path.name
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} has outputs"
