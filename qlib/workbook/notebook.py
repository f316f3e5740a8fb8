"""The one-line set-up of a notebook: ``wb = setup(profile, overrides, notebook="04_evaluate")``.

:func:`setup` configures logging and the plot theme, loads the profile's config with the notebook's
overrides, finds (and creates) the profile's folders and prints what the notebook runs with. The returned
:class:`Workbook` carries ``config`` and ``paths`` and saves tables and figures under the notebook's name
and the config's seed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from qlib.workbook import report
from qlib.workbook.layout import RunPaths, run_paths


@dataclass
class Workbook:
    """What a notebook works with: its config, its folders, and saving bound to its name and seed."""

    config: Any  # qlib.config.Config
    paths: RunPaths
    notebook: str
    overrides: Mapping[str, Any] | None = None  # the notebook's config overrides, recorded with what it saves

    @property
    def seed(self) -> int:
        return self.config.seed

    def save_table(self, df: Any, name: str, *, caption: str = "", paper: str | None = None) -> Path:
        """Save ``df`` as table ``name`` (CSV + markdown) and record it in the manifest."""
        return report.save_table(df, name, self.paths, seed=self.seed, notebook=self.notebook, caption=caption,
                                 paper=paper, overrides=self.overrides)

    def save_figure(self, fig: Any, name: str, *, caption: str = "", paper: str | None = None) -> Path:
        """Save ``fig`` as figure ``name`` (PNG) and record it in the manifest."""
        return report.save_figure(fig, name, self.paths, seed=self.seed, notebook=self.notebook, caption=caption,
                                  paper=paper, overrides=self.overrides)

    @staticmethod
    def show(df: Any, digits: int = 3) -> None:
        """Display ``df`` rounded to ``digits`` as a markdown table (printed outside Jupyter)."""
        text = df.round(digits).to_markdown(index=False) if len(df) else "(empty)"
        try:
            from IPython.display import Markdown, display

            display(Markdown(text))
        except ImportError:
            print(text)


def setup(profile: str, overrides: Mapping[str, Any] | None = None, *, notebook: str) -> Workbook:
    """Everything a notebook's first code cell does; returns the :class:`Workbook` of ``notebook``."""
    import seaborn as sns

    from qlib.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sns.set_theme(style="whitegrid")
    config = load_config(profile, overrides)
    paths = run_paths(config.profile)
    print(f"{notebook}: profile={config.profile} seed={config.seed} runs={paths.runs}"
          + (f" overrides={dict(overrides)}" if overrides else ""))
    return Workbook(config, paths, notebook, dict(overrides or {}))
