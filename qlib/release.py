"""Released artifacts: the data of a committed run, so that a fresh clone resumes from it instead of recollecting.

``release(paths)`` copies what a run produced from ``runs/<profile>/`` to ``results/artifacts/run/`` and
writes ``MANIFEST.json``; ``restore(paths)`` checks the release and copies it back into an empty or
matching ``runs/<profile>/``. Every stage resumes from the files it finds (trees per task, episode rows
per key, trained models), so after a restore ``make reproduce`` only recomputes what the release lacks:
run one notebook (e.g. ``04_evaluate``) to redo only the evaluation, or ``python -m qlib.workbook
--only 04 05`` for a few.

Layout of ``results/artifacts/run/`` (the same relative paths as ``runs/<profile>/``)::

    MANIFEST.json                       profile, commit, seed, created, files {path: sha256, bytes, rows,
                                        compute_s}, compute_s per kind and in total
    demos/<env>_train.jsonl (+ .manifest.json)   expert demonstrations (trl conversational rows)
    trees/<env>_<split><tag>.jsonl      MCTS trees, one tree JSON per line (schema: qlib.tree)
    pairs/<env>_<split>_<level>.jsonl   step and trajectory preference pairs (QNet rows, one per tree node,
                                        are rebuilt from the trees by notebook 02 and not released)
    episodes/<tag>_<env>.jsonl          episode rows (schema: qlib.episode_store)
    qmodels/<env>_<name>/               Q-value models whose files fit ``max_model_mb`` (LoRA adapters,
                                        QNet heads), except notebook 03's init-comparison models
    finetuned/<env>_<row>/              Table 2's fine-tuned agents (RFT, AgentEvol, ETO, Q*Agent-ST: LoRA
                                        adapters on the cloned agent) that fit ``max_model_mb``; their export
                                        (``merged/``, ``model.gguf``) is rebuilt from the adapter and the clone

Every JSONL file loads with ``pandas.read_json(path, lines=True)`` and
``datasets.load_dataset("json", data_files=path)``. ``compute_s`` is the compute the artifact holds,
summed over every execution that produced part of it: trees' ``stats.seconds``, episode rows' ``wall_s``,
models' ``train_seconds`` (resumed runs add up; a restore adds nothing).

A release whose files do not match their sha256 (corrupt, edited, half-copied), that was made for another
profile or seed, or that would overwrite different files in ``runs/<profile>/`` (another run) is refused
with :class:`ReleaseError` naming the file; nothing is mixed.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable

from qlib.data import sha256_of as sha256
from qlib.io import atomic_write_text, read_jsonl, write_jsonl
from qlib.workbook.layout import INIT_COMPARISON, RunPaths

MANIFEST = "MANIFEST.json"
RELEASE_DIR = "run"
MODEL_KINDS = ("qmodels", "finetuned")  # folders of trained models: one folder per model, released as a whole
KINDS = ("demos", "trees", "pairs", "episodes", *MODEL_KINDS)
# a model (Q model, fine-tuned agent) is released when all its files together are at most this size (a LoRA
# Q model of SmolLM2-135M, r=16 on every linear layer: adapter 18.7 MiB + tokenizer 3.4 MiB; a QNet head ≈ 6 MiB)
MAX_MODEL_MB = 24.0
UNRELEASED_MODELS = (f"*_{INIT_COMPARISON}*",)  # notebook 03's init comparison (retrained in ≈ 12 min per env when missing)


class ReleaseError(RuntimeError):
    """A release that cannot be used as it is (corrupt file, other profile/seed, conflicting run)."""


def release_dir(paths: RunPaths) -> Path:
    return paths.artifacts / RELEASE_DIR


def jsonl_compute(rows: Iterable[dict[str, Any]]) -> tuple[int, float]:
    """(rows, compute seconds) of episode-like rows (``wall_s``) or trees (``stats.seconds``); a row copied
    from another episode file (``copied_from``) counts its compute there only."""
    n, seconds = 0, 0.0
    for row in rows:
        n += 1
        if not row.get("copied_from"):
            seconds += float(row.get("wall_s") or (row.get("stats") or {}).get("seconds") or 0.0)
    return n, seconds


def model_files(folder: Path) -> list[Path]:
    """The files of a trained model (its pair margins included), without trainer checkpoints, without the
    partial files of an unfinished run (``*.partial.pt``, ``*.tmp``) and without what an export rebuilds
    (``merged/`` weights, ``*.gguf`` and its stamp)."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not {"trainer", "merged"} & set(p.relative_to(folder).parts)
                  and not p.name.endswith((".partial.pt", ".tmp", ".gguf", ".gguf.json")))


