"""The workbook around the notebooks, one job per module.

* :mod:`.layout` — where a profile's artifacts live (:class:`RunPaths`, :func:`run_paths`);
* :mod:`.notebook` — a notebook's one-line set-up (:func:`setup` -> :class:`Workbook`);
* :mod:`.report` — saving tables and figures with their provenance, notebook timings, ``results/README.md``;
* :mod:`.paper` — the paper's numbers, read from the environment registry;
* :mod:`.runner` — executing the notebooks (``python -m qlib.workbook --profile P [--only NAME]``).

The experiments themselves (what a notebook computes) are in :mod:`qlib.experiments`.
"""
from qlib.workbook.layout import NOTEBOOK_DIR, REPO_ROOT, RunPaths, run_paths
from qlib.workbook.notebook import Workbook, setup
from qlib.workbook.report import git_commit, record_timing, save_figure, save_table, write_results_readme
from qlib.workbook.runner import main, notebooks, run_notebook

__all__ = ["NOTEBOOK_DIR", "REPO_ROOT", "RunPaths", "Workbook", "git_commit", "main", "notebooks", "record_timing",
           "run_notebook", "run_paths", "save_figure", "save_table", "setup", "write_results_readme"]
