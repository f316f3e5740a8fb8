"""Notebook 09 executed on a toy run, exported to HTML by nbconvert and looked at in headless Chromium.

``make test`` installs the Debian package ``chromium`` where it is missing and sets ``QLIB_REQUIRE_BROWSER``,
so there a missing browser fails this test; elsewhere it is skipped with the reason. ``QLIB_SCREENSHOTS=DIR``
keeps the screenshots (else they stay in pytest's temporary folder).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from qlib.testing.browser import Chromium, find_chromium
from qlib.testing.toy_run import ENV, toy_run
from qlib.tree import load_tree
from qlib.workbook import explore as xp
from qlib.workbook.layout import NOTEBOOK_DIR, REPO_ROOT, run_paths

NOTEBOOK = NOTEBOOK_DIR / "09_inspect.ipynb"


def chromium() -> str:
    executable = find_chromium()
    if executable is None:
        reason = "no Chromium: `make test` installs the Debian package chromium (apt-get install chromium)"
        if os.environ.get("QLIB_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    return executable


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """Run notebook 09 (profile smoke, env toy) on a toy run; return the HTML export and the run's paths."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    executable = chromium()
    tmp = tmp_path_factory.mktemp("browser")
    saved = {k: os.environ.get(k) for k in ("QLIB_RUNS", "QLIB_HEADLESS", "PYTHONPATH")}
    os.environ.update(QLIB_RUNS=str(tmp / "runs"), QLIB_HEADLESS="1",  # the kernel imports this checkout's qlib
                      PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), saved["PYTHONPATH"]) if p))
    try:
        paths = run_paths("smoke")
        made = toy_run(paths)
        executed = tmp / NOTEBOOK.name
        papermill.execute_notebook(str(NOTEBOOK), str(executed), parameters={"profile": "smoke", "env": ENV},
                                   cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(executed, as_version=4))
    page = tmp / "09_inspect.html"
    page.write_text(body, encoding="utf-8")
    return page, made, executable