# ----------------------------------------------------------------------------- release
def release(paths: RunPaths, *, commit: str, seed: int, max_model_mb: float = MAX_MODEL_MB,
            dest: Path | None = None) -> dict[str, Any]:
    """Copy the run's artifacts to ``dest`` (default ``results/artifacts/run``) and write its manifest.

    The folder is rebuilt from scratch, so it always holds exactly one run. Returns the manifest."""
    dest = dest or release_dir(paths)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    runs = paths.runs
    files: dict[str, dict[str, Any]] = {}

    def record(rel: str, compute_s: float = 0.0, rows: int | None = None) -> None:
        target = dest / rel
        files[rel] = {"kind": rel.split("/")[0], "sha256": sha256(target), "bytes": target.stat().st_size,
                      "rows": rows, "compute_s": round(compute_s, 3)}

    for source in sorted((runs / "demos").glob("*.json*")):
        rel = f"demos/{source.name}"
        shutil.copy2(source, _mkparent(dest / rel))
        rows = sum(1 for _ in read_jsonl(source)) if source.suffix == ".jsonl" else None
        record(rel, 0.0, rows)
    for folder in sorted(p for p in (runs / "trees").glob("*") if p.is_dir()):
        trees = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))
                 if not p.name.startswith(".")]
        if trees:
            rel = f"trees/{folder.name}.jsonl"
            write_jsonl(trees, _mkparent(dest / rel))
            record(rel, *reversed(jsonl_compute(trees)))
    for kind in ("pairs", "episodes"):
        for source in sorted((runs / kind).glob("*.jsonl")):
            if source.name.startswith("cli_"):  # ad-hoc `python -m qlib evaluate` output, not the workbook's
                continue
            if source.name.endswith("_qnet.jsonl"):  # one row per tree node (≈ 200 KB per tree): notebook 02
                continue  # rebuilds them from the released trees in seconds
            rel = f"{kind}/{source.name}"
            shutil.copy2(source, _mkparent(dest / rel))
            rows, compute = jsonl_compute(read_jsonl(source, tolerant=True))  # pairs store no compute: 0
            record(rel, compute, rows)
    skipped_models = []
    models = [p for kind in MODEL_KINDS for p in sorted((runs / kind).glob("*")) if p.is_dir()]
    for folder in models:
        parts = model_files(folder)
        too_big = sum(p.stat().st_size for p in parts) > max_model_mb * 2**20
        unfinished = not (folder / "qlib_config.json").is_file()  # written last, when training ends
        if not parts or unfinished or too_big or any(folder.match(pattern) for pattern in UNRELEASED_MODELS):
            skipped_models.append(f"{folder.parent.name}/{folder.name}")
            continue
        meta = _read_json(folder / "qlib_config.json")
        for i, part in enumerate(parts):
            rel = f"{folder.parent.name}/{folder.name}/{part.relative_to(folder).as_posix()}"
            shutil.copy2(part, _mkparent(dest / rel))
            record(rel, float(meta.get("train_seconds") or 0.0) if i == 0 else 0.0)
    by_kind = {k: round(sum(f["compute_s"] for f in files.values() if f["kind"] == k), 1) for k in KINDS}
    manifest = {
        "profile": paths.profile, "commit": commit, "seed": seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "compute_s": {**by_kind, "total": round(sum(by_kind.values()), 1)},
        "models_not_released": skipped_models, "files": files,
    }
    atomic_write_text(dest / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


# ----------------------------------------------------------------------------- restore
def read_manifest(src: Path) -> dict[str, Any]:
    path = src / MANIFEST
    if not path.is_file():
        raise ReleaseError(f"{src} holds no {MANIFEST}: not a release")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReleaseError(f"{path} is not valid JSON ({err}); fetch the release again") from None


def verify(src: Path, *, profile: str | None = None, seed: int | None = None) -> dict[str, Any]:
    """The manifest of the release in ``src`` after checking every file's sha256 (and profile/seed when
    given); :class:`ReleaseError` names the first problem."""
    manifest = read_manifest(src)
    for key, wanted in (("profile", profile), ("seed", seed)):
        if wanted is not None and manifest.get(key) != wanted:
            raise ReleaseError(f"{src / MANIFEST}: the release is of {key} {manifest.get(key)!r}, this run uses "
                               f"{wanted!r}; restore it with that {key} or run without the release")
    for rel, entry in sorted(manifest["files"].items()):
        path = src / rel
        if not path.is_file():
            raise ReleaseError(f"{path} is listed in {MANIFEST} but missing")
        if sha256(path) != entry["sha256"]:
            raise ReleaseError(f"{path} does not match its sha256 in {MANIFEST} (corrupt or edited); "
                               "fetch the release again (git checkout -- results/artifacts)")
    return manifest


def restore(paths: RunPaths, *, seed: int | None = None, src: Path | None = None) -> dict[str, Any]:
    """Copy a verified release into ``runs/<profile>/``; returns ``{"restored": n, "present": n}``.

    A file already in ``runs/`` is kept when it equals the release (for trees: the same tree; for a JSONL
    store: the released rows, perhaps followed by newer ones) and refused otherwise — the run folder belongs
    to another run; the error says which file."""
    src = src or release_dir(paths)
    manifest = verify(src, profile=paths.profile, seed=seed)
    plan: list[tuple[Path, Any]] = []  # (target, source file | tree dict)
    for rel in sorted(manifest["files"]):
        if rel.startswith("trees/"):
            folder = paths.runs / "trees" / Path(rel).name[: -len(".jsonl")]
            for tree in read_jsonl(src / rel):
                plan.append((folder / f"{tree['env']}_{tree['task_id']}.json", tree))
        else:
            plan.append((paths.runs / rel, src / rel))
    conflicts = [target for target, item in plan if target.exists() and not _compatible(target, item)]
    if conflicts:
        raise ReleaseError(f"{conflicts[0]} differs from the release in {src} ({len(conflicts)} file(s) in all): "
                           f"{paths.runs} holds another run; move it away or set QLIB_RUNS to an empty folder")
    restored = 0
    for target, item in plan:
        if target.exists():
            continue
        _mkparent(target)
        if isinstance(item, Path):
            shutil.copy2(item, target)
        else:
            from qlib.tree import write_tree

            write_tree(item, target.parent)
        restored += 1
    return {"restored": restored, "present": len(plan) - restored, "compute_s": manifest["compute_s"]}


def _compatible(target: Path, item: Any) -> bool:
    """Whether ``target`` in runs/ is the released ``item``: the same bytes, the same tree, or — for an
    append-only JSONL store (episode rows) — the released rows followed by rows the run added since."""
    if isinstance(item, Path):
        if item.suffix == ".jsonl" and target.stat().st_size > item.stat().st_size:
            with open(target, "rb") as handle:
                return handle.read(item.stat().st_size) == item.read_bytes()
        return sha256(target) == sha256(item)
    try:
        return json.loads(target.read_text(encoding="utf-8")) == item
    except json.JSONDecodeError:
        return False


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: Any) -> None:
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--restore", action="store_true",
                        help="copy the committed release into runs/<profile>/ (verified; nothing to do without one)")
    action.add_argument("--verify", action="store_true", help="only check the release's sha256s, profile and seed")
    parser.add_argument("--max-model-mb", type=float, default=MAX_MODEL_MB,
                        help="release a Q model or fine-tuned agent only when its files are at most this many MiB")


