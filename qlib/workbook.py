"""The workbook: run directories, saving tables/figures with a manifest, and running the notebooks.

Every table and figure a notebook saves goes through :func:`save_table` / :func:`save_figure`, which
write plain CSV + markdown / PNG and record (profile, commit, seed, notebook, time) in
``<results>/manifest.json``; :func:`write_results_readme` turns that manifest into
``results/README.md``, next to the paper's number for the same cell where the paper has one.

``python -m qlib.workbook --profile P [--only NAME]`` executes the numbered notebooks with papermill
(``profile`` passed as a parameter) into ``results/notebooks/`` (``runs/smoke/...`` for ``smoke``, so a
smoke run never overwrites committed results). The Makefile adds the skipping of up-to-date stages.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"

#: the paper's numbers (Zhai et al. 2409.09345) for the cells our tables reproduce
PAPER: dict[str, dict[str, Any]] = {
    "table2": {
        # Phi-3-mini-4k-instruct agent; Q model Phi-1.5 trained on its step-level pairs
        ("webshop", "greedy"): 0.30, ("webshop", "sampled"): 0.30, ("webshop", "bon"): 0.50,
        ("webshop", "q"): 0.61,
        ("hotpotqa", "greedy"): 0.20, ("hotpotqa", "sampled"): 0.20, ("hotpotqa", "bon"): 0.34,
        ("hotpotqa", "q"): 0.35,
    },
    "table2_transfer": {
        ("webshop", "llama-3.1-8b"): (0.48, 0.60), ("hotpotqa", "llama-3.1-8b"): (0.46, 0.50),
        ("webshop", "gpt-4o-mini"): (0.49, 0.64), ("hotpotqa", "gpt-4o-mini"): (0.31, 0.44),
        ("webshop", "gpt-4-turbo"): (0.58, 0.64), ("hotpotqa", "gpt-4-turbo"): (0.44, 0.50),
    },
    "table3": {  # WebShop, Phi-3-mini agent
        ("step", 1): 0.30, ("step", 3): 0.50, ("step", 5): 0.61, ("step", 7): 0.63,
        ("trajectory", 1): 0.30, ("trajectory", 3): 0.42, ("trajectory", 5): 0.50, ("trajectory", 7): 0.51,
    },
    "table4": {  # HotPotQA, GPT-4o-mini agent
        "react": 0.31, "react+reflection": 0.39, "react+q": 0.46, "react+reflection+q": 0.48,
    },
    "fig4a": {("webshop", "ind"): 0.83, ("hotpotqa", "ind"): 0.67},
}


@dataclass(frozen=True)
class RunPaths:
    """Where a profile's artifacts live."""

    profile: str
    runs: Path  # intermediate artifacts: trees, pairs, models, episodes (not committed)
    results: Path  # tables + manifest (committed for the cpu profile)
    figures: Path  # PNG figures (committed for the cpu profile)

    @property
    def notebooks(self) -> Path:
        return self.results / "notebooks"

    def trees(self, env: str, split: str = "train", tag: str = "") -> Path:
        return self.runs / "trees" / f"{env}_{split}{tag}"

    def pairs(self, env: str, level: str, split: str = "train") -> Path:
        return self.runs / "pairs" / f"{env}_{split}_{level}.jsonl"

    def qmodel(self, env: str, name: str) -> Path:
        return self.runs / "qmodels" / f"{env}_{name}"

    def episodes(self, name: str) -> Path:
        return self.runs / "episodes" / f"{name}.jsonl"


def run_paths(profile: str) -> RunPaths:
    """Artifact folders of ``profile``; created on demand. ``QLIB_RUNS`` relocates the run folder."""
    runs = Path(os.environ.get("QLIB_RUNS", REPO_ROOT / "runs")) / profile
    if profile == "smoke":
        results, figures = runs / "results", runs / "figures"
    else:
        results, figures = REPO_ROOT / "results", REPO_ROOT / "figures"
    for path in (runs, results, figures):
        path.mkdir(parents=True, exist_ok=True)
    return RunPaths(profile, runs, results, figures)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "qlib", "notebooks"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _record(paths: RunPaths, name: str, kind: str, files: list[Path], *, seed: int, notebook: str,
            caption: str, paper: str | None) -> None:
    manifest_file = paths.results / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    manifest[name] = {
        "kind": kind,
        "files": [str(f.relative_to(REPO_ROOT)) if f.is_relative_to(REPO_ROOT) else str(f) for f in files],
        "profile": paths.profile,
        "commit": git_commit(),
        "seed": seed,
        "notebook": notebook,
        "caption": caption,
        "paper": paper,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = manifest_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, manifest_file)


