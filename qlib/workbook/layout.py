"""Where a profile's artifacts live: the one place that knows the folder layout.

::

    runs/<profile>/demos/<env>_train.jsonl          expert demonstrations         (stage 0, notebook 00)
    runs/<profile>/clones/<env>/                     behaviour-cloned agents (policy.model smollm2-135m-bc; stage 0)
    runs/<profile>/trees/<env>_<split><tag>/        one tree JSON per task        (stage 1, notebook 01)
    runs/<profile>/pairs/<env>_<split>_<level>.jsonl preference pairs / QNet rows (stage 2, notebook 02)
    runs/<profile>/qmodels/<env>_<name>/             trained Q-value models        (stage 3, notebook 03)
    runs/<profile>/episodes/<tag>_<env>.jsonl        episode rows of one method set (stage 4, notebooks 04-08)
    results/  figures/                               tables, manifest, timings, executed notebooks, PNGs
    results/artifacts/clones/<env>/                  released cloned agents (bf16 LoRA adapter, metrics)

``runs/`` is never committed; ``QLIB_RUNS`` relocates it. ``results/`` and ``figures/`` are committed
for the ``cpu`` (and ``paper``) profile; the ``smoke`` profile keeps its own under ``runs/smoke/`` so that
a smoke run never overwrites committed results.

The command line uses the same layout for its default output paths, without creating any folder::

    paths = run_paths(args.profile, create=False)
    out = args.out or paths.trees(args.env, args.split)          # python -m qlib collect
    out = args.out or paths.pairs(env, args.level, split)        # python -m qlib pairs
    out = args.out or paths.episodes(f"cli_{args.split}", args.env)  # python -m qlib evaluate

(the stages that write create their own parent folders).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
INIT_COMPARISON = "step_init_"  # name prefix of notebook 03's init-comparison Q models (``<env>_step_init_<init>_<k>pairs``)


@dataclass(frozen=True)
class RunPaths:
    """Where the artifacts of one profile live."""

    profile: str
    runs: Path  # intermediate artifacts: trees, pairs, models, episodes (not committed)
    results: Path  # tables, manifest, timings, executed notebooks (committed for the cpu profile)
    figures: Path  # PNG figures (committed for the cpu profile)

    @property
    def artifacts(self) -> Path:
        """Released artifacts committed with the results (e.g. the cloned agents' adapters)."""
        return self.results / "artifacts"

    @property
    def notebooks(self) -> Path:
        """Executed copies of the notebooks."""
        return self.results / "notebooks"

    def demos(self, env: str) -> Path:
        """JSONL of the expert demonstrations of ``env`` (train split; manifest beside it)."""
        return self.runs / "demos" / f"{env}_train.jsonl"

    def trees(self, env: str, split: str = "train", tag: str = "") -> Path:
        """Folder of the MCTS trees of ``env``/``split`` (``tag``: e.g. ``_ood`` for the second policy)."""
        return self.runs / "trees" / f"{env}_{split}{tag}"

    def pairs(self, env: str, level: str, split: str = "train") -> Path:
        """JSONL of the ``level`` (step / trajectory / qnet) rows built from the trees of ``env``/``split``."""
        return self.runs / "pairs" / f"{env}_{split}_{level}.jsonl"

    def qmodel(self, env: str, name: str) -> Path:
        """Folder of the Q-value model ``name`` (e.g. ``step``, ``qnet``, ``step_12pairs``) of ``env``."""
        return self.runs / "qmodels" / f"{env}_{name}"

    def clones(self, env: str | None = None) -> Path:
        """Folder of the behaviour-cloned agent of ``env`` (without ``env``: the folder of all of them)."""
        return self.runs / "clones" / (env or "")

    @property
    def episode_dir(self) -> Path:
        """Folder of every episode file."""
        return self.runs / "episodes"

    def episodes(self, tag: str, env: str | None = None) -> Path:
        """Resumable episode file ``<tag>_<env>.jsonl`` (``<tag>.jsonl`` without ``env``)."""
        return self.episode_dir / (f"{tag}_{env}.jsonl" if env else f"{tag}.jsonl")

    def episode_set(self, name: str, env: str, **fields: object) -> Path:
        """Episode file of the named set of :data:`qlib.experiments.EPISODE_SETS` for ``env``.

        ``fields`` fill a parametrised tag, e.g. ``episode_set("pair_subset", env, pairs=12)``.
        """
        from qlib.experiments import EPISODE_SETS

        return self.episodes(EPISODE_SETS[name].file_tag(**fields), env)

    def create(self) -> "RunPaths":
        """Create the run, results and figures folders; return self."""
        for path in (self.runs, self.results, self.figures):
            path.mkdir(parents=True, exist_ok=True)
        return self


def run_paths(profile: str | None = None, *, create: bool = True) -> RunPaths:
    """The artifact folders of ``profile`` (default: the config's default profile).

    ``create=False`` only computes the paths (what the command line needs for its defaults), so asking
    never makes a results folder of a committed profile appear.
    """
    if profile is None:
        from qlib.config import load_config

        profile = load_config(None).profile
    runs = Path(os.environ.get("QLIB_RUNS", REPO_ROOT / "runs")) / profile
    if profile == "smoke":
        results, figures = runs / "results", runs / "figures"
    else:
        results, figures = REPO_ROOT / "results", REPO_ROOT / "figures"
    paths = RunPaths(profile, runs, results, figures)
    return paths.create() if create else paths
