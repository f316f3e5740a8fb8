"""Locate and verify the offline data bundle (never committed to this repository).

Search order: ``$QLIB_DATA``, then ``./data`` (current directory and repository root), then
``../shared/data`` beside the checkout. Each file qlib reads is checked against the sha256 in
:data:`MANIFEST` (values from the bundle's SOURCES.md) the first time it is used.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent

#: sha256 of every bundle file qlib may read (relative path -> checksum), from SOURCES.md.
MANIFEST: dict[str, str] = {
    "webshop/items_ins_v2_1000.json": "f88a36314a397b53b3d9c3fa5878e5f7b26d35019a51ec83fbedeca61a948f6f",
    "webshop/webshop_1k_documents.jsonl.gz": "b262dc6f3cbeca54dabb66dff054fbf9b13da12352498d3b611611feba4ab56c",
    "webshop/human_goals.json.gz": "55f7a783e179e271fe11efac883a0dcde16c69b5d623bd0a06080102087c6087",
    "webshop/goal_query_map.json": "1524f438ffbc51c7e308e635d7d9e14fa696b08f5d4300922d454ef0105cea86",
    "hotpotqa/hotpot_dev_subset_with_context.jsonl.gz": "abf510d88f71ef69942fe894c483e66f563d65869f5dcd803626f3a45f13e59b",
    "hotpotqa/hotpot_dev_v1_simplified.json.gz": "6565bd47a4022abf458cbe614dd3b3b807783b75a6e6448bffaa74f38bf3842e",
    "hotpotqa/hotpot_train_subset_with_context.jsonl.gz": "f017da995452c4e9cf0e237f7f0dbb24b54e4afd6359b7fa43768399a35f4001",
    "hotpotqa/hotpot_wiki_paragraphs.jsonl.gz": "7415a4f0f3dde2e2bf69b8257cb412614d1707ba24147f5a3ce0118db40d1f18",
}


class DataBundleError(FileNotFoundError):
    """A bundle file is missing or its checksum does not match."""


def candidate_dirs() -> list[Path]:
    """The places searched for the bundle, in order."""
    places: list[Path] = []
    env = os.environ.get("QLIB_DATA")
    if env:
        places.append(Path(env).expanduser())
    places += [Path.cwd() / "data", REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]
    unique: list[Path] = []
    for place in places:
        if place.resolve() not in [p.resolve() for p in unique]:
            unique.append(place)
    return unique


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_path(relative: str) -> Path:
    """Absolute path of bundle file ``relative`` after checking its sha256; raise DataBundleError otherwise."""
    if relative not in MANIFEST:
        raise DataBundleError(f"{relative!r} is not a bundle file qlib knows (see qlib.data.MANIFEST)")
    places = candidate_dirs()
    for place in places:
        path = place / relative
        if path.is_file():
            return _verified(path, relative)
    searched = "\n  ".join(str(p) for p in places)
    raise DataBundleError(
        f"data bundle file {relative!r} not found. Searched:\n  {searched}\n"
        f"Expected sha256 {MANIFEST[relative]}. Put the bundle (see README, 'Data') in one of these "
        f"places or set QLIB_DATA to its folder."
    )


def _verified(path: Path, relative: str) -> Path:
    stat = path.stat()
    actual = _cached_sha(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    expected = MANIFEST[relative]
    if actual != expected:
        raise DataBundleError(
            f"data bundle file {relative!r} at {path} is corrupt: sha256 {actual}, expected {expected}. "
            f"Restore it from the bundle (see README, 'Data')."
        )
    return path


@lru_cache(maxsize=64)
def _cached_sha(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


def verify_all() -> dict[str, Path]:
    """Verify every manifest file; return relative path -> absolute path."""
    return {relative: data_path(relative) for relative in MANIFEST}


def open_text(relative: str):
    """Open a verified bundle file as text, transparently gunzipping ``.gz`` files."""
    path = data_path(relative)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_json(relative: str) -> Any:
    with open_text(relative) as handle:
        return json.load(handle)


def iter_jsonl(relative: str) -> Iterator[dict[str, Any]]:
    with open_text(relative) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)