def keep(shot: Path) -> Path:
    if os.environ.get("QLIB_SCREENSHOTS"):
        target = Path(os.environ["QLIB_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)
    return shot


def test_exported_notebook_shows_the_tree_and_a_click_unfolds_a_node(export):
    page, made, executable = export
    tree_file = xp.find_tree(made["trees"], pairs=made["pairs"])  # what the notebook shows by default
    tree = load_tree(tree_file)
    nodes, best = tree["nodes"], tree["best_path"]
    pairs = [r for r in xp.read_jsonl(made["pairs"]) if r["tree_file"] == tree_file.name]
    # a folded node with children hanging off the best trajectory (so in view), the deepest first
    target = max((n for n in nodes if n["children"] and n["id"] not in best and n["parent"] in best),
                 key=lambda n: (n["depth"], -n["id"]))
    child = target["children"][0]
    with Chromium(executable) as browser:
        browser.open(page.as_uri())

        def ids(selector: str) -> list[int]:
            return sorted(browser.eval(f"[...document.querySelectorAll({json.dumps(selector)})].map(e => +e.dataset.id)"))

        def visible(node_id: int) -> bool:
            return browser.eval(f"document.querySelector('details.qx-node[data-id=\"{node_id}\"] > summary')"
                                ".checkVisibility()")

        assert browser.eval("document.querySelectorAll('.qx-tree').length") == 1
        assert ids(".qx-tree details.qx-node") == [n["id"] for n in nodes]
        assert ids(".qx-tree details.qx-best") == sorted(best)
        assert ids(".qx-tree details.qx-pair-chosen") == sorted({r["chosen_id"] for r in pairs})
        assert ids(".qx-tree details.qx-pair-rejected") == sorted({r["rejected_id"] for r in pairs})
        assert all(visible(i) for i in best)  # the best trajectory is unfolded
        assert visible(target["id"]) and not visible(child)
        summary = f'details.qx-node[data-id="{target["id"]}"] > summary'
        browser.scroll_to(summary)
        keep(browser.screenshot(page.with_name("09_tree_before.png")))
        browser.click(summary)  # a real mouse click
        assert browser.eval(f"document.querySelector('details.qx-node[data-id=\"{target['id']}\"]').open")
        assert visible(child)
        keep(browser.screenshot(page.with_name("09_tree_after_click.png")))
        # the episode stepper's static form and the Q explorer's figure are in the export too
        row = xp.pick_episode(xp.episode_rows(made["episodes"], method="q"))
        assert browser.eval("document.querySelectorAll('.qx-episode .qx-step').length") == len(row["trajectory"])
        assert browser.eval("document.querySelectorAll('.qx-episode tr.qx-picked').length") == len(row["trajectory"])
        assert browser.eval("document.querySelector('.qx-q img').naturalWidth") > 100
        browser.scroll_to(".qx-episode")
        keep(browser.screenshot(page.with_name("09_episode.png")))
        keep(browser.screenshot(page.with_name("09_inspect_page.png"), full_page=True))


@pytest.mark.skipif(not os.environ.get("QLIB_LAB_TEST"), reason="opt-in (QLIB_LAB_TEST=1): starts JupyterLab, ~30 s")
def test_episode_slider_and_q_explorer_are_widgets_in_jupyterlab(export, tmp_path):
    """The interactive forms in a live JupyterLab: run the cells, move the step slider with the keyboard."""
    import subprocess
    import time

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    from qlib.testing.browser import free_port

    _, made, executable = export
    code = (f"from qlib.workbook import explore as xp\nrows = xp.episode_rows({str(made['episodes'])!r}, method='q')\n"
            "xp.show_episode(xp.pick_episode(rows), rows=rows)")
    nbformat.write(new_notebook(cells=[new_code_cell(code), new_code_cell(
        f"xp.q_explorer(xp.action_q({str(made['episodes'].parent)!r}))")], metadata={"kernelspec": {
            "name": "python3", "display_name": "Python 3", "language": "python"}}), tmp_path / "lab.ipynb")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "QLIB_HEADLESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    server = subprocess.Popen(
        [str(Path(os.sys.executable).with_name("jupyter")), "lab", "--no-browser", f"--port={port}", "--allow-root",
         "--ServerApp.token=", "--ServerApp.password=", "--LabApp.expose_app_in_browser=True",
         f"--ServerApp.root_dir={tmp_path}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        with Chromium(executable, timeout=90) as browser:
            def wait(expression: str, seconds: float = 90) -> None:
                deadline = time.monotonic() + seconds
                while not browser.eval(expression):
                    assert time.monotonic() < deadline, expression
                    time.sleep(0.5)

            deadline = time.monotonic() + 60
            while True:  # the server takes a few seconds to listen
                try:
                    browser.open(f"http://127.0.0.1:{port}/lab/tree/lab.ipynb")
                    break
                except (RuntimeError, TimeoutError):
                    assert time.monotonic() < deadline, "JupyterLab did not start"
                    time.sleep(1)
            wait("!!window.jupyterapp && !!document.querySelector('.jp-Notebook')")
            time.sleep(3)  # the kernel session
            browser.eval("(window.jupyterapp.commands.execute('notebook:run-all-cells'), true)")  # not awaited
            wait("document.querySelectorAll('.widget-slider').length >= 2 && !!document.querySelector('.qx-step')")
            assert browser.eval("document.querySelectorAll('.widget-dropdown').length") == 4  # episode + env/method/split
            assert browser.eval("document.querySelector('.qx-step').dataset.step") == "0"
            browser.eval("document.querySelector('.widget-slider .noUi-handle').focus()")
            for kind in ("keyDown", "keyUp"):
                browser.send("Input.dispatchKeyEvent", type=kind, key="ArrowRight", code="ArrowRight",
                             windowsVirtualKeyCode=39)
            wait("document.querySelector('.qx-step').dataset.step === '1'", 10)
            keep(browser.screenshot(tmp_path / "lab_widgets.png"))
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