def run(args: Any) -> int:
    """``python -m qlib release``: release runs/<profile>/ (default), or ``--restore`` / ``--verify`` it."""
    from qlib.config import load_config, parse_overrides
    from qlib.workbook.layout import run_paths
    from qlib.workbook.report import git_commit

    config = load_config(args.profile, parse_overrides(args.set))
    paths = run_paths(config.profile)
    if args.restore or args.verify:
        if not (release_dir(paths) / MANIFEST).is_file():
            print(f"no release in {release_dir(paths)}: nothing to {'restore' if args.restore else 'verify'}")
            return 0
        try:
            if args.verify:
                manifest = verify(release_dir(paths), profile=config.profile, seed=config.seed)
                print(f"release ok: {len(manifest['files'])} files, commit {manifest['commit']}")
            else:
                done = restore(paths, seed=config.seed)
                print(f"restored {done['restored']} file(s) into {paths.runs} ({done['present']} already there)")
        except ReleaseError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    manifest = release(paths, commit=git_commit(), seed=config.seed, max_model_mb=args.max_model_mb)
    size = sum(f["bytes"] for f in manifest["files"].values()) / 2**20
    print(f"released {len(manifest['files'])} files ({size:.1f} MiB, compute {manifest['compute_s']['total']} s) "
          f"to {release_dir(paths)}")
    return 0
