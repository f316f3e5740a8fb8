"""File helpers every stage shares: atomic writes and JSON-lines reading/appending.

* :func:`atomic_write_text` — write via a temp file in the same folder + ``os.replace`` (a reader never
  sees half a file; a killed writer leaves only ``.<name>.<pid>.*.tmp``, removed by
  :func:`remove_stale_temp_files`);
* :func:`write_jsonl` — a whole JSONL file, atomically;
* :func:`read_jsonl` — rows of a JSONL file (plain or ``.gz``); ``tolerant=True`` skips an unreadable
  line (a row cut off by a crash) with a warning instead of raising;
* :func:`append_jsonl` — append one row and fsync it (resumable stores: a crash never loses a finished
  row), after terminating a partially written last line.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger(__name__)

_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    """``rows`` as the text of a JSONL file (what :func:`write_jsonl` writes)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write ``rows`` as JSON lines, atomically."""
    return atomic_write_text(path, jsonl_text(rows))


def read_jsonl(path: str | os.PathLike, *, tolerant: bool = False) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file (``.gz`` read transparently; blank lines skipped).

    ``tolerant``: skip a line that is not valid JSON with a warning (e.g. cut off by a crash)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                if not tolerant:
                    raise ValueError(f"{path}:{number}: not a JSON line") from None
                log.warning("%s:%d: skipping an unreadable (partially written?) line", path, number)


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row and flush it to disk; a partial last line left by a crash is terminated first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    end_with_newline(path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def end_with_newline(path: str | os.PathLike) -> None:
    """Terminate a partially written last line so the next appended row starts on its own line."""
    path = Path(path)
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as handle:
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                handle.write(b"\n")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files left in ``folder`` by writers that no longer run (pid in the name)."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TMP_NAME.match(path.name)
        if match and not _pid_alive(int(match.group("pid"))):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d stale temp files in %s", len(removed), folder)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
