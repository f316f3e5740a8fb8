"""Provenance: every saved table and figure, every notebook execution, and the results README made from them.

Every table and figure a notebook saves goes through :func:`save_table` / :func:`save_figure`, which
write plain CSV + markdown / PNG and record (profile, commit, seed, notebook, caption, the paper's number,
time) in ``<results>/manifest.json``. :func:`record_timing` adds one notebook execution to
``<results>/timings.json``: its wall time and the compute summed over every execution at this profile
(runs resume, so a re-execution only pays for what is new and its wall time alone would understate the
cost). :func:`write_results_readme` turns both into ``<results>/README.md``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

from qlib.workbook.layout import REPO_ROOT, RunPaths, run_paths


def git_commit() -> str:
    """Short hash of HEAD, with ``-dirty`` when qlib/ or notebooks/ have uncommitted changes."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "qlib", "notebooks"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty when the file does not exist."""
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (a crash leaves the old file, never half a new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def repo_relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


# ----------------------------------------------------------------------------- tables and figures
def record(paths: RunPaths, name: str, kind: str, files: list[Path], *, seed: int, notebook: str,
           caption: str, paper: str | None, overrides: Mapping[str, Any] | None = None) -> None:
    """Add (or replace) artifact ``name`` in ``<results>/manifest.json`` (with the notebook's config
    ``overrides``, when it had any)."""
    manifest_file = paths.results / "manifest.json"
    manifest = read_json(manifest_file)
    manifest[name] = {
        "kind": kind,
        "files": [repo_relative(f) for f in files],
        "profile": paths.profile,
        "commit": git_commit(),
        "seed": seed,
        "notebook": notebook,
        "caption": caption,
        "paper": paper,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **({"overrides": dict(overrides)} if overrides else {}),
    }
    write_json(manifest_file, manifest)


def save_table(df: Any, name: str, paths: RunPaths, *, seed: int, notebook: str, caption: str = "",
               paper: str | None = None, overrides: Mapping[str, Any] | None = None) -> Path:
    """Write ``df`` as ``<results>/<name>.csv`` and ``.md`` and record it in the manifest."""
    csv_path = paths.results / f"{name}.csv"
    md_path = paths.results / f"{name}.md"
    df.to_csv(csv_path, index=False)
    md_path.write_text((f"**{caption}**\n\n" if caption else "") + df.to_markdown(index=False) + "\n")
    record(paths, name, "table", [csv_path, md_path], seed=seed, notebook=notebook, caption=caption, paper=paper,
           overrides=overrides)
    return csv_path


def save_figure(fig: Any, name: str, paths: RunPaths, *, seed: int, notebook: str, caption: str = "",
                paper: str | None = None, overrides: Mapping[str, Any] | None = None) -> Path:
    """Write ``fig`` as ``<figures>/<name>.png`` and record it in the manifest."""
    png = paths.figures / f"{name}.png"
    fig.savefig(png, dpi=120, bbox_inches="tight")
    record(paths, name, "figure", [png], seed=seed, notebook=notebook, caption=caption, paper=paper,
           overrides=overrides)
    return png


# ----------------------------------------------------------------------------- notebook executions
def record_timing(paths: RunPaths, notebook: str, wall_s: float) -> dict[str, Any]:
    """Add one execution of ``notebook`` (``wall_s`` seconds) to ``<results>/timings.json``; return its entry.

    ``wall_s`` is the last execution, ``cumulative_s`` the sum over every execution at this profile and
    ``executions`` their number. An entry of another profile (``cpu`` and ``paper`` share ``results/``)
    starts afresh; an entry written before cumulative compute was kept counts as one execution of its
    recorded wall time.
    """
    timings_file = paths.results / "timings.json"
    timings = read_json(timings_file)
    previous = timings.get(notebook, {})
    if previous.get("profile") != paths.profile:
        previous = {}
    earlier_s = previous.get("cumulative_s", previous.get("wall_s", 0.0))
    earlier_runs = previous.get("executions", 1 if previous else 0)
    entry = {
        "wall_s": round(wall_s, 1),
        "cumulative_s": round(earlier_s + wall_s, 1),
        "executions": earlier_runs + 1,
        "profile": paths.profile,
        "commit": git_commit(),
    }
    timings[notebook] = entry
    write_json(timings_file, timings)
    return entry


# ----------------------------------------------------------------------------- results/README.md
def profile_cell(entry: dict[str, Any]) -> str:
    """The profile an artifact was made at, with the notebook's overrides (``cpu`` + ``eval.reuse_only=True``)."""
    extra = "".join(f" + `{k}={v}`" for k, v in sorted((entry.get("overrides") or {}).items()))
    return f"{entry['profile']}{extra}"


def write_results_readme(profile: str) -> Path:
    """Regenerate ``<results>/README.md`` from the manifest and the notebook timings."""
    paths = run_paths(profile)
    manifest = read_json(paths.results / "manifest.json")
    timings = read_json(paths.results / "timings.json")
    lines = [
        "# Results", "",
        "Generated by `make reproduce` (`python -m qlib.workbook`); do not edit by hand. Every artifact below was",
        "produced by the notebook named beside it, at the commit, profile and seed shown. Runs resume from",
        "finished trees, Q models and episodes, so one execution only pays for what is new: *compute* is the",
        "notebook's wall time summed over all its executions at this profile, *last* the latest execution alone",
        "(per-tree and per-episode compute times are also kept in the artifacts).", "",
        "| artifact | kind | notebook | profile | commit | seed | compute (all executions) | last | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in sorted(manifest.items()):
        files = ", ".join(f"[{Path(f).name}]({os.path.relpath(REPO_ROOT / f, paths.results)})" for f in entry["files"])
        timing = timings.get(entry["notebook"], {})
        lines.append(
            f"| {name}: {entry.get('caption', '')} ({files}) | {entry['kind']} | {entry['notebook']} | "
            f"{profile_cell(entry)} | {entry['commit']} | {entry['seed']} | {seconds(timing, 'cumulative_s')} | "
            f"{seconds(timing, 'wall_s')} | {entry.get('paper') or ''} |"
        )
    lines += ["", "## Compute per notebook", "",
              "| notebook | profile | executions | compute (all executions) | last execution | last commit |",
              "|---|---|---|---|---|---|"]
    for notebook, timing in sorted(timings.items()):
        lines.append(f"| {notebook} | {timing.get('profile', '')} | {timing.get('executions', 1)} | "
                     f"{seconds(timing, 'cumulative_s')} | {seconds(timing, 'wall_s')} | {timing.get('commit', '')} |")
    lines += released_artifacts(paths)
    lines += ["", "## Tables", ""]
    for name, entry in sorted(manifest.items()):
        if entry["kind"] == "table":
            md = Path(entry["files"][1])
            md = md if md.is_absolute() else REPO_ROOT / md
            if md.exists():
                lines += [f"### {name}", "", md.read_text().strip(), ""]
    readme = paths.results / "README.md"
    readme.write_text("\n".join(lines) + "\n")
    return readme


def released_artifacts(paths: Any) -> list[str]:
    """README lines on ``results/artifacts/run`` (see :mod:`qlib.release`): files, rows, size and the compute
    each kind of artifact holds, summed over every execution that produced it."""
    from qlib.release import MANIFEST, MODEL_KINDS, release_dir

    release = read_json(release_dir(paths) / MANIFEST)
    if not release:
        return []
    lines = ["", "## Released artifacts", "",
             f"`{os.path.relpath(release_dir(paths), paths.results)}/` ({MANIFEST}: sha256 of every file) — commit "
             f"{release['commit']}, profile {release['profile']}, seed {release['seed']}, {release['created']}. "
             "Restored into `runs/` by `make reproduce` (`python -m qlib release --restore`); *compute* is the "
             "time stored in the artifacts themselves (trees' search seconds, episodes' wall seconds, models' "
             "training seconds), summed over all executions.", "",
             "| artifact | rows | MiB | compute |", "|---|---|---|---|"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for rel, entry in sorted(release["files"].items()):  # a model's files (Q model, fine-tuned agent) count as one
        name = "/".join(rel.split("/")[:2]) + "/" if rel.split("/")[0] in MODEL_KINDS else rel
        groups.setdefault(name, []).append(entry)
    for name, entries in groups.items():
        rows = sum(e["rows"] or 0 for e in entries)
        lines.append(f"| {name} | {rows or ''} | {sum(e['bytes'] for e in entries) / 2**20:.2f} | "
                     f"{compute_text(sum(e['compute_s'] for e in entries))} |")
    for clone in sorted(p for p in (paths.artifacts / "clones").glob("*") if (p / "qlib_config.json").is_file()):
        size = sum(f.stat().st_size for f in clone.rglob("*") if f.is_file())
        trained = read_json(clone / "qlib_config.json").get("train_seconds") or 0.0
        lines.append(f"| ../clones/{clone.name}/ (cloned agent, bf16 LoRA adapter) | | {size / 2**20:.2f} | "
                     f"{compute_text(trained)} |")
    lines.append(f"| **total of run/** ({len(release['files'])} files) | | "
                 f"{sum(e['bytes'] for e in release['files'].values()) / 2**20:.2f} | "
                 f"{compute_text(release['compute_s']['total'])} |")
    return lines


def compute_text(seconds_: float) -> str:
    """``"5400 s (1.50 h)"``; empty for artifacts that store no compute."""
    return f"{seconds_:.0f} s ({seconds_ / 3600:.2f} h)" if seconds_ else ""


def seconds(timing: dict[str, Any], key: str) -> str:
    """``timing[key]`` as ``"12.3 s"``; ``cumulative_s`` of an old entry is its ``wall_s``."""
    value = timing.get(key, timing.get("wall_s") if key == "cumulative_s" else None)
    return f"{value} s" if value is not None else ""
