"""Run the numbered notebooks headlessly: ``python -m qlib.workbook --profile P [--only NAME] [--set KEY=VALUE]
[--report|--no-report]``.

Each notebook is executed with papermill (``profile`` passed as a parameter) into ``<results>/notebooks/``
and its execution time is added to ``<results>/timings.json``; at the end ``<results>/README.md`` is
regenerated. ``QLIB_HEADLESS=1`` tells the explorers (:mod:`.explore`) that no widget frontend will show
them, so they render static HTML. The Makefile adds the skipping of up-to-date stages.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from qlib.config import ConfigError, parse_overrides
from qlib.workbook.layout import NOTEBOOK_DIR, run_paths
from qlib.workbook.report import record_timing, write_results_readme


def notebooks() -> list[Path]:
    """The numbered notebooks ``notebooks/NN_*.ipynb``, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(notebook: Path, profile: str, parameters: dict[str, Any] | None = None) -> float:
    """Execute one notebook with papermill into ``<results>/notebooks/``, record its timing; return its wall seconds."""
    import papermill

    paths = run_paths(profile)
    paths.notebooks.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QLIB_HEADLESS", "1")  # no widget frontend: the explorers show static HTML
    started = time.perf_counter()
    papermill.execute_notebook(
        str(notebook), str(paths.notebooks / notebook.name),
        parameters={"profile": profile, **(parameters or {})},
        cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False, log_output=True,
    )
    wall = time.perf_counter() - started
    record_timing(paths, notebook.stem, wall)
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.workbook", description="run the workbook notebooks")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--only", action="append", help="notebook stem(s) to run, e.g. 01_collect_mcts")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted config override for every notebook run (its `overrides` parameter), e.g. "
                        "eval.reuse_only=true: tables from the episode rows on disk, nothing computed")
    parser.add_argument("--report", action="store_true", help="only regenerate results/README.md")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate results/README.md")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ConfigError as err:
        print(f"--set: {err}", file=sys.stderr)
        return 2
    if not args.report:
        selected = [nb for nb in notebooks() if not args.only or nb.stem in args.only]
        if args.only and len(selected) != len(args.only):
            known = ", ".join(nb.stem for nb in notebooks())
            print(f"unknown notebook in {args.only}; known: {known}", file=sys.stderr)
            return 2
        for notebook in selected:
            print(f"== {notebook.name} (profile {args.profile})", flush=True)
            wall = run_notebook(notebook, args.profile, {"overrides": overrides} if overrides else None)
            print(f"   done in {wall:.0f} s", flush=True)
    if not args.no_report:
        print(write_results_readme(args.profile))
    return 0