def save_table(df: Any, name: str, paths: RunPaths, *, seed: int, notebook: str, caption: str = "",
               paper: str | None = None) -> Path:
    """Write ``df`` as ``<results>/<name>.csv`` and ``.md`` and record it in the manifest."""
    csv_path = paths.results / f"{name}.csv"
    md_path = paths.results / f"{name}.md"
    df.to_csv(csv_path, index=False)
    md_path.write_text((f"**{caption}**\n\n" if caption else "") + df.to_markdown(index=False) + "\n")
    _record(paths, name, "table", [csv_path, md_path], seed=seed, notebook=notebook, caption=caption, paper=paper)
    return csv_path


def save_figure(fig: Any, name: str, paths: RunPaths, *, seed: int, notebook: str, caption: str = "",
                paper: str | None = None) -> Path:
    """Write ``fig`` as ``<figures>/<name>.png`` and record it in the manifest."""
    png = paths.figures / f"{name}.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    _record(paths, name, "figure", [png], seed=seed, notebook=notebook, caption=caption, paper=paper)
    return png


def notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def run_notebook(notebook: Path, profile: str, parameters: dict[str, Any] | None = None) -> float:
    """Execute one notebook with papermill into ``<results>/notebooks/``; return its wall seconds."""
    import papermill

    paths = run_paths(profile)
    paths.notebooks.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    papermill.execute_notebook(
        str(notebook), str(paths.notebooks / notebook.name),
        parameters={"profile": profile, **(parameters or {})},
        cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False, log_output=True,
    )
    wall = time.perf_counter() - started
    timings_file = paths.results / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    timings[notebook.stem] = {"wall_s": round(wall, 1), "profile": profile, "commit": git_commit()}
    timings_file.write_text(json.dumps(timings, indent=2, sort_keys=True))
    return wall


def write_results_readme(profile: str) -> Path:
    """Regenerate ``<results>/README.md`` from the manifest and the notebook timings."""
    paths = run_paths(profile)
    manifest_file = paths.results / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    timings_file = paths.results / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    lines = [
        "# Results", "",
        "Generated by `make reproduce` (`python -m qlib.workbook`); do not edit by hand. Every artifact below was",
        "produced by the notebook named beside it, at the commit, profile and seed shown. The wall time is the",
        "notebook's last execution: runs resume from finished trees, Q models and episodes, so a re-execution",
        "only pays for what is new (per-tree and per-episode compute times are kept in the artifacts).", "",
        "| artifact | kind | notebook | profile | commit | seed | notebook wall time | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in sorted(manifest.items()):
        files = ", ".join(f"[{Path(f).name}]({os.path.relpath(REPO_ROOT / f, paths.results)})" for f in entry["files"])
        wall = timings.get(entry["notebook"], {}).get("wall_s", "")
        lines.append(
            f"| {name}: {entry.get('caption', '')} ({files}) | {entry['kind']} | {entry['notebook']} | "
            f"{entry['profile']} | {entry['commit']} | {entry['seed']} | {wall} s | {entry.get('paper') or ''} |"
        )
    lines += ["", "## Tables", ""]
    for name, entry in sorted(manifest.items()):
        if entry["kind"] == "table":
            md = REPO_ROOT / entry["files"][1] if not Path(entry["files"][1]).is_absolute() else Path(entry["files"][1])
            if md.exists():
                lines += [f"### {name}", "", md.read_text().strip(), ""]
    readme = paths.results / "README.md"
    readme.write_text("\n".join(lines) + "\n")
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qlib.workbook", description="run the workbook notebooks")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--only", action="append", help="notebook stem(s) to run, e.g. 01_collect_mcts")
    parser.add_argument("--report", action="store_true", help="only regenerate results/README.md")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate results/README.md")
    args = parser.parse_args(argv)
    if not args.report:
        selected = [nb for nb in notebooks() if not args.only or nb.stem in args.only]
        if args.only and len(selected) != len(args.only):
            known = ", ".join(nb.stem for nb in notebooks())
            print(f"unknown notebook in {args.only}; known: {known}", file=sys.stderr)
            return 2
        for notebook in selected:
            print(f"== {notebook.name} (profile {args.profile})", flush=True)
            wall = run_notebook(notebook, args.profile)
            print(f"   done in {wall:.0f} s", flush=True)
    if not args.no_report:
        print(write_results_readme(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
